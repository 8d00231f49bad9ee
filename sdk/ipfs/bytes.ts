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

/**
 * Buffers of one size, taken and given back, so that a stream of blocks of that size goes through
 * a few buffers instead of a fresh one per block. Why: V8 frees a buffer that outlived two
 * scavenges only in a full GC, and a fetch's blocks wait a few ms each in queues and writes, long
 * enough to be promoted; six 256 MiB fetches brought 164 full GCs on the tenant, which marked its
 * whole heap each time (about a third of its CPU). A buffer never given back is only garbage.
 */
export class BufferPool {
  readonly size: number;
  readonly #max: number;
  readonly #free: Buffer[] = [];
  readonly #mine = new WeakSet<Uint8Array>();

  /** @param max the most buffers kept while free; more can be out at once. */
  constructor(size: number, max: number) {
    this.size = size;
    this.#max = max;
  }

  take(): Buffer {
    const buffer = this.#free.pop();
    if (buffer !== undefined) return buffer;
    const fresh = Buffer.allocUnsafeSlow(this.size);
    this.#mine.add(fresh);
    return fresh;
  }

  /** Gives a buffer back for reuse: its holder must not touch it again. Others are ignored. */
  give(buffer: Uint8Array): void {
    if (!this.#mine.has(buffer) || this.#free.length >= this.#max || this.#free.includes(buffer as Buffer)) return;
    this.#free.push(buffer as Buffer);
  }

  /** Whether `buffer` is one of this pool's (so may be given back once its holder is done). */
  owns(buffer: Uint8Array): boolean {
    return this.#mine.has(buffer);
  }
}

/**
 * Between a byte source that lends its pieces (their buffers go back to a {@link BufferPool}) and
 * a reader that says how far it is done with the bytes, counted from the source's first: a piece
 * goes back only once the reader is done with every byte of it. A reader that never says so keeps
 * every piece, as with a source that does not lend.
 */
export class Lending {
  #done = 0;
  readonly #lent: Array<{ end: number; release: () => void }> = [];

  /** The source: the piece that ends at byte `end` is lent; `release` runs once it was read. */
  lend(end: number, release: () => void): void {
    if (end <= this.#done) release();
    else this.#lent.push({ end, release });
  }

  /** The reader: done with every byte before `position` (its copies made, nothing kept). */
  done(position: number): void {
    this.#done = Math.max(this.#done, position);
    while (this.#lent.length > 0 && this.#lent[0]!.end <= this.#done) this.#lent.shift()!.release();
  }
}
