import { cp, mkdir, realpath, rename, rm } from "node:fs/promises";
import path from "node:path";

import type { Logger } from "../sdk/logger.ts";
import { DISK_IMAGE, mountQuotaFileSystem, removeQuotaFileSystem, type QuotaFileSystem } from "./disk-quota.ts";
import { releaseQuotaFileSystems, type DiskQuotaEnforcement } from "./work-dirs.ts";

/** A checkpoint unpacked ahead, given up for a resume (see {@link UnpackedCheckpoints.claim}). */
export interface ClaimedCheckpoint {
  /** Where its files are: a directory. A work dir that takes its file system whole changes it. */
  files: string;
  /** The quota file system it was unpacked in, in `mount` mode; undefined once a work dir took it. */
  readonly fileSystem: QuotaFileSystem | undefined;
  /** Its file system was moved onto `dir` (`WorkDirs.adopt`): its files are there, and it is no longer its own. */
  movedTo(dir: string): void;
  /**
   * Moves its files to `target` (which must not exist): renamed, or copied across file systems;
   * false, logged, when that failed (then the caller restores it as it would have anyway).
   */
  moveTo(target: string): Promise<boolean>;
  /**
   * Removes what is left of it: its files where they were not moved, its file system unless a work
   * dir took it. Once, however often it is called.
   */
  discard(): Promise<void>;
}

interface Unpacked {
  cid: string;
  sha256: string;
  /** Its own directory under the root: its files (`resume/`), or its file system's image and mount point. */
  dir: string;
  fileSystem: QuotaFileSystem | undefined;
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
 * What an unpacked checkpoint's file system is mounted on, beside its image (`DISK_IMAGE`) in its
 * numbered directory: named as a lease's work dir is, so `releaseQuotaFileSystems` finds it.
 */
const MOUNT_POINT = "work";

/**
 * Checkpoints that holders' leases given the job's key (`replication.unpack`) keep decrypted and
 * unpacked, one per lease (its newest), so that a job resumed on this node from one (a warm
 * standby) takes its files as they are: no decryption, no unpacking, whatever the checkpoint's size.
 * Each was unpacked by `restoreCheckpoint`, so it matched its announced digest; it is taken only for
 * a resume that names the same CID and digest, and only once.
 *
 * Where work dirs are quota file systems (`mount`), each is unpacked in a quota file system of its
 * own, made at its holder lease's quota: a job with the same quota (a holder's is the job's unless
 * `replication.diskGiB` says otherwise) takes that file system as its work dir, and its files need
 * not be copied into a new one (2 s per GiB here). Elsewhere its files are renamed into the work dir.
 *
 * Kept in memory: the node's start empties the directory (a restarted node unpacks again with its
 * lease's next hold), so nothing half-written is ever taken.
 */
export class UnpackedCheckpoints {
  #root: string;
  readonly #enforcement: DiskQuotaEnforcement;
  readonly #log: Logger;
  readonly #byLease = new Map<bigint, Unpacked>();
  #counter = 0;

  constructor(root: string, enforcement: DiskQuotaEnforcement, log: Logger) {
    this.#root = root;
    this.#enforcement = enforcement;
    this.#log = log;
  }

  /** Empties the directory (what a previous run of the node left, file systems unmounted first), and makes it. */
  async open(): Promise<void> {
    await mkdir(this.#root, { recursive: true, mode: 0o700 });
    // Mount points are compared with the kernel's mount table, which has the real path.
    this.#root = await realpath(this.#root);
    // Its file systems are named as lease work dirs are (`<n>/work`, `<n>/disk.ext4`).
    await releaseQuotaFileSystems(this.#root, this.#log);
    await rm(this.#root, { recursive: true, force: true });
    await mkdir(this.#root, { recursive: true, mode: 0o700 });
  }

  /**
   * Unpacks `cid` for `leaseId` with `unpack` (given a directory that must not exist yet, and a
   * signal that says to stop), in place of what the lease had unpacked before: a lease has one at a
   * time, so an unpacking under way for it is stopped, and what it had goes first. A resume of `cid`
   * that comes meanwhile waits for it. Rejects as `unpack` does. The one the lease has unpacked (or
   * is unpacking) already is not unpacked again (a hold named twice). `expectedBytes` counts as its
   * size (see {@link bytes}) until it is unpacked; `quotaBytes` is the lease's disk quota, the size
   * of its file system in `mount` mode.
   */
  add(
    leaseId: bigint,
    {
      cid,
      sha256,
      expectedBytes,
      quotaBytes,
    }: { cid: string; sha256: string; expectedBytes: number; quotaBytes: number },
    unpack: (dir: string, signal: AbortSignal) => Promise<{ bytes: number }>,
  ): Promise<void> {
    const previous = this.#byLease.get(leaseId);
    if (previous?.cid === cid && previous.sha256 === sha256) return previous.done;
    previous?.stop.abort();
    const dir = path.join(this.#root, String(++this.#counter));
    const fileSystem =
      this.#enforcement === "mount"
        ? { image: path.join(dir, DISK_IMAGE), dir: path.join(dir, MOUNT_POINT), quotaBytes }
        : undefined;
    const stop = new AbortController();
    const unpacking = (async () => {
      if (previous) await this.#remove(previous);
      stop.signal.throwIfAborted();
      try {
        await mkdir(fileSystem?.dir ?? dir, { recursive: true, mode: 0o700 });
        if (fileSystem) await mountQuotaFileSystem(fileSystem.image, fileSystem.dir, quotaBytes);
        stop.signal.throwIfAborted();
        return (await unpack(filesOf(dir, fileSystem), stop.signal)).bytes;
      } catch (error) {
        await this.#removeNow(dir, fileSystem).catch((cleanup: unknown) =>
          this.#log.warn("a failed unpacking not removed", { dir, error: cleanup }),
        );
        throw error;
      }
    })();
    const entry: Unpacked = {
      cid,
      sha256,
      dir,
      fileSystem,
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
   * Gives up the unpacked `cid` for a resume, once it is unpacked, when one with that digest is
   * here; undefined when none is (then the caller restores it as it would have anyway). The caller
   * moves its files (or takes its file system as a work dir) and discards what is left.
   */
  async claim(cid: string, sha256: string): Promise<ClaimedCheckpoint | undefined> {
    const found = [...this.#byLease].find(([, u]) => u.cid === cid && u.sha256 === sha256);
    if (!found) return undefined;
    const [leaseId, entry] = found;
    if (!(await entry.ready) || this.#byLease.get(leaseId) !== entry) return undefined;
    this.#byLease.delete(leaseId);
    const log = this.#log;
    let discarding: Promise<void> | undefined;
    const claimed: ClaimedCheckpoint = {
      files: filesOf(entry.dir, entry.fileSystem),
      get fileSystem() {
        return entry.fileSystem;
      },
      movedTo: (dir) => {
        claimed.files = path.join(dir, path.relative(entry.fileSystem?.dir ?? dir, claimed.files));
        entry.fileSystem = undefined;
      },
      moveTo: async (target) => {
        try {
          await move(claimed.files, target);
          claimed.files = target;
          return true;
        } catch (error) {
          log.warn("unpacked checkpoint not taken: it is restored as any other", { cid, error });
          return false;
        }
      },
      // A work dir that took the file system took its files with it: only its directory is left then.
      discard: () => (discarding ??= this.#remove(entry)),
    };
    return claimed;
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

  /** Removes an entry once its unpacking is over. */
  async #remove(entry: Unpacked): Promise<void> {
    await entry.ready;
    await this.#removeNow(entry.dir, entry.fileSystem);
  }

  async #removeNow(dir: string, fileSystem: QuotaFileSystem | undefined): Promise<void> {
    if (fileSystem) await removeQuotaFileSystem(fileSystem.image, fileSystem.dir, this.#log);
    await rm(dir, { recursive: true, force: true });
  }
}

/** Where an unpacked checkpoint's files are: `resume/` in its file system, or in its directory. */
function filesOf(dir: string, fileSystem: QuotaFileSystem | undefined): string {
  return path.join(fileSystem?.dir ?? dir, "resume");
}

/** Moves `from` to `to` (which must not exist): renamed, or copied across file systems. */
async function move(from: string, to: string): Promise<void> {
  if (from === to) return;
  try {
    await rename(from, to);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EXDEV") throw error;
    // The work dir is a file system of its own (its disk quota mounted on it), not this one's.
    try {
      await cp(from, to, { recursive: true, verbatimSymlinks: true, errorOnExist: true, force: false });
    } catch (copyError) {
      await rm(to, { recursive: true, force: true });
      throw copyError;
    }
  }
}
