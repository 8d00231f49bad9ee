import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import type { Address } from "viem";
import { afterAll, beforeAll, expect } from "vitest";

import { devAccount } from "../../deploy/local-chain.ts";
import { fallbackJobsDir } from "../../node/jobs-dir.ts";
import type { JobEvent, JobHandle } from "../../sdk/actions/runJob.ts";
import { contracts } from "../../sdk/chain/client.ts";
import type { JobSpecInput } from "../../sdk/job-spec.ts";
import { providerDirs, runToEnd, startExampleJob } from "./example-jobs.ts";
import { startMarket, type Market, type ProviderHandle, type StartMarketOptions } from "./market.ts";
import { root } from "./processes.ts";

/** The example trainer, short: 600 steps, a checkpoint every 50. */
export const TRAIN_ENV = { TRAIN_STEPS: "600", TRAIN_CHECKPOINT_EVERY: "50", TRAIN_SEED: "3" };
export const SCRIPT = path.join(root, "examples/train/train.mjs");

/** The example trainer as a CPU job whose steps take `delayMs` each. */
export const trainSpec = (delayMs: string): JobSpecInput => ({
  name: "train",
  command: ["node", "train.mjs"],
  env: { ...TRAIN_ENV, TRAIN_STEP_DELAY_MS: delayMs },
  resources: { gpus: 0, cpus: 1, memoryMiB: 256 },
  maxDurationS: 300,
});

export interface RunJobFixture {
  market: Market;
  /** A temp dir for the file's tenants, removed after it. */
  dir: string;
  /** The trainer's result.json from an uninterrupted run, outside any market. */
  reference: string;
}

/**
 * A three-provider market for the calling test file (CPU jobs, on-chain heartbeat every 1 s, and
 * `configFor`'s settings per provider), started before its tests and stopped after them, and the
 * reference result.
 *
 * The on-chain timeout is short (6 s) by default, so that tests of a slash do not wait long. A file
 * that asserts no hand-off happens should ask for more: on a loaded machine an honest provider's
 * heartbeat transactions can fall 6 s behind, and its lease then rightly turns slashable.
 */
export function useRunJobMarket({
  providers = 3,
  chainHeartbeatTimeoutS = 6,
  chain,
  blockTimeS = 0,
  privateParent = false,
  configFor,
}: {
  chainHeartbeatTimeoutS?: number;
  /** The chain's EVM: Hardhat's EDR (the default) or Anvil. */
  chain?: StartMarketOptions["chain"];
  /** Seconds between blocks; 0 mines each transaction at once. */
  blockTimeS?: number;
  /**
   * Put the devnet (its providers' data dirs) under a 0700 directory, as a checkout in root's home
   * is: jobs, which run as nobody, cannot reach work dirs there, and the nodes must put them elsewhere.
   */
  privateParent?: boolean;
  configFor?: StartMarketOptions["configFor"];
  /** Provider node processes in the market (3 by default). */
  providers?: number;
} = {}): RunJobFixture {
  const fixture = {} as RunJobFixture;
  beforeAll(async () => {
    fixture.dir = await mkdtemp(path.join(os.tmpdir(), "baton-runjob-test-"));
    const refDirs = await providerDirs(fixture.dir, "ref");
    fixture.reference = await runToEnd(startExampleJob([process.execPath, SCRIPT], refDirs, TRAIN_ENV), refDirs);
    fixture.market = await startMarket({
      providers,
      ...(chain ? { chain } : {}),
      blockTimeS,
      // mkdtemp makes fixture.dir 0700.
      ...(privateParent ? { dir: path.join(fixture.dir, "devnet") } : {}),
      config: {
        cpuJobs: true,
        price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
        chainHeartbeatPeriodS: 1,
        chainHeartbeatTimeoutS,
      },
      ...(configFor ? { configFor } : {}),
    });
  }, 240_000);
  afterAll(async () => {
    // Work dirs a node put outside its data dir (see node/jobs-dir.ts) are the test's to remove.
    const outside = privateParent
      ? await Promise.all((fixture.market?.providers ?? []).map((p) => fallbackJobsDir(p.dataDir)))
      : [];
    await fixture.market?.stop();
    await Promise.all(outside.map((dir) => rm(dir, { recursive: true, force: true })));
    if (fixture.dir) await rm(fixture.dir, { recursive: true, force: true });
  });
  return fixture;
}

/**
 * Every token holder's balance summed, and each token's supply, all at one block: the two must stay
 * equal. (Read at the latest block one by one, a provider's claim landing between two reads would
 * count its tokens twice or not at all.)
 */
export async function totals(
  market: Market,
): Promise<{ payment: bigint; staking: bigint; paymentSupply: bigint; stakingSupply: bigint }> {
  const { leaseManager, registry, paymentToken, stakingToken } = contracts(market.deployment);
  const holders: Address[] = [
    ...Array.from({ length: 16 }, (_, i) => devAccount(i).address),
    leaseManager.address,
    registry.address,
    market.deployment.parameters.treasury,
  ];
  const { publicClient } = market.admin;
  const blockNumber = await publicClient.getBlockNumber();
  const sum = async (token: typeof paymentToken): Promise<bigint> => {
    let total = 0n;
    for (const holder of holders) {
      total += await publicClient.readContract({ ...token, functionName: "balanceOf", args: [holder], blockNumber });
    }
    return total;
  };
  const supply = (token: typeof paymentToken) =>
    publicClient.readContract({ ...token, functionName: "totalSupply", blockNumber });
  return {
    payment: await sum(paymentToken),
    staking: await sum(stakingToken),
    paymentSupply: await supply(paymentToken),
    stakingSupply: await supply(stakingToken),
  };
}

/**
 * Asserts that no token was minted or lost since `before` (a {@link totals} reading): every token is
 * held by someone, and neither supply moved.
 */
export async function expectTokensConserved(market: Market, before: Awaited<ReturnType<typeof totals>>): Promise<void> {
  const after = await totals(market);
  expect(after.payment).toBe(after.paymentSupply);
  expect(after.staking).toBe(after.stakingSupply);
  expect(after.paymentSupply).toBe(before.paymentSupply);
}

/** The options that point a tenant command of the `baton` CLI at the market, with its data dir. */
export function tenantCliArgs(market: Market, dataDir: string): string[] {
  return [
    "--data-dir",
    dataDir,
    "--rpc-url",
    market.chain.rpcUrl,
    "--deployment",
    market.deploymentFile,
    ...market.providers.flatMap((p) => ["--bootstrap", p.address!]),
  ];
}

/** The market's provider that serves the job now. */
export function serving(market: Market, job: JobHandle): ProviderHandle {
  const { provider, state } = job.status();
  const handle = market.providers.find((p) => p.account.address === provider);
  if (!handle) throw new Error(`job ${job.jobId} is served by no provider of the market (${state}, ${provider})`);
  return handle;
}

/**
 * Collects a job's events, and resolves `when` for the first event matching a predicate; rejects
 * with the job's error if it fails first, so a test shows why instead of timing out.
 */
export function recorder(job: JobHandle) {
  const events: JobEvent[] = [];
  job.on("*", (event) => events.push(event));
  const when = <T extends JobEvent["type"]>(
    type: T,
    predicate: (e: Extract<JobEvent, { type: T }>) => boolean = () => true,
  ) =>
    new Promise<Extract<JobEvent, { type: T }>>((resolve, reject) => {
      const seen = events.find((e) => e.type === type && predicate(e as Extract<JobEvent, { type: T }>));
      if (seen) return resolve(seen as Extract<JobEvent, { type: T }>);
      const off = job.on(type, (event) => {
        if (!predicate(event as Extract<JobEvent, { type: T }>)) return;
        off();
        resolve(event as Extract<JobEvent, { type: T }>);
      });
      if (type !== "failed") job.result().catch(reject);
    });
  return { events, when };
}

/** Every `provider-suspect` among `events` was followed by its lease's `provider-recovered`. */
export function expectEverySuspicionCleared(events: JobEvent[]): void {
  const open = new Set<bigint>();
  for (const event of events) {
    if (event.type === "provider-suspect") open.add(event.leaseId);
    if (event.type === "provider-recovered") open.delete(event.leaseId);
  }
  expect([...open]).toEqual([]);
}
