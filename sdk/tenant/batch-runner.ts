import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import path from "node:path";

import { CID } from "multiformats/cid";
import { toHex, type Address, type Hex } from "viem";

import { watchLease, type LeaseWatch } from "../actions/watchLease.ts";
import { withdrawCredit } from "../actions/withdrawCredit.ts";
import type { BatonClient } from "../client.ts";
import {
  BaseError,
  BudgetExhaustedError,
  JobCancelledError,
  NoProviderError,
  oneLineOf,
  RefusalError,
  shortMessageOf,
} from "../errors.ts";
import { generateJobKey } from "../ipfs/crypto.ts";
import type { JobSpec } from "../job-spec.ts";
import type { Logger } from "../logger.ts";
import { sleep } from "../utils/retry.ts";
import type { ProviderMessage } from "../wire/messages.ts";
import type { BatchManifest, TaskResult } from "./batch-manifest.ts";
import { BatchQueue, type BatchCounts, type TaskAssignment, type TaskCheckpoint } from "./batch-queue.ts";
import { taskSpec, type BatchTask } from "./batch-tasks.ts";
import { watchChainDeadline } from "./chain-deadline.ts";
import { CheckpointReplicator, DEFAULT_KEEP_CHECKPOINTS, type OutputAnnounced } from "./checkpoint-replicator.ts";
import {
  DEFAULT_RETRY_LIMIT,
  HAND_OFF_SEARCH_MS,
  HAND_OFF_SEARCH_PAUSE_MS,
  searchesAgain,
  isProviderRefusal,
  leaseCost,
  type Funding,
} from "./hand-off-policy.ts";
import { JobEvents } from "./job-events.ts";
import {
  endOpenLeases,
  endRecordedLease,
  PendingSlashes,
  settleLostOpening,
  slashedEvent,
  type OnSlash,
} from "./job-settlement.ts";
import type { JobRecord, JobStore, LeaseRecord } from "./job-store.ts";
import { acquireLease } from "./lease-acquisition.ts";
import { followOpening, type LostOpening } from "./lease-confirmation.ts";
import { leaseLiveness } from "./lease-session.ts";
import { LeaseTopUps } from "./lease-top-ups.ts";

/**
 * How long a batch lease may live (its quote's max duration), unless the caller says otherwise: it
 * serves task after task, so it outlives any one task's `maxDurationS`; an hour keeps the collateral a
 * provider locks for it, and the time a lost provider's lease waits for nothing, bounded. A batch
 * that runs longer opens new leases as the old ones end.
 */
export const DEFAULT_BATCH_LEASE_S = 3600;

/**
 * How long each deposit and top-up of a batch lease pays for (at most the lease's life). Funded one
 * task's `maxDurationS` at a time, as a job's lease is, a batch lease of short tasks sent a top-up and
 * its `approve` every minute or so (24 of each in a 400 s `bench:batch` run of 300 tasks); funded ten
 * minutes at a time, a lease running tasks of a second runs hundreds of them per top-up. What a lease
 * has not used comes back to the tenant when it is closed or slashed; the cost is that much more of
 * the tenant's tokens in escrow while the batch runs, and drawn from its budget, of which each lease
 * then gets a share (see `Funding`).
 */
export const DEFAULT_BATCH_FUND_S = 600;

/** A failed task's last log lines kept in the manifest: enough to see why, small enough per line. */
const FAILED_TASK_LOG_LINES = 20;

/**
 * Outputs of one lease's tasks fetched and verified at once while the lease runs its next task.
 * A lease gets its next task as soon as a result comes, rather than after a round trip for the
 * output; a fetch (≈ 0.1 s for a small output on loopback) usually ends before the next task does,
 * so one or two are in flight. The bound is the work at risk: a task whose output is not yet
 * verified runs again elsewhere if its provider is lost, so a lease never runs more than this many
 * tasks ahead of what the tenant holds.
 */
const OUTPUT_FETCHES_PER_LEASE = 4;

/** Where a batch stands, as every event reports it. */
export interface BatchProgress extends BatchCounts {
  total: number;
  /** Leases serving the batch now. */
  leases: number;
  /** What the batch's leases have cost so far (each second of each lease at its price). */
  costSoFar: bigint;
}

/** What a batch reports as it runs, in order. */
export type BatchEvent = { at: number; progress: BatchProgress } & (
  | { type: "lease-opened"; leaseId: bigint; provider: Address; pricePerSecond: bigint }
  /** `resume`: the checkpoint (CID) it resumes from, one an earlier attempt committed. */
  | { type: "task-started"; taskId: string; leaseId: bigint; provider: Address; attempt: number; resume?: string }
  /** A running task's checkpoint is safe (copied to the tenant): if its provider is lost, it resumes from it. */
  | { type: "task-checkpointed"; taskId: string; leaseId: bigint; cid: string; step?: number | undefined }
  /** A task's result, recorded in the manifest: `done`, or `failed` once its retries are spent. */
  | { type: "task-recorded"; result: TaskResult }
  /** A task failed by its own fault and goes back to the queue, for another provider. */
  | {
      type: "task-retry";
      taskId: string;
      leaseId: bigint;
      provider: Address;
      exitCode: number | null;
      attempts: number;
    }
  /** A result that does not count: from a lease no longer running the task, or a second completion. */
  | { type: "task-discarded"; taskId: string; leaseId: bigint; reason: string }
  /**
   * A task exited 0 but its output could not be fetched, or did not verify: it goes back to the
   * queue (the attempt not counted), and its provider is dropped.
   */
  | { type: "task-requeued"; taskId: string; leaseId: bigint; provider: Address; reason: string }
  /** Its opening lies as deep as the client's `confirmations` (with `confirmations` only). */
  | { type: "lease-confirmed"; leaseId: bigint; blockNumber: bigint }
  /**
   * A reorg took its opening before it was confirmed: the lease never was (`vanished`), or is another
   * id now and is closed at once. Its provider is not at fault: the tasks it was given (`requeued`, the
   * running one first) are queued again (the attempt not counted) and it is not excluded; nothing is
   * slashed.
   */
  | { type: "lease-vanished"; leaseId: bigint; provider: Address; reason: string; requeued: string[] }
  /**
   * The lease's provider failed or refused: the tasks it was given (`requeued`: the one it ran, then
   * the one queued behind it) are queued again; it is excluded.
   */
  | { type: "provider-lost"; leaseId: bigint; provider: Address; reason: string; requeued: string[] }
  | { type: "lease-closed"; leaseId: bigint; provider: Address }
  | { type: "slashed"; leaseId: bigint; provider: Address; compensation: bigint; refund: bigint; tx: Hex }
  /** No provider takes a lease now; the batch looks again in `retryInMs` (none of its leases runs). */
  | { type: "no-provider"; reason: string; retryInMs: number }
);

type NewBatchEvent = BatchEvent extends infer E ? (E extends unknown ? Omit<E, "at" | "progress"> : never) : never;

export interface BatchRunInit {
  spec: JobSpec;
  tasks: readonly BatchTask[];
  parallelism: number;
  maxPricePerSecond: bigint;
  budget: bigint | undefined;
  retries: number;
  exclude: readonly string[];
  leaseDurationS: number;
  manifest: BatchManifest;
  /** The batch's own lease records (`batchStore`), next to its manifest. */
  store: JobStore;
  /** Where each done task's output dir is restored: `<outputDir>/<taskId>`. */
  outputDir: string;
  heartbeatWindowMs: number | undefined;
  failAfterMs: number | undefined;
  onEvent: ((event: BatchEvent) => void) | undefined;
  signal: AbortSignal | undefined;
}

/** The outputs a lease's tasks left, being fetched while it runs on (see `BatchRunner.#serve`). */
interface OutputFetches {
  pending: Set<Promise<void>>;
  stop: AbortController;
  /** Why the lease is to be dropped: an output that failed, or its provider's heartbeats stopping on chain. */
  dropped: string | undefined;
  /** Drops the lease: its watch ends, and the lease is lost for `reason`. */
  drop(reason: string): void;
}

/** A task on a lease: what it was given, and what it logged. */
interface Running {
  assignment: TaskAssignment;
  /** When it was sent (to an idle lease), or when the lease said it starts one sent to wait: its cost counts from then. */
  startedAt: number;
  logs: string[];
  /** The lease said it starts; a task queued behind another may start before that one's result comes. */
  accepted: boolean;
  /** `task-started` was told: once it runs and every task before it on the lease has its result. */
  told: boolean;
  /** The lease's first task goes with its `start`; every later one in a `task` message. */
  sentWith: "start" | "task";
}

/**
 * Runs a batch (see `runBatch`): up to `parallelism` lease slots, each opening a lease on a provider
 * no other slot uses and feeding it tasks from the {@link BatchQueue} over its session until the
 * queue has nothing for it; then the lease is closed and the slot waits for tasks that come back
 * (a lost provider's) or ends. The batch's leases are kept in a job record of its own, so that a
 * restarted tenant ends those a killed process left open.
 */
export class BatchRunner {
  readonly #client: BatonClient;
  readonly #init: BatchRunInit;
  readonly #log: Logger;
  readonly #events: JobEvents;
  readonly #stop = new AbortController();
  readonly #active = new Map<string, LeaseRecord>();
  /**
   * Providers whose new lease the queue had no task for (every queued task failed on them): not
   * leased again until a task comes back to the queue, else a slot would open lease after lease there.
   */
  readonly #idle = new Set<string>();
  /** Each task's cost over its attempts so far. */
  readonly #taskCost = new Map<string, bigint>();
  readonly #tasks: ReadonlyMap<string, BatchTask>;
  /** What each deposit and top-up of the batch's leases pays for (see {@link DEFAULT_BATCH_FUND_S}). */
  readonly #funding: Funding;
  /** Every lease's output fetches under way: the batch ends once they have. */
  readonly #fetching = new Set<Promise<void>>();
  /** CIDs of local input files added to IPFS, by file. */
  readonly #files = new Map<string, Promise<string>>();
  /**
   * Each task's newest safe checkpoint, pinned in the tenant's store until the task has a result: a
   * later attempt elsewhere resumes from it, and so does a run again after this one stops (the batch
   * record keeps them: see {@link BatchRunner.#saveCheckpoints}).
   */
  readonly #checkpoints = new Map<string, TaskCheckpoint>();
  /**
   * Each lease's opening followed to the client's depth (with `confirmations` only), until it is
   * confirmed or lost; stopped when the batch ends.
   */
  readonly #openings = new Set<Promise<void>>();
  readonly #following = new AbortController();
  /** Leases being served, each with what leaves it when its opening is lost meanwhile. */
  readonly #serving = new Map<LeaseRecord, (fate: LostOpening) => void>();
  #record!: JobRecord;
  #queue!: BatchQueue;
  #slashes!: PendingSlashes;
  #replicator!: CheckpointReplicator;
  #onSlash!: OnSlash;
  /**
   * Providers are chosen one at a time: a second bid must see the first one's provider as taken.
   * Resolved once the acquisition in turn has chosen its provider (its lease then opens beside the
   * next one's bidding), or has ended.
   */
  #acquiring: Promise<unknown> = Promise.resolve();
  /** Providers chosen by an acquisition whose lease is not open yet. */
  #choosing = new Set<string>();
  /** Resolved (and replaced) whenever the queue changes: idle slots wait on it. */
  #changed = wakeUp();
  #failure: BaseError | undefined;
  #stopping: Promise<void> | undefined;

  constructor(client: BatonClient, init: BatchRunInit) {
    this.#init = init;
    this.#client = { ...client, jobs: init.store };
    this.#log = client.log.child("batch");
    this.#events = new JobEvents(this.#log);
    this.#tasks = new Map(init.tasks.map((task) => [task.id, task]));
    this.#funding = {
      seconds: Math.min(init.leaseDurationS, Math.max(init.spec.maxDurationS, DEFAULT_BATCH_FUND_S)),
      shares: init.parallelism,
    };
    for (const result of init.manifest.results.values()) this.#taskCost.set(result.taskId, BigInt(result.cost));
    this.#events.on("lease-opened", (e) =>
      this.#emit({ type: "lease-opened", leaseId: e.leaseId, provider: e.provider, pricePerSecond: e.pricePerSecond }),
    );
    const stopped = (): void => this.#fail(new JobCancelledError("the batch was stopped"));
    if (init.signal?.aborted) stopped();
    else init.signal?.addEventListener("abort", stopped, { once: true });
  }

  /** Runs the batch to its end, every lease ended and every slash made. */
  async run(): Promise<void> {
    await this.#open();
    try {
      // A slot that throws stops the others: the batch fails as a whole, its leases closed.
      const slots = Array.from({ length: this.#init.parallelism }, () =>
        this.#slot().catch((error: unknown) => this.#fail(error)),
      );
      await Promise.all(slots);
    } finally {
      // Outputs still being fetched (a batch stopped, or a lease lost, aborts them): each ends with
      // its task recorded or queued again before the batch counts as over.
      await Promise.allSettled(this.#fetching);
      // An opening still young when the batch ends is followed no further: its lease is closed.
      this.#following.abort();
      await Promise.allSettled(this.#openings);
      // Checkpoints of tasks without a result stay pinned, and in the record, for a run again.
      await this.#replicator.drained();
      for (const lease of this.#active.values()) lease.state = "cancelled";
      await endOpenLeases(this.#client, this.#record, { log: this.#log, onSlash: this.#onSlash });
      const failure = this.#failure;
      this.#record.state = !failure ? "completed" : failure instanceof JobCancelledError ? "cancelled" : "failed";
      if (failure) this.#record.error = oneLineOf(failure);
      await this.#client.jobs.save(this.#record);
      try {
        await this.#slashes.settled();
      } finally {
        await withdrawCredit(this.#client);
      }
    }
    if (this.#failure) throw this.#failure;
  }

  progress(): BatchProgress {
    return {
      ...this.#queue.counts(),
      total: this.#init.tasks.length,
      leases: this.#active.size,
      costSoFar: this.#record.leases.reduce((sum, lease) => sum + leaseCost(lease), 0n),
    };
  }

  get leases(): readonly LeaseRecord[] {
    return this.#record.leases;
  }

  /** Loads the batch's lease record (or starts one) and ends the leases a killed run left open. */
  async #open(): Promise<void> {
    const [previous] = await this.#init.store.list();
    this.#record = previous ?? {
      version: 1,
      jobId: toHex(randomBytes(32)),
      spec: this.#init.spec,
      key: Buffer.from(generateJobKey()).toString("base64"),
      createdAt: Date.now(),
      state: "running",
      options: {
        maxPricePerSecond: this.#init.maxPricePerSecond.toString(),
        ...(this.#init.budget === undefined ? {} : { budget: this.#init.budget.toString() }),
        retryLimit: DEFAULT_RETRY_LIMIT,
        keepCheckpoints: DEFAULT_KEEP_CHECKPOINTS,
        exclude: [...this.#init.exclude],
      },
      leases: [],
      safe: [],
      deposited: "0",
      handOffs: 0,
    };
    // This run's spec, price and budget: a run again may change them (a higher price, a longer task time).
    this.#record.state = "running";
    delete this.#record.error;
    this.#record.spec = this.#init.spec;
    this.#record.options.maxPricePerSecond = this.#init.maxPricePerSecond.toString();
    if (this.#init.budget === undefined) delete this.#record.options.budget;
    else this.#record.options.budget = this.#init.budget.toString();
    // A run again resumes each task without a result from the checkpoint an earlier run held for it.
    const { results } = this.#init.manifest;
    const done: string[] = [];
    for (const [taskId, checkpoint] of Object.entries(this.#record.taskCheckpoints ?? {})) {
      if (results.has(taskId) || !this.#tasks.has(taskId)) done.push(checkpoint.cid);
      else this.#checkpoints.set(taskId, checkpoint);
    }
    this.#queue = new BatchQueue({
      tasks: this.#init.tasks.map((task) => task.id),
      recorded: new Set(results.keys()),
      checkpoints: this.#checkpoints,
      retries: this.#init.retries,
      exclude: this.#init.exclude,
    });
    await this.#saveCheckpoints();
    for (const cid of done) await this.#unpin(cid);
    const parts = { client: this.#client, record: this.#record, events: this.#events, log: this.#log };
    this.#replicator = new CheckpointReplicator(parts);
    this.#onSlash = (lease, slash) => this.#emit(slashedEvent(lease, slash));
    this.#slashes = new PendingSlashes(this.#client, this.#record, this.#log, this.#onSlash);
    for (const lease of this.#record.leases) {
      if (lease.state === "failed" && !lease.slash) this.#slashes.add(lease);
      // Left open by a run that was killed: its task runs again here.
      if (lease.state === "starting" || lease.state === "running") lease.state = "cancelled";
    }
    await endOpenLeases(this.#client, this.#record, { log: this.#log, onSlash: this.#onSlash });
    await this.#client.jobs.save(this.#record);
  }

  /** One lease slot: lease after lease while the queue has tasks. */
  async #slot(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      const { queued } = this.#queue.counts();
      if (queued === 0) {
        if (this.#queue.finished) return;
        // Tasks run elsewhere; one may come back when its provider is lost.
        await Promise.race([this.#changed.promise, this.#stopped()]);
        continue;
      }
      const lease = await this.#acquire();
      if (!lease) return;
      await this.#serve(lease);
    }
  }

  /**
   * Opens a lease on a provider no lease of the batch uses or has excluded. `undefined` when none
   * takes it (or the budget cannot pay one) while other leases serve the batch: they finish it. With
   * none serving, it looks again for {@link HAND_OFF_SEARCH_MS} where {@link searchesAgain} says so.
   */
  #acquire(): Promise<LeaseRecord | undefined> {
    let chosen: string | undefined;
    let onChosen!: (provider: string) => void;
    const turnOver = new Promise<void>((resolve) => {
      onChosen = (provider) => {
        if (chosen !== undefined) this.#choosing.delete(chosen);
        chosen = provider;
        this.#choosing.add(provider);
        resolve();
      };
    });
    const next = this.#acquiring.then(async () => {
      const giveUpAt = Date.now() + HAND_OFF_SEARCH_MS;
      for (;;) {
        if (this.#stop.signal.aborted || this.#queue.counts().queued === 0) return undefined;
        try {
          const { lease } = await acquireLease(this.#client, {
            jobId: this.#record.jobId as Hex,
            record: this.#record,
            events: this.#events,
            predecessor: undefined,
            signed: false,
            resume: undefined,
            avoid: [
              ...[...this.#active.values()].map((l) => l.provider),
              ...this.#choosing,
              ...this.#queue.excluded,
              ...this.#idle,
            ],
            durationS: this.#init.leaseDurationS,
            funding: this.#funding,
            onChosen,
            signal: this.#stop.signal,
          });
          this.#active.set(lease.leaseId, lease);
          this.#followOpening(lease);
          return lease;
        } catch (error) {
          const noProvider = error instanceof NoProviderError || error instanceof BudgetExhaustedError;
          if (!noProvider || this.#stop.signal.aborted) throw error;
          if (this.#active.size > 0 || this.#choosing.size > 0) {
            this.#log.info("no further lease for the batch now", { error: shortMessageOf(error) });
            return undefined;
          }
          const retry =
            searchesAgain(error, this.#record.leases.length > 0) && Date.now() + HAND_OFF_SEARCH_PAUSE_MS <= giveUpAt;
          if (!retry) throw error;
          this.#emit({ type: "no-provider", reason: oneLineOf(error), retryInMs: HAND_OFF_SEARCH_PAUSE_MS });
          await sleep(HAND_OFF_SEARCH_PAUSE_MS, { signal: this.#stop.signal });
        }
      }
    });
    const ended = next.then(
      () => undefined,
      () => undefined,
    );
    void ended.then(() => chosen !== undefined && this.#choosing.delete(chosen));
    this.#acquiring = Promise.race([turnOver, ended]);
    return next;
  }

  /**
   * Feeds `lease` task after task over its session until the queue has none for it, or it is lost.
   * Once a task runs, the next is sent to wait on the lease behind it, so that the provider starts it
   * the moment the one before exits, with no round trip between. Each task's output is fetched and
   * verified in the background (see {@link OUTPUT_FETCHES_PER_LEASE}) while the lease runs the next;
   * one that fails drops the lease, and its tasks run again elsewhere.
   */
  async #serve(lease: LeaseRecord): Promise<void> {
    const provider = lease.provider as Address;
    const leaseId = BigInt(lease.leaseId);
    // The tasks given to the lease, in order: the one it runs, then the one queued behind it.
    const given: Running[] = [];
    // How many tasks the lease takes waiting behind its running one, as its `accepted` said (none
    // from a node that predates the queue: it refuses a task sent while one runs).
    let taskQueue = 0;
    const first = this.#queue.next(lease.leaseId, provider);
    if (!first) {
      this.#idle.add(provider);
      return this.#close(lease);
    }
    const topUps = new LeaseTopUps({
      client: this.#client,
      record: this.#record,
      events: this.#events,
      log: this.#log,
      onBudgetSpent: (error) => this.#fail(error),
      funding: this.#funding,
    });
    let watch: LeaseWatch | undefined;
    const fetches: OutputFetches = {
      pending: new Set(),
      // Aborted once the lease is left: a lost provider's outputs are nowhere else, and would stall.
      stop: new AbortController(),
      dropped: undefined,
      drop: (reason) => {
        fetches.dropped ??= reason;
        void watch?.stop();
      },
    };
    // Set when a reorg takes the lease's opening: the lease is left, blamelessly, at the next step.
    let lostOpening: LostOpening | undefined;
    this.#serving.set(lease, (fate) => {
      lostOpening = fate;
      void watch?.stop();
    });
    const left = (): boolean => fetches.dropped !== undefined || lostOpening !== undefined;
    /** Gives the lease `next` to run after what it has. */
    const give = async (next: TaskAssignment): Promise<void> => {
      given.push({ assignment: next, startedAt: Date.now(), logs: [], accepted: false, told: false, sentWith: "task" });
      await send(next);
    };
    /**
     * Sends a task the lease holds. A session lost under it loses no task: the watch re-attaches and
     * the lease's tasks are sent again (see `reattached`), or the provider is found gone and they are
     * queued again.
     */
    const send = async (task: TaskAssignment): Promise<void> => {
      const spec = await this.#specOf(task.taskId);
      await watch!
        .send("task", { leaseId, taskId: task.taskId, spec, ...(task.resume ? { resume: task.resume } : {}) })
        .catch((error: unknown) =>
          this.#log.debug("a task waits for the session to come back", { leaseId, taskId: task.taskId, error }),
        );
    };
    /** The task the lease's message names, else the one it runs: a batch node names the task (see `log`). */
    const named = (taskId: string | undefined): Running | undefined =>
      taskId === undefined ? given[0] : given.find((g) => g.assignment.taskId === taskId);
    /** `task-started` for the task the lease runs now, once it started and the one before it has its result. */
    const tellStarted = (): void => {
      const running = given[0];
      if (!running?.accepted || running.told) return;
      running.told = true;
      this.#taskStarted(lease, running.assignment);
    };
    /** The next task sent to wait behind the one the lease runs, unless the outputs of its tasks are behind (see the result). */
    const queueNext = async (): Promise<void> => {
      if (taskQueue < 1 || given.length !== 1 || !given[0]!.accepted || left()) return;
      if (fetches.pending.size >= OUTPUT_FETCHES_PER_LEASE) return;
      const next = this.#queue.next(lease.leaseId, provider);
      if (next) await give(next);
    };
    try {
      given.push({
        assignment: first,
        startedAt: Date.now(),
        logs: [],
        accepted: false,
        told: true,
        sentWith: "start",
      });
      watch = watchLease(this.#client, {
        leaseId,
        peerId: lease.peerId,
        addresses: lease.addresses,
        batch: true,
        liveness: leaseLiveness(this.#client, lease, this.#init),
        start: {
          spec: await this.#specOf(first.taskId),
          key: this.#record.key,
          inlineOutputs: true,
          taskId: first.taskId,
          ...(first.resume ? { resume: first.resume } : {}),
        },
        signal: this.#stop.signal,
      });
      this.#taskStarted(lease, first);
      topUps.schedule(lease);
      // A provider whose heartbeats stop on chain is left before its lease turns slashable, though
      // its session still answers (see `chain-deadline.ts`).
      watchChainDeadline(this.#client, { leaseId, signal: AbortSignal.any([fetches.stop.signal, this.#stop.signal]) })
        .then((reason) => {
          if (reason !== undefined) fetches.drop(reason);
        })
        .catch((error: unknown) => this.#log.warn("a lease's deadline is not watched", { leaseId, error }));
      for await (const event of watch) {
        if (lostOpening) break;
        switch (event.type) {
          case "accepted": {
            lease.state = "running";
            lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
            taskQueue = event.body.taskQueue ?? 0;
            const started = named(event.body.taskId);
            if (started && !started.accepted) {
              started.accepted = true;
              // One sent to wait behind another costs from its start; one sent to an idle lease, from then.
              if (!started.told) started.startedAt = Date.now();
            }
            tellStarted();
            await queueNext();
            break;
          }
          case "log": {
            const running = named(event.body.taskId);
            if (running && event.body.stream !== "node") {
              running.logs.push(event.body.line);
              running.logs.splice(0, running.logs.length - FAILED_TASK_LOG_LINES);
            }
            break;
          }
          case "result": {
            const taskId = event.body.taskId;
            if (taskId === undefined) break;
            if (given[0]?.assignment.taskId !== taskId) {
              this.#emit({ type: "task-discarded", taskId, leaseId, reason: "the lease is not running this task" });
              break;
            }
            const ended = given.shift()!;
            tellStarted();
            await this.#taskEnded(lease, ended, event.body, fetches);
            // The task queued behind it runs already (or starts now): the next is queued behind that.
            if (given.length > 0) {
              await queueNext();
              break;
            }
            while (fetches.pending.size >= OUTPUT_FETCHES_PER_LEASE && !fetches.dropped) {
              await Promise.race(fetches.pending);
            }
            let next = left() ? undefined : this.#queue.next(lease.leaseId, provider);
            // Nothing queued for it: the lease is closed once its outputs are in, unless one of them
            // failed (the lease is lost then) or another lease's did (its task is queued again).
            while (!next && !left() && fetches.pending.size > 0) {
              await Promise.allSettled(fetches.pending);
              next = left() ? undefined : this.#queue.next(lease.leaseId, provider);
            }
            if (lostOpening) return await this.#leaveLost(lease, lostOpening, fetches);
            if (fetches.dropped) return await this.#lost(lease, undefined, fetches.dropped);
            if (!next) return await this.#close(lease);
            await give(next);
            given[0]!.told = true;
            this.#taskStarted(lease, next);
            break;
          }
          case "refused":
            // The tenant's own doing (a task the lease cannot run as asked): it runs nowhere.
            if (!isProviderRefusal(event.body.reason)) {
              throw new RefusalError(event.body.reason, `a provider refused a task: ${event.body.message}`);
            }
            return await this.#lost(lease, given[0], `refused: ${event.body.message}`);
          case "liveness":
            if (event.body.state === "failed") return await this.#lost(lease, given[0], event.body.reason);
            break;
          case "checkpoint": {
            const taskId = named(event.body.taskId)?.assignment.taskId;
            if (taskId === undefined) break;
            this.#replicator.replicate(lease, event.body, watch, fetches.stop.signal, (held, body) =>
              this.#holdCheckpoint(taskId, held, body),
            );
            break;
          }
          case "reattached":
            // A node that restarted meanwhile lost the task queued on it, and maybe a task's result
            // not yet sent: the tasks the lease holds are sent again, and the node passes over those
            // it has (see `startTask` in node/leases.ts). A first task not yet accepted went with the
            // `start`, which the node recorded before anything else, or the re-attach was refused.
            for (const held of [...given]) if (held.sentWith === "task" || held.accepted) await send(held.assignment);
            break;
          case "heartbeat":
            break;
        }
      }
      if (lostOpening) await this.#leaveLost(lease, lostOpening, fetches);
      else if (!this.#stop.signal.aborted) await this.#lost(lease, given[0], fetches.dropped ?? "the session ended");
    } finally {
      this.#serving.delete(lease);
      topUps.stop();
      await watch?.stop();
      fetches.stop.abort();
    }
  }

  /**
   * A task's result on the lease running it: what the queue makes of its exit, recorded once. An
   * exit 0 with an output is recorded only once that output is fetched and verified, which runs in
   * the background (in `fetches`), so that the lease can be given its next task meanwhile.
   */
  async #taskEnded(
    lease: LeaseRecord,
    running: Running,
    body: ProviderMessage<"result">,
    fetches: OutputFetches,
  ): Promise<void> {
    const { taskId } = running.assignment;
    this.#addCost(taskId, lease, Date.now() - running.startedAt);
    const output =
      body.exitCode === 0 && body.outputCid && body.outputSha256
        ? { cid: body.outputCid, sha256: body.outputSha256, inline: body.outputInline }
        : undefined;
    const outcome = this.#queue.exited(taskId, lease.leaseId, body.exitCode, { verify: output !== undefined });
    const leaseId = BigInt(lease.leaseId);
    if (outcome.kind === "stale") {
      this.#emit({ type: "task-discarded", taskId, leaseId, reason: "the lease is not running this task" });
    } else if (outcome.kind === "retry") {
      this.#idle.clear();
      this.#emit({
        type: "task-retry",
        taskId,
        leaseId,
        provider: lease.provider as Address,
        exitCode: body.exitCode,
        attempts: outcome.attempts,
      });
    } else if (outcome.kind === "verify") {
      const fetched = this.#fetchOutput(lease, running, body, output!, fetches)
        // A manifest that cannot be written stops the batch, as it would have in line.
        .catch((error: unknown) => this.#fail(error))
        .finally(() => fetches.pending.delete(fetched));
      fetches.pending.add(fetched);
      this.#fetching.add(fetched);
      void fetched.finally(() => this.#fetching.delete(fetched));
    } else {
      await this.#recordResult(lease, running, body, outcome);
    }
    this.#notify();
  }

  /**
   * Fetches and verifies a task's output, then records the task done; an output that does not come
   * or does not verify puts the task back in the queue and drops the lease's provider.
   */
  async #fetchOutput(
    lease: LeaseRecord,
    running: Running,
    body: ProviderMessage<"result">,
    output: OutputAnnounced,
    fetches: OutputFetches,
  ): Promise<void> {
    const { taskId } = running.assignment;
    try {
      await this.#replicator.fetchOutput(lease, output, path.join(this.#init.outputDir, taskId), {
        signal: fetches.stop.signal,
      });
    } catch (error) {
      const reason = fetches.stop.signal.aborted
        ? "the lease was left before its output was fetched"
        : "its task's output did not verify";
      this.#log.warn("a task's output was not fetched; it is queued again", {
        taskId,
        leaseId: lease.leaseId,
        error,
      });
      this.#queue.unverified(taskId);
      this.#queue.exclude(lease.provider);
      this.#idle.clear();
      const provider = lease.provider as Address;
      this.#emit({ type: "task-requeued", taskId, leaseId: BigInt(lease.leaseId), provider, reason });
      fetches.drop(reason);
      this.#notify();
      return;
    }
    await this.#recordResult(lease, running, body, this.#queue.verified(taskId));
    this.#notify();
  }

  /**
   * A task's checkpoint, verified and pinned in the tenant's store: the one its next attempt resumes
   * from, if the lease still runs the task (else it is let go). The task's previous one is unpinned.
   */
  async #holdCheckpoint(taskId: string, lease: LeaseRecord, body: ProviderMessage<"checkpoint">): Promise<number> {
    lease.lastSeq = Math.max(lease.lastSeq, body.seq);
    if (!this.#queue.checkpointed(taskId, lease.leaseId, { cid: body.cid, sha256: body.sha256 })) {
      await this.#unpin(body.cid);
      return 0;
    }
    const previous = this.#checkpoints.get(taskId);
    this.#checkpoints.set(taskId, { cid: body.cid, sha256: body.sha256 });
    await this.#saveCheckpoints();
    if (previous !== undefined && previous.cid !== body.cid) await this.#unpin(previous.cid);
    this.#emit({
      type: "task-checkpointed",
      taskId,
      leaseId: BigInt(lease.leaseId),
      cid: body.cid,
      ...(body.step === undefined ? {} : { step: body.step }),
    });
    return 1;
  }

  /** Unpinned, not deleted: the store collects it at its next gc. */
  async #unpin(cid: string): Promise<void> {
    await this.#client.ipfs.unpin(CID.parse(cid)).catch(() => undefined);
    this.#client.ipfs.gcSoon();
  }

  /** Records a task's result (done, or failed for good) in the manifest, unless one is there already. */
  async #recordResult(
    lease: LeaseRecord,
    running: Running,
    body: ProviderMessage<"result">,
    outcome: { kind: "done" | "failed"; attempts: number },
  ): Promise<void> {
    const { taskId } = running.assignment;
    const result: TaskResult = {
      taskId,
      state: outcome.kind,
      exitCode: body.exitCode,
      ...(body.outputCid ? { outputCid: body.outputCid } : {}),
      provider: lease.provider,
      leaseId: lease.leaseId,
      durationMs: Math.max(0, body.finishedAt - running.startedAt),
      cost: (this.#taskCost.get(taskId) ?? 0n).toString(),
      attempts: outcome.attempts,
      ...(outcome.kind === "failed" ? { logs: running.logs } : {}),
      at: Date.now(),
    };
    const leaseId = BigInt(lease.leaseId);
    if (await this.#init.manifest.record(result)) this.#emit({ type: "task-recorded", result });
    else this.#emit({ type: "task-discarded", taskId, leaseId, reason: "the task's result is recorded already" });
    // With a result, no attempt resumes from its checkpoint any more.
    const checkpoint = this.#checkpoints.get(taskId);
    if (checkpoint === undefined) return;
    this.#checkpoints.delete(taskId);
    await this.#saveCheckpoints();
    await this.#unpin(checkpoint.cid);
  }

  /**
   * The tasks' checkpoints into the batch record, saved before any of them is unpinned: a run killed
   * at any moment leaves a record that names only checkpoints its store still holds.
   */
  async #saveCheckpoints(): Promise<void> {
    if (this.#checkpoints.size > 0) this.#record.taskCheckpoints = Object.fromEntries(this.#checkpoints);
    else delete this.#record.taskCheckpoints;
    await this.#client.jobs.save(this.#record);
  }

  /**
   * The lease's provider is lost (failed, refused, or sent an output that does not verify): its task
   * goes back to the queue, it gets no further task of this batch, and its lease is ended (closed, and
   * slashed once due if its provider never acknowledges).
   */
  async #lost(lease: LeaseRecord, running: Running | undefined, reason: string): Promise<void> {
    const provider = lease.provider as Address;
    if (running) this.#addCost(running.assignment.taskId, lease, Date.now() - running.startedAt);
    const requeued = this.#queue.leaseLost(lease.leaseId);
    if (requeued.length > 0) this.#idle.clear();
    this.#queue.exclude(provider);
    this.#active.delete(lease.leaseId);
    lease.state = "failed";
    lease.endedAt = Date.now();
    this.#log.warn("a provider of the batch is lost", { leaseId: lease.leaseId, provider, reason });
    this.#emit({ type: "provider-lost", leaseId: BigInt(lease.leaseId), provider, reason, requeued });
    this.#notify();
    try {
      await endRecordedLease(this.#client, this.#record, lease, { onSlash: this.#onSlash });
    } catch (error) {
      this.#log.warn("a lost lease was not ended; its slash is waited for", { leaseId: lease.leaseId, error });
    }
    await this.#client.jobs.save(this.#record);
    if (!lease.slash) this.#slashes.add(lease);
  }

  /** The queue has nothing for the lease: it is closed, its unused deposit back to the tenant. */
  async #close(lease: LeaseRecord): Promise<void> {
    this.#active.delete(lease.leaseId);
    lease.state = "completed";
    lease.endedAt = Date.now();
    this.#queue.leaseLost(lease.leaseId);
    await endRecordedLease(this.#client, this.#record, lease, { onSlash: this.#onSlash });
    await this.#client.jobs.save(this.#record);
    this.#emit({ type: "lease-closed", leaseId: BigInt(lease.leaseId), provider: lease.provider as Address });
    this.#notify();
  }

  /**
   * Follows a new lease's opening to the client's depth: once confirmed it is recorded so; once lost,
   * the lease is left if it is served still (see {@link #leaveLost}), else settled at once.
   */
  #followOpening(lease: LeaseRecord): void {
    if (this.#client.chain.confirmations === 0) return;
    const followed = followOpening(this.#client.chain, {
      leaseId: BigInt(lease.leaseId),
      openingTx: lease.openingTx as Hex | undefined,
      tenant: this.#client.account.address,
      signal: this.#following.signal,
    })
      .then(async (fate) => {
        if (fate.state === "confirmed") {
          lease.confirmedBlock = fate.blockNumber.toString();
          await this.#client.jobs.save(this.#record);
          this.#emit({ type: "lease-confirmed", leaseId: BigInt(lease.leaseId), blockNumber: fate.blockNumber });
          return;
        }
        const leave = this.#serving.get(lease);
        if (leave) leave(fate);
        else await this.#openingLost(lease, fate, []);
      })
      .catch((error: unknown) => {
        if (!this.#following.signal.aborted) {
          this.#log.warn("a lease's opening could not be followed", { leaseId: lease.leaseId, error });
        }
      })
      .finally(() => this.#openings.delete(followed));
    this.#openings.add(followed);
  }

  /**
   * A served lease whose opening a reorg took: its task goes back to the queue (the attempt not
   * counted) and the slot leases again; its provider, not at fault, is not excluded. Outputs of its
   * tasks still being fetched are waited for first: the provider still has them (leaving would abort
   * those fetches, and count them against it).
   */
  async #leaveLost(lease: LeaseRecord, fate: LostOpening, fetches: OutputFetches): Promise<void> {
    await Promise.allSettled(fetches.pending);
    const requeued = this.#queue.leaseLost(lease.leaseId);
    if (requeued.length > 0) this.#idle.clear();
    this.#active.delete(lease.leaseId);
    await this.#openingLost(lease, fate, requeued);
  }

  /**
   * A lease whose opening was lost, told and settled (`settleLostOpening`: vanished, or ended under
   * its new id). The results its tasks had are kept: their outputs were verified, whichever lease
   * ran them.
   */
  async #openingLost(lease: LeaseRecord, fate: LostOpening, requeued: string[]): Promise<void> {
    const leaseId = BigInt(lease.leaseId);
    const provider = lease.provider as Address;
    this.#log.warn("a reorg took a batch lease's opening", { leaseId: lease.leaseId, reason: fate.reason });
    this.#emit({ type: "lease-vanished", leaseId, provider, reason: fate.reason, requeued });
    this.#notify();
    // Not ended now (a moved lease's close failed): the batch's end tries again (`endOpenLeases`).
    await settleLostOpening(this.#client, this.#record, lease, fate, {
      onSlash: this.#onSlash,
      slashes: this.#slashes,
    }).catch((error: unknown) => this.#log.warn("a lost lease was not settled", { leaseId: lease.leaseId, error }));
  }

  #taskStarted(lease: LeaseRecord, assignment: TaskAssignment): void {
    this.#emit({
      type: "task-started",
      taskId: assignment.taskId,
      leaseId: BigInt(lease.leaseId),
      provider: lease.provider as Address,
      attempt: assignment.attempt,
      ...(assignment.resume ? { resume: assignment.resume.cid } : {}),
    });
  }

  /** A task's share of its lease's price: its whole seconds on the lease, rounded up. */
  #addCost(taskId: string, lease: LeaseRecord, ms: number): void {
    const cost = (BigInt(lease.pricePerSecond) * BigInt(Math.ceil(Math.max(0, ms)))) / 1000n;
    this.#taskCost.set(taskId, (this.#taskCost.get(taskId) ?? 0n) + cost);
  }

  /** The spec a task runs, its local files added to IPFS (once each). */
  async #specOf(taskId: string): Promise<JobSpec> {
    const task = this.#tasks.get(taskId)!;
    const inputs = [...task.inputs];
    for (const [target, file] of Object.entries(task.files)) {
      let cid = this.#files.get(file);
      if (!cid) {
        cid = this.#client.ipfs
          .add(createReadStream(file), { pin: true, signal: this.#stop.signal })
          .then((c) => c.toString());
        this.#files.set(file, cid);
      }
      inputs.push({ cid: await cid, path: target });
    }
    return taskSpec(this.#init.spec, { ...task, inputs });
  }

  #emit(event: NewBatchEvent): void {
    const full = { ...event, at: Date.now(), progress: this.progress() } as BatchEvent;
    try {
      this.#init.onEvent?.(full);
    } catch (error) {
      this.#log.warn("a batch event listener threw", { type: full.type, error });
    }
  }

  #notify(): void {
    this.#changed.resolve();
    this.#changed = wakeUp();
  }

  /** Stops the batch with `error` (the first one counts): every slot ends and every lease is closed. */
  #fail(error: unknown): void {
    this.#failure ??=
      error instanceof BaseError ? error : new BaseError("the batch failed", { cause: error, details: String(error) });
    this.#stop.abort(this.#failure);
    this.#notify();
  }

  /** Resolves once the batch stops: one listener for the batch, however often idle slots wait on it. */
  #stopped(): Promise<void> {
    const { signal } = this.#stop;
    this.#stopping ??= new Promise((resolve) =>
      signal.aborted ? resolve() : signal.addEventListener("abort", () => resolve(), { once: true }),
    );
    return this.#stopping;
  }
}

/** A promise and the function that resolves it: what idle slots wait on until the queue changes. */
function wakeUp(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => (resolve = done));
  return { promise, resolve };
}
