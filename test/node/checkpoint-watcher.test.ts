import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { watchCheckpoints, type PublishedCheckpoint } from "../../node/checkpoints.ts";
import { leasePins, releaseExpiredOutputs, releaseLeasePins } from "../../node/lease-pins.ts";
import { Metrics } from "../../node/metrics.ts";
import { NodeStore } from "../../node/store.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { silentLogger } from "../../sdk/logger.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";

/* What a provider node does with its jobs' checkpoints, on a real IPFS store and node database. */
let dir: string;
let host: BatonHost;
let ipfs: IpfsNode;
let store: NodeStore;
let nextLease = 1n;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-watcher-test-"));
  host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
  ipfs = await createIpfsNode({ host, dir: path.join(dir, "ipfs") });
  store = new NodeStore(path.join(dir, "node.db"));
});

afterAll(async () => {
  store?.close();
  await ipfs?.stop();
  await host?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe("the checkpoint watcher under a backlog", () => {
  /**
   * A watcher as the node starts one for a job of lease `leaseId`, reporting what it publishes into
   * `published`; `pinned`: what the lease pinned before (the checkpoint its job resumed from).
   */
  const watch = (
    checkpoints: string,
    published: PublishedCheckpoint[],
    { leaseId = nextLease++, pinned = [] }: { leaseId?: bigint; pinned?: string[] } = {},
  ) =>
    watchCheckpoints({
      dir: checkpoints,
      key: generateJobKey(),
      ipfs,
      maxBytes: 2 ** 20,
      log: silentLogger,
      metrics: new Metrics(),
      onPublished: (checkpoint) => published.push(checkpoint),
      onRejected: (name, reason) => {
        throw new Error(`${name} rejected: ${reason}`);
      },
      pins: leasePins({ store, ipfs }, leaseId),
      pinned,
    });

  /** Commits a checkpoint as the contract says: written aside, then renamed into place. */
  const commit = async (checkpoints: string, name: string): Promise<void> => {
    const staging = path.join(checkpoints, `.${name}`);
    await mkdir(staging);
    await writeFile(path.join(staging, "state.json"), JSON.stringify({ name }));
    await rename(staging, path.join(checkpoints, name));
  };

  it("publishes the newest committed checkpoint and never the ones it superseded", async () => {
    const checkpoints = path.join(dir, "checkpoints");
    await mkdir(checkpoints);
    for (const step of [100, 200, 300, 400]) await commit(checkpoints, `step-${String(step).padStart(6, "0")}`);
    const published: PublishedCheckpoint[] = [];
    const watcher = watch(checkpoints, published);
    try {
      await watcher.settle();
      expect(published.map((c) => c.step)).toEqual([400]);
      await commit(checkpoints, "step-000500");
      await expect.poll(() => published.map((c) => c.step), { timeout: 10_000 }).toEqual([400, 500]);
    } finally {
      await watcher.stop();
    }
  });

  it("once the tenant holds a checkpoint, those before it leave the node's store and the job's dir, the one resumed from too", async () => {
    const checkpoints = path.join(dir, "acknowledged");
    await mkdir(checkpoints);
    const resumedFrom = await ipfs.add([new TextEncoder().encode("the checkpoint resumed from")], { pin: true });
    const leaseId = nextLease++;
    store.addLeasePin(leaseId, resumedFrom.toString());
    const published: PublishedCheckpoint[] = [];
    const watcher = watch(checkpoints, published, { leaseId, pinned: [resumedFrom.toString()] });
    try {
      await commit(checkpoints, "step-000001");
      await expect.poll(() => published.length, { timeout: 10_000 }).toBe(1);
      // Past `keep` (3) with the one resumed from: that one goes first.
      for (const step of [2, 3]) {
        await commit(checkpoints, `step-00000${step}`);
        await expect.poll(() => published.length, { timeout: 10_000 }).toBe(step);
      }
      await expect.poll(() => ipfs.isPinned(resumedFrom), { timeout: 10_000 }).toBe(false);
      const [first, second, third] = published.map((c) => CID.parse(c.cid));
      expect(store.leasePins(leaseId)).toEqual(published.map((c) => c.cid));
      watcher.acknowledged(published[1]!.cid);
      await expect.poll(() => ipfs.has(first!), { timeout: 10_000 }).toBe(false);
      expect(await ipfs.isPinned(first!)).toBe(false);
      expect(await ipfs.isPinned(second!)).toBe(true);
      expect(await ipfs.isPinned(third!)).toBe(true);
      expect(store.leasePins(leaseId)).toEqual([second!.toString(), third!.toString()]);
      // Its dir goes after its blocks (the pins are released first): a moment later under load.
      await expect
        .poll(async () => (await readdir(checkpoints)).sort(), { timeout: 10_000 })
        .toEqual(["step-000002", "step-000003"]);
    } finally {
      await watcher.stop();
    }
  });

  it("keeps a checkpoint it lets go of pinned while another lease of the node pins it (a holder's, on a warm standby)", async () => {
    const checkpoints = path.join(dir, "standby");
    await mkdir(checkpoints);
    const resumedFrom = await ipfs.add([new TextEncoder().encode("held here, resumed from here")], { pin: true });
    const [holderLease, jobLease] = [nextLease++, nextLease++];
    store.addHeld(holderLease, { cid: resumedFrom.toString(), bytes: 28 });
    store.addLeasePin(jobLease, resumedFrom.toString());
    const published: PublishedCheckpoint[] = [];
    const watcher = watch(checkpoints, published, { leaseId: jobLease, pinned: [resumedFrom.toString()] });
    try {
      await commit(checkpoints, "step-000001");
      await expect.poll(() => published.length, { timeout: 10_000 }).toBe(1);
      watcher.acknowledged(published[0]!.cid);
      await expect.poll(() => store.leasePins(jobLease), { timeout: 10_000 }).toEqual([published[0]!.cid]);
      expect(await ipfs.isPinned(resumedFrom)).toBe(true);
    } finally {
      await watcher.stop();
    }
  });
});

describe("lease pins", () => {
  const pinned = (text: string) => ipfs.add([new TextEncoder().encode(text)], { pin: true });

  it("lets go of an ended lease's checkpoints, but not one another lease of the node pins", async () => {
    const [own, shared] = [await pinned("published, kept"), await pinned("held here, resumed from")];
    const [leaseId, holderLease] = [nextLease++, nextLease++];
    const pins = leasePins({ store, ipfs }, leaseId);
    pins.add(own.toString());
    pins.add(shared.toString());
    store.addHeld(holderLease, { cid: shared.toString(), bytes: 22 });

    expect(await releaseLeasePins({ store, ipfs }, leaseId)).toEqual([own.toString(), shared.toString()]);
    expect(await ipfs.isPinned(own)).toBe(false);
    expect(await ipfs.isPinned(shared)).toBe(true);
    expect(store.leasePins(leaseId)).toEqual([]);
    // The collection that follows deletes what nobody pins any more.
    await expect.poll(() => ipfs.has(own), { timeout: 10_000 }).toBe(false);
    expect(await ipfs.has(shared)).toBe(true);
  });

  it("lets go of outputs once they are older than the retention, and keeps the newer ones", async () => {
    const [old, recent] = [await pinned("an output of yesterday"), await pinned("an output of now")];
    const now = Date.now();
    const [oldLease, recentLease] = [nextLease++, nextLease++];
    store.addLeasePin(oldLease, old.toString(), "output", now - 25 * 3_600_000);
    store.addLeasePin(recentLease, recent.toString(), "output", now - 60_000);

    expect(await releaseExpiredOutputs({ store, ipfs }, 24 * 3_600_000, now)).toEqual([
      { leaseId: oldLease, cid: old.toString() },
    ]);
    expect(await ipfs.isPinned(old)).toBe(false);
    expect(await ipfs.isPinned(recent)).toBe(true);
    // An ended lease's checkpoints go without its outputs.
    expect(await releaseLeasePins({ store, ipfs }, recentLease)).toEqual([]);
    expect(await ipfs.isPinned(recent)).toBe(true);
    expect(await releaseExpiredOutputs({ store, ipfs }, 24 * 3_600_000, now)).toEqual([]);
  });
});
