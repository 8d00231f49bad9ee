import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { formatEther, parseEther } from "viem";
import { afterAll, beforeAll, expect, it } from "vitest";

import { auditJob } from "../../sdk/actions/auditJob.ts";
import { runJob, type JobHandle } from "../../sdk/actions/runJob.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { simulateMarket } from "../../sim/market.ts";
import { measuredDefaults, parseScenario } from "../../sim/scenario.ts";
import { startMarket, type Market } from "../helpers/market.ts";
import { recorder, SCRIPT, serving, trainSpec } from "../helpers/run-job.ts";

// The simulation against the real system: three short jobs on a devnet with five real provider
// processes, two of them killed (SIGKILL) under a job at known steps, half way between two
// checkpoints (so that neither side's timing can put the kill past one); then the same jobs and
// kills in the simulation, whose inputs are what this run measured of the parts it does not check:
// the uninterrupted job's length (started → result), each job's start (lease opened → started,
// averaged), how much longer a resumed job's start is (it fetches its checkpoint first: 0.1 s on an
// idle machine, 0.5 s and more under load), the trainer's checkpoint interval and size, and the
// detection and hand-off (failed → the new lease opened) times, averaged over both kills. What is checked is what the simulation
// predicts from them: each job's completion time, the seconds its leases were paid, and the slashes'
// compensation (exactly).
//
// The tolerance, and why: a killed job's own length differs from the uninterrupted one's with the
// machine's load (three jobs share two cores): 10 % of it; each job's start and resume, and each
// kill's detection and hand-off, differ from their means: their spreads; chain time counts whole seconds,
// and a job starts a moment after its lease opens: 1 s (per lease, for payments). A kill here costs
// its job about 4 s (the 100 steps since the checkpoint, detection, the hand-off), more than the
// completion tolerance (about 3 s): a simulation that left the failures out would fail this test.

const STEP_MS = "25";
const STEPS = 600;
const EVERY = 200;
const PRICE_PER_SECOND = 1_000_000_000_000n;

let market: Market;
let client: BatonClient;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-sim-validation-"));
  market = await startMarket({
    providers: 5,
    config: {
      cpuJobs: true,
      price: { basePerSecond: PRICE_PER_SECOND.toString(), perGpuPerSecond: "0" },
      chainHeartbeatPeriodS: 1,
      chainHeartbeatTimeoutS: 6,
      // One job per provider, as one GPU per provider in the simulation.
      maxLeases: 1,
    },
  });
  client = await market.client(0, path.join(dir, "tenant"));
}, 240_000);

afterAll(async () => {
  await market?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Kills the provider serving `job` once it reports `step` (past a safe checkpoint); returns when (ms). */
async function killAt(job: JobHandle, when: ReturnType<typeof recorder>["when"], step: number): Promise<number> {
  await when("checkpoint-safe", (e) => (e.step ?? 0) >= step - (step % EVERY));
  await when("progress", (e) => (e.step ?? 0) >= step);
  const victim = serving(market, job);
  const killedAt = Date.now();
  victim.process!.child.kill("SIGKILL");
  return killedAt;
}

it("predicts the completion times, payments and compensation of a real run with two kills", async () => {
  const spec = {
    ...trainSpec(STEP_MS),
    env: { ...trainSpec(STEP_MS).env, TRAIN_STEPS: String(STEPS), TRAIN_CHECKPOINT_EVERY: String(EVERY) },
  };
  // Each job's events recorded from its first (listeners see only what happens after they are
  // added), and one job at a time until it runs: two bids at once can both be quoted by one provider,
  // which takes a second lease before it counts the first.
  const started3: { job: JobHandle; record: ReturnType<typeof recorder> }[] = [];
  for (let j = 0; j < 3; j++) {
    const job = await runJob(client, spec, { maxPricePerSecond: parseEther("0.001"), files: { "train.mjs": SCRIPT } });
    const record = recorder(job);
    await record.when("started");
    started3.push({ job, record });
  }
  const jobs = started3.map((s) => s.job);
  const records = started3.map((s) => s.record);
  // Job 0 loses its provider half way through its second checkpoint interval, job 1 through its
  // third; job 2 runs undisturbed.
  const killedAt = await Promise.all([
    killAt(jobs[0]!, records[0]!.when, 300),
    killAt(jobs[1]!, records[1]!.when, 500),
  ]);
  await Promise.all(jobs.map((job) => job.result()));
  await Promise.all(jobs.map((job) => job.settled()));

  const at = (j: number, type: string) => records[j]!.events.filter((e) => e.type === type).map((e) => e.at);
  // A job's time runs from its first lease's opening, as it is paid from then.
  const opened = [0, 1, 2].map((j) => at(j, "lease-opened"));
  const started = [0, 1, 2].map((j) => at(j, "started"));
  const completed = [0, 1, 2].map((j) => at(j, "completed")[0]!);
  const failed = [0, 1].map((j) => at(j, "provider-failed")[0]!);
  const t0 = Math.min(...opened.map((o) => o[0]!));
  const real = [0, 1, 2].map((j) => ({
    completionS: (completed[j]! - opened[j]![0]!) / 1000,
    leases: opened[j]!.length,
  }));
  const story = records.map((r) =>
    r.events
      .filter((e) => !["progress", "log", "checkpoint-safe"].includes(e.type))
      .map((e) => `${e.at - t0} ${e.type} ${"leaseId" in e ? e.leaseId : ""} ${"provider" in e ? e.provider : ""}`),
  );
  expect(
    real.map((r) => r.leases),
    JSON.stringify({ killedAt: killedAt.map((k) => k - t0), story }, null, 1),
  ).toEqual([2, 2, 1]);

  // The inputs: measured, but not what is checked.
  const startDelay = [0, 1, 2].map((j) => (started[j]![0]! - opened[j]![0]!) / 1000);
  const resumeDelay = [0, 1].map((j) => (started[j]![1]! - opened[j]![1]!) / 1000);
  const lengthS = (completed[2]! - started[2]![0]!) / 1000;
  const detect = failed.map((f, k) => (f - killedAt[k]!) / 1000);
  const handOff = [0, 1].map((j) => (opened[j]![1]! - failed[j]!) / 1000);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const spread = (xs: number[]) => Math.max(...xs) - Math.min(...xs);
  const intervalS = (lengthS * EVERY) / STEPS;
  const sizeBytes = Math.max(...records[2]!.events.flatMap((e) => (e.type === "checkpoint-safe" ? [e.size] : [])));
  const scenario = parseScenario(
    {
      providers: 5,
      jobs: { startS: mean(startDelay) },
      checkpoint: {
        intervalMinutes: intervalS / 60,
        sizeMiB: sizeBytes / 2 ** 20,
        restoreS: Math.max(0, mean(resumeDelay) - mean(startDelay)),
      },
      baton: { detectCrashS: mean(detect), handOffS: mean(handOff) },
      lease: { heartbeatPeriodS: 1, heartbeatTimeoutS: 6, collateralUsd: 10, timeoutSweepS: [] },
    },
    await measuredDefaults(dir),
  );
  const sim = simulateMarket(scenario, {
    model: "baton",
    failuresPerHour: 0,
    droppers: false,
    trace: {
      jobs: [0, 1, 2].map((j) => ({ arrivalS: (opened[j]![0]! - t0) / 1000, lengthS })),
      kills: [0, 1].map((j) => ({ job: j, atS: (killedAt[j]! - t0) / 1000, downS: Infinity })),
    },
  });

  const audits = await Promise.all(jobs.map((job) => auditJob(client, { jobId: job.jobId })));
  const paidS = audits.map((a) => Number(a.totals.secondsPaid));
  const slashes = records.flatMap((r) => r.events.filter((e) => e.type === "slashed")).length;
  const table = [0, 1, 2].map((j) => ({
    job: j,
    realCompletionS: +real[j]!.completionS.toFixed(2),
    simCompletionS: +sim.perJob!.completionS[j]!.toFixed(2),
    realPaidS: paidS[j],
    simPaidS: sim.perJob!.paidS[j],
  }));
  const context = JSON.stringify(
    { table, startDelay, resumeDelay, detect, handOff, lengthS, intervalS, story },
    null,
    1,
  );
  console.log(`simulation against the real run:\n${context}`);

  for (const j of [0, 1, 2]) {
    const completionTolerance =
      0.1 * lengthS + spread(startDelay) + spread(resumeDelay) + spread(detect) + spread(handOff) + 1;
    expect(Math.abs(sim.perJob!.completionS[j]! - real[j]!.completionS), context).toBeLessThanOrEqual(
      completionTolerance,
    );
    const paidTolerance = 0.1 * lengthS + real[j]!.leases;
    expect(Math.abs(sim.perJob!.paidS[j]! - paidS[j]!), context).toBeLessThanOrEqual(paidTolerance);
  }
  // Each dead provider's collateral paid the tenant its share and, as the SDK slashes from the
  // tenant's account, the caller's: the simulation's compensation is both.
  const compensation = audits.reduce((sum, a) => sum + a.totals.compensationToTenant + a.totals.callerRewards, 0n);
  expect(slashes, context).toBe(2);
  expect(formatEther(compensation), context).toBe(String(sim.tenant.compensation));
}, 150_000);
