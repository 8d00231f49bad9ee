import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { DISK_IMAGE, freeBytes, loopDevices, mountPoints } from "../../node/disk-quota.ts";
import { UnpackedCheckpoints } from "../../node/unpacked-checkpoints.ts";
import { openWorkDirs, quotaEnforcement, releaseQuotaFileSystems, type WorkDirs } from "../../node/work-dirs.ts";
import { silentLogger } from "../../sdk/logger.ts";

/*
 * What holders' leases keep unpacked on a node, on a real file system: one per lease, taken once by
 * a resume that names its CID and digest, waited for when it is still being unpacked.
 */
const canMount = (await quotaEnforcement("auto")) === "mount";
const MiB = 2 ** 20;
const QUOTA = 64 * MiB;
const SHA = "a".repeat(64);

/** What a resume does with one (see `restoreResume`): claimed, moved to `target`, what is left discarded. */
async function take(unpacked: UnpackedCheckpoints, cid: string, sha256: string, target: string): Promise<boolean> {
  const claimed = await unpacked.claim(cid, sha256);
  if (!claimed) return false;
  try {
    return await claimed.moveTo(target);
  } finally {
    await claimed.discard();
  }
}

/** An unpack that writes `content` into `state.json` once `gate` resolves. */
const writing =
  (content: string, gate: Promise<void> = Promise.resolve()) =>
  async (to: string): Promise<{ bytes: number }> => {
    await gate;
    await mkdir(to);
    await writeFile(path.join(to, "state.json"), content);
    return { bytes: content.length };
  };

describe("UnpackedCheckpoints", () => {
  let dir: string;
  let root: string;
  let unpacked: UnpackedCheckpoints;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-unpacked-"));
    root = path.join(dir, "unpacked");
    unpacked = new UnpackedCheckpoints(root, "watch", silentLogger);
    await unpacked.open();
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it("moves a checkpoint unpacked into the resume dir once, for its CID and digest only", async () => {
    await unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("a"));
    expect(await take(unpacked, "cid-a", "b".repeat(64), path.join(dir, "wrong-digest"))).toBe(false);
    expect(await take(unpacked, "cid-b", SHA, path.join(dir, "wrong-cid"))).toBe(false);
    const target = path.join(dir, "resume");
    expect(await take(unpacked, "cid-a", SHA, target)).toBe(true);
    expect(await readFile(path.join(target, "state.json"), "utf8")).toBe("a");
    expect(await take(unpacked, "cid-a", SHA, path.join(dir, "again"))).toBe(false);
    expect(await readdir(root)).toEqual([]);
  });

  it("keeps one per lease: a newer one replaces it, and the lease's end removes it", async () => {
    await unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("a"));
    await unpacked.add(1n, { cid: "cid-b", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("bb"));
    await unpacked.add(2n, { cid: "cid-c", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("c"));
    expect(unpacked.bytes(1n)).toBe(2);
    expect(await readdir(root)).toHaveLength(2);
    expect(await take(unpacked, "cid-a", SHA, path.join(dir, "a"))).toBe(false);
    await unpacked.release(2n);
    expect(unpacked.bytes(2n)).toBe(0);
    expect(await readdir(root)).toHaveLength(1);
    expect(await take(unpacked, "cid-c", SHA, path.join(dir, "c"))).toBe(false);
    expect(await take(unpacked, "cid-b", SHA, path.join(dir, "b"))).toBe(true);
  });

  it("has a resume that comes while its checkpoint is being unpacked wait for it; one whose unpacking fails gets nothing", async () => {
    let open!: () => void;
    const adding = unpacked.add(
      1n,
      { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA },
      writing("a", new Promise((resolve) => (open = resolve))),
    );
    const target = path.join(dir, "resume");
    const taking = take(unpacked, "cid-a", SHA, target);
    open();
    await adding;
    expect(await taking).toBe(true);
    expect(await readFile(path.join(target, "state.json"), "utf8")).toBe("a");

    const failing = unpacked.add(1n, { cid: "cid-b", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, () =>
      Promise.reject(new Error("digest")),
    );
    const waiting = take(unpacked, "cid-b", SHA, path.join(dir, "b"));
    await expect(failing).rejects.toThrow("digest");
    expect(await waiting).toBe(false);
    expect(await readdir(root)).toEqual([]);
  });

  it("stops an unpacking under way that a newer checkpoint replaces, or whose lease ends; one under way counts as its expected size", async () => {
    /** An unpack that ends only when it is told to stop. */
    const endless = (_to: string, signal: AbortSignal) =>
      new Promise<{ bytes: number }>((_resolve, reject) =>
        signal.addEventListener("abort", () => reject(new Error("stopped")), { once: true }),
      );
    /** Stopped before it began, or while it ran. */
    const stopped = /stopped|aborted/;
    const first = unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 5, quotaBytes: QUOTA }, endless);
    expect(unpacked.bytes(1n)).toBe(5);
    const waiting = take(unpacked, "cid-a", SHA, path.join(dir, "a"));
    const second = unpacked.add(1n, { cid: "cid-b", sha256: SHA, expectedBytes: 7, quotaBytes: QUOTA }, writing("bb"));
    expect(unpacked.bytes(1n)).toBe(7);
    await expect(first).rejects.toThrow(stopped);
    await second;
    expect(unpacked.bytes(1n)).toBe(2);
    expect(await waiting).toBe(false);
    expect(await take(unpacked, "cid-b", SHA, path.join(dir, "b"))).toBe(true);

    const third = unpacked.add(2n, { cid: "cid-c", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, endless);
    const thirdStopped = expect(third).rejects.toThrow(stopped);
    await unpacked.release(2n);
    await thirdStopped;
    expect(await readdir(root)).toEqual([]);
  });

  it("unpacks a hold named twice once", async () => {
    let runs = 0;
    const counted = async (to: string) => {
      runs++;
      return writing("a")(to);
    };
    await Promise.all([
      unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, counted),
      unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, counted),
    ]);
    expect(runs).toBe(1);
  });

  it("empties what a previous run of the node left when it opens", async () => {
    await unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("a"));
    const restarted = new UnpackedCheckpoints(root, "watch", silentLogger);
    await restarted.open();
    expect(await readdir(root)).toEqual([]);
    expect(await take(restarted, "cid-a", SHA, path.join(dir, "resume"))).toBe(false);
  });
});

/*
 * Where work dirs are quota file systems (a root node with loop devices): each checkpoint is unpacked
 * in a file system of its own, which a work dir of the same quota takes whole, with real mounts.
 */
describe.skipIf(!canMount)("UnpackedCheckpoints on quota file systems", () => {
  let dir: string;
  let root: string;
  let unpacked: UnpackedCheckpoints;
  let workDirs: WorkDirs;
  /** The mounts and loop devices under the test's dir. */
  const mountedUnder = async (at: string) => (await mountPoints()).filter((m) => m.startsWith(`${at}/`));
  const loopsUnder = async (at: string) => (await loopDevices()).filter((l) => l.backingFile.startsWith(`${at}/`));

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-unpacked-"));
    const jobsDir = path.join(dir, "jobs");
    await mkdir(jobsDir);
    root = path.join(jobsDir, "unpacked");
    unpacked = new UnpackedCheckpoints(root, "mount", silentLogger);
    await unpacked.open();
    workDirs = await openWorkDirs({ jobsDir, diskQuota: "mount", log: silentLogger });
  });
  afterEach(async () => {
    // Runs even when a test failed: nothing stays mounted.
    await releaseQuotaFileSystems(dir, silentLogger);
    await rm(dir, { recursive: true, force: true });
  });

  it("unpacks in a file system of the lease's quota, which a work dir of that quota takes whole, files and all", async () => {
    await unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("a"));
    expect(await mountedUnder(root)).toHaveLength(1);
    const claimed = (await unpacked.claim("cid-a", SHA))!;
    expect(claimed.fileSystem?.quotaBytes).toBe(QUOTA);
    const work = await workDirs.adopt(7n, claimed.fileSystem!);
    claimed.movedTo(work.root);
    expect(claimed.fileSystem).toBeUndefined();
    expect(await claimed.moveTo(path.join(work.path, "resume"))).toBe(true);
    await claimed.discard();
    expect(await readFile(path.join(work.path, "resume", "state.json"), "utf8")).toBe("a");
    // As `create` makes a work dir: a file system of its own with the quota free, its image beside it.
    expect(work).toMatchObject({ quotaBytes: QUOTA, enforcement: "mount" });
    expect(await mountedUnder(root)).toEqual([]);
    expect(await mountPoints()).toContain(work.root);
    expect(await freeBytes(work.root)).toBeGreaterThanOrEqual(QUOTA - MiB);
    expect(existsSync(path.join(path.dirname(work.root), DISK_IMAGE))).toBe(true);
    expect(await readdir(root)).toEqual([]);
    // And it goes as one that `create` made does.
    await workDirs.remove(7n);
    expect(await mountedUnder(dir)).toEqual([]);
    expect(await loopsUnder(dir)).toEqual([]);
  });

  it("copies the files of one not taken whole into the work dir, and removes its file system", async () => {
    await unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("a"));
    const work = await workDirs.create(7n, 2 * QUOTA);
    expect(await take(unpacked, "cid-a", SHA, path.join(work.path, "resume"))).toBe(true);
    expect(await readFile(path.join(work.path, "resume", "state.json"), "utf8")).toBe("a");
    expect(await mountedUnder(root)).toEqual([]);
    expect(await readdir(root)).toEqual([]);
    await workDirs.remove(7n);
    expect(await loopsUnder(dir)).toEqual([]);
  });

  it("removes the file system of an unpacking that failed, of a lease that ended, and what a previous run left", async () => {
    await expect(
      unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, () =>
        Promise.reject(new Error("digest")),
      ),
    ).rejects.toThrow("digest");
    expect(await mountedUnder(dir)).toEqual([]);
    await unpacked.add(2n, { cid: "cid-b", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("b"));
    await unpacked.release(2n);
    expect(await mountedUnder(dir)).toEqual([]);
    expect(await loopsUnder(dir)).toEqual([]);

    await unpacked.add(3n, { cid: "cid-c", sha256: SHA, expectedBytes: 1, quotaBytes: QUOTA }, writing("c"));
    const restarted = new UnpackedCheckpoints(root, "mount", silentLogger);
    await restarted.open();
    expect(await mountedUnder(dir)).toEqual([]);
    expect(await loopsUnder(dir)).toEqual([]);
    expect(await readdir(root)).toEqual([]);
  });
});
