import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { lstat, mkdir, open, readdir, rm, type FileHandle } from "node:fs/promises";
import path from "node:path";

import { CheckpointCorruptError, CheckpointDirError, CheckpointTooLargeError, UserError } from "../errors.ts";
import { BufferPool, ByteReader, type ByteSource, type Lending } from "./bytes.ts";
import { DEFAULT_MAX_FILES, FILE_READ_SIZE, MAX_NAME_BYTES, MAX_PATH_BYTES } from "./constants.ts";

/**
 * Deterministic packing of a checkpoint directory into one byte stream, and back.
 *
 * Format, version 1 (all integers big-endian):
 *
 *     magic    "BATONPK" 0x01                       8 bytes
 *     entry*   kind u8 (1 directory, 2 file)
 *              mode u16 (0755 for directories and executable files, 0644 for other files)
 *              path length u16, size u64 (0 for directories)
 *              path (UTF-8, relative, "/"-separated), then `size` bytes of file data
 *     end      kind u8 = 0, entry count u32, total file bytes u64
 *
 * Entries come in depth-first order with each directory's children sorted by their UTF-8 bytes,
 * so a directory always precedes what it holds and the same tree always packs to the same bytes:
 * no timestamps, owners or other mode bits. Only regular files and directories are packed.
 */

const MAGIC = new Uint8Array([0x42, 0x41, 0x54, 0x4f, 0x4e, 0x50, 0x4b, 0x01]); // "BATONPK" v1
const ENTRY_HEADER_BYTES = 13;
const END_BYTES = 13;
const KIND_END = 0;
const KIND_DIR = 1;
const KIND_FILE = 2;
const DIR_MODE = 0o755;
const EXEC_MODE = 0o755;
const FILE_MODE = 0o644;
/** Free pieces a lending pack keeps: what its reader (the encryption) has in hand at once. */
const PACK_POOL_BUFFERS = 8;

interface Entry {
  kind: typeof KIND_DIR | typeof KIND_FILE;
  /** Relative path, "/"-separated. */
  path: string;
  pathBytes: Uint8Array;
  mode: number;
  size: number;
}

export interface PackOptions {
  /** The most bytes the whole pack may take. */
  maxBytes: number;
  /** The most entries (files and directories). */
  maxFiles?: number;
  /**
   * The stream's pieces are exactly this long, but the last: file data is read straight into
   * them at the right offset, so a consumer that reads in this size (the encryption's chunk size)
   * never joins or copies anything.
   */
  pieceSize?: number;
  /**
   * Lends the stream's pieces: they are then read into a few buffers, each reused once the reader
   * told `lending` it is done with its bytes. A reader that keeps a piece past that must copy it.
   */
  lending?: Lending;
  signal?: AbortSignal;
}

export interface Pack {
  /** Regular files in the pack. */
  files: number;
  /** Files and directories. */
  entries: number;
  /** The exact length of `stream`. */
  bytes: number;
  /** The pack itself; read it once. */
  stream: AsyncIterable<Uint8Array>;
  /** Hex SHA-256 of the pack; available once `stream` has been read to its end. */
  sha256(): string;
}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Walks `dir` and returns its pack as a stream, refusing (before any byte is produced) symlinks,
 * devices and other special files, unusable names, and trees over `maxFiles` or `maxBytes`. File
 * contents are read as the stream is consumed; a file that changes size meanwhile fails it.
 *
 * @example
 * const packed = await pack("ckpt/0007", { maxBytes: 8 * 2 ** 30 });
 * for await (const bytes of packed.stream) sink(bytes);
 * packed.sha256();
 */
export async function pack(
  dir: string,
  { maxBytes, maxFiles = DEFAULT_MAX_FILES, pieceSize = FILE_READ_SIZE, lending, signal }: PackOptions,
): Promise<Pack> {
  if (!Number.isInteger(pieceSize) || pieceSize < 1)
    throw new UserError("the pack's piece size must be a positive integer");
  const root = await lstat(dir).catch((cause: unknown) => {
    throw new CheckpointDirError(`cannot read the checkpoint directory ${dir}`, { cause });
  });
  if (!root.isDirectory()) throw new CheckpointDirError(`the checkpoint path is not a directory: ${dir}`);

  const entries: Entry[] = [];
  let bytes = MAGIC.byteLength + END_BYTES;
  const visit = async (relative: string): Promise<void> => {
    signal?.throwIfAborted();
    const names = await readdir(path.join(dir, relative)).catch((cause: unknown) => {
      throw new CheckpointDirError(`cannot list ${path.join(dir, relative)}`, { cause });
    });
    const sorted = names
      .map((name) => ({ name, bytes: encoder.encode(name) }))
      .sort((a, b) => compareBytes(a.bytes, b.bytes));
    for (const { name, bytes: nameBytes } of sorted) {
      const entryPath = relative === "" ? name : `${relative}/${name}`;
      const full = path.join(dir, entryPath);
      if (nameBytes.byteLength > MAX_NAME_BYTES) throw new CheckpointDirError(`file name too long: ${full}`);
      const stats = await lstat(full).catch((cause: unknown) => {
        throw new CheckpointDirError(`cannot read ${full}`, { cause });
      });
      let entry: Entry;
      const pathBytes = encoder.encode(entryPath);
      if (pathBytes.byteLength > MAX_PATH_BYTES)
        throw new CheckpointDirError(`path too long in the checkpoint: ${full}`);
      if (stats.isDirectory()) {
        entry = { kind: KIND_DIR, path: entryPath, pathBytes, mode: DIR_MODE, size: 0 };
      } else if (stats.isFile()) {
        const mode = stats.mode & 0o111 ? EXEC_MODE : FILE_MODE;
        entry = { kind: KIND_FILE, path: entryPath, pathBytes, mode, size: stats.size };
      } else {
        const what = stats.isSymbolicLink() ? "a symlink" : "a special file (device, fifo or socket)";
        throw new CheckpointDirError(`the checkpoint holds ${what}, which is not packed: ${full}`);
      }
      entries.push(entry);
      if (entries.length > maxFiles) {
        throw new CheckpointDirError(`the checkpoint holds more than ${maxFiles} files and directories`);
      }
      bytes += ENTRY_HEADER_BYTES + pathBytes.byteLength + entry.size;
      if (bytes > maxBytes) throw new CheckpointDirError(`the checkpoint is larger than ${maxBytes} bytes`);
      if (entry.kind === KIND_DIR) await visit(entryPath);
    }
  };
  await visit("");

  const hash = createHash("sha256");
  let digest: string | undefined;
  let used = false;
  const files = entries.filter((e) => e.kind === KIND_FILE).length;

  async function* stream(): AsyncGenerator<Uint8Array> {
    if (used) throw new UserError("a pack stream can be read only once");
    used = true;
    const out = new PieceWriter(pieceSize, hash, lending);
    yield* out.put(MAGIC);
    let total = 0;
    for (const entry of entries) {
      signal?.throwIfAborted();
      yield* out.put(entryHeader(entry));
      if (entry.kind === KIND_FILE) {
        yield* readFileInto(out, path.join(dir, entry.path), entry.size, signal);
        total += entry.size;
      }
    }
    const end = new Uint8Array(END_BYTES);
    const view = new DataView(end.buffer);
    view.setUint8(0, KIND_END);
    view.setUint32(1, entries.length);
    view.setBigUint64(5, BigInt(total));
    yield* out.put(end);
    yield* out.flush();
    digest = hash.digest("hex");
  }

  return {
    files,
    entries: entries.length,
    bytes,
    stream: stream(),
    sha256: () => {
      if (digest === undefined) throw new UserError("the pack's digest is known only once its stream has been read");
      return digest;
    },
  };
}

function entryHeader(entry: Entry): Uint8Array {
  const header = new Uint8Array(ENTRY_HEADER_BYTES + entry.pathBytes.byteLength);
  const view = new DataView(header.buffer);
  view.setUint8(0, entry.kind);
  view.setUint16(1, entry.mode);
  view.setUint16(3, entry.pathBytes.byteLength);
  view.setBigUint64(5, BigInt(entry.size));
  header.set(entry.pathBytes, ENTRY_HEADER_BYTES);
  return header;
}

/**
 * Cuts the pack into pieces of `size` bytes as it is written, hashing each piece once it is full.
 * A piece is handed out only when full (or at the end), and another one begins: a fresh one, which
 * the consumer may keep, or with `lending`, one from a pool, each piece lent until the consumer
 * is done with it.
 */
class PieceWriter {
  readonly size: number;
  readonly #hash: ReturnType<typeof createHash>;
  readonly #lending: Lending | undefined;
  readonly #pool: BufferPool | undefined;
  #piece: Buffer;
  #filled = 0;
  /** Bytes handed out so far. */
  #position = 0;

  constructor(size: number, hash: ReturnType<typeof createHash>, lending: Lending | undefined) {
    this.size = size;
    this.#hash = hash;
    this.#lending = lending;
    this.#pool = lending === undefined ? undefined : new BufferPool(size, PACK_POOL_BUFFERS);
    this.#piece = this.#fresh();
  }

  #fresh(): Buffer {
    return this.#pool?.take() ?? Buffer.allocUnsafe(this.size);
  }

  /** Where the next bytes go: the current piece and how much room is left in it. */
  get room(): { piece: Buffer; offset: number; length: number } {
    return { piece: this.#piece, offset: this.#filled, length: this.size - this.#filled };
  }

  /** Counts `n` bytes written into {@link room}; yields the piece when it is full. */
  *advance(n: number): Generator<Uint8Array> {
    this.#filled += n;
    if (this.#filled === this.size) yield* this.flush();
  }

  /** Copies `bytes` in. */
  *put(bytes: Uint8Array): Generator<Uint8Array> {
    for (let at = 0; at < bytes.byteLength;) {
      const { piece, offset, length } = this.room;
      const n = Math.min(length, bytes.byteLength - at);
      piece.set(bytes.subarray(at, at + n), offset);
      at += n;
      yield* this.advance(n);
    }
  }

  /** Hands out what the current piece holds, if anything. */
  *flush(): Generator<Uint8Array> {
    if (this.#filled === 0) return;
    const piece = this.#piece;
    const full = piece.subarray(0, this.#filled);
    this.#hash.update(full);
    this.#position += this.#filled;
    const pool = this.#pool;
    if (pool !== undefined) this.#lending!.lend(this.#position, () => pool.give(piece));
    this.#piece = this.#fresh();
    this.#filled = 0;
    yield full;
  }
}

/**
 * Reads exactly `size` bytes of a regular file into the pack's pieces, refusing one that was
 * swapped or resized.
 */
async function* readFileInto(
  out: PieceWriter,
  file: string,
  size: number,
  signal: AbortSignal | undefined,
): AsyncGenerator<Uint8Array> {
  let handle: FileHandle;
  try {
    // O_NOFOLLOW: a file swapped for a symlink after the walk is refused, not followed.
    handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (cause) {
    throw new CheckpointDirError(`cannot open ${file} (changed while packing?)`, { cause });
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile() || stats.size !== size) throw changed(file);
    let left = size;
    while (left > 0) {
      signal?.throwIfAborted();
      const { piece, offset, length } = out.room;
      const { bytesRead } = await handle.read(piece, offset, Math.min(length, left), size - left);
      if (bytesRead === 0) throw changed(file);
      left -= bytesRead;
      yield* out.advance(bytesRead);
    }
    const extra = await handle.read(new Uint8Array(1), 0, 1, size);
    if (extra.bytesRead !== 0) throw changed(file);
  } finally {
    await handle.close();
  }
}

const changed = (file: string): CheckpointDirError =>
  new CheckpointDirError(`${file} changed while it was packed; commit checkpoints by renaming them into place`);

export interface UnpackOptions {
  /** The most pack bytes to read; a pack that declares or sends more is refused. */
  maxBytes: number;
  /** The most entries (files and directories). */
  maxFiles?: number;
  signal?: AbortSignal;
}

export interface UnpackResult {
  files: number;
  entries: number;
  /** Pack bytes read. */
  bytes: number;
  /** Hex SHA-256 of the pack bytes read. */
  sha256: string;
}

/**
 * Unpacks a pack into `targetDir`, which must not exist yet and is created. Refuses (with
 * CheckpointCorruptError) anything malformed or truncated, paths that are absolute, hold `.` or
 * `..`, repeat or come out of order, and (with CheckpointTooLargeError) packs over the limits. On
 * any failure it removes `targetDir` again.
 *
 * @example
 * const { sha256 } = await unpack(stream, "resume/.partial", { maxBytes: 8 * 2 ** 30 });
 */
export async function unpack(
  source: ByteSource,
  targetDir: string,
  { maxBytes, maxFiles = DEFAULT_MAX_FILES, signal }: UnpackOptions,
): Promise<UnpackResult> {
  signal?.throwIfAborted();
  try {
    await mkdir(targetDir, { mode: DIR_MODE });
  } catch (cause) {
    throw new UserError(`cannot create the unpack directory ${targetDir} (it must not exist yet)`, { cause });
  }
  const hash = createHash("sha256");
  const reader = new ByteReader(hashing(source, hash));
  try {
    const result = await unpackInto(reader, targetDir, maxBytes, maxFiles, signal);
    return { ...result, sha256: hash.digest("hex") };
  } catch (error) {
    await rm(targetDir, { recursive: true, force: true });
    throw error;
  } finally {
    await reader.close().catch(() => undefined);
  }
}

async function* hashing(source: ByteSource, hash: ReturnType<typeof createHash>): AsyncGenerator<Uint8Array> {
  for await (const chunk of source) {
    hash.update(chunk);
    yield chunk;
  }
}

const truncated = (): CheckpointCorruptError => new CheckpointCorruptError("the checkpoint pack is truncated");

async function unpackInto(
  reader: ByteReader,
  targetDir: string,
  maxBytes: number,
  maxFiles: number,
  signal: AbortSignal | undefined,
): Promise<Omit<UnpackResult, "sha256">> {
  const magic = await reader.readExactly(MAGIC.byteLength, truncated);
  if (!equalBytes(magic.subarray(0, 7), MAGIC.subarray(0, 7))) {
    throw new CheckpointCorruptError("not a Baton checkpoint pack");
  }
  if (magic[7] !== MAGIC[7]) throw new CheckpointCorruptError(`unsupported checkpoint pack version ${magic[7]}`);

  const dirs = new Set<string>([""]);
  let previous: Uint8Array[] = [];
  let entries = 0;
  let files = 0;
  let total = 0;
  for (;;) {
    signal?.throwIfAborted();
    const kind = (await reader.readExactly(1, truncated))[0]!;
    if (kind === KIND_END) {
      const end = await reader.readExactly(END_BYTES - 1, truncated);
      const view = new DataView(end.buffer, end.byteOffset, end.byteLength);
      if (view.getUint32(0) !== entries || view.getBigUint64(4) !== BigInt(total)) {
        throw new CheckpointCorruptError("the checkpoint pack's trailer does not match its entries");
      }
      if (!(await reader.atEnd())) throw new CheckpointCorruptError("the checkpoint pack has data after its end");
      return { files, entries, bytes: reader.position };
    }
    if (kind !== KIND_DIR && kind !== KIND_FILE) throw new CheckpointCorruptError(`unknown pack entry kind ${kind}`);

    const header = await reader.readExactly(ENTRY_HEADER_BYTES - 1, truncated);
    const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
    const mode = view.getUint16(0);
    const pathLength = view.getUint16(2);
    const bigSize = view.getBigUint64(4);
    if (pathLength === 0 || pathLength > MAX_PATH_BYTES) throw new CheckpointCorruptError("bad path length in pack");
    if (kind === KIND_DIR ? mode !== DIR_MODE || bigSize !== 0n : mode !== FILE_MODE && mode !== EXEC_MODE) {
      throw new CheckpointCorruptError("bad mode or size in pack entry");
    }
    if (++entries > maxFiles) {
      throw new CheckpointTooLargeError(`the checkpoint holds more than ${maxFiles} files and directories`);
    }
    // Refuse on the declared size, before reading a byte of it.
    if (BigInt(reader.position + pathLength + END_BYTES) + bigSize > BigInt(maxBytes)) {
      throw new CheckpointTooLargeError(`the checkpoint is larger than ${maxBytes} bytes`);
    }
    const size = Number(bigSize);

    const pathBytes = await reader.readExactly(pathLength, truncated);
    const components = parsePath(pathBytes);
    if (compareComponents(components, previous) <= 0) {
      throw new CheckpointCorruptError("pack entries are repeated or out of order");
    }
    previous = components;
    const names = components.map((c) => strictDecoder.decode(c));
    if (!dirs.has(names.slice(0, -1).join("/"))) {
      throw new CheckpointCorruptError("a pack entry's parent directory is not in the pack");
    }
    const destination = path.join(targetDir, ...names);

    if (kind === KIND_DIR) {
      await mkdir(destination, { mode });
      await chmodPath(destination, mode);
      dirs.add(names.join("/"));
      continue;
    }
    // O_EXCL: never write through anything already there (there is nothing: the dir is fresh).
    const handle = await open(
      destination,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      mode,
    );
    try {
      // Pieces as they arrive, written a MiB or so at a time (one writev), whatever their size.
      let batch: Uint8Array[] = [];
      let batched = 0;
      const write = async (): Promise<void> => {
        signal?.throwIfAborted();
        const { bytesWritten } = await handle.writev(batch);
        if (bytesWritten !== batched) throw new UserError(`short write to ${destination} (is the disk full?)`);
        batch = [];
        batched = 0;
      };
      for await (const piece of reader.pieces(size, FILE_READ_SIZE, truncated)) {
        batch.push(piece);
        batched += piece.byteLength;
        if (batched >= FILE_READ_SIZE || batch.length >= 64) await write();
      }
      if (batched > 0) await write();
      await handle.chmod(mode);
    } finally {
      await handle.close();
    }
    files++;
    total += size;
  }
}

async function chmodPath(target: string, mode: number): Promise<void> {
  const handle = await open(target, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    await handle.chmod(mode); // mkdir's mode is cut by the umask
  } finally {
    await handle.close();
  }
}

/** Splits a pack path into components, refusing empty, `.`, `..`, overlong and non-UTF-8 ones. */
function parsePath(bytes: Uint8Array): Uint8Array[] {
  const components: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i <= bytes.byteLength; i++) {
    if (i < bytes.byteLength && bytes[i] !== 0x2f) {
      if (bytes[i] === 0) throw new CheckpointCorruptError("a pack path holds a NUL byte");
      continue;
    }
    const component = bytes.subarray(start, i);
    const isDots = component.every((b) => b === 0x2e) && component.byteLength <= 2;
    if (component.byteLength === 0 || isDots || component.byteLength > MAX_NAME_BYTES) {
      throw new CheckpointCorruptError("a pack path is empty, absolute, or climbs out of its directory");
    }
    try {
      strictDecoder.decode(component);
    } catch (cause) {
      throw new CheckpointCorruptError("a pack path is not UTF-8", { cause });
    }
    components.push(component);
    start = i + 1;
  }
  return components;
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.byteLength, b.byteLength);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.byteLength - b.byteLength;
}

/** The order entries are packed in: component by component, a directory before its contents. */
function compareComponents(a: Uint8Array[], b: Uint8Array[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const c = compareBytes(a[i]!, b[i]!);
    if (c !== 0) return c;
  }
  return a.length - b.length;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return compareBytes(a, b) === 0;
}
