import { existsSync, lchownSync, lstatSync, mkdirSync, readdirSync, type Stats } from "node:fs";
import { lchown, lstat, mkdir, readdir, realpath, rename, rm } from "node:fs/promises";
import path from "node:path";

import { UserError } from "../sdk/errors.ts";
import { formatDiskQuota } from "../sdk/job-spec.ts";
import type { Logger } from "../sdk/logger.ts";
import {
  DISK_IMAGE,
  fileSystemFull,
  freeBytes,
  loopDevices,
  mountPoints,
  mountQuotaFileSystem,
  moveQuotaFileSystem,
  remountQuotaFileSystem,
  removeQuotaFileSystem,
  type QuotaFileSystem,
} from "./disk-quota.ts";
import { diskUsage, watchDiskUsage } from "./disk-usage.ts";
import { resolveExecutable } from "./sandbox/detect.ts";
import { JOB_DIRS, type JobExit, type JobProcess } from "./sandbox/runner.ts";

/**
 * How a job's disk quota holds. `mount`: its work dir is a file system of the quota's size (see
 * `disk-quota.ts`), so a write past it fails with ENOSPC. `watch`: the node measures the work dir's
 * usage every few seconds and stops the job once it is over (a job writing fast goes that much over
 * first).
 */
export type DiskQuotaEnforcement = "mount" | "watch";

/** A lease's work dir, and how its quota holds. */
export interface WorkDir {
  /** The job's dir: `root`, or on a batch lease its task dir ({@link WorkDirs.taskDir}). */
  path: string;
  /** The lease's work dir, which the quota covers: the file system mounted on it, or the dir watched. */
  root: string;
  quotaBytes: number;
  enforcement: DiskQuotaEnforcement;
}

/** How a work dir went over its quota: too many bytes, or (a file system of its own) too many files. */
export type QuotaExcess = "bytes" | "inodes";

/** What the tenant of a job that went over its quota is told beside the reason `disk` (short: the result's reason holds 64 characters). */
export function quotaExcessDetail(quotaBytes: number, excess: QuotaExcess): string {
  const quota = formatDiskQuota(quotaBytes);
  return excess === "bytes"
    ? `the job used more than its ${quota} disk quota`
    : `the job ran out of inodes in its ${quota} disk quota`;
}

export interface WorkDirs {
  /** How the quotas of new work dirs hold on this node. */
  readonly enforcement: DiskQuotaEnforcement;
  /** Where a lease's work dir is: `<jobsDir>/<lease>/work`, the jobs dir's real path. */
  pathOf(leaseId: bigint): string;
  /**
   * Makes a lease's work dir, empty, with its quota: in `mount` mode a
   * file system of its own is mounted on it. What an earlier start of the lease left is removed first.
   */
  create(leaseId: bigint, quotaBytes: number): Promise<WorkDir>;
  /**
   * Makes a lease's work dir of a quota file system made at its quota (a checkpoint unpacked in it
   * ahead, see `UnpackedCheckpoints`; `mount` mode): moved onto the work dir with what it holds, its
   * image beside it, as `create` would have put them, so a resume from it copies nothing. What an
   * earlier start of the lease left is removed first.
   *
   * @throws {DiskQuotaError} when it cannot be moved: it is still where it was then, unless it was
   *   moved and its image was not (then it is gone, as the work dir is).
   */
  adopt(leaseId: bigint, fileSystem: QuotaFileSystem): Promise<WorkDir>;
  /**
   * A batch lease's work dir for its next task when no sandbox was set up for it ahead (see
   * {@link WorkDirs.taskDir}): the one this node made for the lease (by
   * {@link WorkDirs.create}) at this quota, emptied, its file system kept; made afresh as by
   * `create` when there is none, it is no longer mounted, or emptying it did not give the whole
   * quota back (a file its last task left open keeps its blocks). The next task sees none of the
   * last one's files, and costs no mkfs or mount (two of each, and an umount: ≈ 0.2 s of the
   * ≈ 0.5 s a 50 ms task took on a lease, in `bench:batch`).
   */
  renew(leaseId: bigint, quotaBytes: number): Promise<WorkDir>;
  /**
   * A lease's work dir as the node's previous run left it, for its job to run again there: its file
   * system still mounted (or mounted again, after a reboot); a work dir without one (made by a node
   * that watched its quotas) is watched.
   */
  reopen(leaseId: bigint, quotaBytes: number): Promise<WorkDir>;
  /**
   * A batch lease's task dir in its work dir, where its tasks run one after another (in one
   * sandbox, see `PrepareSandboxOptions.reusable`), emptied ({@link WorkDirs.emptyTaskDir}) once a
   * task's output is published. Inside the lease's quota, beside nothing else the node keeps there.
   */
  taskDir(dir: WorkDir): WorkDir;
  /**
   * Empties a task dir whose task is over, but for the job's dirs (`checkpoints/`, `resume/`,
   * `output/`, `tmp/`), themselves emptied: a sandbox binds `tmp/` at /tmp, and the next task needs
   * them all. An `output/` moved away (to be published beside the task dir) is made again, as the
   * runner makes it. Resolves to whether they are as the runner made them (else the next task's are
   * made again). Never rejects: what could not be removed is logged, and goes with the lease's work dir.
   */
  emptyTaskDir(dir: WorkDir): Promise<boolean>;
  /** Whether the work dir went over its quota: its file system is full, or its usage is over. */
  overQuota(dir: WorkDir): Promise<QuotaExcess | undefined>;
  /**
   * The job's exit, with the reason `disk` and its detail when it went over its work dir's quota:
   * in `watch` mode it is stopped as soon as its usage is seen over; in either mode, a job that
   * failed (non-zero exit, or a signal) with its work dir over its quota (in `mount` mode: its file
   * system full, so a write failed with ENOSPC) ran out of disk, a best guess as for `memory`.
   */
  supervise(job: JobProcess, dir: WorkDir): Promise<JobExit>;
  /**
   * Removes a lease's work dir: its file system unmounted, its loop device freed, its image
   * deleted, then the dir itself. The job's log, beside it, stays. Never rejects: what could not be
   * removed is logged, and {@link WorkDirs.prune} tries again at the next start.
   */
  remove(leaseId: bigint): Promise<void>;
  /**
   * Removes the work dir of every lease under the jobs dir that `ended` says is over (at start: a
   * node killed by SIGKILL removed none of its own). Directories that are not a lease's are left.
   */
  prune(ended: (leaseId: bigint) => boolean): Promise<void>;
}

export interface OpenWorkDirsParameters {
  jobsDir: string;
  /** The config's `diskQuota`. */
  diskQuota: "auto" | DiskQuotaEnforcement;
  log: Logger;
}

/**
 * How quotas hold on this machine: `mount` where the node runs as root and has loop devices,
 * mkfs.ext4, mount, umount and losetup; `watch` otherwise, unless the config says.
 *
 * @throws {UserError} when `mount` is asked for where it cannot work.
 */
export async function quotaEnforcement(asked: OpenWorkDirsParameters["diskQuota"]): Promise<DiskQuotaEnforcement> {
  if (asked === "watch") return "watch";
  const missing = [];
  if (process.getuid?.() !== 0) missing.push("root");
  if (!existsSync("/dev/loop-control")) missing.push("loop devices (/dev/loop-control)");
  for (const tool of ["mkfs.ext4", "mount", "umount", "losetup"]) {
    if ((await resolveExecutable(tool)) === undefined) missing.push(tool);
  }
  if (missing.length === 0) return "mount";
  if (asked === "auto") return "watch";
  throw new UserError(`diskQuota is mount, but this node lacks ${missing.join(", ")}`, {
    details:
      "a quota file system is loop-mounted on each work dir: run the node as root with e2fsprogs and util-linux, or set diskQuota: watch",
  });
}

/** Lease directories under the jobs dir are named by lease id. */
const LEASE_DIR = /^\d+$/;

/** The lease work dirs under `jobsDir` (see {@link WorkDirs}), their quotas held as `diskQuota` says. */
export async function openWorkDirs({ jobsDir, diskQuota, log }: OpenWorkDirsParameters): Promise<WorkDirs> {
  const enforcement = await quotaEnforcement(diskQuota);
  // Mount points are compared with the kernel's mount table, which has the real path.
  const root = await realpath(jobsDir);
  log.info("job disk quotas", {
    enforcement,
    ...(diskQuota === "auto" && enforcement === "watch" ? { why: "not root, or no loop devices or e2fsprogs" } : {}),
  });
  const leaseDir = (leaseId: bigint): string => path.join(root, leaseId.toString());
  const paths = (leaseId: bigint) => ({
    work: path.join(leaseDir(leaseId), "work"),
    image: path.join(leaseDir(leaseId), DISK_IMAGE),
  });

  /** One change at a time per lease: a removal never runs into a start that makes the work dir again. */
  const queues = new Map<bigint, Promise<unknown>>();
  const serialized = <T>(leaseId: bigint, task: () => Promise<T>): Promise<T> => {
    const next = (queues.get(leaseId) ?? Promise.resolve()).then(task, task);
    const settled = next.catch(() => undefined);
    queues.set(leaseId, settled);
    void settled.then(() => queues.get(leaseId) === settled && queues.delete(leaseId));
    return next;
  };

  /** The work dirs this node made (and has not removed since), by lease: what {@link WorkDirs.renew} may reuse. */
  const made = new Map<bigint, WorkDir>();

  const removeNow = async (leaseId: bigint): Promise<void> => {
    made.delete(leaseId);
    const { work, image } = paths(leaseId);
    await removeQuotaFileSystem(image, work, log);
    await rm(work, { recursive: true, force: true });
  };

  const remove = (leaseId: bigint): Promise<void> =>
    serialized(leaseId, () => removeNow(leaseId)).catch((error: unknown) =>
      log.warn("work dir not removed; the next start tries again", { leaseId, error }),
    );

  const overQuota = async (dir: WorkDir): Promise<QuotaExcess | undefined> =>
    dir.enforcement === "mount"
      ? fileSystemFull(dir.root)
      : (await diskUsage(dir.root)) > dir.quotaBytes
        ? "bytes"
        : undefined;

  const createNow = async (leaseId: bigint, quotaBytes: number): Promise<WorkDir> => {
    const { work, image } = paths(leaseId);
    await removeNow(leaseId);
    await mkdir(work, { recursive: true });
    if (enforcement === "mount") {
      try {
        await mountQuotaFileSystem(image, work, quotaBytes);
      } catch (error) {
        // What failed is the error to report; whatever the cleanup leaves, the next start's prune takes.
        await removeNow(leaseId).catch(() => undefined);
        throw error;
      }
    }
    const dir: WorkDir = { path: work, root: work, quotaBytes, enforcement };
    made.set(leaseId, dir);
    return dir;
  };

  /**
   * Removes what is in `dir`, leaving `dir`; of `keep` (names in it), those that are dirs are emptied
   * instead (a job's symlink of that name is removed, never followed).
   */
  const emptyDir = async (dir: string, keep: readonly string[] = []): Promise<void> => {
    // All at once: between two tasks of a batch lease, a round trip to the thread pool after another
    // is what takes the time, not the file system.
    await Promise.all(
      (await readdir(dir)).map(async (name) => {
        const entry = path.join(dir, name);
        if (keep.includes(name) && (await lstat(entry)).isDirectory()) await emptyDir(entry);
        else await rm(entry, { recursive: true, force: true });
      }),
    );
  };

  /**
   * Empties `dir` for the next task; whether it may be reused: still the file system it was made
   * with (an unmounted one would let the task write to the node's own disk, past its quota), with
   * the whole quota free again.
   */
  const emptied = async (dir: WorkDir): Promise<boolean> => {
    try {
      // Nothing runs in it any more (the last task's sandbox is gone): no entry can change meanwhile.
      await emptyDir(dir.root);
      if (dir.enforcement === "watch") return true;
      return (await mountPoints()).includes(dir.root) && (await freeBytes(dir.root)) >= dir.quotaBytes;
    } catch (error) {
      log.warn("work dir not emptied: it is made again", { dir: dir.path, error });
      return false;
    }
  };

  return {
    enforcement,
    pathOf: (leaseId) => paths(leaseId).work,
    create: (leaseId, quotaBytes) => serialized(leaseId, () => createNow(leaseId, quotaBytes)),
    adopt: (leaseId, from) =>
      serialized(leaseId, async () => {
        const { work, image } = paths(leaseId);
        await removeNow(leaseId);
        await mkdir(work, { recursive: true });
        await moveQuotaFileSystem(from.dir, work);
        try {
          await rename(from.image, image);
        } catch (error) {
          await removeNow(leaseId).catch(() => undefined);
          throw error;
        }
        const dir: WorkDir = { path: work, root: work, quotaBytes: from.quotaBytes, enforcement: "mount" };
        made.set(leaseId, dir);
        return dir;
      }),
    renew: (leaseId, quotaBytes) =>
      serialized(leaseId, async () => {
        const dir = made.get(leaseId);
        if (dir?.quotaBytes === quotaBytes && (await emptied(dir))) return dir;
        return createNow(leaseId, quotaBytes);
      }),
    reopen: (leaseId, quotaBytes) =>
      serialized(leaseId, async () => {
        const { work, image } = paths(leaseId);
        if ((await mountPoints()).includes(work)) return { path: work, root: work, quotaBytes, enforcement: "mount" };
        if (enforcement === "mount" && existsSync(image)) {
          await remountQuotaFileSystem(image, work);
          return { path: work, root: work, quotaBytes, enforcement: "mount" };
        }
        await mkdir(work, { recursive: true });
        return { path: work, root: work, quotaBytes, enforcement: "watch" };
      }),
    taskDir: (dir) => ({ ...dir, path: path.join(dir.root, "task") }),
    async emptyTaskDir(dir) {
      try {
        const untouched = leftEmpty(dir.path);
        if (untouched !== undefined) return untouched;
        const [owner] = await Promise.all([lstat(dir.path), emptyDir(dir.path, JOB_DIRS)]);
        const output = path.join(dir.path, "output");
        if (
          await mkdir(output, { mode: 0o700 }).then(
            () => true,
            () => false,
          )
        )
          await lchown(output, owner.uid, owner.gid);
        const kept = await Promise.all(JOB_DIRS.map((name) => lstat(path.join(dir.path, name)).catch(() => undefined)));
        return kept.every((stat) => ownedJobDir(stat, owner));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT")
          log.warn("task dir not emptied", { dir: dir.path, error });
        return false;
      }
    },
    overQuota,
    async supervise(job, dir) {
      const unwatch =
        dir.enforcement === "watch"
          ? watchDiskUsage({
              dir: dir.root,
              quotaBytes: dir.quotaBytes,
              onOver: (usage) => {
                log.info("job over its disk quota: stopping it", {
                  leaseId: job.leaseId,
                  usage,
                  quota: dir.quotaBytes,
                });
                void job.kill("disk");
              },
              onError: (error) => log.warn("work dir usage not measured", { leaseId: job.leaseId, error }),
            })
          : undefined;
      const exit = await job.exited;
      unwatch?.();
      if (exit.reason === "disk") return { ...exit, detail: quotaExcessDetail(dir.quotaBytes, "bytes") };
      if (exit.reason !== "exited" || (exit.code === 0 && exit.signal === null)) return exit;
      const excess = await overQuota(dir).catch((error: unknown) => {
        log.warn("work dir usage not measured", { leaseId: job.leaseId, error });
        return undefined;
      });
      return excess ? { ...exit, reason: "disk", detail: quotaExcessDetail(dir.quotaBytes, excess) } : exit;
    },
    remove,
    async prune(ended) {
      const names = await readdir(root).catch(() => []);
      const leases = names
        .filter((name) => LEASE_DIR.test(name))
        .map(BigInt)
        .filter(ended);
      const over = leases.filter((leaseId) => existsSync(paths(leaseId).work) || existsSync(paths(leaseId).image));
      if (over.length > 0) log.info("removing the work dirs of leases that ended", { count: over.length });
      for (const leaseId of over) await remove(leaseId);
    },
  };
}

/**
 * Unmounts every quota file system under `dir` and frees the loop devices of images under it, for a
 * whole tree that is about to go (a devnet's data, once its providers stopped: one killed by SIGKILL
 * leaves its leases' file systems mounted).
 */
export async function releaseQuotaFileSystems(dir: string, log: Logger): Promise<void> {
  const root = await realpath(dir).catch(() => undefined);
  if (root === undefined) return;
  const under = (file: string): boolean => file.startsWith(`${root}${path.sep}`);
  // Only lease work dirs, and the file systems holders' leases unpack checkpoints in, named alike
  // (`unpacked/<n>/work`): Podman's own mounts under a provider's data dir are Podman's to undo.
  const workDir = (mountPoint: string): boolean =>
    path.basename(mountPoint) === "work" && LEASE_DIR.test(path.basename(path.dirname(mountPoint)));
  const mounted = (await mountPoints()).filter((mountPoint) => under(mountPoint) && workDir(mountPoint));
  const images = (await loopDevices())
    .map((loop) => loop.backingFile.replace(/ \(deleted\)$/, ""))
    .filter((image) => under(image) && path.basename(image) === DISK_IMAGE);
  for (const work of mounted) {
    await removeQuotaFileSystem(path.join(path.dirname(work), DISK_IMAGE), work, log);
  }
  for (const image of images) await removeQuotaFileSystem(image, path.join(path.dirname(image), "work"), log);
}

/** A job dir as the runner made it: a dir of the task dir's owner (the job's user), for it alone. */
const ownedJobDir = (stat: Stats | undefined, owner: Stats): boolean =>
  stat !== undefined &&
  stat.isDirectory() &&
  stat.uid === owner.uid &&
  stat.gid === owner.gid &&
  (stat.mode & 0o7777) === 0o700;

/**
 * `emptyTaskDir` in a few synchronous calls for a task that left nothing to remove: only its job
 * dirs, all empty (its output was moved aside), which is how most tasks of a batch leave it. Each
 * of the general way's round trips to the thread pool waits its turn on the node's event loop, and
 * between two tasks they took 2.5 ms (p50) to 10 ms (p90) of the lease's time. `undefined` when
 * there is anything to remove: the general way does it.
 */
function leftEmpty(taskDir: string): boolean | undefined {
  const names = readdirSync(taskDir);
  if (names.some((name) => !JOB_DIRS.includes(name))) return undefined;
  const owner = lstatSync(taskDir);
  const stats = new Map(names.map((name) => [name, lstatSync(path.join(taskDir, name))]));
  for (const [name, stat] of stats) {
    if (!stat.isDirectory() || readdirSync(path.join(taskDir, name)).length > 0) return undefined;
  }
  if (!stats.has("output")) {
    const output = path.join(taskDir, "output");
    mkdirSync(output, { mode: 0o700 });
    lchownSync(output, owner.uid, owner.gid);
    stats.set("output", lstatSync(output));
  }
  return JOB_DIRS.every((name) => ownedJobDir(stats.get(name), owner));
}
