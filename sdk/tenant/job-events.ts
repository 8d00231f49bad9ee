import type { Address, Hex } from "viem";

import type { BaseError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { createEventQueue, type EventQueue } from "./event-queue.ts";
import type { LeaseRecord } from "./job-store.ts";

interface EventBase {
  /** When it happened (ms since epoch). */
  at: number;
}

/** What a job handle reports, in order. */
export type JobEvent = EventBase &
  (
    | { type: "offers-found"; count: number }
    /** A hand-off found no provider to take the job (`reason`); it looks again in `retryInMs`. */
    | { type: "no-provider"; reason: string; retryInMs: number }
    | {
        type: "lease-opened";
        leaseId: bigint;
        provider: Address;
        peerId: string;
        pricePerSecond: bigint;
        deposit: bigint;
        predecessor: bigint;
      }
    /** The lease's opening lies as deep as the client's `confirmations`: the tenant believes the lease. */
    | { type: "lease-confirmed"; leaseId: bigint; blockNumber: bigint }
    /**
     * A reorg took the lease's opening off the chain before it was confirmed (or mined it again under
     * another id, a lease the tenant then closes): the job leaves it for a new lease.
     */
    | { type: "lease-vanished"; leaseId: bigint; provider: Address; reason: string }
    | { type: "started"; leaseId: bigint; resumed: boolean; resumedFrom?: { cid: string; step?: number | undefined } }
    | { type: "progress"; leaseId: bigint; step?: number | undefined; total?: number | undefined; message?: string }
    | { type: "log"; leaseId: bigint; stream: "stdout" | "stderr" | "node"; line: string }
    | {
        type: "checkpoint-safe";
        leaseId: bigint;
        cid: string;
        step?: number | undefined;
        size: number;
        /** How many safe checkpoints the job keeps now. */
        held: number;
        /** How many holders pinned it (none unless the job has holders). */
        holders: number;
        /** With `tenantCopy: "sample"`: the bytes the tenant fetched to check its holders have it. */
        sampledBytes?: number;
      }
    | { type: "checkpoint-rejected"; leaseId: bigint; cid: string; reason: string }
    /**
     * A holder's lease opened (see `RunJobOptions.replication`): it pins the job's checkpoints from
     * now on. `unpacks`: it was given the job's key, and unpacks each checkpoint ahead (`unpack`).
     */
    | {
        type: "holder-leased";
        leaseId: bigint;
        provider: Address;
        pricePerSecond: bigint;
        deposit: bigint;
        unpacks: boolean;
      }
    /**
     * A holder given the job's key (`unpacks`) has unpacked checkpoint `cid` ahead: a hand-off to
     * its provider from that checkpoint takes the files as they are (a warm standby).
     */
    | { type: "holder-unpacked"; leaseId: bigint; provider: Address; cid: string }
    /** A holder failed or refused: its lease is ended, and another is leased in its place. */
    | { type: "holder-lost"; leaseId: bigint; provider: Address; reason: string }
    /** A holder's provider runs the job now (a warm standby took the hand-off): its hold lease is closed, and another is leased. */
    | { type: "holder-retired"; leaseId: bigint; provider: Address }
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

/** An event as it is emitted, before it is stamped with its time. */
export type NewJobEvent = DistributiveOmit<JobEvent, "at">;

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A listener of one event type (or of every event, `"*"`). */
export type JobEventListener<T extends JobEventType | "*"> = (
  event: T extends JobEventType ? Extract<JobEvent, { type: T }> : JobEvent,
) => void;

/**
 * A job's events, in the order they happened: to listeners by type, and to async iterators, each of
 * which first gets every event before it began. Progress and log lines go to live listeners and
 * iterators only: a long job would pile up millions of them. A listener that throws is logged and
 * does not stop the others.
 */
export class JobEvents {
  readonly #log: Logger;
  readonly #history: JobEvent[] = [];
  readonly #listeners = new Set<{ type: JobEventType | "*"; listener: (event: JobEvent) => void }>();
  readonly #queues = new Set<EventQueue<JobEvent>>();
  #ended = false;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Whether the events ended: the job did, or this handle stopped watching it. */
  get ended(): boolean {
    return this.#ended;
  }

  emit(event: NewJobEvent): void {
    const full = { ...event, at: Date.now() } as JobEvent;
    if (full.type !== "progress" && full.type !== "log") this.#history.push(full);
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

  /** Calls `listener` for each event of `type` (or every event with `"*"`); returns an unsubscribe. */
  on<T extends JobEventType | "*">(type: T, listener: JobEventListener<T>): () => void {
    const entry = { type, listener: listener as (event: JobEvent) => void };
    this.#listeners.add(entry);
    return () => this.#listeners.delete(entry);
  }

  /** Every event so far, then each new one until the events end. */
  iterate(): AsyncIterator<JobEvent> {
    const queue = createEventQueue<JobEvent>();
    for (const event of this.#history) queue.push(event);
    if (this.#ended) queue.end();
    else this.#queues.add(queue);
    return queue[Symbol.asyncIterator]();
  }

  /** Ends every iterator (once it has read what is queued). */
  end(): void {
    this.#ended = true;
    for (const queue of this.#queues) queue.end();
    this.#queues.clear();
  }
}
