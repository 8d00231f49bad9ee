import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { DatabaseSync } from "../sdk/utils/sqlite.ts";

import { DataDirInUseError } from "../sdk/errors.ts";

/** The lock file a running node holds in its data dir, and the file beside it that names the holder. */
export const LOCK_FILES = { lock: "node.lock", pid: "node.pid" } as const;

/** SQLite's result code for a lock another connection holds. */
const SQLITE_BUSY = 5;

/** The data dir, held by this process until `release()`. */
export interface DataDirLock {
  /** Lets the data dir go (a second call does nothing). */
  release(): void;
}

/**
 * Takes the data dir for this process, so that no second node runs on it: two would sign quotes
 * from one nonce counter, run each lease's job twice and race each other's transactions.
 *
 * The lock is an SQLite file held in exclusive locking mode, that is a POSIX lock, which the kernel
 * drops when its process ends, however it ends (SIGKILL, the OOM killer, a crash). A lock left by a
 * dead node is therefore already free when the next one starts, and a pid recycled since then can
 * never keep a node from starting, as it would with a pid file alone. (Node has no `flock()`, and
 * `node:sqlite` is built in.) The holder writes its pid beside the lock, for the refusal to name it.
 *
 * @throws {DataDirInUseError} when another process holds the lock.
 * @example
 * const lock = lockDataDir(".baton/provider");
 * try { … } finally { lock.release(); }
 */
export function lockDataDir(dataDir: string): DataDirLock {
  const db = new DatabaseSync(path.join(dataDir, LOCK_FILES.lock));
  try {
    // No busy timeout: a held lock belongs to a running node, which will not let go soon.
    db.exec("PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE");
    // In exclusive mode the lock a write transaction takes is kept until the connection closes.
    db.exec("BEGIN EXCLUSIVE; COMMIT");
  } catch (error) {
    db.close();
    if ((error as { errcode?: number }).errcode !== SQLITE_BUSY) throw error;
    throw new DataDirInUseError(
      `the data dir ${dataDir} is in use by another baton provider (${holderOf(dataDir)}); stop it first`,
    );
  }
  const pidFile = path.join(dataDir, LOCK_FILES.pid);
  // Written whole, then renamed into place: a refused start never reads half a pid.
  writeFileSync(`${pidFile}.tmp`, `${process.pid}\n`);
  renameSync(`${pidFile}.tmp`, pidFile);
  let held = true;
  return {
    release() {
      if (!held) return;
      held = false;
      rmSync(pidFile, { force: true });
      db.close();
    },
  };
}

/** "pid N" of the lock's holder, as it wrote it. */
function holderOf(dataDir: string): string {
  try {
    const pid = Number.parseInt(readFileSync(path.join(dataDir, LOCK_FILES.pid), "utf8"), 10);
    // The holder writes its pid just after taking the lock: a start that loses the race may find none yet.
    return Number.isInteger(pid) && pid > 0 ? `pid ${pid}` : "pid not known yet";
  } catch {
    return "pid not known yet";
  }
}
