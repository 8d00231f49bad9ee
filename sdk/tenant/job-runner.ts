import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";

import { CID } from "multiformats/cid";
import { toHex, type Address, type Hex } from "viem";

import { bid } from "../actions/bid.ts";
import { findOffers } from "../actions/findOffers.ts";
import { openLease } from "../actions/openLease.ts";
import { watchLease, type LeaseWatch } from "../actions/watchLease.ts";
import { contracts, writeContract } from "../chain/client.ts";
import type { BatonClient } from "../client.ts";
import {
  BaseError,
  BudgetExhaustedError,
  ChainError,
  JobCancelledError,
  JobFailedError,
  shortMessageOf,
  UserError,
} from "../errors.ts";
import { restoreCheckpoint, verifyCheckpoint } from "../ipfs/checkpoint.ts";
import { MAX_CHECKPOINT_BYTES } from "../ipfs/constants.ts";
import { generateJobKey } from "../ipfs/crypto.ts";
import { parseJobSpec, type JobSpec, type JobSpecInput } from "../job-spec.ts";
import type { ProviderMessage } from "../wire/messages.ts";
import { SESSION_HEARTBEAT_MS } from "../wire/protocols.ts";
import { createEventQueue } from "./event-queue.ts";
import { endLease, slashWhenDue, type SlashRecord } from "./lease-settlement.ts";
import { recordedSlash, type CheckpointRecord, type JobRecord, type LeaseRecord } from "./job-store.ts";

/** How long to wait for the next block of a checkpoint before giving up on it (the job goes on). */
const CHECKPOINT_STALL_MS = 30_000;

/** A lease is topped up this long before its deposit runs out. */
const TOP_UP_MARGIN_MS = 5_000;

interface EventBase {
  /** When it happened (ms since epoch). */
  at: number;
}

/** What a job handle reports, in order. */
export type JobEvent = EventBase &
  (
    | { type: "offers-found"; count: number }
    | {
        type: "lease-opened";
        leaseId: bigint;
        provider: Address;
        peerId: string;
        pricePerSecond: bigint;
        deposit: bigint;
        predecessor: bigint;
      }
    | { type: "started"; leaseId: bigint; resumed: boolean; resumedFrom?: { cid: string; step?: number | undefined } }
    | { type: "progress"; leaseId: bigint; step?: number | undefined; total?: number | undefined; message?: string }
    | { type: "log"; leaseId: bigint; stream: "stdout" | "stderr" | "node"; line: string }
    | { type: "checkpoint-safe"; leaseId: bigint; cid: string; step?: number | undefined; size: number; held: number }
    | { type: "checkpoint-rejected"; leaseId: bigint; cid: string; reason: string }
    | { type: "provider-suspect"; leaseId: bigint; provider: Address; reason: string }
    | { type: "provider-recovered"; leaseId: bigint; provider: Address }
    | {
        type: "provider-failed";
        leaseId: bigint;
        provider: Address;
        reason: string;
        /** When the provider was last heard from: detection took `at - lastSeenAt`. */
        lastSeenAt: number;
        /** The last step it reported, to measure work lost. */
        lastStep?: number | undefined;
      }
    | {
        type: "re-leased";
        from: bigint;
        to: bigint;
        provider: Address;
        resumeFrom?: { cid: string; step?: number | undefined };
        handOffs: number;
      }
    | { type: "top-up"; leaseId: bigint; amount: bigint }
    | { type: "slashed"; leaseId: bigint; provider: Address; compensation: bigint; refund: bigint; tx: Hex }
    | { type: "completed"; result: JobResult }
    | { type: "failed"; error: BaseError }
    | { type: "cancelled" }
  );

export type JobEventType = JobEvent["type"];

export interface JobResult {
  jobId: Hex;
  exitCode: number | null;
  reason: string;
  /** Where the job's output directory was restored, verified against its digest. */
  outputDir: string | undefined;
  outputCid: string | undefined;
  /** The lease that finished the job. */
  leaseId: bigint;
  handOffs: number;
  leases: LeaseRecord[];
}

/** A snapshot for displays: where the job is now. */
export interface JobStatus {
  jobId: Hex;
  state: "starting" | "running" | "handing-off" | "completed" | "failed" | "cancelled";
  leaseId: bigint | undefined;
  provider: Address | undefined;
  /** The current provider's libp2p peer id. */
  peerId: string | undefined;
  step: number | undefined;
  total: number | undefined;
  safeCheckpoints: number;
  lastSafeStep: number | undefined;
  handOffs: number;
  /** Price × time over every lease so far, capped by each deposit: what the job has cost. */
  costSoFar: bigint;
  deposited: bigint;
}

export interface JobHandle extends AsyncIterable<JobEvent> {
  readonly jobId: Hex;
  /** Calls `listener` for each event of `type` (or every event with `"*"`); returns an unsubscribe. */
  on<T extends JobEventType | "*">(
    type: T,
    listener: (event: T extends JobEventType ? Extract<JobEvent, { type: T }> : JobEvent) => void,
  ): () => void;
  status(): JobStatus;
  /** Resolves when the job completed (output fetched and verified); rejects when it failed or was cancelled. */
  result(): Promise<JobResult>;
  /**
   * Resolves once every lease the job used is settled on chain: each failed provider's lease slashed
   * (once its timeout passed) or acknowledged by it. Call after `result()` to see the compensation.
   */
  settled(): Promise<void>;
  /** Ends the job: closes its lease (unused deposit refunded) and stops watching. */
  cancel(): Promise<void>;
  /** Stops watching, leaving the job running; `attachJob` picks it up again. */
  detach(): Promise<void>;
}

export interface RunJobOptions {
  /** Highest price per second to pay, in payment-token base units. */
  maxPricePerSecond: bigint;
  /** Most payment tokens to deposit into this job's leases, top-ups and re-leases included. */
  budget?: bigint;
  /** Local files to send as inputs: work-dir path → file on this machine. */
  files?: Record<string, string>;
  /** Checkpoint interval hint in seconds; overrides the spec's `checkpointIntervalS`. */
  checkpointIntervalS?: number;
  /** Suspect a provider after this long without a heartbeat. Default: 3 of its heartbeats. */
  heartbeatWindowMs?: number;
  /** Fail a suspect provider after this long without a message. Default: 10 s. */
  failAfterMs?: number;
  /** Hand-offs allowed before the job fails. Default 3. */
  retryLimit?: number;
  /** Provider addresses or peer ids never to use. */
  exclude?: string[];
  /** More to leave out, asked at each lease (e.g. the providers already serving a service's other replicas). */
  excludeProviders?: () => readonly string[];
  /** Safe checkpoints to keep pinned; older ones are unpinned. Default 3. */
  keepCheckpoints?: number;
  /** Where the output goes. Default `<dataDir>/jobs/<jobId>/output`. */
  outputDir?: string;
  /** Job id (bytes32); random by default. */
  jobId?: Hex;
  signal?: AbortSignal;
}

export interface AttachOptions {
  heartbeatWindowMs?: number;
  failAfterMs?: number;
  outputDir?: string;
  signal?: AbortSignal;
}

/** Starts a new job; see `runJob`. */
export async function startJob(
  client: BatonClient,
  specInput: JobSpec | JobSpecInput,
  options: RunJobOptions,
): Promise<JobHandle> {
  const spec = parseJobSpec(specInput);
  if (options.checkpointIntervalS !== undefined) spec.checkpointIntervalS = options.checkpointIntervalS;
  if (options.maxPricePerSecond <= 0n) throw new UserError("maxPricePerSecond must be positive");
  if (options.budget !== undefined && options.budget <= 0n) throw new UserError("budget must be positive");
  const jobId = options.jobId ?? toHex(randomBytes(32));
  if (await client.jobs.get(jobId)) throw new UserError(`job ${jobId} already exists; attach to it instead`);
  for (const [target, file] of Object.entries(options.files ?? {})) {
    const cid = await client.ipfs.add(createReadStream(file), { pin: true, ...signalOf(options.signal) });
    spec.inputs.push({ cid: cid.toString(), path: target });
  }
  parseJobSpec(spec);
  const record: JobRecord = {
    version: 1,
    jobId,
    spec,
    key: Buffer.from(generateJobKey()).toString("base64"),
    createdAt: Date.now(),
    state: "running",
    options: {
      maxPricePerSecond: options.maxPricePerSecond.toString(),
      ...(options.budget === undefined ? {} : { budget: options.budget.toString() }),
      retryLimit: options.retryLimit ?? 3,
      keepCheckpoints: options.keepCheckpoints ?? 3,
      exclude: options.exclude ?? [],
    },
    leases: [],
    safe: [],
    deposited: "0",
    handOffs: 0,
  };
  await client.jobs.save(record);
  return new JobRunner(client, record, options).begin();
}

/** Re-attaches to a job from its record; see `attachJob`. */
export async function resumeJob(client: BatonClient, jobId: Hex, options: AttachOptions = {}): Promise<JobHandle> {
  const record = await client.jobs.get(jobId);
  if (!record) throw new UserError(`no job ${jobId} in ${client.jobs.dir}`);
  return new JobRunner(client, record, options).begin();
}

type FollowOutcome =
  | { kind: "result"; body: ProviderMessage<"result"> }
  | { kind: "refused"; reason: string; message: string }
  | { kind: "failed"; reason: string; lastSeenAt: number }
  | { kind: "stopped" };

class JobRunner implements JobHandle {
  readonly jobId: Hex;
  readonly #client: BatonClient;
  readonly #record: JobRecord;
  readonly #options: RunJobOptions | AttachOptions;
  readonly #key: Uint8Array;
  readonly #events: JobEvent[] = [];
  readonly #listeners = new Set<{ type: string; listener: (event: JobEvent) => void }>();
  readonly #queues = new Set<ReturnType<typeof createEventQueue<JobEvent>>>();
  readonly #stop = new AbortController();
  readonly #slashes: Promise<void>[] = [];
  #result!: Promise<JobResult>;
  #replication: Promise<void> = Promise.resolve();
  #leaseAbort: AbortController | undefined;
  #state: JobStatus["state"] = "starting";
  #step: number | undefined;
  #total: number | undefined;
  #topUpTimer: NodeJS.Timeout | undefined;
  #stopping: "cancel" | "detach" | undefined;
  #stoppedDone = false;

  constructor(client: BatonClient, record: JobRecord, options: RunJobOptions | AttachOptions) {
    this.#client = client;
    this.#record = record;
    this.#options = options;
    this.jobId = record.jobId as Hex;
    this.#key = Buffer.from(record.key, "base64");
    options.signal?.addEventListener("abort", () => void this.detach(), { once: true });
  }

  get #log() {
    return this.#client.log.child(`job.${this.jobId.slice(0, 10)}`);
  }

  begin(): this {
    this.#result = this.#drive();
    // A caller that only iterates events must not see an unhandled rejection.
    this.#result.catch(() => undefined);
    return this;
  }

  /*//////////////////////////////////////////////////////////////
                              PUBLIC
  //////////////////////////////////////////////////////////////*/

  [Symbol.asyncIterator](): AsyncIterator<JobEvent> {
    const queue = createEventQueue<JobEvent>();
    for (const event of this.#events) queue.push(event);
    if (this.#finished()) queue.end();
    else this.#queues.add(queue);
    return queue[Symbol.asyncIterator]();
  }

  on<T extends JobEventType | "*">(
    type: T,
    listener: (event: T extends JobEventType ? Extract<JobEvent, { type: T }> : JobEvent) => void,
  ): () => void {
    const entry = { type, listener: listener as (event: JobEvent) => void };
    this.#listeners.add(entry);
    return () => this.#listeners.delete(entry);
  }

  status(): JobStatus {
    const current = this.#current();
    const last = this.#record.safe.at(-1);
    return {
      jobId: this.jobId,
      state: this.#state,
      leaseId: current ? BigInt(current.leaseId) : undefined,
      provider: current?.provider as Address | undefined,
      peerId: current?.peerId,
      step: this.#step,
      total: this.#total,
      safeCheckpoints: this.#record.safe.length,
      lastSafeStep: last?.step,
      handOffs: this.#record.handOffs,
      costSoFar: this.#record.leases.reduce((sum, lease) => sum + leaseCost(lease), 0n),
      deposited: BigInt(this.#record.deposited),
    };
  }

  result(): Promise<JobResult> {
    return this.#result;
  }

  async settled(): Promise<void> {
    await this.#result.catch(() => undefined);
    const failed = (await Promise.allSettled(this.#slashes)).filter((s) => s.status === "rejected");
    if (failed.length > 0) {
      const reasons = failed.map((s) => shortMessageOf(s.reason));
      throw new ChainError(`${failed.length} lease(s) that should have been slashed were not`, {
        details: reasons.join("; "),
        cause: failed[0]!.reason,
      });
    }
  }

  async cancel(): Promise<void> {
    if (this.#finished()) return;
    this.#stopping = "cancel";
    this.#stop.abort(new JobCancelledError("the job was cancelled"));
    await this.#result.catch(() => undefined);
  }

  async detach(): Promise<void> {
    if (this.#finished()) return;
    this.#stopping = "detach";
    this.#stop.abort(new JobCancelledError("the client detached from the job"));
    await this.#result.catch(() => undefined);
  }

  /*//////////////////////////////////////////////////////////////
                               DRIVE
  //////////////////////////////////////////////////////////////*/

  async #drive(): Promise<JobResult> {
    try {
      if (this.#record.state !== "running") return this.#finishedBefore();
      // Leases that failed before a restart may still be waiting for their slash.
      for (const lease of this.#record.leases) if (lease.state === "failed" && !lease.slash) this.#slashWhenDue(lease);
      let lease = this.#current();
      let resume: CheckpointRecord | undefined;
      for (;;) {
        let starting = false;
        if (!lease) {
          const predecessor = this.#record.leases.at(-1);
          resume = this.#record.safe.at(-1);
          lease = await this.#acquire(predecessor, resume);
          starting = true;
        }
        const outcome = await this.#follow(lease, starting, resume);
        if (outcome.kind === "result") return await this.#complete(lease, outcome.body);
        if (outcome.kind === "stopped") return await this.#stopped(lease);
        if (outcome.kind === "refused" && !providerRefusals.has(outcome.reason)) {
          throw new UserError(`the provider refused the job: ${outcome.message}`, { details: outcome.reason });
        }
        const reason = outcome.kind === "refused" ? `refused: ${outcome.message}` : outcome.reason;
        const lastSeenAt = outcome.kind === "failed" ? outcome.lastSeenAt : Date.now();
        await this.#handOff(lease, reason, lastSeenAt);
        lease = undefined;
      }
    } catch (error) {
      if (this.#stoppedDone) throw error;
      if (this.#stopping) return await this.#stopped(this.#current());
      const failure =
        error instanceof BaseError
          ? error
          : new JobFailedError("the job failed", { cause: error, details: String(error) });
      this.#record.state = "failed";
      this.#record.error = failure.shortMessage;
      await this.#settleOpenLeases();
      await this.#client.jobs.save(this.#record);
      this.#state = "failed";
      this.#emit({ type: "failed", error: failure });
      this.#end();
      throw failure;
    }
  }

  /** Finds, bids for and opens a lease for the job, continuing `predecessor` from `resume`. */
  async #acquire(predecessor: LeaseRecord | undefined, resume: CheckpointRecord | undefined): Promise<LeaseRecord> {
    const signal = this.#stop.signal;
    const { spec, options } = this.#record;
    const requirements = {
      gpus: spec.resources.gpus,
      gpuModel: spec.resources.gpuModel,
      minVramMiB: spec.resources.minVramMiB,
    };
    const maxPricePerSecond = BigInt(options.maxPricePerSecond!);
    const dynamic = "excludeProviders" in this.#options ? (this.#options.excludeProviders?.() ?? []) : [];
    const offers = await findOffers(this.#client, {
      requirements,
      maxPricePerSecond,
      exclude: [...options.exclude, ...dynamic],
      timeoutMs: 15_000,
      signal,
    });
    this.#emit({ type: "offers-found", count: offers.length });
    const { chosen } = await bid(this.#client, {
      jobId: this.jobId,
      offers,
      requirements,
      maxPricePerSecond,
      durationS: spec.maxDurationS,
      signal,
    });
    const price = chosen.quote.pricePerSecond;
    let deposit = price * BigInt(spec.maxDurationS);
    if (options.budget !== undefined) {
      const left = BigInt(options.budget) - BigInt(this.#record.deposited);
      if (left < price) {
        throw new BudgetExhaustedError(`the budget of ${options.budget} is spent; a new lease needs at least ${price}`);
      }
      if (left < deposit) deposit = left;
    }
    const { leaseId } = await openLease(this.#client, {
      quote: chosen.quote,
      signature: chosen.signature,
      deposit,
      predecessor: predecessor ? BigInt(predecessor.leaseId) : 0n,
      signal,
    });
    const known = await this.#client.host.peerStore.get(chosen.offer.peerId as never).catch(() => undefined);
    const lease: LeaseRecord = {
      leaseId: leaseId.toString(),
      provider: chosen.quote.provider,
      peerId: chosen.offer.peerId,
      addresses: (known?.addresses ?? []).map((a) => a.multiaddr.toString()),
      pricePerSecond: price.toString(),
      deposit: deposit.toString(),
      openedAt: Date.now(),
      lastSeq: 0,
      state: "starting",
      ...(resume ? { resumedFrom: resume.cid } : {}),
    };
    this.#record.leases.push(lease);
    this.#record.deposited = (BigInt(this.#record.deposited) + deposit).toString();
    await this.#client.jobs.save(this.#record);
    this.#emit({
      type: "lease-opened",
      leaseId,
      provider: chosen.quote.provider,
      peerId: chosen.offer.peerId,
      pricePerSecond: price,
      deposit,
      predecessor: predecessor ? BigInt(predecessor.leaseId) : 0n,
    });
    if (predecessor) {
      this.#emit({
        type: "re-leased",
        from: BigInt(predecessor.leaseId),
        to: leaseId,
        provider: chosen.quote.provider,
        ...(resume ? { resumeFrom: { cid: resume.cid, step: resume.step } } : {}),
        handOffs: this.#record.handOffs,
      });
    }
    return lease;
  }

  /** Runs one lease's session until its result, its provider's failure, or a stop. */
  async #follow(lease: LeaseRecord, starting: boolean, resume: CheckpointRecord | undefined): Promise<FollowOutcome> {
    const leaseId = BigInt(lease.leaseId);
    const provider = lease.provider as Address;
    const heartbeatMs = this.#offerHeartbeatMs(lease.peerId);
    this.#leaseAbort = new AbortController();
    this.#state = "running";
    const watch = watchLease(this.#client, {
      leaseId,
      peerId: lease.peerId,
      addresses: lease.addresses,
      afterSeq: lease.lastSeq,
      liveness: {
        heartbeatMs,
        ...(this.#options.heartbeatWindowMs ? { suspectAfterMs: this.#options.heartbeatWindowMs } : {}),
        ...(this.#options.failAfterMs ? { failAfterMs: this.#options.failAfterMs } : {}),
      },
      ...(starting
        ? {
            start: {
              spec: this.#record.spec,
              key: this.#record.key,
              ...(resume ? { resume: { cid: resume.cid, sha256: resume.sha256 } } : {}),
            },
          }
        : {}),
      signal: AbortSignal.any([this.#stop.signal, this.#leaseAbort.signal]),
    });
    this.#scheduleTopUp(lease);
    try {
      for await (const event of watch) {
        switch (event.type) {
          case "accepted":
            lease.state = "running";
            lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
            await this.#client.jobs.save(this.#record);
            if (starting) {
              this.#emit({
                type: "started",
                leaseId,
                resumed: event.body.resumed,
                ...(resume && event.body.resumed ? { resumedFrom: { cid: resume.cid, step: resume.step } } : {}),
              });
            }
            break;
          case "heartbeat":
            lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
            if (event.body.progress) {
              this.#step = event.body.progress.step ?? this.#step;
              this.#total = event.body.progress.total ?? this.#total;
              this.#emit({ type: "progress", leaseId, ...event.body.progress });
            }
            break;
          case "log":
            this.#emit({ type: "log", leaseId, stream: event.body.stream, line: event.body.line });
            break;
          case "checkpoint":
            this.#replicate(lease, event.body, watch);
            break;
          case "result":
            lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
            return { kind: "result", body: event.body };
          case "refused":
            return { kind: "refused", reason: event.body.reason, message: event.body.message };
          case "liveness":
            if (event.body.state === "suspect") {
              this.#emit({ type: "provider-suspect", leaseId, provider, reason: event.body.reason });
            } else if (event.body.state === "alive") {
              this.#emit({ type: "provider-recovered", leaseId, provider });
            } else {
              return { kind: "failed", reason: event.body.reason, lastSeenAt: event.body.lastSeenAt };
            }
            break;
        }
      }
      if (this.#stop.signal.aborted) return { kind: "stopped" };
      return { kind: "failed", reason: "the session ended", lastSeenAt: Date.now() };
    } finally {
      clearTimeout(this.#topUpTimer);
      await watch.stop();
    }
  }

  /** Fetches an announced checkpoint into the tenant's store, verifies and pins it, then acknowledges it. */
  #replicate(lease: LeaseRecord, body: ProviderMessage<"checkpoint">, watch: LeaseWatch): void {
    const signal = this.#leaseAbort!.signal;
    const leaseId = BigInt(lease.leaseId);
    this.#replication = this.#replication.then(async () => {
      if (signal.aborted) return;
      try {
        const cid = CID.parse(body.cid);
        await verifyCheckpoint(this.#client.ipfs, this.#key, cid, {
          expectedSha256: body.sha256,
          maxBytes: MAX_CHECKPOINT_BYTES,
          providers: lease.addresses.map((a) => `${a}/p2p/${lease.peerId}`),
          stallTimeoutMs: CHECKPOINT_STALL_MS,
          signal,
        });
        const safe: CheckpointRecord = {
          cid: body.cid,
          sha256: body.sha256,
          name: body.name,
          ...(body.step === undefined ? {} : { step: body.step }),
          size: body.size,
          leaseId: lease.leaseId,
          at: Date.now(),
        };
        this.#record.safe.push(safe);
        const keep = this.#record.options.keepCheckpoints;
        const dropped = this.#record.safe.splice(0, Math.max(0, this.#record.safe.length - keep));
        lease.lastSeq = Math.max(lease.lastSeq, body.seq);
        await this.#client.jobs.save(this.#record);
        for (const old of dropped) await this.#client.ipfs.unpin(CID.parse(old.cid)).catch(() => undefined);
        await watch.send("checkpoint-ack", { leaseId, cid: body.cid }).catch(() => undefined);
        this.#emit({
          type: "checkpoint-safe",
          leaseId,
          cid: body.cid,
          step: body.step,
          size: body.size,
          held: this.#record.safe.length,
        });
      } catch (error) {
        if (signal.aborted) return;
        const reason = shortMessageOf(error);
        this.#log.warn("checkpoint not safe", { leaseId, cid: body.cid, error });
        this.#emit({ type: "checkpoint-rejected", leaseId, cid: body.cid, reason });
      }
    });
  }

  /**
   * The provider failed: exclude it, end its lease on chain (the unused deposit comes back now; its
   * collateral waits for the slash), and let the loop lease again from the last safe checkpoint.
   */
  async #handOff(lease: LeaseRecord, reason: string, lastSeenAt: number): Promise<void> {
    const leaseId = BigInt(lease.leaseId);
    this.#state = "handing-off";
    this.#leaseAbort?.abort();
    lease.state = "failed";
    lease.endedAt = Date.now();
    this.#emit({
      type: "provider-failed",
      leaseId,
      provider: lease.provider as Address,
      reason,
      lastSeenAt,
      lastStep: this.#step,
    });
    // Cancelled from another process (`baton job cancel`) while we watched: do not re-lease.
    const stored = await this.#client.jobs.get(this.jobId);
    if (stored?.state === "cancelled") {
      this.#stopping = "cancel";
      throw new JobCancelledError("the job was cancelled");
    }
    this.#record.options.exclude.push(lease.provider);
    this.#record.handOffs += 1;
    await this.#endLease(lease);
    await this.#client.jobs.save(this.#record);
    if (!lease.slash) this.#slashWhenDue(lease);
    if (this.#record.handOffs > this.#record.options.retryLimit) {
      throw new JobFailedError(
        `${this.#record.handOffs} providers failed this job; its retry limit is ${this.#record.options.retryLimit}`,
        { details: `last: ${reason}` },
      );
    }
  }

  /** Ends a lease the tenant is leaving, by the one rule of `endLease`; notes a slash it made. */
  async #endLease(lease: LeaseRecord): Promise<void> {
    const ended = await endLease(this.#client, { leaseId: BigInt(lease.leaseId) });
    if (ended.call === "slashMissedHeartbeat") await this.#noteSlash(lease, ended.slash);
  }

  /**
   * Slashes the lease once its deadline passes on chain, unless it ends first. A slash that never
   * happens is not dropped: `settled()` rejects with it.
   */
  #slashWhenDue(lease: LeaseRecord): void {
    const leaseId = BigInt(lease.leaseId);
    const slashed = slashWhenDue(this.#client, { leaseId, log: this.#log }).then(async (slash) => {
      if (slash) await this.#noteSlash(lease, slash);
    });
    slashed.catch((error: unknown) => this.#log.warn("slash failed", { leaseId: lease.leaseId, error }));
    this.#slashes.push(slashed);
  }

  async #noteSlash(lease: LeaseRecord, slash: SlashRecord): Promise<void> {
    const { compensation, refund, tx } = slash;
    lease.slash = recordedSlash(slash);
    await this.#client.jobs.save(this.#record);
    this.#emit({
      type: "slashed",
      leaseId: BigInt(lease.leaseId),
      provider: lease.provider as Address,
      compensation,
      refund,
      tx,
    });
  }

  /** Tops the lease up before its deposit runs out, within the budget; past the budget the job fails. */
  #scheduleTopUp(lease: LeaseRecord): void {
    const price = BigInt(lease.pricePerSecond);
    const fundedMs = Number((BigInt(lease.deposit) * 1000n) / price);
    const dueIn = lease.openedAt + fundedMs - TOP_UP_MARGIN_MS - Date.now();
    clearTimeout(this.#topUpTimer);
    this.#topUpTimer = setTimeout(() => void this.#topUp(lease), Math.max(0, dueIn));
    this.#topUpTimer.unref();
  }

  async #topUp(lease: LeaseRecord): Promise<void> {
    const { budget } = this.#record.options;
    const price = BigInt(lease.pricePerSecond);
    let amount = price * BigInt(this.#record.spec.maxDurationS);
    if (budget !== undefined) {
      const left = BigInt(budget) - BigInt(this.#record.deposited);
      if (left < amount) amount = left;
    }
    if (amount < price) {
      this.#fail(
        new BudgetExhaustedError(`the budget of ${budget} is spent; lease ${lease.leaseId} cannot be extended`),
      );
      return;
    }
    try {
      const { leaseManager, paymentToken } = contracts(this.#client.chain.deployment);
      await this.#client.transact(async () => {
        await writeContract(this.#client.chain, {
          ...paymentToken,
          functionName: "approve",
          args: [leaseManager.address, amount],
        });
        await writeContract(this.#client.chain, {
          ...leaseManager,
          functionName: "topUp",
          args: [BigInt(lease.leaseId), amount],
        });
      });
      lease.deposit = (BigInt(lease.deposit) + amount).toString();
      this.#record.deposited = (BigInt(this.#record.deposited) + amount).toString();
      await this.#client.jobs.save(this.#record);
      this.#emit({ type: "top-up", leaseId: BigInt(lease.leaseId), amount });
      this.#scheduleTopUp(lease);
    } catch (error) {
      this.#log.warn("top-up failed", { leaseId: lease.leaseId, error });
    }
  }

  #failure: BaseError | undefined;

  /** Fails the job from outside the drive loop (a timer): the loop sees it as a stop, then throws it. */
  #fail(error: BaseError): void {
    this.#failure = error;
    this.#stop.abort(error);
  }

  /*//////////////////////////////////////////////////////////////
                              ENDINGS
  //////////////////////////////////////////////////////////////*/

  async #complete(lease: LeaseRecord, body: ProviderMessage<"result">): Promise<JobResult> {
    this.#leaseAbort?.abort();
    await this.#replication;
    lease.state = "completed";
    lease.endedAt = Date.now();
    if (body.exitCode !== 0) {
      await this.#client.jobs.save(this.#record);
      throw new JobFailedError(
        `the job exited with ${body.exitCode === null ? body.signal : `code ${body.exitCode}`}`,
        {
          details: body.reason,
        },
      );
    }
    let outputDir: string | undefined;
    if (body.outputCid && body.outputSha256) {
      outputDir = this.#options.outputDir ?? path.join(this.#client.jobs.dir, this.jobId, "output");
      await rm(outputDir, { recursive: true, force: true });
      await mkdir(path.dirname(outputDir), { recursive: true });
      await restoreCheckpoint(this.#client.ipfs, this.#key, CID.parse(body.outputCid), outputDir, {
        expectedSha256: body.outputSha256,
        maxBytes: MAX_CHECKPOINT_BYTES,
        providers: lease.addresses.map((a) => `${a}/p2p/${lease.peerId}`),
        stallTimeoutMs: CHECKPOINT_STALL_MS,
        pin: true,
      });
    }
    this.#record.state = "completed";
    this.#record.result = {
      exitCode: body.exitCode,
      reason: body.reason,
      ...(body.outputCid ? { outputCid: body.outputCid } : {}),
      ...(outputDir ? { outputDir } : {}),
      leaseId: lease.leaseId,
    };
    await this.#client.jobs.save(this.#record);
    this.#state = "completed";
    const result = this.#finishedBefore();
    this.#emit({ type: "completed", result });
    this.#end();
    return result;
  }

  /** The job was stopped from here: cancelled (lease closed), detached (left running), or failed by a timer. */
  async #stopped(lease: LeaseRecord | undefined): Promise<JobResult> {
    this.#leaseAbort?.abort();
    if (this.#failure) throw this.#failure;
    this.#stoppedDone = true;
    if (this.#stopping === "detach") {
      this.#end();
      throw new JobCancelledError("detached from the job; it goes on running");
    }
    if (lease && lease.state !== "failed") {
      lease.state = "cancelled";
      lease.endedAt = Date.now();
    }
    await this.#settleOpenLeases();
    this.#record.state = "cancelled";
    await this.#client.jobs.save(this.#record);
    this.#state = "cancelled";
    this.#emit({ type: "cancelled" });
    this.#end();
    throw new JobCancelledError("the job was cancelled");
  }

  /** On failure or cancellation: every lease still open is ended, so its unused deposit comes back. */
  async #settleOpenLeases(): Promise<void> {
    for (const lease of this.#record.leases) {
      if (lease.state === "starting" || lease.state === "running" || lease.state === "cancelled") {
        try {
          await this.#endLease(lease);
          if (lease.state !== "cancelled") lease.state = "failed";
          lease.endedAt ??= Date.now();
        } catch (error) {
          this.#log.warn("lease not settled", { leaseId: lease.leaseId, error });
        }
      }
    }
  }

  /** A job that had already ended before this handle: its stored result or error. */
  #finishedBefore(): JobResult {
    const { result, state } = this.#record;
    if (state === "completed" && result) {
      return {
        jobId: this.jobId,
        exitCode: result.exitCode,
        reason: result.reason,
        outputDir: result.outputDir,
        outputCid: result.outputCid,
        leaseId: BigInt(result.leaseId),
        handOffs: this.#record.handOffs,
        leases: this.#record.leases,
      };
    }
    if (state === "cancelled") throw new JobCancelledError("the job was cancelled");
    throw new JobFailedError(`the job ${state === "failed" ? "failed" : "has no result"}`, {
      details: this.#record.error ?? "",
    });
  }

  /*//////////////////////////////////////////////////////////////
                              HELPERS
  //////////////////////////////////////////////////////////////*/

  #current(): LeaseRecord | undefined {
    const last = this.#record.leases.at(-1);
    return last && (last.state === "starting" || last.state === "running") ? last : undefined;
  }

  #offerHeartbeatMs(peerId: string): number {
    return this.#client.offers.list().find((o) => o.peerId === peerId)?.heartbeatMs ?? SESSION_HEARTBEAT_MS;
  }

  #finished(): boolean {
    return this.#state === "completed" || this.#state === "failed" || this.#state === "cancelled" || this.#ended;
  }

  #ended = false;

  #end(): void {
    this.#ended = true;
    for (const queue of this.#queues) queue.end();
    this.#queues.clear();
  }

  #emit(event: DistributiveOmit<JobEvent, "at">): void {
    const full = { ...event, at: Date.now() } as JobEvent;
    // Progress and log lines go to live listeners only: a long job would pile up millions of them.
    if (full.type !== "progress" && full.type !== "log") this.#events.push(full);
    for (const queue of this.#queues) queue.push(full);
    for (const { type, listener } of this.#listeners) {
      if (type !== "*" && type !== full.type) continue;
      try {
        listener(full);
      } catch (error) {
        this.#log.warn("event listener threw", { type: full.type, error });
      }
    }
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** Refusals that are the provider's doing (or bad luck), so another provider may do better. */
const providerRefusals = new Set([
  "no-capacity",
  "draining",
  "internal",
  "inputs-failed",
  "resume-failed",
  "unknown-lease",
  "lease-not-active",
  "timeout",
  "rate-limited",
]);

function leaseCost(lease: LeaseRecord): bigint {
  const price = BigInt(lease.pricePerSecond);
  const end = lease.endedAt ?? Date.now();
  const seconds = BigInt(Math.max(0, Math.floor((end - lease.openedAt) / 1000)));
  const cost = price * seconds;
  const deposit = BigInt(lease.deposit);
  return cost < deposit ? cost : deposit;
}

function signalOf(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return signal ? { signal } : {};
}
