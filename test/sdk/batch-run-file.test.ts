import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { UserError } from "../../sdk/errors.ts";
import {
  cancelFileOf,
  claimBatchRun,
  readBatchRun,
  requestBatchCancel,
  runFileOf,
  type BatchRunClaim,
} from "../../sdk/tenant/batch-run-file.ts";

/*
 * The run file that lets one process at a time run a batch's manifest, shows its progress to
 * `baton batch status`, and carries `baton batch cancel`'s request: real files, real processes.
 */

let dir: string;
let manifest: string;
const claims: BatchRunClaim[] = [];

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-run-file-"));
  manifest = path.join(dir, "tasks.jsonl");
});

afterEach(async () => {
  for (const claim of claims.splice(0)) await claim.release();
  await rm(dir, { recursive: true, force: true });
});

const claim = async (total = 3): Promise<BatchRunClaim> => {
  const made = await claimBatchRun(manifest, { source: "tasks.jsonl", total });
  claims.push(made);
  return made;
};

const progress = { total: 3, done: 1, failed: 0, running: 1, queued: 1, leases: 1, costSoFar: 1234n };

/** The pid of a process that has exited (and been reaped): no process has it now. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await once(child, "exit");
  return child.pid!;
}

describe("a batch's run file", () => {
  it("is created by the run and names this process, live; release removes it", async () => {
    const run = await claim();
    const read = await readBatchRun(manifest);
    expect(read).toMatchObject({ live: true, run: { pid: process.pid, source: "tasks.jsonl", total: 3 } });
    await run.release();
    expect(await readBatchRun(manifest)).toBeUndefined();
  });

  it("refuses a second run of the same manifest while the first is live, naming its process", async () => {
    await claim();
    const second = claimBatchRun(manifest, { source: "tasks.jsonl", total: 3 });
    await expect(second).rejects.toBeInstanceOf(UserError);
    await expect(second).rejects.toThrow(`being run by process ${process.pid}`);
  });

  it("is taken over from a process that is gone, or from a pid now used by another process", async () => {
    const stale = { pid: await deadPid(), hostname: os.hostname(), startedAt: 1, updatedAt: 1, source: "t", total: 1 };
    await writeFile(runFileOf(manifest), JSON.stringify(stale));
    expect(await readBatchRun(manifest)).toMatchObject({ live: false });
    const run = await claim();
    expect((await readBatchRun(manifest))?.run.pid).toBe(process.pid);
    await run.release();

    // This process's pid, but another start time: a process that reused the pid.
    const reused = { ...stale, pid: process.pid, processStart: "1" };
    await writeFile(runFileOf(manifest), JSON.stringify(reused));
    expect(await readBatchRun(manifest)).toMatchObject({ live: false });
    await claim();
    expect((await readBatchRun(manifest))?.live).toBe(true);
  });

  it("lets one of many runs starting at once win", async () => {
    const attempts = await Promise.allSettled(
      Array.from({ length: 8 }, () => claimBatchRun(manifest, { source: "t", total: 1 })),
    );
    const won = attempts.filter((a) => a.status === "fulfilled");
    for (const a of won) claims.push(a.value);
    expect(won).toHaveLength(1);
    for (const a of attempts) if (a.status === "rejected") expect(a.reason).toBeInstanceOf(UserError);
  });

  it("carries the run's progress, written within a second or two", async () => {
    const run = await claim();
    run.update(progress);
    await expect
      .poll(async () => (await readBatchRun(manifest))?.run.progress, { timeout: 10_000 })
      .toEqual({ done: 1, failed: 0, running: 1, queued: 1, leases: 1, costSoFar: "1234" });
  });

  it("a cancel request aborts the run's signal, and is gone once the run releases", async () => {
    const run = await claim();
    expect((await requestBatchCancel(manifest)).pid).toBe(process.pid);
    await new Promise((resolve) => run.cancelled.addEventListener("abort", resolve, { once: true }));
    await expect.poll(async () => (await readBatchRun(manifest))?.run.cancelling).toBe(true);
    await run.release();
    await expect(readFile(cancelFileOf(manifest))).rejects.toThrow(/ENOENT/);
  });

  it("a cancel request with no live run is refused; one left by a run that ended does not cancel the next", async () => {
    await expect(requestBatchCancel(manifest)).rejects.toThrow("no run of the batch");
    await writeFile(cancelFileOf(manifest), "{}\n");
    const run = await claim();
    // A tick that wrote the progress looked for a cancel request first.
    run.update(progress);
    await expect.poll(async () => (await readBatchRun(manifest))?.run.progress, { timeout: 10_000 }).toBeDefined();
    expect(run.cancelled.aborted).toBe(false);
  });
});
