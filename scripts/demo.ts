/**
 * `npm run demo`: the whole market on this machine, and a provider failing under a running job.
 *
 * It starts a devnet (local chain, contracts, N provider processes), runs the example training job
 * through the SDK, kills the serving provider part-way (SIGKILL, or SIGSTOP), and shows what
 * follows: detection, re-lease, resume from the last safe checkpoint, completion. It checks the
 * result against an uninterrupted run of the same job, waits for the dead lease's slash, prints
 * the job's audit rebuilt from chain events, and a summary. Exit 0 when every check passed; no
 * process is left behind either way.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

import { formatEther, parseEther } from "viem";

import { printJob } from "../cli/audit-report.ts";
import { showJob } from "../cli/job-display.ts";
import { jsonReplacer, table } from "../cli/output.ts";
import { blockTimeArg } from "../cli/program.ts";
import { startDevnet, type Devnet, type DevnetProvider } from "../deploy/devnet.ts";
import { checkBlockTime, LOCAL_CHAINS, type LocalChainKind } from "../deploy/local-chain.ts";
import { isAlive } from "../deploy/processes.ts";
import {
  auditJob,
  BaseError,
  readJobFile,
  runJob,
  type AuditJobReturnType,
  type BatonClient,
  type JobEvent,
  type JobSpec,
} from "../sdk/index.ts";
import { poll } from "../sdk/utils/retry.ts";

const { values } = parseArgs({
  options: {
    providers: { type: "string", default: "3" },
    job: { type: "string", default: "examples/train/train.yaml" },
    failure: { type: "string", default: "kill" },
    "fail-after-checkpoints": { type: "string", default: "3" },
    "checkpoint-every": { type: "string" },
    steps: { type: "string" },
    "heartbeat-ms": { type: "string", default: "500" },
    "block-time": { type: "string", default: "0" },
    chain: { type: "string", default: "hardhat" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});

if (values.help) {
  console.log(`usage: npm run demo -- [options]
  --providers N                provider daemons to start (default 3, at least 2)
  --job FILE                   job spec (default examples/train/train.yaml)
  --failure kill|stop|none     SIGKILL the serving provider, SIGSTOP it (SIGCONT after the hand-off), or nothing
  --fail-after-checkpoints N   fail it once N checkpoints are safe with the tenant (default 3)
  --checkpoint-every STEPS     the example job's checkpoint interval (TRAIN_CHECKPOINT_EVERY)
  --steps STEPS                the example job's length (TRAIN_STEPS)
  --heartbeat-ms MS            the providers' session heartbeat period (default 500)
  --block-time S               seconds between blocks, as on a public chain (2, 12); 0 (default) mines at once
  --chain hardhat|anvil        the local chain's EVM: Hardhat's EDR (default) or Foundry's Anvil
  --json                       events and the final summary as JSON lines`);
  process.exit(0);
}

const fail = (message: string): never => {
  console.error(`demo: ${message}`);
  process.exit(2);
};
const providerCount = Number(values.providers);
if (!Number.isInteger(providerCount) || providerCount < 2 || providerCount > 16) fail("--providers must be 2…16");
const failure = values.failure;
if (failure !== "kill" && failure !== "stop" && failure !== "none") fail("--failure must be kill, stop or none");
const failAfter = Number(values["fail-after-checkpoints"]);
if (!Number.isInteger(failAfter) || failAfter < 1) fail("--fail-after-checkpoints must be a positive whole number");
const heartbeatMs = Number(values["heartbeat-ms"]);
if (!Number.isInteger(heartbeatMs) || heartbeatMs < 50) fail("--heartbeat-ms must be at least 50");
let blockTimeS = 0;
try {
  blockTimeS = blockTimeArg()(values["block-time"]);
} catch (error) {
  fail((error as Error).message);
}
const chain = values.chain as LocalChainKind;
if (!LOCAL_CHAINS.includes(chain)) fail(`--chain must be ${LOCAL_CHAINS.join(" or ")}, not ${values.chain}`);
try {
  checkBlockTime(chain, blockTimeS);
} catch (error) {
  fail((error as Error).message);
}
for (const name of ["checkpoint-every", "steps"] as const) {
  const value = values[name];
  if (value !== undefined && !/^[1-9]\d*$/.test(value)) fail(`--${name} must be a positive whole number`);
}

const json = values.json;
const say = (text: string): void => {
  if (!json) console.log(text);
};

const { spec, files } = await readJobFile(values.job).catch((error: unknown) =>
  fail(error instanceof BaseError ? error.message : String(error)),
);
if (values["checkpoint-every"]) spec.env.TRAIN_CHECKPOINT_EVERY = values["checkpoint-every"];
if (values.steps) spec.env.TRAIN_STEPS = values.steps;

let devnet: Devnet | undefined;
let client: BatonClient | undefined;
const pids: number[] = [];
const shutdown = async (): Promise<void> => {
  await client?.close().catch(() => undefined);
  await devnet?.stop();
};
process.once("SIGINT", () => void shutdown().then(() => process.exit(130)));
process.once("SIGTERM", () => void shutdown().then(() => process.exit(143)));

const checks: { check: string; ok: boolean; detail: string }[] = [];
let exitCode = 1;
try {
  say(
    `Baton demo: ${providerCount} providers, job ${spec.name}, failure: ${failure}, chain: ${chain}, ${blockTimeS > 0 ? `a block every ${blockTimeS} s` : "blocks mined at once"}\n`,
  );
  devnet = await startDevnet({
    providers: providerCount,
    chain,
    blockTimeS,
    config: { heartbeatMs },
    onStep: (message) => say(`  · ${message}`),
  });
  const providerPids = devnet.providers.map((p) => p.process!.pid);
  pids.push(...devnet.chain.pids, ...providerPids);
  say(`  · network up: chain ${devnet.chain.rpcUrl}, ${providerCount} providers (pids ${providerPids.join(", ")})\n`);

  client = await devnet.tenantClient({ dataDir: path.join(devnet.dir, "tenant") });
  const names = new Map(devnet.providers.map((p) => [p.account.address.toLowerCase(), p.name]));

  // The uninterrupted reference, run straight through on this machine while the market works.
  const reference = runReference(spec, files);
  reference.catch(() => undefined);

  const job = await runJob(client, spec, { maxPricePerSecond: parseEther("0.001"), files });
  say(`job ${job.jobId}\n`);
  const events: JobEvent[] = [];
  job.on("*", (event) => events.push(event));
  const stopDisplay = showJob(job, { json, names });

  let victim: DevnetProvider | undefined;
  let failedAt: number | undefined;
  if (failure !== "none") {
    // Fail it between checkpoints (half an interval after the Nth safe one), where a failure costs work.
    const every = Number(spec.env.TRAIN_CHECKPOINT_EVERY ?? 0);
    await new Promise<void>((resolve) => {
      let safeStep: number | undefined;
      const offSafe = job.on("checkpoint-safe", (event) => {
        if (events.filter((e) => e.type === "checkpoint-safe").length >= failAfter) safeStep ??= event.step ?? 0;
      });
      const offProgress = job.on("progress", (event) => {
        if (safeStep === undefined || (event.step ?? 0) < safeStep + Math.floor(every / 2)) return;
        offSafe();
        offProgress();
        resolve();
      });
      job.result().then(
        () => resolve(),
        () => resolve(),
      );
    });
    victim = devnet.providers.find((p) => p.account.address === job.status().provider);
    if (victim && job.status().state === "running") {
      failedAt = Date.now();
      const signal = failure === "kill" ? "SIGKILL" : "SIGSTOP";
      if (!json) process.stdout.write(`\n  ✗ ${signal} → ${victim.name} (pid ${victim.process!.pid})\n\n`);
      victim.process!.child.kill(signal);
      if (failure === "stop") {
        // Wake it once the job has moved on: it must find its lease gone and stop its copy of the job.
        const stopped = victim;
        job.on("started", () => void stopped.process!.child.kill("SIGCONT"));
      }
    }
  }

  let outcome: "completed" | "failed" = "completed";
  try {
    await job.result();
  } catch {
    outcome = "failed";
  }
  if (!json) process.stdout.write("\n  waiting for the dead lease's on-chain timeout, to slash it …\n");
  // A slash that was due but could not be made shows in the checks, not as a crash.
  const unsettled = await job.settled().then(
    () => undefined,
    (error: unknown) => (error instanceof Error ? error.message : String(error)),
  );
  stopDisplay();

  // The checks and the summary.
  const result = await job.result().catch(() => undefined);
  checks.push({ check: "job completed", ok: outcome === "completed", detail: outcome });
  const failedEvent = events.find((e) => e.type === "provider-failed");
  const resumed = events.find((e) => e.type === "started" && e.resumed);
  const slashes = events.filter((e) => e.type === "slashed");
  if (failure !== "none") {
    checks.push({
      check: "a hand-off happened",
      ok: (result?.handOffs ?? 0) >= 1,
      detail: `${result?.handOffs ?? 0} hand-off(s)`,
    });
    checks.push({
      check: "the dead lease was slashed",
      ok: slashes.length >= 1,
      detail: slashes.map((s) => (s.type === "slashed" ? `lease ${s.leaseId}` : "")).join(", ") || unsettled || "none",
    });
  }
  const expected = await reference;
  const got = result?.outputDir ? await treeDigest(result.outputDir) : undefined;
  checks.push({
    check: "result equals an uninterrupted run",
    ok: got !== undefined && got === expected,
    detail: got === expected ? `output digest ${got?.slice(0, 16)}…` : `got ${got}, expected ${expected}`,
  });

  // The audit is read once every lease has ended on chain: the last one's `finish`, sent by its
  // provider after the result reached us, may still wait for a block.
  const tenant = client.account.address;
  const auditNow = (): Promise<AuditJobReturnType> => auditJob(client!, { jobId: job.jobId, tenant });
  const unended = (audit: AuditJobReturnType): bigint[] =>
    [...audit.lineage, ...audit.others]
      .filter((lease) => lease.status === "active" || lease.status === "closing")
      .map((lease) => lease.leaseId);
  const audit =
    (await poll(
      async () => {
        const read = await auditNow();
        return unended(read).length === 0 ? { done: true, value: read } : { done: false };
      },
      { delayMs: 500, backoff: 1, timeoutMs: 30_000 + 10_000 * blockTimeS },
    )) ?? (await auditNow());
  checks.push({
    check: "every lease ended on chain",
    ok: unended(audit).length === 0,
    detail: unended(audit).length === 0 ? "before the audit" : `still open: ${unended(audit).join(", ")}`,
  });
  // Only the lease the failure hit may be slashed: a slash of any other is an honest provider lost.
  const failedLeases = new Set(
    events.flatMap((e) => (e.type === "provider-failed" && e.provider === victim?.account.address ? [e.leaseId] : [])),
  );
  const wrongSlashes = [...audit.lineage, ...audit.others].filter(
    (lease) => lease.status === "slashed" && !failedLeases.has(lease.leaseId),
  );
  checks.push({
    check: "no live, honest provider slashed",
    ok: wrongSlashes.length === 0,
    detail:
      wrongSlashes.length === 0
        ? "none"
        : wrongSlashes
            .map((l) => `lease ${l.leaseId} (${names.get(l.provider.toLowerCase()) ?? l.provider})`)
            .join(", "),
  });
  if (!json) {
    console.log("\nAudit of the job, rebuilt from chain events alone (`baton audit job <id>`):\n");
    printJob(audit);
  }
  const detectMs = failedEvent && failedAt ? failedEvent.at - failedAt : undefined;
  const resumeMs = resumed && failedAt ? resumed.at - failedAt : undefined;
  const lostSteps =
    failedEvent?.type === "provider-failed" && resumed?.type === "started" && failedEvent.lastStep !== undefined
      ? failedEvent.lastStep - (resumed.resumedFrom?.step ?? 0)
      : undefined;
  const summary = {
    jobId: job.jobId,
    chain,
    blockTimeS,
    outcome,
    handOffs: result?.handOffs ?? 0,
    detectMs,
    killToRunningMs: resumeMs,
    workLostSteps: lostSteps,
    checkpointEverySteps: Number(spec.env.TRAIN_CHECKPOINT_EVERY ?? NaN) || undefined,
    paidToProviders: audit.totals.paidToProviders,
    refundedToTenant: audit.totals.refundedToTenant,
    slashedCollateral: audit.totals.slashedCollateral,
    compensationToTenant: audit.totals.compensationToTenant,
    checks,
  };

  await client.close();
  client = undefined;
  await devnet.stop();
  const leftBehind = pids.filter(isAlive);
  checks.push({
    check: "no process left behind",
    ok: leftBehind.length === 0,
    detail: leftBehind.length === 0 ? `${pids.length} stopped` : `still running: ${leftBehind.join(", ")}`,
  });

  if (json) {
    console.log(JSON.stringify({ summary }, jsonReplacer));
  } else {
    const ms = (v: number | undefined): string => (v === undefined ? "-" : `${(v / 1000).toFixed(2)} s`);
    console.log("\nSummary\n");
    console.log(
      table([
        ["time to detect (kill → failed)", ms(detectMs)],
        ["time to resume (kill → running elsewhere)", ms(resumeMs)],
        [
          "work lost",
          lostSteps === undefined
            ? "-"
            : `${lostSteps} steps (checkpoint every ${summary.checkpointEverySteps ?? "?"} steps)`,
        ],
        ["paid to providers", formatEther(summary.paidToProviders)],
        ["refunded to the tenant", formatEther(summary.refundedToTenant)],
        ["slashed collateral", formatEther(summary.slashedCollateral)],
        ["  of which compensation to the tenant", formatEther(summary.compensationToTenant)],
      ]),
    );
    console.log("");
    console.log(
      table([["check", "result", "detail"], ...checks.map((c) => [c.check, c.ok ? "ok" : "FAILED", c.detail])]),
    );
  }
  exitCode = checks.every((c) => c.ok) ? 0 : 1;
} catch (error) {
  console.error(`demo failed: ${error instanceof BaseError ? error.message : (error as Error).stack}`);
} finally {
  await shutdown();
}
process.exit(exitCode);

/**
 * Runs the job once, straight through, as a plain child process in a temp dir with the same
 * inputs and env (the example's pacing delay set to 0, which does not change its result), and
 * returns the digest of its output dir.
 */
async function runReference(jobSpec: JobSpec, inputs: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "baton-demo-ref-"));
  try {
    for (const [target, file] of Object.entries(inputs)) {
      await mkdir(path.dirname(path.join(dir, target)), { recursive: true });
      await copyFile(file, path.join(dir, target));
    }
    const dirs = { checkpoints: "checkpoints", resume: "resume", output: "output" };
    for (const sub of Object.values(dirs)) await mkdir(path.join(dir, sub));
    const [command, ...args] = jobSpec.command ?? [];
    const child = spawn(command === "node" ? process.execPath : command!, args, {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        ...jobSpec.env,
        TRAIN_STEP_DELAY_MS: "0",
        BATON_CHECKPOINT_DIR: path.join(dir, dirs.checkpoints),
        BATON_RESUME_DIR: path.join(dir, dirs.resume),
        BATON_OUTPUT_DIR: path.join(dir, dirs.output),
      },
      stdio: "ignore",
    });
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    if (code !== 0) throw new Error(`the reference run exited with ${code}`);
    return await treeDigest(path.join(dir, dirs.output));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** SHA-256 over a directory's file names and contents, in name order. */
async function treeDigest(dir: string): Promise<string> {
  const hash = createHash("sha256");
  const walk = async (sub: string): Promise<void> => {
    const entries = (await readdir(path.join(dir, sub), { withFileTypes: true })).sort((a, b) =>
      a.name.localeCompare(b.name),
    );
    for (const entry of entries) {
      const relative = path.join(sub, entry.name);
      if (entry.isDirectory()) await walk(relative);
      else hash.update(`${relative}\0`).update(await readFile(path.join(dir, relative)));
    }
  };
  await walk("");
  return hash.digest("hex");
}
