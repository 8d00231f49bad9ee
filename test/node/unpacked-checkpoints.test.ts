import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { silentLogger } from "../../sdk/logger.ts";
import { UnpackedCheckpoints } from "../../node/unpacked-checkpoints.ts";

/*
 * What holders' leases keep unpacked on a node, on a real file system: one per lease, taken once by
 * a resume that names its CID and digest, waited for when it is still being unpacked.
 */
describe("UnpackedCheckpoints", () => {
  let dir: string;
  let root: string;
  let unpacked: UnpackedCheckpoints;
  const SHA = "a".repeat(64);

  /** An unpack that writes `content` into `state.json` once `gate` resolves. */
  const writing =
    (content: string, gate: Promise<void> = Promise.resolve()) =>
    async (to: string): Promise<{ bytes: number }> => {
      await gate;
      await mkdir(to);
      await writeFile(path.join(to, "state.json"), content);
      return { bytes: content.length };
    };

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-unpacked-"));
    root = path.join(dir, "unpacked");
    unpacked = new UnpackedCheckpoints(root, silentLogger);
    await unpacked.open();
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it("moves a checkpoint unpacked into the resume dir once, for its CID and digest only", async () => {
    await unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1 }, writing("a"));
    expect(await unpacked.take("cid-a", "b".repeat(64), path.join(dir, "wrong-digest"))).toBe(false);
    expect(await unpacked.take("cid-b", SHA, path.join(dir, "wrong-cid"))).toBe(false);
    const target = path.join(dir, "resume");
    expect(await unpacked.take("cid-a", SHA, target)).toBe(true);
    expect(await readFile(path.join(target, "state.json"), "utf8")).toBe("a");
    expect(await unpacked.take("cid-a", SHA, path.join(dir, "again"))).toBe(false);
    expect(await readdir(root)).toEqual([]);
  });

  it("keeps one per lease: a newer one replaces it, and the lease's end removes it", async () => {
    await unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1 }, writing("a"));
    await unpacked.add(1n, { cid: "cid-b", sha256: SHA, expectedBytes: 1 }, writing("bb"));
    await unpacked.add(2n, { cid: "cid-c", sha256: SHA, expectedBytes: 1 }, writing("c"));
    expect(unpacked.bytes(1n)).toBe(2);
    expect(await readdir(root)).toHaveLength(2);
    expect(await unpacked.take("cid-a", SHA, path.join(dir, "a"))).toBe(false);
    await unpacked.release(2n);
    expect(unpacked.bytes(2n)).toBe(0);
    expect(await readdir(root)).toHaveLength(1);
    expect(await unpacked.take("cid-c", SHA, path.join(dir, "c"))).toBe(false);
    expect(await unpacked.take("cid-b", SHA, path.join(dir, "b"))).toBe(true);
  });

  it("has a resume that comes while its checkpoint is being unpacked wait for it; one whose unpacking fails gets nothing", async () => {
    let open!: () => void;
    const adding = unpacked.add(
      1n,
      { cid: "cid-a", sha256: SHA, expectedBytes: 1 },
      writing("a", new Promise((resolve) => (open = resolve))),
    );
    const target = path.join(dir, "resume");
    const taking = unpacked.take("cid-a", SHA, target);
    open();
    await adding;
    expect(await taking).toBe(true);
    expect(await readFile(path.join(target, "state.json"), "utf8")).toBe("a");

    const failing = unpacked.add(1n, { cid: "cid-b", sha256: SHA, expectedBytes: 1 }, () =>
      Promise.reject(new Error("digest")),
    );
    const waiting = unpacked.take("cid-b", SHA, path.join(dir, "b"));
    await expect(failing).rejects.toThrow("digest");
    expect(await waiting).toBe(false);
  });

  it("stops an unpacking under way that a newer checkpoint replaces, or whose lease ends; one under way counts as its expected size", async () => {
    /** An unpack that ends only when it is told to stop. */
    const endless = (_to: string, signal: AbortSignal) =>
      new Promise<{ bytes: number }>((_resolve, reject) =>
        signal.addEventListener("abort", () => reject(new Error("stopped")), { once: true }),
      );
    /** Stopped before it began, or while it ran. */
    const stopped = /stopped|aborted/;
    const first = unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 5 }, endless);
    expect(unpacked.bytes(1n)).toBe(5);
    const waiting = unpacked.take("cid-a", SHA, path.join(dir, "a"));
    const second = unpacked.add(1n, { cid: "cid-b", sha256: SHA, expectedBytes: 7 }, writing("bb"));
    expect(unpacked.bytes(1n)).toBe(7);
    await expect(first).rejects.toThrow(stopped);
    await second;
    expect(unpacked.bytes(1n)).toBe(2);
    expect(await waiting).toBe(false);
    expect(await unpacked.take("cid-b", SHA, path.join(dir, "b"))).toBe(true);

    const third = unpacked.add(2n, { cid: "cid-c", sha256: SHA, expectedBytes: 1 }, endless);
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
      unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1 }, counted),
      unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1 }, counted),
    ]);
    expect(runs).toBe(1);
  });

  it("empties what a previous run of the node left when it opens", async () => {
    await unpacked.add(1n, { cid: "cid-a", sha256: SHA, expectedBytes: 1 }, writing("a"));
    const restarted = new UnpackedCheckpoints(root, silentLogger);
    await restarted.open();
    expect(await readdir(root)).toEqual([]);
    expect(await restarted.take("cid-a", SHA, path.join(dir, "resume"))).toBe(false);
  });
});
