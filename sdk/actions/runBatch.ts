import { mkdir } from "node:fs/promises";
import path from "node:path";

import type { BatonClient } from "../client.ts";
import { UserError } from "../errors.ts";
import { parseJobSpec, type JobSpec, type JobSpecInput } from "../job-spec.ts";
import { openBatchManifest, type TaskResult } from "../tenant/batch-manifest.ts";
import { claimBatchRun } from "../tenant/batch-run-file.ts";
import { BatchRunner, DEFAULT_BATCH_LEASE_S, type BatchEvent } from "../tenant/batch-runner.ts";
import { checkBatchBudget, checkTaskFiles, type BatchTask } from "../tenant/batch-tasks.ts";
import { openJobStore, type LeaseRecord } from "../tenant/job-store.ts";

export type { BatchEvent, BatchProgress } from "../tenant/batch-runner.ts";
export type { TaskResult } from "../tenant/batch-manifest.ts";
export type { BatchTask } from "../tenant/batch-tasks.ts";

/** Runs of a task that fails by its own fault beyond its first, unless the caller says otherwise. */
export const DEFAULT_BATCH_RETRIES = 2;

export interface RunBatchParameters {
  /** The command every task runs, and the resources each lease reserves. */
  spec: JobSpec | JobSpecInput;
  /** The tasks, as `parseTasks` reads them from a task file. */
  tasks: readonly BatchTask[];
  /** Names the task file in errors (`tasks.jsonl:7: …`). Default: `tasks`. */
  source?: string;
  /** The manifest (JSONL) the results go to; a batch run again on the same one runs only the rest. */
  manifest: string;
  /** Leases at once, each on its own provider. Default: 1. */
  parallelism?: number;
  maxPricePerSecond: bigint;
  /**
   * The most all the batch's leases may be given in deposits and top-ups together (each lease is
   * funded ten minutes at a time, at most its share of what is left: see `DEFAULT_BATCH_FUND_S`).
   */
  budget?: bigint;
  /** Runs of a task that failed by its own fault, on other providers, before it counts as failed. */
  retries?: number;
  /** Providers (addresses or peer ids) never to lease. */
  exclude?: readonly string[];
  /** A lease's longest life (see {@link DEFAULT_BATCH_LEASE_S}). */
  leaseDurationS?: number;
  /** Where each done task's output is restored, as `<outputDir>/<taskId>`. Default: next to the manifest. */
  outputDir?: string;
  heartbeatWindowMs?: number;
  failAfterMs?: number;
  /** Called with every event of the batch, in order. */
  onEvent?: (event: BatchEvent) => void;
  /**
   * Stops the batch: its leases are closed, and what was recorded stays (run it again to go on).
   * `baton batch cancel` (a `<manifest>.cancel` file) stops it the same way.
   */
  signal?: AbortSignal;
}

export interface RunBatchReturnType {
  manifest: string;
  outputDir: string;
  /** Every task's result as the manifest holds it, in task order; results from before a restart included. */
  results: TaskResult[];
  done: number;
  failed: number;
  /** The cost of this run's leases (earlier runs' leases included, when run again on a manifest). */
  cost: bigint;
  leases: readonly LeaseRecord[];
}

/**
 * Runs many short tasks on few leases: up to `parallelism` leases on distinct providers, each
 * running task after task over its session, so that gas and start-up are paid per lease. A lease
 * is sent its next task as soon as a result comes, the last task's output fetched and verified
 * meanwhile. Each task's result is recorded exactly once in the manifest, once its output is in. A task whose provider is lost runs again
 * elsewhere (the provider is dropped, a new one leased, its lease slashed once due); a task that
 * exits non-zero runs again on other providers up to `retries` times, then is recorded as failed with
 * its last log lines; a provider whose tasks keep failing is dropped; a late or second result is
 * discarded. Every lease is closed when the queue is empty, and its money settled, before this
 * resolves. Run again on the same manifest (after a crash, or a stop), it runs only the tasks
 * without a result, and first ends the leases the earlier run left open. One process at a time runs
 * a manifest: the run claims `<manifest>.run.json` (its pid and progress, which `baton batch status`
 * shows) and removes it when it ends.
 *
 * @throws {UserError} before any lease opens: bad spec or options, a budget below one task, a task
 * input file that is missing, another live process running the same manifest. Later: when no provider takes the batch, a provider refuses a task
 * for the tenant's own doing, the budget runs out, or the batch is stopped (`JobCancelledError`).
 * @example
 * const spec = await readJobFile("spec.yaml");
 * const tasks = parseTasks(await readFile("tasks.jsonl", "utf8"), spec, { source: "tasks.jsonl", baseDir: "." });
 * const { done, failed } = await runBatch(client, {
 *   spec, tasks, parallelism: 4, maxPricePerSecond: parseEther("0.001"), manifest: ".baton/batches/frames.jsonl",
 *   onEvent: (e) => e.type === "task-recorded" && console.log(e.result.taskId, e.result.state),
 * });
 */
export async function runBatch(client: BatonClient, parameters: RunBatchParameters): Promise<RunBatchReturnType> {
  const spec = parseJobSpec(parameters.spec);
  const { tasks, maxPricePerSecond, budget, manifest: file } = parameters;
  const source = parameters.source ?? "tasks";
  const parallelism = parameters.parallelism ?? 1;
  const retries = parameters.retries ?? DEFAULT_BATCH_RETRIES;
  const leaseDurationS = parameters.leaseDurationS ?? Math.max(DEFAULT_BATCH_LEASE_S, spec.maxDurationS);
  if (tasks.length === 0) throw new UserError(`${source} has no tasks`);
  if (!Number.isInteger(parallelism) || parallelism < 1) throw new UserError("parallelism must be a whole number ≥ 1");
  if (!Number.isInteger(retries) || retries < 0) throw new UserError("retries must be a whole number ≥ 0");
  if (!Number.isInteger(leaseDurationS) || leaseDurationS < spec.maxDurationS) {
    throw new UserError(`leaseDurationS must be a whole number of seconds ≥ the spec's maxDurationS`);
  }
  if (maxPricePerSecond <= 0n) throw new UserError("maxPricePerSecond must be positive");
  if (budget !== undefined) checkBatchBudget(spec, maxPricePerSecond, budget);
  await checkTaskFiles(tasks, source);
  const outputDir = parameters.outputDir ?? `${file}.outputs`;
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const claim = await claimBatchRun(file, { source, total: tasks.length });
  const signal = parameters.signal ? AbortSignal.any([parameters.signal, claim.cancelled]) : claim.cancelled;
  const manifest = await openBatchManifest(file).catch(async (error: unknown) => {
    await claim.release();
    throw error;
  });
  try {
    const store = await openJobStore(path.join(path.dirname(file), `${path.basename(file)}.leases`));
    const runner = new BatchRunner(client, {
      spec,
      tasks,
      parallelism,
      maxPricePerSecond,
      budget,
      retries,
      exclude: parameters.exclude ?? [],
      leaseDurationS,
      manifest,
      store,
      outputDir,
      heartbeatWindowMs: parameters.heartbeatWindowMs,
      failAfterMs: parameters.failAfterMs,
      onEvent: (event) => {
        claim.update(event.progress);
        parameters.onEvent?.(event);
      },
      signal,
    });
    await runner.run();
    const results = tasks.flatMap((task) => {
      const result = manifest.results.get(task.id);
      return result ? [result] : [];
    });
    return {
      manifest: file,
      outputDir,
      results,
      done: results.filter((r) => r.state === "done").length,
      failed: results.filter((r) => r.state === "failed").length,
      cost: runner.progress().costSoFar,
      leases: runner.leases,
    };
  } finally {
    await manifest.close();
    await claim.release();
  }
}
