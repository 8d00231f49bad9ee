import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import type { Command } from "commander";

import type { TaskResult } from "../sdk/index.ts";
import { UserError } from "../sdk/errors.ts";
import { connect, tenantOptions, type TenantOptions } from "./job.ts";
import { jsonLine, printJson } from "./output.ts";
import { examples, integerIn, tokenAmount } from "./program.ts";

/** Leases a batch opens at most at once, from the command line: a machine's worth of sessions. */
const MAX_PARALLELISM = 256;

/** How long `baton batch cancel` waits by default: closing a few leases takes a transaction each. */
const CANCEL_TIMEOUT_S = 120;

interface BatchRunOptions extends TenantOptions {
  tasks: string;
  parallelism: number;
  maxPrice: string;
  budget?: string;
  retries: number;
  manifest?: string;
}

/** Where a batch's manifest goes unless `--manifest` says: in the data dir, named after the task file. */
export function defaultManifest(dataDir: string, tasksFile: string): string {
  return path.join(dataDir, "batches", `${path.basename(tasksFile, path.extname(tasksFile))}.jsonl`);
}

async function run(specFile: string, options: BatchRunOptions): Promise<void> {
  const [{ readJobFile, runBatch, parseTasks }, { parseEther }, { batchSummary, eventLine, progressLine }] =
    await Promise.all([import("../sdk/index.ts"), import("viem"), import("./batch-display.ts")]);
  const { spec, files } = await readJobFile(specFile);
  let text: string;
  try {
    text = await readFile(options.tasks, "utf8");
  } catch (cause) {
    throw new UserError(`cannot read the task file ${options.tasks}`, { cause });
  }
  // Files the spec names travel with every task.
  const tasks = parseTasks(text, spec, { source: options.tasks, baseDir: path.dirname(options.tasks) }).map((task) => ({
    ...task,
    files: { ...files, ...task.files },
  }));
  const manifest = options.manifest ?? defaultManifest(options.dataDir, options.tasks);
  const { client } = await connect(options);
  const stop = new AbortController();
  const onSignal = (): void => {
    process.stderr.write(`\nstopping; run the same command again to go on from ${manifest}\n`);
    stop.abort();
  };
  process.once("SIGINT", onSignal);
  const startedAt = Date.now();
  const live = process.stderr.isTTY && !options.json;
  try {
    const result = await runBatch(client, {
      spec,
      tasks,
      source: options.tasks,
      manifest,
      parallelism: options.parallelism,
      maxPricePerSecond: parseEther(options.maxPrice),
      ...(options.budget === undefined ? {} : { budget: parseEther(options.budget) }),
      retries: options.retries,
      signal: stop.signal,
      onEvent: (event) => {
        if (options.json) return void process.stdout.write(jsonLine(event));
        const line = eventLine(event);
        if (line) process.stderr.write(`${live ? "\r\x1b[K" : ""}${line}\n`);
        if (live) process.stderr.write(`\r\x1b[K${progressLine(event, startedAt)}`);
        else if (event.type === "task-recorded") process.stderr.write(`${progressLine(event, startedAt)}\n`);
      },
    });
    if (live) process.stderr.write("\n");
    if (options.json) process.stdout.write(jsonLine({ type: "summary", ...result }));
    else process.stdout.write(batchSummary(result, Date.now() - startedAt) + "\n");
    if (result.failed > 0) throw new UserError(`${result.failed} task(s) failed; see ${manifest}`);
  } finally {
    process.off("SIGINT", onSignal);
    await client.close();
  }
}

/** A manifest's results, in the order they were recorded; none when there is no manifest yet. */
async function readResults(manifest: string, { missingOk = false } = {}): Promise<TaskResult[]> {
  const { taskResultSchema } = await import("../sdk/tenant/batch-manifest.ts");
  let text: string;
  try {
    text = await readFile(manifest, "utf8");
  } catch (cause) {
    if (missingOk && (cause as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new UserError(`cannot read the manifest ${manifest}`, { cause });
  }
  return text
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line, index) => {
      const parsed = taskResultSchema.safeParse(JSON.parse(line));
      if (!parsed.success) throw new UserError(`${manifest}:${index + 1} is not a task result`);
      return parsed.data;
    });
}

const counts = (records: readonly TaskResult[]): { done: number; failed: number } => {
  const done = records.filter((r) => r.state === "done").length;
  return { done, failed: records.length - done };
};

/** Reads a manifest offline: each task's result, and the counts. */
async function results(manifest: string, options: { json?: boolean }): Promise<void> {
  const [{ formatEther }, { table }] = await Promise.all([import("viem"), import("./output.ts")]);
  const records = await readResults(manifest);
  if (options.json) return printJson(records);
  const rows: (string | number)[][] = [["task", "state", "exit", "attempts", "provider", "lease", "ms", "cost"]];
  for (const r of records) {
    rows.push([
      r.taskId,
      r.state,
      r.exitCode ?? "signal",
      r.attempts,
      r.provider,
      r.leaseId,
      Math.round(r.durationMs),
      formatEther(BigInt(r.cost)),
    ]);
  }
  const { done, failed } = counts(records);
  process.stdout.write(`${table(rows)}\n${done} done, ${failed} failed\n`);
}

/** Where a batch stands: its run (live or not), its recorded results and its leases. Offline. */
async function status(manifest: string, options: { json?: boolean }): Promise<void> {
  const [{ readBatchRun }, { openJobStore }, { formatEther }, { table }] = await Promise.all([
    import("../sdk/tenant/batch-run-file.ts"),
    import("../sdk/tenant/job-store.ts"),
    import("viem"),
    import("./output.ts"),
  ]);
  const [current, records] = await Promise.all([readBatchRun(manifest), readResults(manifest, { missingOk: true })]);
  const storeDir = `${manifest}.leases`;
  const [record] = existsSync(storeDir) ? await (await openJobStore(storeDir)).list() : [];
  if (!current && !record && records.length === 0) throw new UserError(`no batch has run on ${manifest}`);
  const recorded = counts(records);
  if (options.json) {
    return printJson({
      manifest,
      run: current ? { ...current.run, live: current.live } : null,
      recorded,
      jobId: record?.jobId ?? null,
      leases: record?.leases ?? [],
    });
  }
  const lines = [`batch ${manifest}`];
  if (current?.live) {
    const { run } = current;
    lines.push(
      `${run.cancelling ? "stopping (cancelled)" : "running"} in process ${run.pid} on ${run.hostname} since ` +
        `${new Date(run.startedAt).toISOString()}, ${run.total} tasks from ${run.source}`,
    );
    if (run.progress) {
      const p = run.progress;
      lines.push(
        `${p.done}/${run.total} done  ${p.running} running  ${p.queued} queued  ${p.failed} failed  ` +
          `${p.leases} leases  cost ${formatEther(BigInt(p.costSoFar))}  ` +
          `(as of ${((Date.now() - run.updatedAt) / 1000).toFixed(1)} s ago)`,
      );
    }
  } else if (current) {
    lines.push(
      `not running: the run by process ${current.run.pid} (started ${new Date(current.run.startedAt).toISOString()}) ` +
        `ended without finishing; run the same \`baton batch run\` again to go on`,
    );
  } else {
    lines.push("not running");
  }
  lines.push(`recorded: ${recorded.done} done, ${recorded.failed} failed`);
  if (record) {
    lines.push(
      `leases (the batch's job id ${record.jobId}; \`baton audit job ${record.jobId}\` follows them on chain):`,
    );
    const rows: string[][] = [["lease", "provider", "state", "opened"]];
    for (const lease of record.leases) {
      rows.push([lease.leaseId.toString(), lease.provider, lease.state, new Date(lease.openedAt).toISOString()]);
    }
    lines.push(table(rows));
  }
  process.stdout.write(lines.join("\n") + "\n");
}

/** Asks a running batch to stop, and waits until it has closed its leases. */
async function cancel(manifest: string, options: { timeout: number }): Promise<void> {
  const { readBatchRun, requestBatchCancel } = await import("../sdk/tenant/batch-run-file.ts");
  const run = await requestBatchCancel(manifest);
  process.stderr.write(`asked process ${run.pid} to stop the batch; waiting while it closes its leases\n`);
  const deadline = Date.now() + options.timeout * 1000;
  for (;;) {
    const current = await readBatchRun(manifest);
    if (!current?.live) break;
    if (Date.now() > deadline) {
      throw new UserError(
        `process ${run.pid} has not stopped the batch after ${options.timeout} s; see \`baton batch status ${manifest}\``,
      );
    }
    await sleep(250);
  }
  const { done, failed } = counts(await readResults(manifest, { missingOk: true }));
  process.stdout.write(
    `stopped: ${done} done, ${failed} failed recorded; run the same \`baton batch run\` again to go on\n`,
  );
}

/** `baton batch …`: run many short tasks over a few leases, and read a batch's results. */
export function batchCommands(program: Command): void {
  const batch = program
    .command("batch")
    .description("run many short tasks over a few leases, each task's result recorded once");

  examples(
    tenantOptions(
      batch
        .command("run")
        .description(
          "run every task of a task file (JSON Lines) with the spec's command; run again to go on after a stop",
        )
        .argument("<spec>", "the job spec every task runs (YAML or JSON)")
        .requiredOption("--tasks <file>", "the tasks: one JSON object a line ({id?, env?, inputs?})")
        .requiredOption(
          "--max-price <tokens>",
          "the most to pay per second per lease, in payment tokens",
          tokenAmount("--max-price"),
        )
        .option(
          "--parallelism <n>",
          "leases at once, each on its own provider",
          integerIn("--parallelism", 1, MAX_PARALLELISM),
          1,
        )
        .option("--budget <tokens>", "the most all leases may be given together", tokenAmount("--budget"))
        .option(
          "--retries <n>",
          "runs of a task that exits non-zero, on other providers",
          integerIn("--retries", 0, 100),
          2,
        )
        .option("--manifest <file>", "where results go (default: <data-dir>/batches/<task file name>.jsonl)"),
    ),
    [
      "baton batch run examples/batch/square.yaml --tasks examples/batch/tasks.jsonl --max-price 0.001 --parallelism 2",
      "baton batch run spec.yaml --tasks frames.jsonl --max-price 0.001 --parallelism 4 --json",
    ],
  ).action(run);

  examples(
    batch
      .command("results")
      .description("show a batch's results from its manifest (offline)")
      .argument("<manifest>", "the manifest `baton batch run` printed")
      .option("--json", "print the results as JSON"),
    ["baton batch results .baton/tenant/batches/tasks.jsonl"],
  ).action(results);

  examples(
    batch
      .command("status")
      .description(
        "show where a batch stands: whether it runs, its progress, its results so far and its leases (offline)",
      )
      .argument("<manifest>", "the manifest `baton batch run` printed")
      .option("--json", "print the status as JSON"),
    ["baton batch status .baton/tenant/batches/tasks.jsonl"],
  ).action(status);

  examples(
    batch
      .command("cancel")
      .description("stop a running batch: it closes its leases and exits; what was recorded stays")
      .argument("<manifest>", "the manifest `baton batch run` printed")
      .option(
        "--timeout <s>",
        "seconds to wait for the run to stop",
        integerIn("--timeout", 1, 3600),
        CANCEL_TIMEOUT_S,
      ),
    ["baton batch cancel .baton/tenant/batches/tasks.jsonl"],
  ).action(cancel);
}
