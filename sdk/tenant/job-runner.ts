import path from "node:path";

import { isAddressEqual, type Address, type Hex } from "viem";

import { reserveAllowance, waitForOpening } from "../actions/signOpening.ts";
import { withdrawCredit } from "../actions/withdrawCredit.ts";
import { contracts, leaseStatus } from "../chain/client.ts";
import type { BatonClient } from "../client.ts";
import { BaseError, JobCancelledError, JobFailedError, oneLineOf, UserError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { sleep } from "../utils/retry.ts";
import type { ProviderMessage } from "../wire/messages.ts";
import { watchChainDeadline } from "./chain-deadline.ts";
import { CheckpointReplicator } from "./checkpoint-replicator.ts";
import { CheckpointHolders } from "./holders.ts";
import {
  countHandOff,
  HAND_OFF_SEARCH_MS,
  HAND_OFF_SEARCH_PAUSE_MS,
  searchesAgain,
  isProviderRefusal,
  leaseCost,
  leaseDeposit,
  refusalHandOffReason,
} from "./hand-off-policy.ts";
import type { AttachOptions, JobHandle, JobState, JobStatus, RunJobOptions } from "./job-handle.ts";
import { JobEvents, type JobEvent, type JobEventListener, type JobEventType, type JobResult } from "./job-events.ts";
import {
  endOpenLeases,
  endRecordedLease,
  PendingSlashes,
  settleLostOpening,
  slashedEvent,
  type OnSlash,
} from "./job-settlement.ts";
import { storedResult, type JobRecord, type LeaseRecord } from "./job-store.ts";
import { acquireLease, type AcquireLeaseParameters, type AcquiredLease } from "./lease-acquisition.ts";
import { followOpening, type LostOpening, type OpeningFate } from "./lease-confirmation.ts";
import { followLease, type FollowLeaseParameters, type FollowOutcome, type JobProgress } from "./lease-session.ts";
import { LeaseTopUps } from "./lease-top-ups.ts";

/**
 * A job's life as its handle drives it. It is `starting` until it runs on a lease, `running` while
 * the session of its lease is followed, `handing-off` from its provider's failure until the next
 * lease runs, and ends `completed`, `failed` or `cancelled`:
 *
 *               lease opened (or re-attached)           result, exit 0
 *   starting ─────────────────────────────► running ──────────────────► completed
 *                                          │  ▲
 *     provider failed, or refused the job │  │ next lease opened, from the
 *     for a reason of its own (policy)    ▼  │ last safe checkpoint
 *                                       handing-off
 *
 *   starting, running, handing-off ── retry limit, budget, exit ≠ 0, the tenant's refusal ──► failed
 *                                  └─ cancel(), here or from another process ──► cancelled
 *
 * A lease whose opening a reorg takes off the chain before it is confirmed (the client's
 * `confirmations`: see `lease-confirmation.ts`) is *lost*: it is left like a failed provider's, but
 * blamelessly (no slash, no hand-off counted, its provider not avoided), and the job moves to a new
 * lease from the last safe checkpoint: running → handing-off → running.
 *
 * `detach()` leaves the machine where it is: the job goes on without this handle.
 */
const transitions: Readonly<Record<JobState, readonly JobState[]>> = {
  starting: ["running", "failed", "cancelled"],
  running: ["handing-off", "completed", "failed", "cancelled"],
  "handing-off": ["running", "failed", "cancelled"],
  completed: [],
  failed: [],
  cancelled: [],
};

/** Drives a job from its record (a new one, or one this client ran before) and returns its handle. */
export function driveJob(client: BatonClient, record: JobRecord, options: RunJobOptions | AttachOptions): JobHandle {
  return new JobRunner(client, record, options).begin();
}

/**
 * How following a lease ended: its session's outcome, the loss of its opening meanwhile, or its
 * provider's heartbeats stopping on chain while its session went on.
 */
type LeaseOutcome = FollowOutcome | { kind: "lost"; fate: LostOpening } | { kind: "overdue"; reason: string };

/** How the job was asked to stop, and the error that says why. */
interface StopRequest {
  kind: "cancel" | "detach" | "fail";
  reason: BaseError;
}

/** A job's handle: the state machine above, over the modules that do each part of the work. */
class JobRunner implements JobHandle {
  readonly jobId: Hex;
  readonly #client: BatonClient;
  readonly #record: JobRecord;
  readonly #options: RunJobOptions | AttachOptions;
  readonly #log: Logger;
  readonly #events: JobEvents;
  readonly #replicator: CheckpointReplicator;
  /** The job's holders (none unless its options ask for them). */
  readonly #holders: CheckpointHolders;
  readonly #topUps: LeaseTopUps;
  readonly #slashes: PendingSlashes;
  /** Reports a slash of one of the job's leases, once it is recorded. */
  readonly #onSlash: OnSlash;
  readonly #progress: JobProgress = { step: undefined, total: undefined };
  /** Aborted, with the stop request's reason, when the job must stop. */
  readonly #stop = new AbortController();
  #state: JobState = "starting";
  #stopRequest: StopRequest | undefined;
  /** The work on the lease followed now: aborted when the tenant leaves it. */
  #leaseWork: AbortController | undefined;
  /**
   * The lease whose provider failed, until the next lease's signed opening ends it on chain (or,
   * when none lands, the tenant's own close or slash does: see {@link JobRunner.#endLeaving}).
   */
  #leaving: LeaseRecord | undefined;
  /** Settles once the current lease's signed opening landed on chain or cannot any more. */
  #opening: Promise<void> = Promise.resolve();
  /** The lease whose session is followed now, if any: the loss of its opening ends the following. */
  #followed: LeaseRecord | undefined;
  /** Each unconfirmed lease's opening, followed until it is confirmed or lost (with `confirmations` only). */
  readonly #openings = new Map<LeaseRecord, Promise<OpeningFate | undefined>>();
  /** The handling of each lost lease: once, whoever learns of the loss first. */
  readonly #losses = new Map<LeaseRecord, Promise<void>>();
  /** Aborted when this handle stops watching (detach): the followers of openings stop with it. */
  readonly #watching = new AbortController();
  /** A lease was lost since the last lease opened: the end of the one before it may have gone too. */
  #lostSinceLastLease = false;
  /** The lease whose signed opening {@link JobRunner.#watchOpening} watches now, if any. */
  #openingLease: LeaseRecord | undefined;
  #result!: Promise<JobResult>;

  constructor(client: BatonClient, record: JobRecord, options: RunJobOptions | AttachOptions) {
    this.jobId = record.jobId as Hex;
    this.#client = client;
    this.#record = record;
    this.#options = options;
    this.#log = client.log.child(`job.${this.jobId.slice(0, 10)}`);
    this.#events = new JobEvents(this.#log);
    const parts = { client, record, events: this.#events, log: this.#log };
    this.#onSlash = (lease, slash) => this.#events.emit(slashedEvent(lease, slash));
    this.#slashes = new PendingSlashes(client, record, this.#log, this.#onSlash);
    this.#holders = new CheckpointHolders({
      ...parts,
      onSlash: this.#onSlash,
      onLost: (lease) => this.#slashes.add(lease),
    });
    this.#replicator = new CheckpointReplicator({ ...parts, holders: this.#holders });
    this.#topUps = new LeaseTopUps({ ...parts, onBudgetSpent: (error) => this.#askStop("fail", error) });
    options.signal?.addEventListener("abort", () => void this.detach(), { once: true });
  }

  begin(): this {
    this.#result = this.#drive();
    // A caller that only iterates events must not see an unhandled rejection.
    this.#result.catch(() => undefined);
    return this;
  }

  [Symbol.asyncIterator](): AsyncIterator<JobEvent> {
    return this.#events.iterate();
  }

  on<T extends JobEventType | "*">(type: T, listener: JobEventListener<T>): () => void {
    return this.#events.on(type, listener);
  }

  status(): JobStatus {
    const current = this.#current();
    return {
      jobId: this.jobId,
      state: this.#state,
      leaseId: current ? BigInt(current.leaseId) : undefined,
      provider: current?.provider as Address | undefined,
      peerId: current?.peerId,
      step: this.#progress.step,
      total: this.#progress.total,
      safeCheckpoints: this.#record.safe.length,
      lastSafeStep: this.#record.safe.at(-1)?.step,
      handOffs: this.#record.handOffs,
      costSoFar: [...this.#record.leases, ...(this.#record.holders ?? [])]
        .filter((lease) => lease.state !== "vanished")
        .reduce((sum, lease) => sum + leaseCost(lease), 0n),
      deposited: BigInt(this.#record.deposited),
    };
  }

  result(): Promise<JobResult> {
    return this.#result;
  }

  async settled(): Promise<void> {
    await this.#result.catch(() => undefined);
    try {
      // Every opening confirmed or lost first: a lease mined again under another id may add a slash.
      await Promise.all(this.#openings.values());
      await Promise.all(this.#losses.values());
      await this.#slashes.settled();
    } finally {
      // A provider's finish and a keeper's slash credit the tenant's refunds instead of paying them
      // (so that no tenant can block them): take them back once the job's leases are settled.
      await withdrawCredit(this.#client);
    }
  }

  async cancel(): Promise<void> {
    if (this.#events.ended) return;
    this.#askStop("cancel", new JobCancelledError("the job was cancelled"));
    await this.#result.catch(() => undefined);
  }

  async detach(): Promise<void> {
    if (this.#events.ended) return;
    this.#askStop("detach", new JobCancelledError("the client detached from the job"));
    await this.#result.catch(() => undefined);
  }

  /** Stops the job where it is; the first request wins. */
  #askStop(kind: StopRequest["kind"], reason: BaseError): void {
    this.#stopRequest ??= { kind, reason };
    this.#stop.abort(reason);
  }

  #enter(next: JobState): void {
    if (!transitions[this.#state].includes(next)) throw new BaseError(`a job cannot go from ${this.#state} to ${next}`);
    this.#state = next;
  }

  async #drive(): Promise<JobResult> {
    if (this.#record.state !== "running") {
      // A job that ended before this handle (an attach after the fact): its outcome as recorded,
      // its record untouched, and no events to wait for.
      this.#state = this.#record.state;
      this.#events.end();
      return storedResult(this.#record);
    }
    try {
      // Leases that failed before a restart may still be waiting for their slash, and any lease for
      // its opening to be confirmed.
      for (const lease of this.#record.leases) if (lease.state === "failed" && !lease.slash) this.#slashes.add(lease);
      for (const lease of this.#record.leases) void this.#confirmation(lease);
      return await this.#run();
    } catch (error) {
      const request = this.#stopRequest;
      if (request && request.kind !== "fail") return await this.#stopped(request.kind);
      return await this.#failed(error);
    } finally {
      // No more hand-offs for this job: the allowance it kept for one is free for the others.
      void reserveAllowance(this.#client, this.jobId, undefined);
    }
  }

  /** starting, running, handing-off: lease after lease until the job completes, or a throw ends it. */
  async #run(): Promise<JobResult> {
    let lease = this.#current();
    for (;;) {
      let start: FollowLeaseParameters["start"];
      let notOpened: AbortSignal | undefined;
      if (!lease) {
        // The last lease that exists on chain (see #predecessor).
        const predecessor = await this.#predecessor();
        const resume = this.#record.safe.at(-1);
        const avoid = "excludeProviders" in this.#options ? (this.#options.excludeProviders?.() ?? []) : [];
        // A hand-off waits for no block: the new provider starts on the tenant's signed opening
        // and submits it, which ends the failed lease too. A job's first lease is opened by the
        // tenant's own transaction, as the provider has nothing to start before it.
        const acquired = await this.#acquire({
          jobId: this.jobId,
          record: this.#record,
          events: this.#events,
          predecessor,
          signed: predecessor !== undefined,
          resume,
          avoid,
          // The job's holders have its checkpoint: one that can run the job takes it with no transfer.
          ...(resume ? { standby: this.#holders.providers() } : {}),
          signal: this.#stop.signal,
        });
        lease = acquired.lease;
        this.#holders.standbyTaken(lease);
        start = {
          resume,
          // Not the new provider's own: a warm standby has the checkpoint at hand.
          resumeFrom: this.#holders.addresses().filter((address) => !address.endsWith(`/p2p/${lease!.peerId}`)),
          ...(acquired.opening ? { opening: acquired.opening } : {}),
        };
        if (acquired.opening) notOpened = this.#watchOpening(lease, acquired.opening.deadline);
        void this.#reserveAllowance();
        this.#lostSinceLastLease = false;
      }
      // Leased once the job's provider is known, so that none of them is the job's provider.
      this.#holders.start();
      const outcome = await this.#follow(lease, start, notOpened);
      switch (outcome.kind) {
        case "result":
          return await this.#complete(lease, outcome.body);
        case "stopped":
          throw this.#stopRequest!.reason;
        case "refused":
          if (!isProviderRefusal(outcome.reason)) {
            throw new UserError(`the provider refused the job: ${outcome.message}`, { details: outcome.reason });
          }
          await this.#handOff(lease, refusalHandOffReason(outcome.reason, outcome.message), Date.now());
          break;
        case "failed":
          await this.#handOff(lease, outcome.reason, outcome.lastSeenAt);
          break;
        case "overdue":
          await this.#handOff(lease, outcome.reason, Date.now());
          break;
        case "lost":
          this.#enter("handing-off");
          await this.#lose(lease, outcome.fate);
          break;
      }
      lease = undefined;
    }
  }

  /**
   * Watches the lease's signed opening land (in the background): once it has, the failed lease it
   * ended waits for its slash as after any close; if it cannot land any more, the failed lease is
   * ended by the tenant instead, the deposit counted back, and the returned signal aborted, which
   * ends the following of the lease as its provider's failure.
   */
  #watchOpening(lease: LeaseRecord, deadline: bigint): AbortSignal {
    const notOpened = new AbortController();
    const leaving = this.#leaving;
    this.#leaving = undefined;
    this.#openingLease = lease;
    this.#opening = (async () => {
      let landed: boolean;
      try {
        landed = await waitForOpening(this.#client, { leaseId: BigInt(lease.leaseId), deadline });
      } catch (error) {
        // The chain cannot be read: the opening's fate is unknown, so it counts as landed, the
        // failed lease's slash (or a close, if still active) then being tried as usual.
        this.#log.warn("could not tell whether a signed opening landed", { leaseId: lease.leaseId, error });
        landed = true;
      }
      lease.signedOpening = { deadline: deadline.toString(), landed };
      if (!landed) {
        this.#log.warn("the provider's signed opening did not land; it counts as failed", { leaseId: lease.leaseId });
        this.#record.deposited = (BigInt(this.#record.deposited) - BigInt(lease.deposit)).toString();
        notOpened.abort();
      }
      await this.#client.jobs.save(this.#record);
      if (leaving) await (landed ? this.#slashes.add(leaving) : this.#endLeaving(leaving));
    })();
    this.#opening.catch((error: unknown) => this.#log.warn("signed opening not followed", { error }));
    return notOpened.signal;
  }

  /**
   * Ends a failed lease that no signed opening ended (none landed, or the job stops first) the way
   * a hand-off always did: closed, or slashed when due, and its slash awaited.
   */
  async #endLeaving(leaving: LeaseRecord | undefined = this.#leaving): Promise<void> {
    if (!leaving) return;
    if (leaving === this.#leaving) this.#leaving = undefined;
    const ended = await endRecordedLease(this.#client, this.#record, leaving, { onSlash: this.#onSlash });
    if (ended.call === undefined && ended.status === "None") {
      // Not on chain: a reorg took its opening. Lost, unless the opening comes back: ended then.
      if (!(await this.#stillThere(leaving))) return;
      await endRecordedLease(this.#client, this.#record, leaving, { onSlash: this.#onSlash });
    }
    await this.#client.jobs.save(this.#record);
    if (!leaving.slash) this.#slashes.add(leaving);
  }

  /**
   * Keeps the tenant's allowance to the lease manager at what the job's next lease could deposit,
   * so that a hand-off's signed opening needs no approval first (a transaction that would wait for
   * a block). In the background; a failure only makes the next hand-off approve first.
   */
  async #reserveAllowance(): Promise<void> {
    try {
      const reserve = leaseDeposit(this.#record, BigInt(this.#record.options.maxPricePerSecond!));
      await reserveAllowance(this.#client, this.jobId, reserve);
    } catch (error) {
      this.#log.debug("allowance for the next hand-off not reserved", { error });
    }
  }

  /**
   * → running: follows the lease's session (starting the job on it, with `start`) until it ends, or
   * until the lease's opening is lost, which leaves the session.
   */
  async #follow(
    lease: LeaseRecord,
    start: FollowLeaseParameters["start"],
    notOpened: AbortSignal | undefined,
  ): Promise<LeaseOutcome> {
    const leaseWork = new AbortController();
    this.#leaseWork = leaseWork;
    this.#enter("running");
    const following = this.#followSession(lease, start, leaseWork.signal, notOpened);
    const overdue = this.#overdue(lease, leaseWork.signal);
    const confirmation = this.#confirmation(lease);
    const lost = confirmation?.then((fate) =>
      fate && fate.state !== "confirmed" ? { kind: "lost" as const, fate } : new Promise<never>(() => {}),
    );
    if (lost) this.#followed = lease;
    try {
      const outcome = await Promise.race([following, overdue, ...(lost ? [lost] : [])]);
      if (outcome.kind === "lost" || outcome.kind === "overdue") {
        leaseWork.abort();
        await following.catch(() => undefined);
      }
      return outcome;
    } finally {
      // The watch of the chain's deadline ends with the lease's following.
      leaseWork.abort();
      this.#followed = undefined;
    }
  }

  /**
   * The lease's provider, by the chain: failed once its lease is about to turn slashable (see
   * `chain-deadline.ts`), though its session may still answer. Never settles otherwise.
   */
  async #overdue(lease: LeaseRecord, leaseWork: AbortSignal): Promise<LeaseOutcome> {
    // A signed opening is watched once it landed: until then the lease is not on chain.
    await this.#opening;
    const reason = leaseWork.aborted
      ? undefined
      : await watchChainDeadline(this.#client, { leaseId: BigInt(lease.leaseId), signal: leaseWork });
    if (reason === undefined) return new Promise<never>(() => {});
    this.#log.warn("the provider's heartbeats stopped on chain; leaving its lease", { leaseId: lease.leaseId, reason });
    return { kind: "overdue", reason };
  }

  #followSession(
    lease: LeaseRecord,
    start: FollowLeaseParameters["start"],
    leaseWork: AbortSignal,
    notOpened: AbortSignal | undefined,
  ): Promise<FollowOutcome> {
    return followLease(this.#client, lease, {
      record: this.#record,
      events: this.#events,
      replicator: this.#replicator,
      topUps: this.#topUps,
      progress: this.#progress,
      heartbeatWindowMs: this.#options.heartbeatWindowMs,
      failAfterMs: this.#options.failAfterMs,
      start,
      stop: this.#stop.signal,
      leaseWork,
      ...(notOpened ? { notOpened } : {}),
    });
  }

  /**
   * running → handing-off: the provider failed. Its lease ends on chain (the unused deposit comes
   * back now; its collateral waits for the slash), and the next lease starts from the last safe
   * checkpoint, unless the job was cancelled meanwhile or that was one hand-off too many.
   */
  async #handOff(lease: LeaseRecord, reason: string, lastSeenAt: number): Promise<void> {
    this.#enter("handing-off");
    this.#leaseWork?.abort();
    lease.state = "failed";
    lease.endedAt = Date.now();
    this.#events.emit({
      type: "provider-failed",
      leaseId: BigInt(lease.leaseId),
      provider: lease.provider as Address,
      reason,
      lastSeenAt,
      lastStep: this.#progress.step,
    });
    // Cancelled from another process (`baton job cancel`) while we watched: do not re-lease.
    if ((await this.#client.jobs.get(this.jobId))?.state === "cancelled") {
      if (lease.signedOpening?.landed !== false) this.#leaving = lease;
      this.#stopRequest = { kind: "cancel", reason: new JobCancelledError("the job was cancelled") };
      throw this.#stopRequest.reason;
    }
    const pastLimit = countHandOff(this.#record, reason);
    // Whether the lease exists on chain, if its provider was to open it: known by its deadline.
    await this.#opening;
    // The failed lease is ended by the next lease's opening, in the same transaction (or by the
    // tenant, if the job stops first or no opening lands); one that never opened needs no end.
    if (lease.signedOpening?.landed !== false) this.#leaving = lease;
    await this.#client.jobs.save(this.#record);
    if (pastLimit) throw pastLimit;
  }

  /**
   * Opens the job's next lease (see `acquireLease`). A hand-off that finds no provider (all busy, or
   * their offers not re-published yet) looks again every {@link HAND_OFF_SEARCH_PAUSE_MS}, telling
   * `no-provider`, for up to {@link HAND_OFF_SEARCH_MS}; a job's first lease only when none of the
   * providers that offered could be reached (see {@link searchesAgain}).
   */
  async #acquire(parameters: AcquireLeaseParameters): Promise<AcquiredLease> {
    const giveUpAt = Date.now() + HAND_OFF_SEARCH_MS;
    for (;;) {
      try {
        return await acquireLease(this.#client, parameters);
      } catch (error) {
        if (!searchesAgain(error, this.#record.leases.length > 0) || Date.now() + HAND_OFF_SEARCH_PAUSE_MS > giveUpAt) {
          throw error;
        }
        this.#log.warn("no provider can take the job yet; looking again", { error: oneLineOf(error) });
        this.#events.emit({ type: "no-provider", reason: oneLineOf(error), retryInMs: HAND_OFF_SEARCH_PAUSE_MS });
        await sleep(HAND_OFF_SEARCH_PAUSE_MS, { signal: parameters.signal });
      }
    }
  }

  /**
   * The lease a new lease continues: the last the job ran on that the chain has (one whose signed
   * opening did not land, or whose opening a reorg took, never did). While that lease is not
   * confirmed, or after a lease was lost, it is read first: one that reads `None` is lost unless
   * its opening comes back, and the one before it is tried.
   */
  async #predecessor(): Promise<LeaseRecord | undefined> {
    for (;;) {
      const last = this.#record.leases.findLast(
        (lease) => lease.state !== "vanished" && lease.signedOpening?.landed !== false,
      );
      if (!last) return undefined;
      if ((!this.#lostSinceLastLease && this.#confirmation(last) === undefined) || (await this.#stillThere(last))) {
        this.#lostSinceLastLease = false;
        return last;
      }
    }
  }

  /**
   * Whether a lease the job had is on chain as the tenant's (one read). One that is not is a
   * phantom unless its opening comes back: its fate decides, and a lost one is handled as such.
   */
  async #stillThere(lease: LeaseRecord): Promise<boolean> {
    const { leaseManager } = contracts(this.#client.chain.deployment);
    const view = await this.#client.chain.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [BigInt(lease.leaseId)],
    });
    if (leaseStatus[view.status] !== "None" && isAddressEqual(view.tenant, this.#client.account.address)) return true;
    // Trusting the latest block (no confirmations), a lease that is not there is gone.
    const fate = (await this.#confirmation(lease)) ?? {
      state: "vanished" as const,
      reason: `lease ${lease.leaseId} is not on chain`,
    };
    if (fate.state === "confirmed") return true;
    await this.#lose(lease, fate);
    return false;
  }

  /**
   * Follows `lease`'s opening until it is confirmed (recorded, and told as `lease-confirmed`) or lost
   * (see {@link #lose}: here for a lease the job no longer follows, by {@link #follow} for the one it
   * does). `undefined` when there is nothing to follow: the client trusts the latest block, or the
   * lease is confirmed, or vanished, already.
   */
  #confirmation(lease: LeaseRecord): Promise<OpeningFate | undefined> | undefined {
    if (this.#client.chain.confirmations === 0 || lease.confirmedBlock !== undefined || lease.state === "vanished") {
      return undefined;
    }
    // A signed opening that did not land opened nothing; one whose landing nobody watches (the
    // tenant restarted meanwhile) is left to its provider's session to tell.
    const { signedOpening } = lease;
    if (signedOpening?.landed === false) return undefined;
    if (signedOpening && signedOpening.landed === undefined && lease !== this.#openingLease) return undefined;
    let following = this.#openings.get(lease);
    if (!following) {
      // A signed opening is followed once it landed: its provider sent it, found by its event.
      const landed = signedOpening?.landed === undefined && lease === this.#openingLease ? this.#opening : undefined;
      following = (landed ?? Promise.resolve())
        .then(() =>
          lease.signedOpening?.landed === false
            ? undefined
            : followOpening(this.#client.chain, {
                leaseId: BigInt(lease.leaseId),
                openingTx: lease.openingTx as Hex | undefined,
                tenant: this.#client.account.address,
                signal: this.#watching.signal,
              }),
        )
        .then(
          async (fate) => {
            if (!fate) return undefined;
            if (fate.state === "confirmed") await this.#confirmed(lease, fate.blockNumber);
            else if (lease !== this.#followed) await this.#lose(lease, fate);
            return fate;
          },
          (error: unknown) => {
            if (!this.#watching.signal.aborted) {
              this.#log.warn("a lease's opening could not be followed", { leaseId: lease.leaseId, error });
            }
            return undefined;
          },
        );
      this.#openings.set(lease, following);
    }
    return following;
  }

  async #confirmed(lease: LeaseRecord, blockNumber: bigint): Promise<void> {
    lease.confirmedBlock = blockNumber.toString();
    await this.#client.jobs.save(this.#record);
    this.#events.emit({ type: "lease-confirmed", leaseId: BigInt(lease.leaseId), blockNumber });
  }

  /**
   * A lease whose opening was lost (see `lease-confirmation.ts`), handled once. One that vanished
   * never was: it is marked `vanished`, its deposit is the budget's again, and no lease names it as a
   * predecessor. One mined again under another id is that lease now: it takes the id and is ended at
   * once (its job runs nowhere), closed or, for a failed provider's, slashed when due.
   */
  #lose(lease: LeaseRecord, fate: LostOpening): Promise<void> {
    let handling = this.#losses.get(lease);
    if (!handling) {
      handling = this.#handleLoss(lease, fate).catch((error: unknown) =>
        this.#log.warn("a lost lease was not settled", { leaseId: lease.leaseId, error }),
      );
      this.#losses.set(lease, handling);
    }
    return handling;
  }

  async #handleLoss(lease: LeaseRecord, fate: LostOpening): Promise<void> {
    this.#lostSinceLastLease = true;
    const leaseId = BigInt(lease.leaseId);
    this.#log.warn("a reorg took a lease's opening", { leaseId: lease.leaseId, reason: fate.reason });
    this.#events.emit({ type: "lease-vanished", leaseId, provider: lease.provider as Address, reason: fate.reason });
    await settleLostOpening(this.#client, this.#record, lease, fate, {
      onSlash: this.#onSlash,
      slashes: this.#slashes,
    });
  }

  /** running → completed: the job exited 0 and its output is fetched and verified (any other exit fails it). */
  async #complete(lease: LeaseRecord, body: ProviderMessage<"result">): Promise<JobResult> {
    this.#leaseWork?.abort();
    await this.#opening;
    await this.#replicator.drained();
    lease.state = "completed";
    lease.endedAt = Date.now();
    if (body.exitCode !== 0) {
      await this.#client.jobs.save(this.#record);
      const exit = body.exitCode === null ? body.signal : `code ${body.exitCode}`;
      throw new JobFailedError(`the job exited with ${exit}`, { details: body.reason });
    }
    let outputDir: string | undefined;
    if (body.outputCid && body.outputSha256) {
      outputDir = this.#options.outputDir ?? path.join(this.#client.jobs.dir, this.jobId, "output");
      await this.#replicator.fetchOutput(lease, { cid: body.outputCid, sha256: body.outputSha256 }, outputDir);
    }
    await this.#holders.close();
    this.#record.state = "completed";
    this.#record.result = {
      exitCode: body.exitCode,
      reason: body.reason,
      ...(body.outputCid ? { outputCid: body.outputCid } : {}),
      ...(outputDir ? { outputDir } : {}),
      leaseId: lease.leaseId,
    };
    await this.#client.jobs.save(this.#record);
    this.#enter("completed");
    const result = storedResult(this.#record);
    this.#events.emit({ type: "completed", result });
    this.#events.end();
    return result;
  }

  /** Stopped from here: detached (the job goes on without this handle), or → cancelled (its open lease ended). */
  async #stopped(kind: "cancel" | "detach"): Promise<never> {
    this.#leaseWork?.abort();
    if (kind === "detach") {
      await this.#holders.detach();
      this.#watching.abort();
      this.#events.end();
      throw new JobCancelledError("detached from the job; it goes on running");
    }
    await this.#opening;
    await this.#endLeaving();
    const lease = this.#current();
    if (lease) {
      lease.state = "cancelled";
      lease.endedAt = Date.now();
    }
    await this.#endOpenLeases();
    await this.#holders.close();
    this.#record.state = "cancelled";
    await this.#client.jobs.save(this.#record);
    this.#enter("cancelled");
    this.#events.emit({ type: "cancelled" });
    this.#events.end();
    throw new JobCancelledError("the job was cancelled");
  }

  /** → failed, with `error` (wrapped when it is not one of ours); every open lease is ended first. */
  async #failed(error: unknown): Promise<never> {
    const failure =
      error instanceof BaseError
        ? error
        : new JobFailedError("the job failed", { cause: error, details: String(error) });
    this.#record.state = "failed";
    // The reason as people read it later (`baton job watch` of a failed job): with its details, which
    // for an error not of ours are all there is ("the job failed" alone says nothing).
    this.#record.error = oneLineOf(failure);
    await this.#opening;
    await this.#endLeaving().catch((cause: unknown) => this.#log.warn("failed lease not ended", { error: cause }));
    await this.#endOpenLeases();
    await this.#holders.close();
    await this.#client.jobs.save(this.#record);
    this.#enter("failed");
    this.#events.emit({ type: "failed", error: failure });
    this.#events.end();
    throw failure;
  }

  /**
   * Ends every lease still open (the job failed or was cancelled). With `confirmations`, each close
   * is then followed like a failed provider's lease: until the lease shows it ended that deep (its
   * close taken by a reorg is sent again), or its provider, never acknowledging, is slashed.
   */
  async #endOpenLeases(): Promise<void> {
    const open = this.#record.leases.filter(
      (lease) => lease.state === "starting" || lease.state === "running" || lease.state === "cancelled",
    );
    await endOpenLeases(this.#client, this.#record, { log: this.#log, onSlash: this.#onSlash });
    if (this.#client.chain.confirmations === 0) return;
    for (const lease of open) if (!lease.slash && lease.state !== "vanished") this.#slashes.add(lease);
  }

  /** The lease the job runs on now, if any. */
  #current(): LeaseRecord | undefined {
    const last = this.#record.leases.at(-1);
    return last && (last.state === "starting" || last.state === "running") ? last : undefined;
  }
}
