import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";

import { peerIdFromString } from "@libp2p/peer-id";
import { CID } from "multiformats/cid";
import { parseEther, type Address } from "viem";
import { beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { runBatch, type BatchEvent, type RunBatchParameters } from "../../sdk/actions/runBatch.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { JobCancelledError } from "../../sdk/errors.ts";
import { parseJobSpec } from "../../sdk/job-spec.ts";
import { parseTasks } from "../../sdk/tenant/batch-tasks.ts";
import { devAccount } from "../../deploy/local-chain.ts";
import { contracts, leaseStatus } from "../../sdk/chain/client.ts";
import { privateKeyOf } from "../helpers/market.ts";
import { spawnScript, until } from "../helpers/processes.ts";
import { expectTokensConserved, tenantCliArgs, totals, useRunJobMarket } from "../helpers/run-job.ts";

/*
 * runBatch on a real devnet with three real provider node processes: a batch over two leases, one
 * of whose providers is SIGKILLed mid-batch; one whose provider is SIGSTOPped until replaced; a
 * batch stopped mid-way and run again on its manifest; and `baton batch run` SIGKILLed mid-batch, run
 * again, cancelled by `baton batch cancel` and run again, with `baton batch status` and `baton audit
 * job` reading it. Each task writes the square of its N into its output: the result a serial run gives.
 */
const fixture = useRunJobMarket();

const spec = parseJobSpec({
  name: "square",
  // A task given FAIL fails by its own fault, saying so on stderr; one given SLEEP works that long.
  command: [
    "sh",
    "-c",
    'sleep "${SLEEP:-0.3}"; if [ -n "$FAIL" ]; then echo "task $N fails" >&2; exit 3; fi; echo $((N * N)) > "$BATON_OUTPUT_DIR/square"',
  ],
  resources: { gpus: 0, cpus: 1, memoryMiB: 128 },
  maxDurationS: 60,
});

const tasksOf = (count: number) =>
  parseTasks(
    Array.from({ length: count }, (_, i) => JSON.stringify({ id: `n${i + 1}`, env: { N: String(i + 1) } })).join("\n"),
    spec,
    { source: "tasks.jsonl", baseDir: "." },
  );

/**
 * Started fresh, a task commits a checkpoint holding its N, then works on: long enough to be killed
 * or stopped, and to say "fresh" if it never was. Resumed, it says from what.
 */
const resumable = parseJobSpec({
  ...spec,
  command: [
    "sh",
    "-c",
    [
      'if [ -f "$BATON_RESUME_DIR/progress" ]; then',
      '  echo "resumed from $(cat "$BATON_RESUME_DIR/progress")" > "$BATON_OUTPUT_DIR/how"; exit 0',
      "fi",
      'mkdir "$BATON_CHECKPOINT_DIR/.step-1" && echo "$N" > "$BATON_CHECKPOINT_DIR/.step-1/progress"',
      'mv "$BATON_CHECKPOINT_DIR/.step-1" "$BATON_CHECKPOINT_DIR/step-1"',
      'sleep 30; echo fresh > "$BATON_OUTPUT_DIR/how"',
    ].join("\n"),
  ],
});

/**
 * Collects a batch's events; `when` resolves at the first that matches (seen already or to come).
 * Once the batch given to `follow` is over, a wait for an event not seen fails with how the batch
 * ended, instead of waiting for the test's timeout for an event that can no longer come.
 */
function recorder() {
  const events: BatchEvent[] = [];
  const waiters: {
    match: (e: BatchEvent) => boolean;
    resolve: (e: BatchEvent) => void;
    reject: (error: Error) => void;
  }[] = [];
  let over: Error | undefined;
  const onEvent = (event: BatchEvent): void => {
    events.push(event);
    for (const waiter of [...waiters]) {
      if (!waiter.match(event)) continue;
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(event);
    }
  };
  const when = (match: (e: BatchEvent) => boolean): Promise<BatchEvent> => {
    const seen = events.find(match);
    if (seen) return Promise.resolve(seen);
    if (over) return Promise.reject(over);
    return new Promise((resolve, reject) => waiters.push({ match, resolve, reject }));
  };
  /** Returns `batch`, its rejection handled here (the test awaits it itself, or not). */
  const follow = <T>(batch: Promise<T>): Promise<T> => {
    const end = (error: Error): void => {
      over = error;
      for (const waiter of waiters.splice(0)) waiter.reject(error);
    };
    batch.then(
      () => end(new Error("the batch ended before the event awaited")),
      (cause: unknown) => end(new Error(`the batch failed before the event awaited: ${String(cause)}`, { cause })),
    );
    return batch;
  };
  return { events, onEvent, when, follow };
}

/**
 * The tasks a lost provider held, which went back to the queue: those its lease had (running, or
 * queued behind the running one), and those it ended whose output it took with it.
 */
function heldBy(events: readonly BatchEvent[], lost: BatchEvent, provider: Address): string[] {
  if (lost.type !== "provider-lost") throw new Error("not a provider-lost event");
  const unfetched = events.flatMap((e) => (e.type === "task-requeued" && e.provider === provider ? [e.taskId] : []));
  return [...lost.requeued, ...unfetched];
}

/** Task ids as the manifest on disk lists them, one per line. */
async function manifestIds(file: string): Promise<string[]> {
  const text = await readFile(file, "utf8");
  return text
    .split("\n")
    .filter(Boolean)
    .map((line) => (JSON.parse(line) as { taskId: string }).taskId);
}

/** What `baton batch status --json` prints. */
interface BatchStatus {
  run: { pid: number; live: boolean; total: number } | null;
  recorded: { done: number; failed: number };
  jobId: string | null;
  leases: { leaseId: string; state: string }[];
}

async function expectSquares(outputDir: string, ids: readonly string[]): Promise<void> {
  for (const id of ids) {
    const n = Number(id.slice(1));
    expect(await readFile(path.join(outputDir, id, "square"), "utf8")).toBe(`${n * n}\n`);
  }
}

describe("runBatch (real devnet, real provider node processes)", () => {
  let client: BatonClient;
  const base = (): Omit<RunBatchParameters, "tasks" | "manifest" | "onEvent"> => ({
    spec,
    source: "tasks.jsonl",
    parallelism: 2,
    maxPricePerSecond: parseEther("0.001"),
  });

  beforeAll(async () => {
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant"));
  });

  /**
   * Starts a killed provider again once its test is over, and waits until the tenant has heard its
   * offer from where it listens now: the tests after it lease from all three providers, and the dead
   * process's last offer names addresses nobody listens at.
   */
  const restartAfter = (victim: { start(): Promise<void>; peerId: string; name: string }): void =>
    onTestFinished(async () => {
      const restarted = Date.now();
      await victim.start();
      await until(
        () => client.offers.list().some((offer) => offer.peerId === victim.peerId && offer.seq >= restarted),
        60_000,
        `an offer of ${victim.name} since its restart`,
      );
    });

  it("SIGKILL of a provider mid-batch: every task once in the manifest with its serial result, the task requeued and a replacement leased, the dead lease slashed, tokens conserved", async () => {
    const before = await totals(fixture.market);
    const tasks = tasksOf(40);
    const manifest = path.join(fixture.dir, "killed.jsonl");
    const { events, onEvent, when, follow } = recorder();
    const batch = follow(runBatch(client, { ...base(), tasks, manifest, onEvent }));

    // Both leases have run tasks; kill the provider of a lease that just started a task (at once, from
    // the event; that task may have ended already, the next one queued behind it running).
    const started = await when((e) => e.type === "task-started" && e.progress.done >= 6);
    if (started.type !== "task-started") throw new Error("unreachable");
    const victim = fixture.market.providers.find((p) => p.account.address === started.provider)!;
    victim.process!.child.kill("SIGKILL");
    restartAfter(victim);

    const lost = await when((e) => e.type === "provider-lost");
    const result = await batch;

    if (lost.type !== "provider-lost") throw new Error("unreachable");
    expect(lost.provider).toBe(victim.account.address);
    // Every task exactly once, done, with the result a serial run gives.
    expect(result.results).toHaveLength(40);
    expect(result.results.every((r) => r.state === "done" && r.exitCode === 0)).toBe(true);
    const ids = await manifestIds(manifest);
    expect(ids).toHaveLength(40);
    expect(new Set(ids)).toEqual(new Set(tasks.map((t) => t.id)));
    await expectSquares(result.outputDir, ids);
    // The tasks the dead provider held (running, queued, or ended with their output not yet fetched)
    // went back to the queue and were done elsewhere.
    const held = heldBy(events, lost, victim.account.address);
    expect(held.length).toBeGreaterThan(0);
    for (const id of held) {
      expect(result.results.find((r) => r.taskId === id)!.provider).not.toBe(victim.account.address);
    }
    // A replacement was leased on the third provider, and no task ran on the dead one after.
    const opened = events.filter((e) => e.type === "lease-opened");
    expect(opened.length).toBeGreaterThanOrEqual(3);
    const providers = new Set(opened.map((e) => (e.type === "lease-opened" ? e.provider : undefined)));
    expect(providers.size).toBe(3);
    const afterLoss = events.slice(events.indexOf(lost));
    expect(afterLoss.some((e) => e.type === "task-started" && e.provider === victim.account.address)).toBe(false);

    // The dead lease is slashed; every lease has ended.
    const slashed = events.find((e) => e.type === "slashed");
    expect(slashed).toMatchObject({ leaseId: lost.leaseId, provider: victim.account.address });
    if (slashed?.type === "slashed") expect(slashed.compensation).toBeGreaterThan(0n);
    expect(result.leases.every((l) => l.state === "completed" || l.state === "failed")).toBe(true);

    await expectTokensConserved(fixture.market, before);
  }, 300_000);

  it("SIGSTOP of a provider mid-batch, SIGCONT once it is replaced: its task is done once elsewhere, nothing it sends late is recorded, its lease ends, tokens conserved", async () => {
    const before = await totals(fixture.market);
    const tasks = tasksOf(24);
    const manifest = path.join(fixture.dir, "stopped.jsonl");
    const { events, onEvent, when, follow } = recorder();
    const batch = follow(runBatch(client, { ...base(), tasks, manifest, onEvent }));

    const started = await when((e) => e.type === "task-started" && e.progress.done >= 4);
    if (started.type !== "task-started") throw new Error("unreachable");
    const victim = fixture.market.providers.find((p) => p.account.address === started.provider)!;
    victim.process!.child.kill("SIGSTOP");
    onTestFinished(() => void victim.process?.child.kill("SIGCONT"));

    // Silent, it is dropped and its task queued again; a lease on the third provider takes its slot,
    // unless the other lease has done every other task by then and takes the dropped ones itself (on a
    // loaded machine the silence is noticed late: a run beside 3 CPU hogs had the batch over first).
    const lost = await when((e) => e.type === "provider-lost" && e.provider === victim.account.address);
    if (lost.type !== "provider-lost") throw new Error("unreachable");
    await when((e) => e.type === "lease-opened" && events.indexOf(e) > events.indexOf(lost)).catch(() => undefined);
    // Woken, it may finish the task it held and send the result: too late to count.
    victim.process!.child.kill("SIGCONT");
    const result = await batch;

    expect(result.results).toHaveLength(24);
    expect(result.results.every((r) => r.state === "done" && r.exitCode === 0)).toBe(true);
    const ids = await manifestIds(manifest);
    expect(ids).toHaveLength(24);
    expect(new Set(ids)).toEqual(new Set(tasks.map((t) => t.id)));
    await expectSquares(result.outputDir, ids);
    const held = heldBy(events, lost, victim.account.address);
    expect(held.length).toBeGreaterThan(0);
    for (const id of held) {
      expect(result.results.find((r) => r.taskId === id)!.provider).not.toBe(victim.account.address);
    }
    const afterLoss = events.slice(events.indexOf(lost));
    expect(
      afterLoss.some(
        (e) =>
          (e.type === "task-started" || e.type === "task-recorded") &&
          (e.type === "task-started" ? e.provider : e.result.provider) === victim.account.address,
      ),
    ).toBe(false);

    // The frozen provider's lease has ended on chain (closed, or slashed if its timeout passed first).
    const { leaseManager } = contracts(fixture.market.deployment);
    const lease = await fixture.market.admin.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [lost.leaseId],
    });
    expect(leaseStatus[lease.status]).not.toBe("Active");
    expect(result.leases.every((l) => l.state === "completed" || l.state === "failed")).toBe(true);

    await expectTokensConserved(fixture.market, before);
  }, 300_000);

  it("a lease gets its next task before the last one's output is in; its provider SIGKILLed meanwhile, that task is queued again and done once elsewhere; leases funded 600 s, the rest refunded", async () => {
    // 16 MiB of output per task: fetching it takes far longer than sending the lease its next task.
    const padded = parseJobSpec({
      ...spec,
      command: [
        "sh",
        "-c",
        'head -c 16777216 /dev/urandom > "$BATON_OUTPUT_DIR/pad"; echo $((N * N)) > "$BATON_OUTPUT_DIR/square"',
      ],
    });
    const tasks = parseTasks(
      Array.from({ length: 6 }, (_, i) => JSON.stringify({ id: `n${i + 1}`, env: { N: String(i + 1) } })).join("\n"),
      padded,
      { source: "tasks.jsonl", baseDir: "." },
    );
    const manifest = path.join(fixture.dir, "pipelined.jsonl");
    const { paymentToken } = contracts(fixture.market.deployment);
    const balance = () =>
      client.chain.publicClient.readContract({
        ...paymentToken,
        functionName: "balanceOf",
        args: [client.account.address],
      });
    const before = await balance();
    const { events, onEvent, when, follow } = recorder();
    const batch = follow(runBatch(client, { ...base(), spec: padded, parallelism: 1, tasks, manifest, onEvent }));

    // The lease's second task starts while the first is not recorded yet: its output is being
    // fetched. Its provider is killed then (at once, from the event).
    const second = await when((e) => e.type === "task-started" && e.taskId === "n2");
    if (second.type !== "task-started") throw new Error("unreachable");
    const victim = fixture.market.providers.find((p) => p.account.address === second.provider)!;
    victim.process!.child.kill("SIGKILL");
    restartAfter(victim);
    expect(events.some((e) => e.type === "task-recorded")).toBe(false);

    const result = await batch;
    // n1 finished on the dead provider but its output never came: queued again, not lost, and done
    // once elsewhere, as n2 (which it was running, or had finished too, its result on the way) is.
    const requeued = events.filter((e) => e.type === "task-requeued");
    expect(requeued).toContainEqual(
      expect.objectContaining({ taskId: "n1", provider: victim.account.address, leaseId: second.leaseId }),
    );
    const lost = events.find((e) => e.type === "provider-lost")!;
    expect(lost).toMatchObject({ leaseId: second.leaseId });
    expect(heldBy(events, lost, victim.account.address)).toEqual(expect.arrayContaining(["n1", "n2"]));
    const ids = await manifestIds(manifest);
    expect(ids).toHaveLength(6);
    expect(new Set(ids)).toEqual(new Set(tasks.map((t) => t.id)));
    expect(result.results.every((r) => r.state === "done" && r.provider !== victim.account.address)).toBe(true);
    expect(result.results.find((r) => r.taskId === "n1")!.attempts).toBe(1);
    await expectSquares(result.outputDir, ids);

    // Each lease was given 600 s at its price (not one task's 60 s); it ran a few seconds, and the
    // rest came back to the tenant (closed, or slashed and withdrawn).
    for (const lease of result.leases) expect(BigInt(lease.deposit)).toBe(BigInt(lease.pricePerSecond) * 600n);
    const deposited = result.leases.reduce((sum, lease) => sum + BigInt(lease.deposit), 0n);
    expect(before - (await balance())).toBeLessThan(deposited / 10n);
  }, 300_000);

  it("a lease's connection cut mid-batch: the tenant re-attaches and sends its tasks again, which its provider has and runs once; every task once in the manifest", async () => {
    const tasks = tasksOf(10);
    const manifest = path.join(fixture.dir, "reattached.jsonl");
    const { events, onEvent, when, follow } = recorder();
    const batch = follow(runBatch(client, { ...base(), parallelism: 1, tasks, manifest, onEvent }));

    // n4 runs, and n5 waits behind it on the provider once the lease accepted n4: the cut comes then.
    const started = await when((e) => e.type === "task-started" && e.taskId === "n4");
    if (started.type !== "task-started") throw new Error("unreachable");
    const provider = fixture.market.providers.find((p) => p.account.address === started.provider)!;
    const resent = () =>
      provider.process!.lines.filter((line) => line.includes('"msg":"task sent again, already had"'));
    const resentBefore = resent().length;
    await client.host.hangUp(peerIdFromString(provider.peerId));

    const result = await batch;
    expect(events.filter((e) => e.type === "provider-lost" || e.type === "task-discarded")).toEqual([]);
    expect(resent().length).toBeGreaterThan(resentBefore);
    const ids = await manifestIds(manifest);
    expect(ids).toHaveLength(10);
    expect(new Set(ids)).toEqual(new Set(tasks.map((t) => t.id)));
    expect(result.results.every((r) => r.state === "done" && r.provider === provider.account.address)).toBe(true);
    // Each task started once on the provider: the tasks sent again were passed over.
    const starts = provider.process!.lines.filter(
      (line) => line.includes('"msg":"job started"') && line.includes(`"leaseId":"${started.leaseId}"`),
    );
    expect(starts).toHaveLength(10);
    await expectSquares(result.outputDir, ids);
  }, 300_000);

  it("a task's checkpoint is copied off its provider as it runs; that provider SIGKILLed, the task resumes from it on another, and the checkpoint is let go once the task is recorded", async () => {
    const before = await totals(fixture.market);
    const tasks = parseTasks(JSON.stringify({ id: "r1", env: { N: "7" } }), resumable, {
      source: "tasks.jsonl",
      baseDir: ".",
    });
    const manifest = path.join(fixture.dir, "resumed.jsonl");
    const { events, onEvent, when, follow } = recorder();
    const batch = follow(runBatch(client, { ...base(), spec: resumable, parallelism: 1, tasks, manifest, onEvent }));

    // The checkpoint is safe (in the tenant's store): the provider running the task is killed.
    const checkpointed = await Promise.race([
      when((e) => e.type === "task-checkpointed"),
      batch.then(() => {
        throw new Error("the batch ended with no checkpoint of its task made safe");
      }),
    ]);
    if (checkpointed.type !== "task-checkpointed") throw new Error("unreachable");
    const opened = events.find((e) => e.type === "lease-opened" && e.leaseId === checkpointed.leaseId);
    if (opened?.type !== "lease-opened") throw new Error("the checkpointed lease was not opened by this batch");
    const victim = fixture.market.providers.find((p) => p.account.address === opened.provider)!;
    victim.process!.child.kill("SIGKILL");
    restartAfter(victim);

    const result = await batch;
    expect(checkpointed).toMatchObject({ taskId: "r1", step: 1 });
    expect(result.results).toEqual([expect.objectContaining({ taskId: "r1", state: "done", attempts: 1 })]);
    expect(result.results[0]!.provider).not.toBe(victim.account.address);
    expect(await readFile(path.join(result.outputDir, "r1", "how"), "utf8")).toBe("resumed from 7\n");
    const resumed = events.filter((e) => e.type === "task-started" && e.resume !== undefined);
    expect(resumed).toEqual([expect.objectContaining({ taskId: "r1", resume: checkpointed.cid })]);
    // Recorded, the task needs its checkpoint no more: the tenant's store lets it go.
    expect(await client.ipfs.isPinned(CID.parse(checkpointed.cid))).toBe(false);
    await expectTokensConserved(fixture.market, before);
  }, 300_000);

  it("a batch stopped while its task holds a safe checkpoint, run again on its manifest: the task resumes from that checkpoint, kept pinned between the runs and let go once recorded", async () => {
    const tasks = parseTasks(JSON.stringify({ id: "r2", env: { N: "9" } }), resumable, {
      source: "tasks.jsonl",
      baseDir: ".",
    });
    const manifest = path.join(fixture.dir, "resumed-after-restart.jsonl");
    const parameters = { ...base(), spec: resumable, parallelism: 1, tasks, manifest };
    const first = recorder();
    const stop = new AbortController();
    const interrupted = first.follow(runBatch(client, { ...parameters, onEvent: first.onEvent, signal: stop.signal }));
    const checkpointed = await first.when((e) => e.type === "task-checkpointed");
    if (checkpointed.type !== "task-checkpointed") throw new Error("unreachable");
    stop.abort();
    await expect(interrupted).rejects.toBeInstanceOf(JobCancelledError);
    // Between the runs the tenant's store keeps it: nothing else holds it once the lease is closed.
    expect(await client.ipfs.isPinned(CID.parse(checkpointed.cid))).toBe(true);

    const second = recorder();
    const result = await runBatch(client, { ...parameters, onEvent: second.onEvent });
    expect(result.results).toEqual([expect.objectContaining({ taskId: "r2", state: "done" })]);
    expect(await readFile(path.join(result.outputDir, "r2", "how"), "utf8")).toBe("resumed from 9\n");
    const started = second.events.filter((e) => e.type === "task-started");
    expect(started).toEqual([expect.objectContaining({ taskId: "r2", resume: checkpointed.cid })]);
    expect(await client.ipfs.isPinned(CID.parse(checkpointed.cid))).toBe(false);
  }, 300_000);

  it("a tenant stopped mid-batch and run again on its manifest runs only the tasks without a result", async () => {
    const tasks = tasksOf(20);
    const manifest = path.join(fixture.dir, "restarted.jsonl");
    const first = recorder();
    const stop = new AbortController();
    const interrupted = first.follow(
      runBatch(client, { ...base(), tasks, manifest, onEvent: first.onEvent, signal: stop.signal }),
    );
    await first.when((e) => e.type === "task-recorded" && e.progress.done >= 5);
    stop.abort();
    await expect(interrupted).rejects.toBeInstanceOf(JobCancelledError);
    const recordedBefore = await manifestIds(manifest);
    expect(recordedBefore.length).toBeGreaterThanOrEqual(5);
    expect(recordedBefore.length).toBeLessThan(20);

    const second = recorder();
    const result = await runBatch(client, { ...base(), tasks, manifest, onEvent: second.onEvent });
    const startedAgain = second.events.flatMap((e) => (e.type === "task-started" ? [e.taskId] : []));
    expect(startedAgain.filter((id) => recordedBefore.includes(id))).toEqual([]);
    expect(new Set(startedAgain).size).toBe(20 - recordedBefore.length);

    const ids = await manifestIds(manifest);
    expect(ids).toHaveLength(20);
    expect(new Set(ids)).toEqual(new Set(tasks.map((t) => t.id)));
    expect(result.done).toBe(20);
    await expectSquares(result.outputDir, ids);
    // The first run's leases were all ended when it stopped: none is left open on chain.
    expect(result.leases.every((l) => l.state !== "starting" && l.state !== "running")).toBe(true);
    const leaseOwners = new Set<Address>(result.leases.map((l) => l.provider as Address));
    expect(leaseOwners.size).toBeGreaterThanOrEqual(2);
  }, 300_000);

  it("a task that fails by its own fault is tried on another provider, then recorded once as failed with its logs", async () => {
    const text = Array.from({ length: 6 }, (_, i) =>
      JSON.stringify({ id: `n${i + 1}`, env: { N: String(i + 1), ...(i === 2 ? { FAIL: "1" } : {}) } }),
    ).join("\n");
    const tasks = parseTasks(text, spec, { source: "tasks.jsonl", baseDir: "." });
    const manifest = path.join(fixture.dir, "failing.jsonl");
    const { events, onEvent } = recorder();
    const result = await runBatch(client, { ...base(), tasks, manifest, retries: 1, onEvent });

    expect(result.done).toBe(5);
    expect(result.failed).toBe(1);
    const failed = result.results.find((r) => r.taskId === "n3")!;
    expect(failed).toMatchObject({ state: "failed", exitCode: 3, attempts: 2 });
    expect(failed.logs).toContain("task 3 fails");
    const retry = events.find((e) => e.type === "task-retry");
    expect(retry).toMatchObject({ taskId: "n3", exitCode: 3, attempts: 1 });
    if (retry?.type === "task-retry") expect(failed.provider).not.toBe(retry.provider);
    expect(await manifestIds(manifest)).toHaveLength(6);
    await expectSquares(
      result.outputDir,
      result.results.filter((r) => r.state === "done").map((r) => r.taskId),
    );
  }, 300_000);

  it("`baton batch run` SIGKILLed mid-batch and run again: the rest runs, the killed run's leases are ended; `batch status` shows each run, a second run at once is refused, `batch cancel` stops one", async () => {
    const dataDir = path.join(fixture.dir, "tenant-cli");
    // Funds the CLI's account (the market's tenant 2 is dev account 12).
    await fixture.market.client(2, path.join(fixture.dir, "tenant-fund"));
    const specFile = path.join(fixture.dir, "square.json");
    await writeFile(specFile, JSON.stringify(spec));
    const tasksFile = path.join(fixture.dir, "cli-tasks.jsonl");
    const total = 30;
    // 1.5 s a task: the second run, one task at a time, must outlast the two CLI calls made while it
    // runs (a refused run and a cancel, seconds each on a loaded machine). At 0.3 s a task it once
    // finished first, and the cancel found no run in progress.
    await writeFile(
      tasksFile,
      Array.from({ length: total }, (_, i) =>
        JSON.stringify({ id: `n${i + 1}`, env: { N: String(i + 1), SLEEP: "1.5" } }),
      ).join("\n"),
    );
    const manifest = path.join(dataDir, "batches", "cli-tasks.jsonl");
    const args = ["batch", "run", specFile, "--tasks", tasksFile, "--max-price", "0.001", "--parallelism", "2"];
    args.push(...tenantCliArgs(fixture.market, dataDir));
    const env = { BATON_TENANT_KEY: privateKeyOf(devAccount(12)) };
    const status = async (): Promise<BatchStatus> => {
      const shown = spawnScript("cli/baton.ts", ["batch", "status", manifest, "--json"]);
      expect((await shown.closed).code, shown.lines.join("\n")).toBe(0);
      return JSON.parse(shown.stdout.join("\n")) as BatchStatus;
    };

    const first = spawnScript("cli/baton.ts", args, env);
    onTestFinished(() => void first.child.kill("SIGKILL"));
    // Two results recorded at once print the same count: any count from 5 on.
    await first.waitFor(/^([5-9]|[12]\d)\/30 done/, 120_000);
    const running = await status();
    expect(running.run).toMatchObject({ pid: first.child.pid, live: true, total });
    expect(running.recorded.done).toBeGreaterThanOrEqual(5);
    expect(running.leases.length).toBeGreaterThanOrEqual(1);
    first.child.kill("SIGKILL");
    await first.exited;
    const recordedBefore = await manifestIds(manifest);
    expect(recordedBefore.length).toBeGreaterThanOrEqual(5);
    expect((await status()).run).toMatchObject({ pid: first.child.pid, live: false });

    // The second run ends the first's leases and goes on; while it runs, a third is refused.
    const second = spawnScript("cli/baton.ts", [...args, "--parallelism", "1"], env);
    onTestFinished(() => void second.child.kill("SIGKILL"));
    await second.waitFor(new RegExp(`^(${recordedBefore.length + 1}|${recordedBefore.length + 2})/30 done`), 120_000);
    const refused = spawnScript("cli/baton.ts", args, env);
    const refusedExit = await refused.closed;
    expect(refusedExit.code).not.toBe(0);
    expect(refused.lines.join("\n")).toContain(`is being run by process ${second.child.pid}`);
    const cancel = spawnScript("cli/baton.ts", ["batch", "cancel", manifest]);
    expect((await cancel.closed).code, cancel.lines.join("\n")).toBe(0);
    expect(cancel.stdout.join("\n")).toMatch(/^stopped: \d+ done, 0 failed recorded/);
    // The cancelled run has stopped, by itself, with every lease it had closed.
    const cancelledExit = await second.exited;
    expect(cancelledExit.code, second.lines.slice(-20).join("\n")).not.toBe(0);
    const cancelled = await status();
    expect(cancelled.run).toBeNull();
    expect(cancelled.leases.every((l) => l.state !== "starting" && l.state !== "running")).toBe(true);
    const recordedCancelled = await manifestIds(manifest);
    expect(recordedCancelled.length).toBeLessThan(total);

    const third = spawnScript("cli/baton.ts", args, env);
    onTestFinished(() => void third.child.kill("SIGKILL"));
    const exit = await third.exited;
    expect(exit.code, third.lines.slice(-20).join("\n")).toBe(0);
    expect(third.lines.join("\n")).toMatch(/^30 done, 0 failed, of 30 recorded$/m);
    const ids = await manifestIds(manifest);
    expect(ids).toHaveLength(total);
    expect(new Set(ids).size).toBe(total);
    await expectSquares(`${manifest}.outputs`, ids);
    const finished = await status();
    expect(finished).toMatchObject({ run: null, recorded: { done: total, failed: 0 } });
    // The audit, from the chain alone, finds every lease of the batch by its job id.
    const audit = spawnScript("cli/baton.ts", [
      "audit",
      "job",
      finished.jobId!,
      "--json",
      "--rpc-url",
      fixture.market.chain.rpcUrl,
      "--deployment",
      fixture.market.deploymentFile,
    ]);
    expect((await audit.closed).code, audit.lines.join("\n")).toBe(0);
    const audited = JSON.parse(audit.stdout.join("\n")) as Record<"lineage" | "others", { leaseId: string }[]>;
    expect([...audited.lineage, ...audited.others].map((l) => l.leaseId).sort()).toEqual(
      finished.leases
        .filter((l) => l.state !== "vanished")
        .map((l) => l.leaseId)
        .sort(),
    );

    const results = spawnScript("cli/baton.ts", ["batch", "results", manifest, "--json"]);
    expect((await results.closed).code, results.lines.join("\n")).toBe(0);
    expect(JSON.parse(results.stdout.join("\n"))).toHaveLength(total);
    // Every lease either run opened (as the batch's lease record lists them) has ended on chain: the
    // killed run's were ended by the second.
    const leaseIds = finished.leases.map((l) => l.leaseId);
    expect(leaseIds.length).toBeGreaterThanOrEqual(3);
    const { leaseManager } = contracts(fixture.market.deployment);
    for (const leaseId of leaseIds) {
      const lease = await fixture.market.admin.publicClient.readContract({
        ...leaseManager,
        functionName: "getLease",
        args: [BigInt(leaseId)],
      });
      expect(leaseStatus[lease.status]).not.toBe("Active");
    }
  }, 300_000);
});
