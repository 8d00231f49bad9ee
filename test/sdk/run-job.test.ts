import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { parseEther, type Address } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { contracts, leaseStatus } from "../../sdk/chain/client.ts";
import { BudgetExhaustedError } from "../../sdk/errors.ts";
import { runJob, type JobEvent, type JobHandle } from "../../sdk/actions/runJob.ts";
import type { BatonClient } from "../../sdk/client.ts";
import type { JobSpecInput } from "../../sdk/job-spec.ts";
import { devAccount } from "../../deploy/local-chain.ts";
import { providerDirs, runToEnd, startExampleJob, tempDir } from "../helpers/example-jobs.ts";
import { startMarket, type Market, type ProviderHandle } from "../helpers/market.ts";
import { privateKeyOf } from "../helpers/market.ts";
import { root, spawnScript, until } from "../helpers/processes.ts";

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

/**
 * Collects a job's events, and resolves `when` for the first event matching a predicate; rejects
 * with the job's error if it fails first, so a test shows why instead of timing out.
 */
function recorder(job: JobHandle) {
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

  it("(b) SIGKILL the replacement too: two hand-offs, same result", async () => {
    const job = await runJob(client, spec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const first = serving(job);
    first.process!.child.kill("SIGKILL");
    const moved = await when("re-leased");
    await when("checkpoint-safe", (e) => e.leaseId === moved.to);
    const second = serving(job);
    expect(second).not.toBe(first);
    second.process!.child.kill("SIGKILL");
    const result = await job.result();
    expect(result.handOffs).toBe(2);
    expect(new Set(result.leases.map((l) => l.provider)).size).toBe(3);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(reference);
    const starts = events.filter((e) => e.type === "started");
    expect(starts.map((e) => e.type === "started" && e.resumed)).toEqual([false, true, true]);
    await job.settled();
    expect(events.filter((e) => e.type === "slashed")).toHaveLength(2);
    await Promise.all([first.start(), second.start()]);
  });

  it("(c) SIGSTOP until replaced, then SIGCONT: the old provider is fenced, its job killed, and there is one result", async () => {
    const job = await runJob(client, spec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      // As long a silence as the on-chain timeout (6 s): the hand-off meets the lease just as it turns
      // slashable, and must end it either way (a close raced the deadline here and failed the job).
      failAfterMs: 6_000,
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const frozen = serving(job);
    frozen.process!.child.kill("SIGSTOP");
    try {
      const failed = await when("provider-failed");
      expect(failed.provider).toBe(frozen.account.address);
      await when("started", (e) => e.leaseId !== failed.leaseId);
    } finally {
      frozen.process!.child.kill("SIGCONT");
    }
    await frozen.process!.waitFor(/lease ended on chain; job stopped/, 30_000);
    const result = await job.result();
    expect(events.filter((e) => e.type === "completed")).toHaveLength(1);
    expect(result.leases.at(-1)!.provider).not.toBe(frozen.account.address);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(reference);
    // The frozen provider could not finish its old lease with a result: it was closed or slashed.
    const { leaseManager } = contracts(market.deployment);
    const old = await market.admin.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [BigInt(result.leases[0]!.leaseId)],
    });
    expect(["Closing", "Closed", "Slashed"]).toContain(
      ["None", "Active", "Closing", "Completed", "Closed", "Expired", "Slashed"][old.status],
    );
    await job.settled();
  });

  it("(g) nine jobs on three providers: killing one moves exactly its jobs and slashes exactly its leases", async () => {
    const { leaseManager } = contracts(market.deployment);
    const jobs = await Promise.all(
      Array.from({ length: 9 }, async (_, i) => {
        // Spread the first leases evenly (three per provider); hand-offs may go anywhere.
        const home = market.providers[i % 3]!;
        let first = true;
        // 30 s each: every job is still running when the last of them has its first safe checkpoint.
        const job = await runJob(client, spec("50"), {
          maxPricePerSecond: parseEther("0.001"),
          files: { "train.mjs": SCRIPT },
          excludeProviders: () => {
            const others = first ? market.providers.filter((p) => p !== home).map((p) => p.account.address) : [];
            first = false;
            return others;
          },
        });
        return { job, home, ...recorder(job) };
      }),
    );
    await Promise.all(jobs.map(({ when }) => when("checkpoint-safe")));
    const victim = market.providers[0]!;
    for (const { job, home } of jobs) expect(serving(job)).toBe(home);
    victim.process!.child.kill("SIGKILL");

    const results = await Promise.all(jobs.map(({ job }) => job.result()));
    await Promise.all(jobs.map(({ job }) => job.settled()));

    const moved = jobs.filter(({ home }) => home === victim);
    for (const [i, { home, events }] of jobs.entries()) {
      const result = results[i]!;
      expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(reference);
      const failed = events.filter((e) => e.type === "provider-failed");
      const slashed = events.filter((e) => e.type === "slashed");
      if (home === victim) {
        expect(result.handOffs).toBe(1);
        expect(failed.map((e) => e.type === "provider-failed" && e.provider)).toEqual([victim.account.address]);
        expect(slashed.map((e) => e.type === "slashed" && e.leaseId)).toEqual([BigInt(result.leases[0]!.leaseId)]);
      } else {
        expect(result.handOffs).toBe(0);
        expect(failed).toEqual([]);
        expect(slashed).toEqual([]);
      }
    }
    // On chain, the same: the victim's three leases slashed, every other lease completed (providers
    // finish on chain a moment after the tenant has the result).
    const onChain = () =>
      Promise.all(
        results.flatMap((result) =>
          result.leases.map(async (lease) => {
            const view = await market.admin.publicClient.readContract({
              ...leaseManager,
              functionName: "getLease",
              args: [BigInt(lease.leaseId)],
            });
            return { provider: lease.provider, status: leaseStatus[view.status] };
          }),
        ),
      );
    await until(async () => (await onChain()).every((s) => s.status !== "Active"), 60_000, "every lease ended");
    const statuses = await onChain();
    expect(moved).toHaveLength(3);
    expect(statuses.filter((s) => s.status === "Slashed")).toHaveLength(3);
    for (const { provider, status } of statuses) {
      expect(status).toBe(provider === victim.account.address ? "Slashed" : "Completed");
    }
    await victim.start();
  });

  it("(e) a budget that runs out fails the job cleanly, its lease closed and the rest refunded", async () => {
    const { paymentToken } = contracts(market.deployment);
    const balance = () =>
      market.admin.publicClient.readContract({
        ...paymentToken,
        functionName: "balanceOf",
        args: [client.account.address],
      });
    const before = await balance();
    const price = 1_000_000_000_000n;
    const started = Date.now();
    const job = await runJob(client, spec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      budget: price * 8n,
    });
    const { events } = recorder(job);
    await expect(job.result()).rejects.toBeInstanceOf(BudgetExhaustedError);
    const elapsedS = BigInt(Math.ceil((Date.now() - started) / 1000));
    expect(events.at(-1)?.type).toBe("failed");
    const record = await client.jobs.get(job.jobId);
    expect(record?.state).toBe("failed");
    const { leaseManager } = contracts(market.deployment);
    const lease = await market.admin.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [BigInt(record!.leases[0]!.leaseId)],
    });
    expect(lease.status).not.toBe(1);
    // Paid for the time used, not the whole deposit: the rest came back.
    const spent = before - (await balance());
    expect(spent).toBeLessThan(price * 8n);
    expect(spent).toBeLessThanOrEqual(price * (elapsedS + 1n));
  });

  it("(f) with both cores busy for the whole job and no kill, there is no hand-off", async () => {
    const burners: ChildProcess[] = Array.from({ length: os.availableParallelism() }, () =>
      spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: "ignore" }),
    );
    try {
      const job = await runJob(client, spec("10"), {
        maxPricePerSecond: parseEther("0.001"),
        files: { "train.mjs": SCRIPT },
      });
      const { events } = recorder(job);
      const result = await job.result();
      expect(result.handOffs).toBe(0);
      expect(events.filter((e) => e.type === "provider-failed")).toEqual([]);
      expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(reference);
    } finally {
      for (const burner of burners) burner.kill("SIGKILL");
    }
  });
});

describe("tenant restart", () => {
  it("(d) a killed `baton job run --watch` is picked up by `baton job watch`, which re-attaches and completes the job", async () => {
    const dataDir = path.join(dir, "tenant-cli");
    await market.client(1, path.join(dir, "tenant-fund"));
    const specFile = path.join(dir, "train.yaml");
    await writeFile(specFile, JSON.stringify({ ...spec("20"), inputs: [{ file: SCRIPT, path: "train.mjs" }] }));
    const network = [
      "--data-dir",
      dataDir,
      "--rpc-url",
      market.chain.rpcUrl,
      "--deployment",
      market.deploymentFile,
      ...market.providers.flatMap((p) => ["--bootstrap", p.address!]),
    ];
    const env = { BATON_TENANT_KEY: privateKeyOf(devAccount(11)) };
    const first = spawnScript(
      "cli/baton.ts",
      ["job", "run", specFile, "--max-price", "0.001", "--watch", ...network],
      env,
    );
    const idLine = await first.waitFor(/^job 0x[0-9a-f]{64}$/, 60_000);
    const jobId = idLine.split(" ")[1]!;
    await first.waitFor(/checkpoint step 100 safe/, 60_000);
    first.child.kill("SIGKILL");
    await first.exited;

    const second = spawnScript("cli/baton.ts", ["job", "watch", jobId, ...network], env);
    const exit = await second.exited;
    expect(exit.code, second.lines.slice(-20).join("\n")).toBe(0);
    expect(second.lines.join("\n")).toMatch(/completed \(exit 0\) after 0 hand-off/);
    const record = JSON.parse(await readFile(path.join(dataDir, "jobs", `${jobId}.json`), "utf8"));
    expect(record.state).toBe("completed");
    expect(await readFile(path.join(record.result.outputDir, "result.json"), "utf8")).toBe(reference);
  });
});

describe("the README's SDK example", () => {
  it("examples/sdk/run-job.ts runs as written against a devnet's network file", async () => {
    const account = devAccount(12);
    await market.fund(account.address, parseEther("1"));
    const example = spawnScript(
      "examples/sdk/run-job.ts",
      ["--network", market.networkFile, "--steps", "300", "--data-dir", path.join(dir, "tenant-example")],
      { BATON_TENANT_KEY: privateKeyOf(account) },
    );
    const exit = await example.exited;
    expect(exit.code, example.lines.slice(-20).join("\n")).toBe(0);
    expect(example.lines.join("\n")).toMatch(/^done after 0 hand-off\(s\): loss \d/m);
  });
});
