import { generateKeyPair } from "@libp2p/crypto/keys";
import { randomBytes } from "node:crypto";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { sha256 } from "multiformats/hashes/sha2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  CheckpointCorruptError,
  CheckpointKeyError,
  CheckpointTooLargeError,
  CheckpointUnavailableError,
  UserError,
} from "../../sdk/errors.ts";
import { publishCheckpoint, restoreCheckpoint, type PublishCheckpointReturnType } from "../../sdk/ipfs/checkpoint.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";
import { describeTree, exists, sampleTree, tempDir, writeTree } from "./helpers.ts";

const GiB = 2 ** 30;

interface Peer {
  host: BatonHost;
  ipfs: IpfsNode;
  address: string;
}

let work: Awaited<ReturnType<typeof tempDir>>;
const peers: Peer[] = [];

async function startPeer(name: string): Promise<Peer> {
  const host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
  try {
    const ipfs = await createIpfsNode({ host, dir: path.join(work.dir, name) });
    const peer = { host, ipfs, address: host.getMultiaddrs()[0]!.toString() };
    peers.push(peer);
    return peer;
  } catch (error) {
    await host.stop();
    throw error;
  }
}

async function stopPeer(peer: Peer): Promise<void> {
  await peer.ipfs.stop();
  await peer.host.stop();
}

async function blockCount(ipfs: IpfsNode): Promise<number> {
  let n = 0;
  for await (const pair of ipfs.helia.blockstore.getAll()) {
    void pair;
    n++;
  }
  return n;
}

const randomCid = async (): Promise<CID> => CID.createV1(raw.code, await sha256.digest(randomBytes(32)));

let a: Peer;
let b: Peer;
const key = generateJobKey();
let source: string;
let published: PublishCheckpointReturnType;
let expectedTree: string[];
let secondSize = 0;

beforeAll(async () => {
  work = await tempDir("ipfs");
  a = await startPeer("a");
  b = await startPeer("b");
  source = path.join(work.dir, "checkpoint");
  const { files, dirs } = sampleTree(6);
  await writeTree(source, files, dirs);
  expectedTree = await describeTree(source);
});

afterAll(async () => {
  await Promise.allSettled(peers.map(stopPeer));
  await work?.remove();
});

describe("checkpoints over IPFS between two nodes", () => {
  it("publishes on A: CIDv1, raw leaves of at most 1 MiB, pinned, on disk", async () => {
    published = await publishCheckpoint(a.ipfs, key, source, { maxBytes: GiB });
    expect(published.cid.version).toBe(1);
    expect(published.cid.code).toBe(0x70); // dag-pb root over raw leaves
    expect(published.files).toBe(7);
    expect(published.plaintextSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(published.size).toBeGreaterThan(6 * 2 ** 20);
    expect(await a.ipfs.isPinned(published.cid)).toBe(true);
    expect(await a.ipfs.has(published.cid)).toBe(true);
    for await (const { cid, bytes } of a.ipfs.helia.blockstore.getAll()) {
      let size = 0;
      for await (const part of bytes) size += part.byteLength;
      expect(size).toBeLessThanOrEqual(2 ** 20);
      if (cid.code === raw.code) expect(cid.version).toBe(1);
    }
  });

  it("restores on B from A: identical tree, pinned on B; a failure leaves no target", async () => {
    expect(await b.ipfs.has(published.cid)).toBe(false);
    const target = path.join(work.dir, "restored-1");
    const result = await restoreCheckpoint(b.ipfs, key, published.cid, target, {
      expectedSha256: published.plaintextSha256,
      maxBytes: GiB,
      providers: [a.address],
      signal: AbortSignal.timeout(60_000),
      pin: true,
    });
    expect(result.sha256).toBe(published.plaintextSha256);
    expect(await describeTree(target)).toEqual(expectedTree);
    expect(await b.ipfs.isPinned(published.cid)).toBe(true);
    expect(await b.ipfs.has(published.cid)).toBe(true);
    await expect(
      restoreCheckpoint(b.ipfs, key, published.cid, target, {
        expectedSha256: published.plaintextSha256,
        maxBytes: GiB,
      }),
    ).rejects.toThrow(/already exists/);
  });

  it("refuses a wrong key, a wrong digest, and a checkpoint over maxBytes, leaving nothing behind", async () => {
    const target = path.join(work.dir, "refused");
    const options = { expectedSha256: published.plaintextSha256, maxBytes: GiB, providers: [a.address] };
    await expect(restoreCheckpoint(b.ipfs, generateJobKey(), published.cid, target, options)).rejects.toBeInstanceOf(
      CheckpointKeyError,
    );
    await expect(
      restoreCheckpoint(b.ipfs, key, published.cid, target, { ...options, expectedSha256: "0".repeat(64) }),
    ).rejects.toBeInstanceOf(CheckpointCorruptError);
    await expect(
      restoreCheckpoint(b.ipfs, key, published.cid, target, { ...options, maxBytes: 2 ** 20 }),
    ).rejects.toBeInstanceOf(CheckpointTooLargeError);
    await expect(
      restoreCheckpoint(b.ipfs, key, published.cid, target, { ...options, expectedSha256: "x" }),
    ).rejects.toBeInstanceOf(UserError);
    expect(await exists(target)).toBe(false);
    expect((await readdir(work.dir)).filter((n) => n.includes("partial"))).toEqual([]);
  });

  it("fetchAndPin refuses a checkpoint over maxBytes before fetching its leaves, and pins one within", async () => {
    const second = path.join(work.dir, "checkpoint-2");
    await writeTree(second, [{ path: "weights.bin", size: 3 * 2 ** 20 }]);
    const other = await publishCheckpoint(a.ipfs, key, second, { maxBytes: GiB });
    secondSize = other.size;
    const before = await blockCount(b.ipfs);
    const error = await b.ipfs
      .fetchAndPin(other.cid, { maxBytes: 2 ** 20, providers: [a.address], signal: AbortSignal.timeout(30_000) })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointTooLargeError);
    expect(await blockCount(b.ipfs)).toBeLessThanOrEqual(before + 1); // at most the root
    expect(await b.ipfs.isPinned(other.cid)).toBe(false);

    const { bytes } = await b.ipfs.fetchAndPin(other.cid, {
      maxBytes: other.size,
      providers: [a.address],
      signal: AbortSignal.timeout(30_000),
    });
    expect(bytes).toBe(other.size);
    expect(await b.ipfs.isPinned(other.cid)).toBe(true);
  });

  it("reports a CID nobody has as unavailable within the stall timeout", async () => {
    const unknown = await randomCid();
    const target = path.join(work.dir, "unknown");
    const started = performance.now();
    const error = await restoreCheckpoint(b.ipfs, key, unknown, target, {
      expectedSha256: "0".repeat(64),
      maxBytes: GiB,
      providers: [a.address],
      stallTimeoutMs: 1_500,
    }).catch((e: unknown) => e);
    const elapsed = performance.now() - started;
    expect(error).toBeInstanceOf(CheckpointUnavailableError);
    expect((error as Error).message).toContain(unknown.toString());
    expect(elapsed).toBeGreaterThanOrEqual(1_400);
    expect(elapsed).toBeLessThan(4_000);
    expect(await exists(target)).toBe(false);

    // The caller's own signal wins over the stall timeout, and surfaces as its reason.
    const reason = new Error("caller gave up");
    const controller = new AbortController();
    setTimeout(() => controller.abort(reason), 300);
    const aborted = await b.ipfs
      .fetchAndPin(unknown, { maxBytes: GiB, signal: controller.signal, stallTimeoutMs: 10_000 })
      .catch((e: unknown) => e);
    expect(aborted).toBe(reason);
  });

  it("a gc called during a fetch waits until the fetch is pinned, and keeps it", async () => {
    const third = path.join(work.dir, "checkpoint-3");
    await writeTree(third, [{ path: "weights.bin", size: 4 * 2 ** 20 }]);
    const { cid } = await publishCheckpoint(a.ipfs, key, third, { maxBytes: GiB });
    const order: string[] = [];
    const fetching = b.ipfs
      .fetchAndPin(cid, { maxBytes: GiB, providers: [a.address], signal: AbortSignal.timeout(30_000) })
      .then(() => order.push("fetched and pinned"));
    const collecting = b.ipfs.gc().then(() => order.push("gc"));
    await Promise.all([fetching, collecting]);
    expect(order).toEqual(["fetched and pinned", "gc"]);
    expect(await b.ipfs.has(cid)).toBe(true);
    await b.ipfs.unpin(cid);
    await b.ipfs.gc();
    expect(await b.ipfs.has(cid)).toBe(false);
  });

  it("fetches again from the same peer after a gc deleted what it fetched, within bitswap's do-not-resend window and past it", async () => {
    const fourth = path.join(work.dir, "checkpoint-4");
    await writeTree(fourth, [{ path: "weights.bin", size: 3 * 2 ** 20 }]);
    const { cid } = await publishCheckpoint(a.ipfs, key, fourth, { maxBytes: GiB });
    // By bitswap: the block stream would not meet A's ledger at all.
    const fetch = () =>
      b.ipfs.fetchAndPin(cid, { maxBytes: GiB, providers: [a.address], stallTimeoutMs: 4_000, via: "bitswap" });
    await fetch();
    await b.ipfs.unpin(cid);
    await b.ipfs.gc();
    expect(await b.ipfs.has(cid)).toBe(false);
    // Within A's 5 s do-not-resend window: without the fix this stalled until the timeout.
    expect((await fetch()).bytes).toBeGreaterThan(3 * 2 ** 20);
    await b.ipfs.unpin(cid);
    await b.ipfs.gc();
    // Past the window, while A's ledger still has the block as sent (it drops that entry, and the
    // new want with it, only when it next sends): this stalled too (link-faults (b) re-fetching a
    // job's input ~30 s after its first lease).
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    expect((await fetch()).bytes).toBeGreaterThan(3 * 2 ** 20);
    await b.ipfs.unpin(cid);
    await b.ipfs.gc();
  }, 60_000);

  it("after A is gone, B restores from its own store, with no providers", async () => {
    await stopPeer(a);
    peers.splice(peers.indexOf(a), 1);
    const target = path.join(work.dir, "restored-offline");
    const started = performance.now();
    await restoreCheckpoint(b.ipfs, key, published.cid, target, {
      expectedSha256: published.plaintextSha256,
      maxBytes: GiB,
      stallTimeoutMs: 2_000,
    });
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(await describeTree(target)).toEqual(expectedTree);
  });

  it("unpin + gc removes a checkpoint's blocks and keeps the pinned ones", async () => {
    const pins: CID[] = [];
    for await (const pin of b.ipfs.helia.pins.ls()) pins.push(pin.cid);
    expect(pins.map(String)).toContain(published.cid.toString());
    expect(pins).toHaveLength(2);
    const keep = pins.find((cid) => !cid.equals(published.cid))!;

    await b.ipfs.unpin(published.cid);
    await b.ipfs.unpin(published.cid); // a second unpin is a no-op
    expect(await b.ipfs.has(published.cid)).toBe(true); // still there until gc
    await b.ipfs.gc();
    expect(await b.ipfs.has(published.cid)).toBe(false);
    expect(await b.ipfs.helia.blockstore.has(published.cid)).toBe(false);
    expect(await b.ipfs.has(keep)).toBe(true);
    // Only the other checkpoint is left: its root, its 44-byte header leaf and a 1 MiB leaf per sealed chunk.
    expect(await blockCount(b.ipfs)).toBe(Math.ceil((secondSize - 44) / 2 ** 20) + 2);
    await expect(b.ipfs.pin(published.cid)).rejects.toBeInstanceOf(CheckpointUnavailableError);
  });
});

describe("a small checkpoint sent inline (a batch task's output in its result)", () => {
  it("comes back as its pieces, named by the CID that adding them gives, with nothing stored; restored from them and checked against that CID", async () => {
    const c = await startPeer("c");
    const small = path.join(work.dir, "small");
    await writeTree(small, [{ path: "square", content: new TextEncoder().encode("49\n") }]);
    const sealed = await publishCheckpoint(c.ipfs, key, small, { maxBytes: GiB, inlineUpTo: 16 * 1024 });
    const pieces = sealed.inline!;
    expect(pieces.length).toBeGreaterThan(0);
    expect(sealed.size).toBe(pieces.reduce((sum, piece) => sum + piece.byteLength, 0));
    expect(await c.ipfs.has(sealed.cid)).toBe(false);
    expect(await c.ipfs.isPinned(sealed.cid)).toBe(false);
    // Added as they are, the same pieces make the same CID.
    expect((await c.ipfs.add(pieces, { leaves: "pieces" })).equals(sealed.cid)).toBe(true);

    const options = { expectedSha256: sealed.plaintextSha256, maxBytes: GiB };
    const target = path.join(work.dir, "small-restored");
    await restoreCheckpoint(b.ipfs, key, sealed.cid, target, { ...options, pieces });
    expect(await describeTree(target)).toEqual(await describeTree(small));
    expect(await b.ipfs.has(sealed.cid)).toBe(false);
    // A piece changed, or pieces sent under another CID: refused before anything is unpacked.
    const changed = pieces.map((piece) => Uint8Array.from(piece));
    changed.at(-1)![0]! ^= 1;
    const refused = path.join(work.dir, "small-refused");
    await expect(
      restoreCheckpoint(b.ipfs, key, sealed.cid, refused, { ...options, pieces: changed }),
    ).rejects.toBeInstanceOf(CheckpointCorruptError);
    await expect(restoreCheckpoint(b.ipfs, key, published.cid, refused, { ...options, pieces })).rejects.toBeInstanceOf(
      CheckpointCorruptError,
    );
    await expect(
      restoreCheckpoint(b.ipfs, key, sealed.cid, refused, { ...options, pieces, pin: true }),
    ).rejects.toBeInstanceOf(UserError);
    expect(await exists(refused)).toBe(false);

    // One byte over the limit, it is added and pinned as any checkpoint.
    const added = await publishCheckpoint(c.ipfs, key, small, { maxBytes: GiB, inlineUpTo: sealed.size - 1 });
    expect(added.inline).toBeUndefined();
    expect(await c.ipfs.isPinned(added.cid)).toBe(true);
  });
});
