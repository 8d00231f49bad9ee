import { generateKeyPair } from "@libp2p/crypto/keys";
import path from "node:path";
import { CID } from "multiformats/cid";
import { afterAll, expect, it } from "vitest";

import { restoreCheckpoint } from "../../sdk/ipfs/checkpoint.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";
import { isAlive, spawnScript, stopAll } from "../helpers/processes.ts";
import { describeTree, sampleTree, tempDir, writeTree } from "./helpers.ts";

let work: Awaited<ReturnType<typeof tempDir>> | undefined;
let host: BatonHost | undefined;
let ipfs: IpfsNode | undefined;

afterAll(async () => {
  await stopAll();
  await ipfs?.stop();
  await host?.stop();
  await work?.remove();
});

it("fetches a checkpoint from a provider process, which is then SIGKILLed, and still restores it", async () => {
  work = await tempDir("provider-process");
  const checkpoint = path.join(work.dir, "checkpoint");
  const { files, dirs } = sampleTree(8);
  await writeTree(checkpoint, files, dirs);
  const expected = await describeTree(checkpoint);
  const key = generateJobKey();

  const provider = spawnScript("test/ipfs/fixtures/provider.ts", [path.join(work.dir, "provider-store"), checkpoint], {
    BATON_TEST_JOB_KEY: Buffer.from(key).toString("hex"),
  });
  const announced = JSON.parse(await provider.waitFor(/^\{"address"/, 30_000)) as {
    address: string;
    cid: string;
    plaintextSha256: string;
    size: number;
  };
  expect(announced.size).toBeGreaterThan(8 * 2 ** 20);

  host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
  ipfs = await createIpfsNode({ host, dir: path.join(work.dir, "tenant-store") });
  const cid = CID.parse(announced.cid);
  // The tenant's part: fetch into its own store and pin, so the checkpoint outlives the provider.
  const { bytes } = await ipfs.fetchAndPin(cid, {
    maxBytes: 2 ** 30,
    providers: [announced.address],
    signal: AbortSignal.timeout(30_000),
  });
  expect(bytes).toBe(announced.size);

  provider.child.kill("SIGKILL");
  expect(await provider.exited).toEqual({ code: null, signal: "SIGKILL" });
  expect(isAlive(provider.pid)).toBe(false);

  const target = path.join(work.dir, "resume");
  await restoreCheckpoint(ipfs, key, cid, target, {
    expectedSha256: announced.plaintextSha256,
    maxBytes: 2 ** 30,
    providers: [announced.address], // dead now: everything must come from the local store
    stallTimeoutMs: 5_000,
    signal: AbortSignal.timeout(30_000),
  });
  expect(await describeTree(target)).toEqual(expected);
});
