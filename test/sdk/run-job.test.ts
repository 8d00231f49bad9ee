import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { parseEther, type Address } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { contracts } from "../../sdk/chain/client.ts";
import { runJob, type JobEvent, type JobHandle } from "../../sdk/actions/runJob.ts";
import type { BatonClient } from "../../sdk/client.ts";
import type { JobSpecInput } from "../../sdk/job-spec.ts";
import { devAccount } from "../../deploy/local-chain.ts";
import { providerDirs, runToEnd, startExampleJob, tempDir } from "../helpers/example-jobs.ts";
import { startMarket, type Market, type ProviderHandle } from "../helpers/market.ts";
import { root } from "../helpers/processes.ts";

const TRAIN_ENV = { TRAIN_STEPS: "600", TRAIN_CHECKPOINT_EVERY: "50", TRAIN_SEED: "3" };
const SCRIPT = path.join(root, "examples/train/train.mjs");
const spec = (delayMs: string): JobSpecInput => ({
  name: "train",
  command: ["node", "train.mjs"],
  env: { ...TRAIN_ENV, TRAIN_STEP_DELAY_MS: delayMs },
  resources: { gpus: 0, cpus: 1, memoryMiB: 256 },
  maxDurationS: 300,
});

let market: Market;
let dir: string;
let reference: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-runjob-test-"));
  const refDirs = await providerDirs(await tempDir("baton-ref-"), "ref");
  reference = await runToEnd(startExampleJob([process.execPath, SCRIPT], refDirs, TRAIN_ENV), refDirs);
  market = await startMarket({
    providers: 3,
    config: {
      cpuJobs: true,
      price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
      chainHeartbeatPeriodS: 1,
      chainHeartbeatTimeoutS: 6,
    },
  });
}, 240_000);

afterAll(async () => {
  await market?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Token holders whose balances must add up to each token's supply. */
function holders(): Address[] {
  const { leaseManager, registry } = contracts(market.deployment);
  return [
    ...Array.from({ length: 16 }, (_, i) => devAccount(i).address),
    leaseManager.address,
    registry.address,
    market.deployment.parameters.treasury,
  ];
}

async function totals(): Promise<{ payment: bigint; staking: bigint; paymentSupply: bigint; stakingSupply: bigint }> {
  const { paymentToken, stakingToken } = contracts(market.deployment);
  const sum = async (token: typeof paymentToken): Promise<bigint> => {
    let total = 0n;
    for (const holder of holders()) {
      total += await market.admin.publicClient.readContract({ ...token, functionName: "balanceOf", args: [holder] });
    }
    return total;
  };
  const supply = (token: typeof paymentToken) =>
    market.admin.publicClient.readContract({ ...token, functionName: "totalSupply" });
  return {
    payment: await sum(paymentToken),
    staking: await sum(stakingToken),
    paymentSupply: await supply(paymentToken),
    stakingSupply: await supply(stakingToken),
  };
}

function serving(job: JobHandle): ProviderHandle {
  const provider = job.status().provider;
  const handle = market.providers.find((p) => p.account.address === provider);
  if (!handle) throw new Error(`no provider ${provider}`);
  return handle;
}

/** Collects a job's events, and resolves `when` for the first event matching a predicate. */
function recorder(job: JobHandle) {
  const events: JobEvent[] = [];
  job.on("*", (event) => events.push(event));
  const when = <T extends JobEvent["type"]>(
    type: T,
    predicate: (e: Extract<JobEvent, { type: T }>) => boolean = () => true,
  ) =>
    new Promise<Extract<JobEvent, { type: T }>>((resolve) => {
      const seen = events.find((e) => e.type === type && predicate(e as Extract<JobEvent, { type: T }>));
      if (seen) return resolve(seen as Extract<JobEvent, { type: T }>);
      const off = job.on(type, (event) => {
        if (!predicate(event as Extract<JobEvent, { type: T }>)) return;
        off();
        resolve(event as Extract<JobEvent, { type: T }>);
      });
    });
  return { events, when };
}

describe("runJob: hand-off to a new provider", () => {
  let client: BatonClient;

  beforeAll(async () => {
    client = await market.client(0, path.join(dir, "tenant-a"));
  });

  it("(a) SIGKILL mid-job: the job completes elsewhere with the uninterrupted result; the dead lease is slashed; tokens are conserved", async () => {
    const before = await totals();
    const job = await runJob(client, spec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const victim = serving(job);
    const killedAt = Date.now();
    victim.process!.child.kill("SIGKILL");

    const failed = await when("provider-failed");
    const restarted = await when("started", (e) => e.leaseId !== failed.leaseId);
    const result = await job.result();
    await job.settled();

    expect(failed.provider).toBe(victim.account.address);
    expect(failed.at - killedAt).toBeLessThan(5_000);
    expect(restarted.resumed).toBe(true);
    expect(result.handOffs).toBe(1);
    expect(result.leases).toHaveLength(2);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(reference);
    // Work lost is at most one checkpoint interval plus what ran during detection.
    const resumedStep = restarted.resumedFrom!.step!;
    expect(failed.lastStep! - resumedStep).toBeLessThanOrEqual(50 + Math.ceil((failed.at - killedAt) / 20) + 10);

    const slashed = events.find((e) => e.type === "slashed");
    expect(slashed).toMatchObject({ leaseId: failed.leaseId, provider: victim.account.address });
    if (slashed?.type === "slashed") expect(slashed.compensation).toBeGreaterThan(0n);

    const after = await totals();
    // Nothing minted or lost: every token is held by someone, and the treasury's share burned is the only supply change.
    expect(after.payment).toBe(after.paymentSupply);
    expect(after.staking).toBe(after.stakingSupply);
    expect(after.paymentSupply).toBe(before.paymentSupply);
    await victim.start();
  });
});
