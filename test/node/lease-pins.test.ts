import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { leasePins, releaseExpiredOutputs, releaseLeasePins } from "../../node/lease-pins.ts";
import { NodeStore } from "../../node/store.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";

/* What a provider's leases pin in its real IPFS store, and when it lets go of it. */
describe("lease pins", () => {
  let dir: string;
  let host: BatonHost;
  let ipfs: IpfsNode;
  let store: NodeStore;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-lease-pins-"));
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

  const pinned = (text: string) => ipfs.add([new TextEncoder().encode(text)], { pin: true });

  it("lets go of an ended lease's checkpoints, but not one another lease of the node pins", async () => {
    const [own, shared] = [await pinned("published, kept"), await pinned("held here, resumed from")];
    const pins = leasePins({ store, ipfs }, 1n);
    pins.add(own.toString());
    pins.add(shared.toString());
    store.addHeld(2n, { cid: shared.toString(), bytes: 22 });

    expect(await releaseLeasePins({ store, ipfs }, 1n)).toEqual([own.toString(), shared.toString()]);
    expect(await ipfs.isPinned(own)).toBe(false);
    expect(await ipfs.isPinned(shared)).toBe(true);
    expect(store.leasePins(1n)).toEqual([]);
    // The collection that follows deletes what nobody pins any more.
    await expect.poll(() => ipfs.has(own), { timeout: 10_000 }).toBe(false);
    expect(await ipfs.has(shared)).toBe(true);
  });

  it("lets go of outputs once they are older than the retention, and keeps the newer ones", async () => {
    const [old, recent] = [await pinned("an output of yesterday"), await pinned("an output of now")];
    const now = Date.now();
    store.addLeasePin(3n, old.toString(), "output", now - 25 * 3_600_000);
    store.addLeasePin(4n, recent.toString(), "output", now - 60_000);

    expect(await releaseExpiredOutputs({ store, ipfs }, 24 * 3_600_000, now)).toEqual([
      { leaseId: 3n, cid: old.toString() },
    ]);
    expect(await ipfs.isPinned(old)).toBe(false);
    expect(await ipfs.isPinned(recent)).toBe(true);
    // An ended lease's checkpoints go without its outputs.
    expect(await releaseLeasePins({ store, ipfs }, 4n)).toEqual([]);
    expect(await ipfs.isPinned(recent)).toBe(true);
    expect(await releaseExpiredOutputs({ store, ipfs }, 24 * 3_600_000, now)).toEqual([]);
  });
});
