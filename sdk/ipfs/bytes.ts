/**
 * Reading byte streams in exact-sized pieces: the parsers of the pack and of the sealed stream both
 * need "the next n bytes, or an error if the stream ends first", without buffering more than one
 * piece. Pieces that fit inside one source chunk are returned without copying.
 */

export type ByteSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

export class ByteReader {
  readonly #iterator: AsyncIterator<Uint8Array> | Iterator<Uint8Array>;
  readonly #queue: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #position = 0;

  constructor(source: ByteSource) {
    this.#iterator =
      Symbol.asyncIterator in source
        ? source[Symbol.asyncIterator]()
        : (source as Iterable<Uint8Array>)[Symbol.iterator]();
  }

  /** Bytes handed out so far. */
  get position(): number {
    return this.#position;
  }

  /** Pulls from the source until `n` bytes are buffered or it ends. */
  async #fill(n: number): Promise<void> {
    while (this.#buffered < n && !this.#ended) {
      const next = await this.#iterator.next();
      if (next.done) {
        this.#ended = true;
        break;
      }
      if (next.value.byteLength === 0) continue;
      this.#queue.push(next.value);
      this.#buffered += next.value.byteLength;
    }
  }

  #take(n: number): Uint8Array {
    const first = this.#queue[0];
    let out: Uint8Array;
    if (first !== undefined && first.byteLength >= n) {
      out = first.subarray(0, n);
      if (first.byteLength === n) this.#queue.shift();
      else this.#queue[0] = first.subarray(n);
    } else {
      out = new Uint8Array(n);
      let filled = 0;
      while (filled < n) {
        const head = this.#queue[0]!;
        const part = Math.min(head.byteLength, n - filled);
        out.set(head.subarray(0, part), filled);
        filled += part;
        if (part === head.byteLength) this.#queue.shift();
        else this.#queue[0] = head.subarray(part);
      }
    }
    this.#buffered -= n;
    this.#position += n;
    return out;
  }

  /** The next `n` bytes, or fewer only where the source ends first. */
  async readUpTo(n: number): Promise<Uint8Array> {
    await this.#fill(n);
    return this.#take(Math.min(n, this.#buffered));
  }

  /** Exactly the next `n` bytes; throws `onShort()` if the source ends first. */
  async readExactly(n: number, onShort: () => Error): Promise<Uint8Array> {
    const bytes = await this.readUpTo(n);
    if (bytes.byteLength < n) throw onShort();
    return bytes;
  }

  /**
   * The next `n` bytes as the pieces they arrive in (at most `maxPiece` each), for copying a
   * large file without joining it; throws `onShort()` if the source ends first.
   */
  async *pieces(n: number, maxPiece: number, onShort: () => Error): AsyncGenerator<Uint8Array> {
    let left = n;
    while (left > 0) {
      if (this.#buffered === 0) await this.#fill(1);
      if (this.#buffered === 0) throw onShort();
      const head = this.#queue[0]!;
      const piece = this.#take(Math.min(head.byteLength, left, maxPiece));
      left -= piece.byteLength;
      yield piece;
    }
  }

  /** Whether the source has no more bytes. */
  async atEnd(): Promise<boolean> {
    await this.#fill(1);
    return this.#buffered === 0;
  }

  /** Tells the source we stopped reading (a network fetch stops, a file closes). */
  async close(): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    await this.#iterator.return?.();
  }
}

/**
 * Re-cuts a byte stream into pieces of exactly `size` bytes (the last one may be shorter): the
 * UnixFS chunker, so every leaf is `size` bytes whatever the producer's chunking.
 */
export async function* fixedSizeChunks(source: ByteSource, size: number): AsyncGenerator<Uint8Array> {
  const reader = new ByteReader(source);
  try {
    for (;;) {
      const chunk = await reader.readUpTo(size);
      if (chunk.byteLength === 0) return;
      yield chunk;
    }
  } finally {
    await reader.close();
  }
}
