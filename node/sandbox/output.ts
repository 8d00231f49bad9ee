import { closeSync, constants, fstatSync, openSync, renameSync, writeSync } from "node:fs";

/**
 * Splits a byte stream into lines of at most `maxLineBytes` bytes. A longer line keeps its first
 * `maxLineBytes` bytes and says how many it dropped; the rest is never buffered, so a job that
 * writes gigabytes without a newline costs at most `maxLineBytes` of memory. A trailing `\r` is
 * removed (CRLF output); bytes are decoded as UTF-8 once a line is complete.
 */
export class LineSplitter {
  readonly #maxLineBytes: number;
  readonly #onLine: (line: string) => void;
  #parts: Buffer[] = [];
  #bytes = 0;
  #dropped = 0;

  constructor(maxLineBytes: number, onLine: (line: string) => void) {
    this.#maxLineBytes = maxLineBytes;
    this.#onLine = onLine;
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(0x0a, start);
      const end = newline === -1 ? chunk.length : newline;
      this.#keep(chunk.subarray(start, end));
      if (newline === -1) break;
      this.#emit();
      start = newline + 1;
    }
  }

  /** Emits what is left of an unterminated last line. */
  end(): void {
    if (this.#bytes > 0 || this.#dropped > 0) this.#emit();
  }

  #keep(segment: Buffer): void {
    const room = this.#maxLineBytes - this.#bytes;
    if (segment.length <= room) {
      if (segment.length > 0) this.#parts.push(Buffer.from(segment));
      this.#bytes += segment.length;
      return;
    }
    if (room > 0) this.#parts.push(Buffer.from(segment.subarray(0, room)));
    this.#bytes += Math.max(room, 0);
    this.#dropped += segment.length - Math.max(room, 0);
  }

  #emit(): void {
    let line = Buffer.concat(this.#parts, this.#bytes).toString("utf8");
    if (this.#dropped === 0 && line.endsWith("\r")) line = line.slice(0, -1);
    if (this.#dropped > 0) line += ` [… ${this.#dropped} bytes dropped]`;
    this.#parts = [];
    this.#bytes = 0;
    this.#dropped = 0;
    this.#onLine(line);
  }
}

/**
 * An append-only log file that never grows past `maxBytes` on disk: when the live file would pass
 * half of it, it becomes `<path>.1` (replacing the previous one) and a new live file starts. So at
 * most two files exist, each at most `maxBytes / 2`, and the newest output is always kept.
 *
 * Writes are synchronous and batched by the caller (one `flush` per chunk read from the job): the
 * file then holds every line that was read by the time the job's exit is reported.
 */
export class BoundedLog {
  readonly path: string;
  readonly #half: number;
  #fd: number | undefined;
  #size: number;
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  constructor(path: string, maxBytes: number) {
    this.path = path;
    this.#half = Math.max(1, Math.floor(maxBytes / 2));
    this.#fd = BoundedLog.#open(path);
    // A restarted job appends to the log it already had.
    this.#size = fstatSync(this.#fd).size;
  }

  static #open(path: string): number {
    // O_NOFOLLOW: the log lives outside the job's reach, but a symlink there is never followed.
    return openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_NOFOLLOW, 0o640);
  }

  /** Queues one entry (a line with its newline); written at the next `flush`. */
  append(text: string): void {
    let entry = Buffer.from(text);
    if (entry.length > this.#half) entry = entry.subarray(0, this.#half);
    if (this.#size + this.#pendingBytes + entry.length > this.#half) {
      this.flush();
      this.#rotate();
    }
    this.#pending.push(entry);
    this.#pendingBytes += entry.length;
  }

  flush(): void {
    if (this.#fd === undefined || this.#pendingBytes === 0) return;
    const data = Buffer.concat(this.#pending, this.#pendingBytes);
    this.#pending = [];
    this.#pendingBytes = 0;
    let offset = 0;
    while (offset < data.length) offset += writeSync(this.#fd, data, offset);
    this.#size += data.length;
  }

  #rotate(): void {
    if (this.#fd === undefined || this.#size === 0) return;
    closeSync(this.#fd);
    this.#fd = undefined;
    renameSync(this.path, `${this.path}.1`);
    this.#fd = BoundedLog.#open(this.path);
    this.#size = 0;
  }

  close(): void {
    try {
      this.flush();
    } finally {
      if (this.#fd !== undefined) closeSync(this.#fd);
      this.#fd = undefined;
    }
  }
}
