import { execFile } from "node:child_process";
import { open, readdir, readFile, rm, rmdir, statfs } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";

import { ProviderFaultError } from "../sdk/errors.ts";
import type { Logger } from "../sdk/logger.ts";

/**
 * A work dir with a file system of its own, of the job's disk quota: a sparse file beside the work
 * dir, made ext4 and loop-mounted on it, so that the kernel refuses a write past the quota with
 * ENOSPC. Needs root (mount, loop devices) and e2fsprogs.
 */

const run = promisify(execFile);

/** A lease's file-system image, beside its work dir (out of the job's reach, like its log). */
export const DISK_IMAGE = "disk.ext4";

/**
 * A quota file system counts as full, when a job that failed is asked whether it ran out of room,
 * with less than this free: ext4 refuses a write with a few blocks still free (16 KiB seen on a
 * 1 GiB one, 272 KiB on a 64 MiB one, which has 1 KiB blocks and reserves more for its metadata).
 */
export const FULL_BELOW_BYTES = 2 ** 20;

/** Tries at an image size whose free space covers the quota (see {@link nextImageSize}); two are the rule. */
const MAX_SIZE_ATTEMPTS = 4;

/** Longest a mkfs, mount or umount may take: a few ms normally, seconds on a loaded disk. */
const TOOL_TIMEOUT_MS = 60_000;

/** How long a loop device may take to be freed after its umount, and how often that is checked. */
const LOOP_FREE_TIMEOUT_MS = 30_000;
const LOOP_POLL_MS = 50;

/**
 * Options of the file system: no blocks reserved for root (the job is never root, so a reserve
 * would only shrink its quota); `nosuid,nodev` at mount, so nothing the job writes there can raise
 * privileges; `noatime`, since reads need not cost writes.
 */
const MKFS_OPTIONS = ["-q", "-F", "-m", "0"];
const MOUNT_OPTIONS = "loop,nosuid,nodev,noatime";
/** The same, for one bound elsewhere (see {@link moveQuotaFileSystem}). */
const BIND_OPTIONS = "nosuid,nodev,noatime";

/** A quota file system: `image` mounted on `dir`, with `quotaBytes` free when it was made. */
export interface QuotaFileSystem {
  image: string;
  dir: string;
  quotaBytes: number;
}

/** The quota file system could not be made, mounted or removed. */
export class DiskQuotaError extends ProviderFaultError {
  override name = "DiskQuotaError";
}

/**
 * The size to try next for an image of `size` bytes whose file system left `free` bytes free, short
 * of `quotaBytes`: the file system's own structures (inode tables, journal, group descriptors) take
 * a share of the image that stays about the same as it grows, so the image grows by that share,
 * rounded up to whole MiB, plus one MiB.
 */
export function nextImageSize(size: number, free: number, quotaBytes: number): number {
  const mib = 2 ** 20;
  return Math.ceil((quotaBytes * size) / Math.max(free, 1) / mib) * mib + mib;
}

/**
 * The mount points in a `/proc/<pid>/mountinfo` text (its fifth field), with the kernel's octal
 * escapes (`\040` for a space, and tab, newline and backslash alike) undone.
 */
export function parseMountPoints(mountinfo: string): string[] {
  return mountinfo
    .split("\n")
    .filter(Boolean)
    .map((line) => line.split(" ")[4] ?? "")
    .map((field) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))));
}

/** The mount points of this process's mount namespace. */
export async function mountPoints(): Promise<string[]> {
  return parseMountPoints(await readFile("/proc/self/mountinfo", "utf8"));
}

/** Loop devices and the files behind them (`/sys/block/loopN/loop/backing_file`; ` (deleted)` once unlinked). */
export async function loopDevices(): Promise<{ device: string; backingFile: string }[]> {
  const names = (await readdir("/sys/block").catch(() => [])).filter((name) => /^loop\d+$/.test(name));
  const found = await Promise.all(
    names.map(async (name) => {
      const backing = await readFile(`/sys/block/${name}/loop/backing_file`, "utf8").catch(() => undefined);
      return backing === undefined ? [] : [{ device: `/dev/${name}`, backingFile: backing.trim() }];
    }),
  );
  return found.flat();
}

/** Bytes free to an unprivileged user in the file system holding `dir`. */
export async function freeBytes(dir: string): Promise<number> {
  const stats = await statfs(dir);
  return stats.bavail * stats.bsize;
}

/**
 * Whether the quota file system on `dir` is full, and of what: `bytes` when less than
 * {@link FULL_BELOW_BYTES} is free, `inodes` when no inode is (a job of many small files runs out
 * of those first); undefined otherwise.
 */
export async function fileSystemFull(dir: string): Promise<"bytes" | "inodes" | undefined> {
  const stats = await statfs(dir);
  if (stats.bavail * stats.bsize < FULL_BELOW_BYTES) return "bytes";
  if (stats.ffree === 0) return "inodes";
  return undefined;
}

async function tool(command: string, args: string[]): Promise<void> {
  try {
    await run(command, args, { timeout: TOOL_TIMEOUT_MS });
  } catch (cause) {
    const stderr = (cause as { stderr?: string }).stderr?.trim();
    throw new DiskQuotaError(`${command} ${args.join(" ")} failed`, { cause, details: stderr || undefined });
  }
}

/**
 * Makes `image` a sparse ext4 file system in which an unprivileged user has at least `quotaBytes`
 * free, and mounts it on `dir` (an empty directory). The image is made at the quota's size first;
 * the file system takes part of it for itself, so it is made again, larger, until what is left
 * covers the quota (twice as a rule: see {@link nextImageSize}). The mount's `lost+found` is
 * removed: the job's work dir holds only what it and the node put there.
 *
 * @throws {DiskQuotaError} when a tool fails; nothing is left mounted then.
 */
export async function mountQuotaFileSystem(image: string, dir: string, quotaBytes: number): Promise<void> {
  let size = quotaBytes;
  for (let attempt = 1; ; attempt++) {
    const file = await open(image, "w", 0o600);
    try {
      await file.truncate(size);
    } finally {
      await file.close();
    }
    await tool("mkfs.ext4", [...MKFS_OPTIONS, image]);
    await tool("mount", ["-t", "ext4", "-o", MOUNT_OPTIONS, image, dir]);
    let free: number;
    try {
      free = await freeBytes(dir);
    } catch (error) {
      await tool("umount", [dir]);
      throw error;
    }
    if (free >= quotaBytes) break;
    await tool("umount", [dir]);
    await detachLoops(image, LOOP_FREE_TIMEOUT_MS);
    if (attempt === MAX_SIZE_ATTEMPTS) {
      throw new DiskQuotaError(`no image size gives a file system with ${quotaBytes} bytes free`, {
        details: `the last, ${size} bytes, left ${free}`,
      });
    }
    size = nextImageSize(size, free, quotaBytes);
  }
  await rmdir(path.join(dir, "lost+found"));
}

/** Mounts an existing quota file system `image` on `dir` again (after the machine restarted). */
export async function remountQuotaFileSystem(image: string, dir: string): Promise<void> {
  await tool("mount", ["-t", "ext4", "-o", MOUNT_OPTIONS, image, dir]);
}

/**
 * Moves the quota file system mounted on `from` to `to` (an empty directory): bound on `to`, then
 * unmounted from `from`, in a few ms, with nothing written back (a umount and a mount again would
 * first write out all it holds that is not on disk yet). Not `mount --move`, which is refused where
 * the mount above `from` is shared, as systemd makes `/`. Its image stays where it is.
 *
 * @throws {DiskQuotaError} when a tool fails; the file system is still mounted on `from` then.
 */
export async function moveQuotaFileSystem(from: string, to: string): Promise<void> {
  await tool("mount", ["--bind", "-o", BIND_OPTIONS, from, to]);
  try {
    await tool("umount", [from]);
  } catch (error) {
    await tool("umount", [to]).catch(() => undefined);
    throw error;
  }
}

/**
 * Unmounts the quota file system on `dir` (its loop device goes with it: mount(8) sets it to clear
 * itself), detaches any loop device still backed by `image` (a mount killed half-way leaves one) and
 * waits until the kernel has freed them, then deletes `image`: once it resolves, nothing of the file
 * system is left. A file system still busy is unmounted lazily, said in the log: it leaves the tree
 * at once, and the kernel frees it, and its loop device, once the last file on it is closed, which
 * is not waited for.
 */
export async function removeQuotaFileSystem(image: string, dir: string, log: Logger): Promise<void> {
  let lazily = false;
  if ((await mountPoints()).includes(dir)) {
    try {
      await tool("umount", [dir]);
    } catch (error) {
      if (!/busy/i.test((error as DiskQuotaError).details ?? "")) throw error;
      log.warn("a work dir's file system is busy: unmounted lazily", { dir });
      await tool("umount", ["--lazy", dir]);
      lazily = true;
    }
  }
  await detachLoops(image, lazily ? 0 : LOOP_FREE_TIMEOUT_MS);
  await rm(image, { force: true });
}

/**
 * Detaches the loop devices backed by `image`, and waits up to `waitMs` until none is left. The
 * kernel frees an auto-cleared loop device some time after its umount, not at once, and a detach
 * asked while the device is still open only marks it to clear itself: a file system made again in
 * the image and mounted meanwhile went through the old device, at the image's old size, and the
 * mount was refused (a start failed so under load).
 */
async function detachLoops(image: string, waitMs: number): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const held = (await loopDevices()).filter(
      (loop) => loop.backingFile === image || loop.backingFile === `${image} (deleted)`,
    );
    if (held.length === 0) return;
    for (const loop of held) {
      // Detached meanwhile (the kernel frees an auto-cleared loop device once unmounted): done.
      await tool("losetup", ["--detach", loop.device]).catch((error: unknown) => {
        if (!/No such device/i.test((error as DiskQuotaError).details ?? "")) throw error;
      });
    }
    if (waitMs === 0) return;
    if (Date.now() >= deadline) {
      throw new DiskQuotaError(`the loop device of ${image} was not freed in ${waitMs / 1000} s`, {
        details: held.map((loop) => loop.device).join(", "),
      });
    }
    await sleep(LOOP_POLL_MS);
  }
}
