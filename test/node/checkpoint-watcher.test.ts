import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { watchCheckpoints, type PublishedCheckpoint } from "../../node/checkpoints.ts";
import { Metrics } from "../../node/metrics.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { silentLogger } from "../../sdk/logger.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";

describe("the checkpoint watcher under a backlog", () => {
  let dir: string;
  let host: BatonHost;
  let ipfs: IpfsNode;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-watcher-test-"));
    host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
    ipfs = await createIpfsNode({ host, dir: path.join(dir, "ipfs") });
  });

  afterAll(async () => {
    await ipfs?.stop();
    await host?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** A watcher as the node starts one for a job, reporting what it publishes into `published`. */
  const watch = (checkpoints: string, published: PublishedCheckpoint[]) =>
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

  it("once the tenant holds a checkpoint, those before it leave the node's store and the job's dir", async () => {
    const checkpoints = path.join(dir, "acknowledged");
    await mkdir(checkpoints);
    const published: PublishedCheckpoint[] = [];
    const watcher = watch(checkpoints, published);
    try {
      for (const step of [1, 2, 3]) {
        await commit(checkpoints, `step-00000${step}`);
        await expect.poll(() => published.length, { timeout: 10_000 }).toBe(step);
      }
      const [first, second, third] = published.map((c) => CID.parse(c.cid));
      watcher.acknowledged(published[1]!.cid);
      await expect.poll(() => ipfs.has(first!), { timeout: 10_000 }).toBe(false);
      expect(await ipfs.isPinned(first!)).toBe(false);
      expect(await ipfs.isPinned(second!)).toBe(true);
      expect(await ipfs.isPinned(third!)).toBe(true);
      expect((await readdir(checkpoints)).sort()).toEqual(["step-000002", "step-000003"]);
    } finally {
      await watcher.stop();
    }
  });
});
