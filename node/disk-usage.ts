import { chmod, lstat, readdir } from "node:fs/promises";
import path from "node:path";

import { DISK_USAGE_INTERVAL_MS, DISK_USAGE_PAUSE_FACTOR } from "./constants.ts";

const errorCode = (error: unknown): string | undefined => (error as NodeJS.ErrnoException).code;

/** An entry removed while the walk went by: nothing to count. */
const vanished = (error: unknown): boolean => errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR";

/**
 * The entries of `dir`. A directory the job closed to its own user (it runs as the node's user when
 * the node is not root, and could hide its files from the walk so) is opened to that user again.
 */
async function entriesOf(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (error) {
    if (errorCode(error) !== "EACCES") throw error;
    await chmod(dir, 0o700);
    return readdir(dir);
  }
}

/**
 * Bytes that the files under `dir` (itself included) take on disk: their allocated blocks, as `du`
 * counts them, so a sparse file counts what it holds; a file with several links once. Symbolic links
 * are not followed, and entries that vanish during the walk are skipped. One file-system call at a
 * time, so a large tree costs the node one thread of its pool, not all of them.
 */
export async function diskUsage(dir: string): Promise<number> {
  const linked = new Set<string>();
  let total = 0;
  const pending = [dir];
  for (let current = pending.pop(); current !== undefined; current = pending.pop()) {
    let info;
    try {
      info = await lstat(current);
    } catch (error) {
      if (vanished(error)) continue;
      throw error;
    }
    if (info.nlink > 1 && !info.isDirectory()) {
      const key = `${info.dev}:${info.ino}`;
      if (linked.has(key)) continue;
      linked.add(key);
    }
    total += info.blocks * 512;
    if (!info.isDirectory()) continue;
    try {
      for (const name of await entriesOf(current)) pending.push(path.join(current, name));
    } catch (error) {
      if (!vanished(error)) throw error;
    }
  }
  return total;
}

export interface WatchDiskUsageParameters {
  dir: string;
  quotaBytes: number;
  /** Called once, with the usage measured, when it is over the quota; the watch then ends. */
  onOver: (usage: number) => void;
  /** A measurement that failed; the watch goes on. */
  onError: (error: unknown) => void;
  /** Default {@link DISK_USAGE_INTERVAL_MS}. */
  intervalMs?: number;
}

/**
 * Measures the usage of `dir` at once, then every `intervalMs` (and never more than a tenth of the
 * time: see {@link DISK_USAGE_PAUSE_FACTOR}) until it is over `quotaBytes` or `unwatch()` is called.
 *
 * @returns unwatch: ends the watch; a measurement under way is not reported.
 */
export function watchDiskUsage({
  dir,
  quotaBytes,
  onOver,
  onError,
  intervalMs = DISK_USAGE_INTERVAL_MS,
}: WatchDiskUsageParameters): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const measure = async (): Promise<void> => {
    const started = Date.now();
    try {
      const usage = await diskUsage(dir);
      if (stopped) return;
      if (usage > quotaBytes) {
        stopped = true;
        onOver(usage);
        return;
      }
    } catch (error) {
      if (stopped) return;
      onError(error);
    }
    timer = setTimeout(() => void measure(), Math.max(intervalMs, DISK_USAGE_PAUSE_FACTOR * (Date.now() - started)));
  };
  void measure();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
