import { randomBytes } from "node:crypto";
import { link, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";

import { z } from "zod";

import { UserError } from "../errors.ts";
import type { BatchProgress } from "./batch-runner.ts";

/*
 * A batch's run file, `<manifest>.run.json`: which process runs the batch now and where it stands.
 *
 * Only one process may run a manifest at a time: two would both run the tasks without a result, and
 * a task could be done (and paid) twice. So a run claims the file before it opens the manifest,
 * creating it exclusively, and removes it when it ends. A file left by a process that is gone (killed,
 * crashed, the machine restarted) is taken over. `baton batch status` reads the file; `baton batch
 * cancel` asks the run to stop by creating `<manifest>.cancel`, which the run looks for every second,
 * so that a script's `runBatch` stops the same way as the CLI's, closing its leases.
 */

/** How often a run writes its progress, and looks for a cancel request. */
export const RUN_FILE_INTERVAL_MS = 1000;

const bigintString = z.string().regex(/^\d+$/);

export const batchRunSchema = z.object({
  pid: z.number().int().positive(),
  /** The process's start time (`/proc/<pid>/stat`), so that a new process with a reused pid is not taken for it. */
  processStart: z.string().optional(),
  hostname: z.string(),
  startedAt: z.number(),
  updatedAt: z.number(),
  /** The task file (or what the caller named its tasks) and how many tasks this run was given. */
  source: z.string(),
  total: z.number().int().nonnegative(),
  progress: z
    .object({
      done: z.number().int().nonnegative(),
      failed: z.number().int().nonnegative(),
      running: z.number().int().nonnegative(),
      queued: z.number().int().nonnegative(),
      leases: z.number().int().nonnegative(),
      costSoFar: bigintString,
    })
    .optional(),
  /** Set once the run saw a cancel request: it is closing its leases. */
  cancelling: z.boolean().optional(),
});
export type BatchRun = z.output<typeof batchRunSchema>;

export const runFileOf = (manifest: string): string => `${manifest}.run.json`;
export const cancelFileOf = (manifest: string): string => `${manifest}.cancel`;

/** A process's start time in clock ticks since boot, where the system says (Linux's procfs). */
async function processStart(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** Whether the process that wrote `run` is still running: same host, same pid, same start time. */
export async function isRunLive(run: BatchRun): Promise<boolean> {
  // Another machine's process (a data dir on a shared file system) cannot be checked: taken as live.
  if (run.hostname !== os.hostname()) return true;
  try {
    process.kill(run.pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  if (run.processStart === undefined) return true;
  return (await processStart(run.pid)) === run.processStart;
}

/** The batch's run file, if there is one; `live` says whether its process still runs. */
export async function readBatchRun(manifest: string): Promise<{ run: BatchRun; live: boolean } | undefined> {
  let text: string;
  try {
    text = await readFile(runFileOf(manifest), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  const parsed = batchRunSchema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new UserError(`${runFileOf(manifest)} is not a batch's run file`);
  return { run: parsed.data, live: await isRunLive(parsed.data) };
}

/** Asks the batch's live run to stop (see the module's comment). @throws {UserError} when none runs. */
export async function requestBatchCancel(manifest: string): Promise<BatchRun> {
  const current = await readBatchRun(manifest);
  if (!current?.live) throw new UserError(`no run of the batch ${manifest} is in progress`);
  if (current.run.hostname !== os.hostname()) {
    throw new UserError(`the batch ${manifest} runs on ${current.run.hostname}: cancel it there`);
  }
  await writeFile(cancelFileOf(manifest), `${JSON.stringify({ at: Date.now(), by: process.pid })}\n`);
  return current.run;
}

export interface BatchRunClaim {
  /** Aborted when a cancel request arrives. */
  readonly cancelled: AbortSignal;
  /** Notes the batch's progress; written at most every {@link RUN_FILE_INTERVAL_MS}. */
  update(progress: BatchProgress): void;
  /** Removes the run file (and any cancel request): the batch no longer runs. */
  release(): Promise<void>;
}

/**
 * Claims the batch for this process: creates its run file, or takes over one whose process is gone.
 *
 * @throws {UserError} when a live process runs the batch.
 */
export async function claimBatchRun(
  manifest: string,
  { source, total }: { source: string; total: number },
): Promise<BatchRunClaim> {
  const file = runFileOf(manifest);
  const start = await processStart(process.pid);
  const run: BatchRun = {
    pid: process.pid,
    ...(start === undefined ? {} : { processStart: start }),
    hostname: os.hostname(),
    startedAt: Date.now(),
    updatedAt: Date.now(),
    source,
    total,
  };
  // Its own name per claim: two claims of one process sharing it, one's clean-up took the other's
  // file away before its link (ENOENT instead of "being run by").
  const temp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  const write = async (): Promise<void> => {
    run.updatedAt = Date.now();
    await writeFile(temp, JSON.stringify(run), { mode: 0o600 });
    await rename(temp, file);
  };
  await writeFile(temp, JSON.stringify(run), { mode: 0o600 });
  try {
    // link() creates the run file only if there is none: two runs starting at once cannot both win.
    for (;;) {
      try {
        await link(temp, file);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
      const other = await readBatchRun(manifest);
      if (other?.live) {
        throw new UserError(
          `the batch ${manifest} is being run by process ${other.run.pid} on ${other.run.hostname} since ` +
            `${new Date(other.run.startedAt).toISOString()}: wait for it, or stop it with \`baton batch cancel ${manifest}\``,
        );
      }
      // Gone: its file is stale. (Two runs taking it over at once: the link above lets one through.)
      await rm(file, { force: true });
    }
  } finally {
    await rm(temp, { force: true });
  }
  // A request left for a run that ended before it saw it is not for this run.
  await rm(cancelFileOf(manifest), { force: true });

  const cancel = new AbortController();
  let pending: BatchProgress | undefined;
  let writing: Promise<void> = Promise.resolve();
  const tick = (): void => {
    writing = writing.then(async () => {
      if (!cancel.signal.aborted && (await exists(cancelFileOf(manifest)))) {
        run.cancelling = true;
        cancel.abort(new UserError(`the batch was cancelled (${cancelFileOf(manifest)})`));
      }
      if (pending === undefined && !cancel.signal.aborted) return;
      if (pending) run.progress = toRecord(pending);
      pending = undefined;
      await write();
    });
    // A full disk or a removed directory must not end the batch: the next tick tries again.
    writing = writing.catch(() => undefined);
  };
  const timer = setInterval(tick, RUN_FILE_INTERVAL_MS);
  timer.unref();
  return {
    cancelled: cancel.signal,
    update(progress) {
      pending = progress;
    },
    async release() {
      clearInterval(timer);
      await writing;
      await rm(file, { force: true });
      await rm(cancelFileOf(manifest), { force: true });
    },
  };
}

const exists = (file: string): Promise<boolean> =>
  stat(file).then(
    () => true,
    () => false,
  );

const toRecord = (p: BatchProgress): NonNullable<BatchRun["progress"]> => ({
  done: p.done,
  failed: p.failed,
  running: p.running,
  queued: p.queued,
  leases: p.leases,
  costSoFar: p.costSoFar.toString(),
});
