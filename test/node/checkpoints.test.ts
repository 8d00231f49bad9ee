import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";
import { keccak256, parseEther, toHex, zeroHash } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { contracts, writeContract } from "../../sdk/chain/client.ts";
import { leaseIdFromReceipt } from "../../sdk/chain/permit.ts";
import { restoreCheckpoint } from "../../sdk/ipfs/checkpoint.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost } from "../../sdk/p2p/host.ts";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { openLeaseSession, requestQuote, type LeaseSession } from "../../sdk/wire/clients.ts";
import { signTenantAuth } from "../../sdk/wire/tenant-auth.ts";
import { providerDirs, runToEnd, startExampleJob } from "../helpers/example-jobs.ts";
import { startMarket, type Market, type ProviderHandle, type Tenant } from "../helpers/market.ts";
import { root } from "../helpers/processes.ts";

const TRAIN_ENV = { TRAIN_STEPS: "600", TRAIN_CHECKPOINT_EVERY: "100", TRAIN_SEED: "7" };
const MAX_BYTES = 64 * 1024 * 1024;

let market: Market;
let tenant: Tenant;
let ipfs: IpfsNode;
let dir: string;
let scriptCid: string;
let reference: string;
const key = generateJobKey();
const keyBase64 = Buffer.from(key).toString("base64");
const jobId = keccak256(toHex("checkpointed-training"));
/** The checkpoints the tenant holds, from the hand-off test. */
const safe: { cid: string; sha256: string; step: number }[] = [];
/** The job's output, published by the provider it resumed on. */
let outputB: { cid: string; published: number } | undefined;
const OUTPUT_RETENTION_S = 30;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-ckpt-test-"));
  // The uninterrupted run, outside Baton: what the handed-off job must reproduce bit for bit.
  const refDirs = await providerDirs(dir, "ref");
  reference = await runToEnd(
    startExampleJob([process.execPath, path.join(root, "examples/train/train.mjs")], refDirs, TRAIN_ENV),
    refDirs,
  );

  market = await startMarket({
    providers: 2,
    config: {
      cpuJobs: true,
      price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
      // Long enough for the tenant to fetch b's output, short enough to see b let go of it.
      outputRetentionS: OUTPUT_RETENTION_S,
    },
  });
  tenant = await market.tenant(0, { ipfsDir: path.join(dir, "tenant-ipfs") });
  ipfs = tenant.ipfs!;
  const script = await readFile(path.join(root, "examples/train/train.mjs"));
  const cid = await ipfs.add([script]);
  await ipfs.pin(cid);
  scriptCid = cid.toString();
}, 240_000);

afterAll(async () => {
  await market?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function lease(provider: ProviderHandle, predecessor: bigint): Promise<bigint> {
  const { leaseManager, paymentToken } = contracts(market.deployment);
  const response = await requestQuote(
    tenant.host,
    peerIdFromString(provider.peerId),
    tenant.key,
    {
      chainId: market.deployment.chainId,
      leaseManager: leaseManager.address,
      jobId,
      tenant: tenant.account.address,
      requirements: { gpus: 0 },
      image: zeroHash,
      maxPricePerSecond: parseEther("0.001"),
      durationS: 600,
    },
    { address: multiaddr(provider.address!), signal: AbortSignal.timeout(10_000) },
  );
  if (response.kind !== "quote") throw new Error(`refused: ${response.message}`);
  const deposit = response.quote.pricePerSecond * 600n;
  await writeContract(tenant.chain, {
    ...paymentToken,
    functionName: "approve",
    args: [leaseManager.address, deposit],
  });
  const receipt = await writeContract(tenant.chain, {
    ...leaseManager,
    functionName: "openLease",
    args: [response.quote, response.signature, deposit, predecessor],
  });
  return leaseIdFromReceipt(receipt, leaseManager.address);
}

async function start(
  provider: ProviderHandle,
  leaseId: bigint,
  resume?: { cid: string; sha256: string },
  stepDelayMs = "20",
): Promise<LeaseSession> {
  return openLeaseSession(
    tenant.host,
    peerIdFromString(provider.peerId),
    tenant.key,
    {
      type: "start",
      body: {
        leaseId,
        auth: await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString()),
        key: keyBase64,
        ...(resume ? { resume } : {}),
        spec: {
          name: "train",
          command: ["node", "train.mjs"],
          env: { ...TRAIN_ENV, TRAIN_STEP_DELAY_MS: stepDelayMs },
          inputs: [{ cid: scriptCid, path: "train.mjs" }],
          resources: { gpus: 0, cpus: 1, memoryMiB: 256 },
          network: false,
          maxDurationS: 300,
        },
      },
    },
    { address: multiaddr(provider.address!), signal: AbortSignal.timeout(30_000) },
  );
}

describe("checkpoints that outlive their provider", () => {
  it("hands a job from a SIGKILLed provider to another, resuming from a checkpoint fetched from the tenant, with the same result", async () => {
    const [a, b] = market.providers as [ProviderHandle, ProviderHandle];
    const first = await lease(a, 0n);
    const sessionA = await start(a, first);
    safe.length = 0;
    for await (const event of sessionA.messages) {
      if (event.type === "refused") throw new Error(`refused: ${event.body.message}`);
      if (event.type !== "checkpoint") continue;
      // Safe once the tenant holds it: fetched into its own store, decrypted, its digest checked, pinned.
      await restoreCheckpoint(ipfs, key, CID.parse(event.body.cid), path.join(dir, `verify-${event.body.seq}`), {
        expectedSha256: event.body.sha256,
        maxBytes: MAX_BYTES,
        providers: [a.address!],
        pin: true,
        signal: AbortSignal.timeout(30_000),
      });
      await sessionA.send("checkpoint-ack", { leaseId: first, cid: event.body.cid });
      safe.push({ cid: event.body.cid, sha256: event.body.sha256, step: event.body.step! });
      if (safe.length === 2) break;
    }
    await sessionA.close();

    // The provider dies (its job with it); the tenant closes its lease and hands the job on.
    a.process!.child.kill("SIGKILL");
    await a.process!.exited;
    const { leaseManager } = contracts(market.deployment);
    await writeContract(tenant.chain, { ...leaseManager, functionName: "close", args: [first] });
    const second = await lease(b, first);
    const last = safe.at(-1)!;
    const sessionB = await start(b, second, { cid: last.cid, sha256: last.sha256 }, "0");

    let resumed = false;
    let firstStep: number | undefined;
    let output: { cid: string; sha256: string } | undefined;
    const publishedB = new Set<string>();
    for await (const event of sessionB.messages) {
      if (event.type === "refused") throw new Error(`refused: ${event.body.message}`);
      if (event.type === "checkpoint") publishedB.add(event.body.cid);
      if (event.type === "accepted") resumed = event.body.resumed;
      if (event.type === "heartbeat" && firstStep === undefined && event.body.progress?.step !== undefined) {
        firstStep = event.body.progress.step;
      }
      if (event.type === "result") {
        expect(event.body.exitCode).toBe(0);
        output = { cid: event.body.outputCid!, sha256: event.body.outputSha256! };
        outputB = { cid: output.cid, published: Date.now() };
        break;
      }
    }
    await sessionB.close();
    expect(resumed).toBe(true);
    if (firstStep !== undefined) expect(firstStep).toBeGreaterThanOrEqual(last.step);

    await restoreCheckpoint(ipfs, key, CID.parse(output!.cid), path.join(dir, "output"), {
      expectedSha256: output!.sha256,
      maxBytes: MAX_BYTES,
      providers: [b.address!],
      signal: AbortSignal.timeout(30_000),
    });
    expect(await readFile(path.join(dir, "output", "result.json"), "utf8")).toBe(reference);

    // Its lease finished, b lets go of what its job still pinned: its newest checkpoints (the one
    // it resumed from went once it had published `keep` newer ones, or goes now).
    const releasedB = JSON.parse(await b.process!.waitFor(/"checkpoints released"/, 60_000));
    expect(releasedB).toMatchObject({ leaseId: second.toString() });
    expect(releasedB.cids.length).toBeGreaterThan(0);
    for (const cid of releasedB.cids) expect([...publishedB, last.cid]).toContain(cid);
    // a, restarted after its lease was closed, lets go of what it published and still kept.
    await a.start();
    const releasedA = JSON.parse(await a.process!.waitFor(/"checkpoints released"/, 60_000));
    expect(releasedA).toMatchObject({ leaseId: first.toString() });
    expect(releasedA.cids).toContain(last.cid);
  });

  it("never resumes from a checkpoint that does not verify: wrong digest or wrong key is refused", async () => {
    const b = market.providers[1]!;
    const last = safe.at(-1)!;
    const { leaseManager } = contracts(market.deployment);
    const leaseId = await lease(b, 0n);
    const attempts: { resume: { cid: string; sha256: string }; key: string; expect: RegExp }[] = [
      {
        resume: { cid: last.cid, sha256: "00".repeat(32) },
        key: keyBase64,
        expect: /does not match its announced digest/,
      },
      { resume: last, key: Buffer.from(generateJobKey()).toString("base64"), expect: /cannot resume from/ },
    ];
    for (const attempt of attempts) {
      const session = await openLeaseSession(
        tenant.host,
        peerIdFromString(b.peerId),
        tenant.key,
        {
          type: "start",
          body: {
            leaseId,
            auth: await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString()),
            key: attempt.key,
            resume: attempt.resume,
            spec: {
              name: "train",
              command: ["node", "train.mjs"],
              env: TRAIN_ENV,
              inputs: [{ cid: scriptCid, path: "train.mjs" }],
              resources: { gpus: 0, cpus: 1, memoryMiB: 256 },
              network: false,
              maxDurationS: 300,
            },
          },
        },
        { address: multiaddr(b.address!), signal: AbortSignal.timeout(30_000) },
      );
      const first = await session.messages.next();
      await session.close();
      expect(first.done).toBe(false);
      const event = first.value!;
      expect(event.type).toBe("refused");
      if (event.type !== "refused") continue;
      expect(event.body.reason).toBe("resume-failed");
      expect(event.body.message).toMatch(attempt.expect);
    }
    await writeContract(tenant.chain, { ...leaseManager, functionName: "close", args: [leaseId] });
  });

  it("lets go of an output once it is outputRetentionS old", async () => {
    const b = market.providers[1]!;
    const released = await b.process!.waitFor(new RegExp(`"output released".*"cid":"${outputB!.cid}"`), 120_000);
    expect(Date.parse(JSON.parse(released).t)).toBeGreaterThanOrEqual(
      outputB!.published + OUTPUT_RETENTION_S * 1000 - 1000,
    );
  });

  it("still holds the safe checkpoints in a restarted tenant's store", async () => {
    // A fresh IPFS node over the same store, as a restarted tenant opens it.
    await ipfs.stop();
    const host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
    const reopened = await createIpfsNode({ host, dir: path.join(dir, "tenant-ipfs") });
    try {
      for (const checkpoint of safe) expect(await reopened.isPinned(CID.parse(checkpoint.cid))).toBe(true);
    } finally {
      await reopened.stop();
      await host.stop();
    }
  });
});
