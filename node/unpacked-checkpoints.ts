import { cp, mkdir, rename, rm } from "node:fs/promises";
import path from "node:path";

import type { Logger } from "../sdk/logger.ts";

interface Unpacked {
  cid: string;
  sha256: string;
  dir: string;
  /** Its unpacking. */
  done: Promise<void>;
  /** Its plaintext bytes once unpacked; until then, what it is expected to take. */
  bytes: number;
  /** Stops its unpacking (a newer one replaces it, or its lease ended). */
  stop: AbortController;
  /** Whether it was unpacked: false once its unpacking failed (it is forgotten then). */
  ready: Promise<boolean>;
}

/**
 * Checkpoints that holders' leases given the job's key (`replication.unpack`) keep decrypted and
 * unpacked, one per lease (its newest), so that a job resumed on this node from one (a warm
 * standby) takes its files as they are: no decryption, no unpacking, whatever the checkpoint's size.
 * Each was unpacked by `restoreCheckpoint`, so it matched its announced digest; it is taken only for
 * a resume that names the same CID and digest, and only once (it moves into the job's work dir).
 *
 * Kept in memory: the node's start empties the directory (a restarted node unpacks again with its
 * lease's next hold), so nothing half-written is ever taken.
 */
export class UnpackedCheckpoints {
  readonly #root: string;
  readonly #log: Logger;
  readonly #byLease = new Map<bigint, Unpacked>();
  #counter = 0;

  constructor(root: string, log: Logger) {
    this.#root = root;
    this.#log = log;
  }

  /** Empties the directory (what a previous run of the node left), and makes it. */
  async open(): Promise<void> {
    await rm(this.#root, { recursive: true, force: true });
    await mkdir(this.#root, { recursive: true, mode: 0o700 });
  }

  /**
   * Unpacks `cid` for `leaseId` with `unpack` (given a directory that must not exist yet, and a
   * signal that says to stop), in place of what the lease had unpacked before: a lease has one at a
   * time, so an unpacking under way for it is stopped, and what it had goes first. A resume of `cid`
   * that comes meanwhile waits for it. Rejects as `unpack` does. The one the lease has unpacked (or
   * is unpacking) already is not unpacked again (a hold named twice). `expectedBytes` counts as its
   * size (see {@link bytes}) until it is unpacked.
   */
  add(
    leaseId: bigint,
    { cid, sha256, expectedBytes }: { cid: string; sha256: string; expectedBytes: number },
    unpack: (dir: string, signal: AbortSignal) => Promise<{ bytes: number }>,
  ): Promise<void> {
    const previous = this.#byLease.get(leaseId);
    if (previous?.cid === cid && previous.sha256 === sha256) return previous.done;
    previous?.stop.abort();
    const dir = path.join(this.#root, `${leaseId}-${++this.#counter}`);
    const stop = new AbortController();
    const unpacking = (async () => {
      if (previous) await this.#remove(previous);
      await mkdir(this.#root, { recursive: true, mode: 0o700 });
      stop.signal.throwIfAborted();
      return (await unpack(dir, stop.signal)).bytes;
    })();
    const entry: Unpacked = {
      cid,
      sha256,
      dir,
      bytes: expectedBytes,
      stop,
      done: unpacking.then(() => undefined),
      ready: unpacking.then(
        () => true,
        () => false,
      ),
    };
    void unpacking.then(
      (bytes) => (entry.bytes = bytes),
      () => this.#byLease.get(leaseId) === entry && this.#byLease.delete(leaseId),
    );
    this.#byLease.set(leaseId, entry);
    return entry.done;
  }

  /**
   * Moves the unpacked `cid` to `target` (which must not exist) when one with that digest is here,
   * once it is unpacked; false when none is (then the caller restores it as it would have anyway).
   */
  async take(cid: string, sha256: string, target: string): Promise<boolean> {
    const found = [...this.#byLease].find(([, u]) => u.cid === cid && u.sha256 === sha256);
    if (!found) return false;
    const [leaseId, entry] = found;
    if (!(await entry.ready) || this.#byLease.get(leaseId) !== entry) return false;
    this.#byLease.delete(leaseId);
    try {
      await move(entry.dir, target);
      return true;
    } catch (error) {
      this.#log.warn("unpacked checkpoint not taken: it is restored as any other", { cid, error });
      return false;
    } finally {
      await rm(entry.dir, { recursive: true, force: true });
    }
  }

  /** The bytes `leaseId` has unpacked, or is unpacking (as expected); 0 while it has none. */
  bytes(leaseId: bigint): number {
    return this.#byLease.get(leaseId)?.bytes ?? 0;
  }

  /** Removes what `leaseId` has unpacked (its lease ended), its unpacking under way stopped first. */
  async release(leaseId: bigint): Promise<void> {
    const entry = this.#byLease.get(leaseId);
    if (!entry) return;
    this.#byLease.delete(leaseId);
    entry.stop.abort();
    await this.#remove(entry);
  }

  async #remove(entry: Unpacked): Promise<void> {
    await entry.ready;
    await rm(entry.dir, { recursive: true, force: true });
  }
}

/** Moves `from` to `to` (which must not exist): renamed, or copied across file systems. */
async function move(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EXDEV") throw error;
    // The work dir is a file system of its own (its disk quota mounted on it).
    try {
      await cp(from, to, { recursive: true, verbatimSymlinks: true, errorOnExist: true, force: false });
    } catch (copyError) {
      await rm(to, { recursive: true, force: true });
      throw copyError;
    }
  }
}
