import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import {
  chmod,
  link,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  symlink,
  truncate,
  writeFile,
} from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { afterEach, describe, expect, it } from "vitest";

import {
  DISK_IMAGE,
  freeBytes,
  loopDevices,
  mountPoints,
  mountQuotaFileSystem,
  nextImageSize,
  parseMountPoints,
} from "../../node/disk-quota.ts";
import { diskUsage } from "../../node/disk-usage.ts";
import { nodeRuntimeBind, startJob } from "../../node/sandbox/runner.ts";
import {
  openWorkDirs,
  quotaEnforcement,
  quotaExcessDetail,
  releaseQuotaFileSystems,
  type WorkDir,
  type WorkDirs,
} from "../../node/work-dirs.ts";
import { UserError } from "../../sdk/errors.ts";
import {
  DEFAULT_JOB_DISK_GIB,
  diskQuotaBytes,
  formatDiskQuota,
  jobDiskGiB,
  MAX_JOB_DISK_GIB,
  parseJobSpec,
} from "../../sdk/job-spec.ts";
import { silentLogger } from "../../sdk/logger.ts";

const run = promisify(execFile);
const MiB = 2 ** 20;
const QUOTA = 64 * MiB;
const canMount = (await quotaEnforcement("auto")) === "mount";

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  // Last registered first: jobs are stopped before their dirs' file systems go. Runs even when a test failed.
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A jobs dir the job's user can pass through, whose file systems and files go after the test. */
async function jobsDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "baton-work-dirs-"));
  await chmod(dir, 0o711);
  cleanups.push(async () => {
    await releaseQuotaFileSystems(dir, silentLogger);
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

/** What is left of a lease's work dir: its mounts, loop devices and files. */
async function leftOf(dir: string, leaseId: bigint) {
  const work = path.join(dir, leaseId.toString(), "work");
  const image = path.join(dir, leaseId.toString(), DISK_IMAGE);
  return {
    mounts: (await mountPoints()).filter((mountPoint) => mountPoint === work).length,
    loops: (await loopDevices()).filter((loop) => loop.backingFile.startsWith(image)).length,
    image: existsSync(image),
    work: existsSync(work),
  };
}
const NOTHING = { mounts: 0, loops: 0, image: false, work: false };

/** A shell job in the sandbox in `dir`, with what it printed. */
async function shellJob(dir: WorkDir, script: string) {
  const lines: string[] = [];
  const job = await startJob({
    leaseId: path.basename(path.dirname(dir.path)),
    workDir: dir.path,
    command: ["sh", "-c", script],
    sandbox: "bwrap",
    runtimeBinds: [nodeRuntimeBind()],
    logger: silentLogger,
    onLine: (_, line) => lines.push(line),
  });
  cleanups.push(() => job.kill());
  return { job, lines };
}

/** The UUID mkfs gave the file system in `image`: a new one each time it is made. */
async function fileSystemId(image: string): Promise<string> {
  const { stdout } = await run("tune2fs", ["-l", image]);
  return /^Filesystem UUID:\s*(\S+)$/m.exec(stdout)![1]!;
}

/** Writes 100 MiB into the work dir, past a 64 MiB quota. */
const WRITE_100_MIB = "dd if=/dev/zero of=big bs=1M count=100";

describe("disk quota arithmetic and parsing", () => {
  it("grows an image by the share its file system took, in whole MiB, until the quota is free", () => {
    // A 64 MiB ext4 image leaves 53.4 MiB free (1 KiB blocks, its journal and inode tables).
    const next = nextImageSize(QUOTA, 56_026_112, QUOTA);
    expect(next % MiB).toBe(0);
    expect(next).toBeGreaterThanOrEqual(Math.ceil((QUOTA * QUOTA) / 56_026_112));
    expect(next).toBeLessThan(QUOTA + 16 * MiB);
  });

  it("takes a spec's diskGiB from 64 MiB to 64 TiB, fractions included, and 10 GiB when it names none", () => {
    const spec = (resources: Record<string, unknown>) => ({ command: ["true"], resources: { gpus: 0, ...resources } });
    expect(jobDiskGiB(parseJobSpec(spec({})))).toBe(DEFAULT_JOB_DISK_GIB);
    expect(jobDiskGiB(parseJobSpec(spec({ diskGiB: 0.5 })))).toBe(0.5);
    for (const diskGiB of [1 / 32, 0, -1, MAX_JOB_DISK_GIB + 1, "10"]) {
      expect(() => parseJobSpec(spec({ diskGiB }))).toThrow(UserError);
    }
  });

  it("reads mount points from mountinfo, its octal escapes undone", () => {
    const text = [
      "22 27 0:21 / /proc rw,relatime - proc proc rw",
      "53 27 7:0 / /var/lib/baton/jobs/7/work rw,nosuid,nodev,noatime - ext4 /dev/loop0 rw",
      "54 27 7:1 / /data/my\\040jobs/8/work rw - ext4 /dev/loop1 rw",
      "",
    ].join("\n");
    expect(parseMountPoints(text)).toEqual(["/proc", "/var/lib/baton/jobs/7/work", "/data/my jobs/8/work"]);
  });

  it("says a quota in whole GiB or MiB, and what went over it within the result's 64 characters", () => {
    expect(diskQuotaBytes(1 / 16)).toBe(QUOTA);
    expect(diskQuotaBytes(0.1)).toBe(103 * MiB);
    expect(formatDiskQuota(QUOTA)).toBe("64 MiB");
    expect(formatDiskQuota(10 * 2 ** 30)).toBe("10 GiB");
    expect(quotaExcessDetail(2 ** 30, "bytes")).toBe("the job used more than its 1 GiB disk quota");
    expect(quotaExcessDetail(QUOTA, "inodes")).toBe("the job ran out of inodes in its 64 MiB disk quota");
    for (const quota of [diskQuotaBytes(MAX_JOB_DISK_GIB), diskQuotaBytes(MAX_JOB_DISK_GIB - 0.001)]) {
      for (const excess of ["bytes", "inodes"] as const) {
        expect(`disk: ${quotaExcessDetail(quota, excess)}`.length).toBeLessThanOrEqual(64);
      }
    }
  });
});

describe("disk usage of a work dir", () => {
  it("counts allocated blocks as du does: a sparse file by what it holds, a hard link once, a symlink not followed", async () => {
    const dir = await jobsDir();
    await mkdir(path.join(dir, "sub"));
    await writeFile(path.join(dir, "sub", "data"), Buffer.alloc(4 * MiB, 1));
    await link(path.join(dir, "sub", "data"), path.join(dir, "again"));
    await writeFile(path.join(dir, "sparse"), "");
    await truncate(path.join(dir, "sparse"), 2 ** 30);
    await symlink("/usr", path.join(dir, "usr"));
    const { stdout } = await run("du", ["--summarize", "--block-size=1", dir]);
    const usage = await diskUsage(dir);
    expect(usage).toBe(Number(stdout.split("\t")[0]));
    expect(usage).toBeGreaterThanOrEqual(4 * MiB);
    expect(usage).toBeLessThan(5 * MiB);
  });
});

describe.skipIf(!canMount)("work dirs with a file system of their own (root, loop devices, e2fsprogs)", () => {
  const open = async (): Promise<{ dir: string; workDirs: WorkDirs }> => {
    const dir = await jobsDir();
    return { dir, workDirs: await openWorkDirs({ jobsDir: dir, diskQuota: "mount", log: silentLogger }) };
  };

  it("gives a process job exactly its quota: past it ENOSPC, the reason disk; removed, nothing is left", async () => {
    const { dir, workDirs } = await open();
    const workDir = await workDirs.create(1n, QUOTA);
    expect(workDir).toMatchObject({ enforcement: "mount", quotaBytes: QUOTA });
    expect(await leftOf(dir, 1n)).toEqual({ mounts: 1, loops: 1, image: true, work: true });
    // Only the job's own files: no lost+found.
    const { job, lines } = await shellJob(workDir, `ls -A; ${WRITE_100_MIB}`);
    const exit = await workDirs.supervise(job, workDir);
    expect(exit).toMatchObject({ code: 1, reason: "disk", detail: "the job used more than its 64 MiB disk quota" });
    expect(lines).toEqual(expect.arrayContaining([expect.stringMatching(/No space left on device/)]));
    expect(lines).not.toContain("lost+found");
    // It could write its whole quota, and not much more.
    const written = (await stat(path.join(workDir.path, "big"))).size;
    expect(written).toBeGreaterThanOrEqual(QUOTA - 4 * MiB);
    expect(written).toBeLessThan(QUOTA + 8 * MiB);
    // The image is sparse: the host holds what the job wrote, not the image's size on top.
    expect((await stat(path.join(dir, "1", DISK_IMAGE))).blocks * 512).toBeLessThan(2 * QUOTA);

    await workDirs.remove(1n);
    expect(await leftOf(dir, 1n)).toEqual(NOTHING);
    // The job's log, beside the work dir, stays.
    expect(await readFile(path.join(dir, "1", "1.log"), "utf8")).toMatch(/No space left on device/);
  });

  it("keeps a job's own reason when it ends well, or fails with room left", async () => {
    const { workDirs } = await open();
    const workDir = await workDirs.create(2n, QUOTA);
    const fine = await shellJob(workDir, "dd if=/dev/zero of=some bs=1M count=8 2>/dev/null");
    expect(await workDirs.supervise(fine.job, workDir)).toMatchObject({ code: 0, reason: "exited" });
    const failing = await shellJob(workDir, "exit 3");
    expect(await workDirs.supervise(failing.job, workDir)).toMatchObject({ code: 3, reason: "exited" });
    expect(await workDirs.overQuota(workDir)).toBeUndefined();
  });

  it("names inodes when a job of many small files runs out of them first", async () => {
    const { workDirs } = await open();
    const workDir = await workDirs.create(3n, QUOTA);
    const { job } = await shellJob(workDir, "mkdir many && cd many && seq 1 30000 | xargs touch");
    const exit = await workDirs.supervise(job, workDir);
    expect(exit).toMatchObject({ reason: "disk", detail: "the job ran out of inodes in its 64 MiB disk quota" });
    expect(exit.code).not.toBe(0);
  });

  it("starts a lease again from an empty work dir, on one file system", async () => {
    const { dir, workDirs } = await open();
    const first = await workDirs.create(4n, QUOTA);
    await writeFile(path.join(first.path, "left"), "from the first start");
    const second = await workDirs.create(4n, 2 * QUOTA);
    expect(existsSync(path.join(second.path, "left"))).toBe(false);
    expect(await leftOf(dir, 4n)).toEqual({ mounts: 1, loops: 1, image: true, work: true });
    await workDirs.remove(4n);
    expect(await leftOf(dir, 4n)).toEqual(NOTHING);
  });

  it("gives a batch lease's next task the same file system, emptied, with its whole quota; a new one when it cannot", async () => {
    const { dir, workDirs } = await open();
    const image = path.join(dir, "7", DISK_IMAGE);
    const first = await workDirs.create(7n, QUOTA);
    const made = await fileSystemId(image);
    const task = await shellJob(first, "mkdir -p deep/er output && touch .hidden deep/er/file output/result");
    expect(await workDirs.supervise(task.job, first)).toMatchObject({ code: 0 });

    const next = await workDirs.renew(7n, QUOTA);
    expect(next).toEqual(first);
    // No mkfs: the same file system, still the only mount and loop device, and nothing of the last task in it.
    expect(await fileSystemId(image)).toBe(made);
    expect(await leftOf(dir, 7n)).toEqual({ mounts: 1, loops: 1, image: true, work: true });
    const seen = await shellJob(next, `find . -mindepth 1 | sort; ${WRITE_100_MIB}`);
    // Its quota holds as on a new one.
    expect(await workDirs.supervise(seen.job, next)).toMatchObject({ reason: "disk" });
    // Only the dirs the runner makes in every work dir, empty.
    expect(seen.lines.filter((line) => line.startsWith("./"))).toEqual([
      "./checkpoints",
      "./output",
      "./resume",
      "./tmp",
    ]);

    // Its file system gone (unmounted behind the node's back): the task would write to the node's
    // own disk, past any quota, so a new one is made.
    await run("umount", [next.path]);
    const fresh = await workDirs.renew(7n, QUOTA);
    expect(await fileSystemId(image)).not.toBe(made);
    expect(await mountPoints()).toContain(fresh.path);
    expect(await freeBytes(fresh.path)).toBeGreaterThanOrEqual(QUOTA);
    // Another quota, or a node that did not make it (restarted): a new one too.
    const renewed = await fileSystemId(image);
    await workDirs.renew(7n, 2 * QUOTA);
    expect(await fileSystemId(image)).not.toBe(renewed);
    const restarted = await openWorkDirs({ jobsDir: dir, diskQuota: "mount", log: silentLogger });
    const bigger = await fileSystemId(image);
    await restarted.renew(7n, 2 * QUOTA);
    expect(await fileSystemId(image)).not.toBe(bigger);
    await restarted.remove(7n);
    expect(await leftOf(dir, 7n)).toEqual(NOTHING);
  });

  it("makes its file system again through a new loop device when the kernel has not yet freed the last mount's", async () => {
    const dir = await jobsDir();
    const image = path.join(dir, DISK_IMAGE);
    const work = path.join(dir, "work");
    await mkdir(work);
    // The loop device an umount leaves until the kernel frees it, at the first try's size, here for
    // the whole call (mount reuses a device already backed by the file): the second try, in a larger
    // image, was mounted through it and refused. Freed with the dir's file systems after the test.
    await writeFile(image, "");
    await truncate(image, QUOTA);
    await run("losetup", ["--find", image]);
    await mountQuotaFileSystem(image, work, QUOTA);
    expect(await freeBytes(work)).toBeGreaterThanOrEqual(QUOTA);
    expect((await loopDevices()).filter((loop) => loop.backingFile === image)).toHaveLength(1);
  });

  it("after a crash, removes the file systems of leases that ended and keeps those relaunched, mounted again after a reboot", async () => {
    const { dir, workDirs } = await open();
    await workDirs.create(5n, QUOTA);
    const kept = await workDirs.create(6n, QUOTA);
    await writeFile(path.join(kept.path, "state"), "saved");
    // A directory of the jobs dir that is not a lease's stays as it is.
    await mkdir(path.join(dir, "not-a-lease"));

    // The node is killed and starts again: a new instance over the same jobs dir.
    const restarted = await openWorkDirs({ jobsDir: dir, diskQuota: "mount", log: silentLogger });
    await restarted.prune((leaseId) => leaseId !== 6n);
    expect(await leftOf(dir, 5n)).toEqual(NOTHING);
    expect(await leftOf(dir, 6n)).toEqual({ mounts: 1, loops: 1, image: true, work: true });
    expect(existsSync(path.join(dir, "not-a-lease"))).toBe(true);
    expect(await restarted.reopen(6n, QUOTA)).toEqual({ ...kept, enforcement: "mount" });
    expect(await leftOf(dir, 6n)).toEqual({ mounts: 1, loops: 1, image: true, work: true });

    // The machine restarted: nothing mounted any more, no loop device, the image still there. The
    // kernel detaches an autoclear loop device some time after its umount: a reboot does not wait.
    await run("umount", [kept.path]);
    for (const loop of await loopDevices()) {
      if (loop.backingFile.startsWith(path.join(dir, "6", DISK_IMAGE))) {
        await run("losetup", ["--detach", loop.device]).catch(() => undefined);
      }
    }
    expect(await leftOf(dir, 6n)).toMatchObject({ mounts: 0, loops: 0, image: true });
    expect(await restarted.reopen(6n, QUOTA)).toEqual({ ...kept, enforcement: "mount" });
    expect(await readFile(path.join(kept.path, "state"), "utf8")).toBe("saved");

    // A devnet's teardown: every file system under its dir goes.
    await releaseQuotaFileSystems(dir, silentLogger);
    expect(await leftOf(dir, 6n)).toMatchObject({ mounts: 0, loops: 0, image: false });
  });
});

describe("work dirs whose usage is watched (a node that is not root)", () => {
  const open = async (): Promise<{ dir: string; workDirs: WorkDirs }> => {
    const dir = await jobsDir();
    return { dir, workDirs: await openWorkDirs({ jobsDir: dir, diskQuota: "watch", log: silentLogger }) };
  };

  it("stops a job over its quota with the reason disk, and removes its work dir", async () => {
    const { dir, workDirs } = await open();
    const workDir = await workDirs.create(1n, QUOTA);
    expect(workDir.enforcement).toBe("watch");
    expect(await leftOf(dir, 1n)).toEqual({ mounts: 0, loops: 0, image: false, work: true });
    const { job } = await shellJob(workDir, `${WRITE_100_MIB} && echo written && sleep 600`);
    const exit = await workDirs.supervise(job, workDir);
    expect(exit).toMatchObject({ reason: "disk", detail: "the job used more than its 64 MiB disk quota" });
    await workDirs.remove(1n);
    expect(await leftOf(dir, 1n)).toEqual(NOTHING);
  });

  it("lets a job within its quota run to its end", async () => {
    const { workDirs } = await open();
    const workDir = await workDirs.create(2n, QUOTA);
    const { job } = await shellJob(workDir, "dd if=/dev/zero of=some bs=1M count=8 2>/dev/null; exit 4");
    expect(await workDirs.supervise(job, workDir)).toMatchObject({ code: 4, reason: "exited" });
  });
  it("empties a batch lease's task dir for its next task, its job's dirs kept, and an output/ moved away made again", async () => {
    const { workDirs } = await open();
    const taskDir = workDirs.taskDir(await workDirs.create(3n, QUOTA));
    await mkdir(taskDir.path, { mode: 0o700 });
    for (const name of ["checkpoints", "resume", "output", "tmp"]) {
      await mkdir(path.join(taskDir.path, name), { mode: 0o700 });
      await writeFile(path.join(taskDir.path, name, "left"), name);
    }
    await writeFile(path.join(taskDir.path, "stray"), "");
    // The last task's output is moved beside the task dir, to be published while the next task runs.
    await rename(path.join(taskDir.path, "output"), path.join(taskDir.root, "output.1"));

    expect(await workDirs.emptyTaskDir(taskDir)).toBe(true);
    expect((await readdir(taskDir.path)).sort()).toEqual(["checkpoints", "output", "resume", "tmp"]);
    for (const name of ["checkpoints", "resume", "output", "tmp"]) {
      expect(await readdir(path.join(taskDir.path, name))).toEqual([]);
      expect((await stat(path.join(taskDir.path, name))).mode & 0o7777).toBe(0o700);
    }
    expect(await readFile(path.join(taskDir.root, "output.1", "left"), "utf8")).toBe("output");

    // A task that left nothing but its output (moved away) and its empty dirs: the same, the quick way.
    await writeFile(path.join(taskDir.path, "output", "result"), "2");
    await rename(path.join(taskDir.path, "output"), path.join(taskDir.root, "output.2"));
    expect(await workDirs.emptyTaskDir(taskDir)).toBe(true);
    expect((await readdir(taskDir.path)).sort()).toEqual(["checkpoints", "output", "resume", "tmp"]);
    expect(await readdir(path.join(taskDir.path, "output"))).toEqual([]);
    expect((await stat(path.join(taskDir.path, "output"))).mode & 0o7777).toBe(0o700);

    // A dir the task changed is not as the runner made it: the next task's are made again.
    await chmod(path.join(taskDir.path, "checkpoints"), 0o755);
    expect(await workDirs.emptyTaskDir(taskDir)).toBe(false);
  });
});
