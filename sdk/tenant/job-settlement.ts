import type { Address } from "viem";

import { ChainError, shortMessageOf } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { recordedSlash, type JobRecord, type JobStore, type LeaseRecord } from "./job-store.ts";
import type { LostOpening } from "./lease-confirmation.ts";
import {
  endLease,
  slashWhenDue,
  type EndLeaseResult,
  type SettlementClient,
  type SlashRecord,
} from "./lease-settlement.ts";

/**
 * A job's leases on chain, as its record keeps them: each lease the tenant leaves is ended by the
 * one rule of `lease-settlement.ts`, and each slash, made then or once due, is recorded in the job's
 * record. The job runner and `cancelJob` go through here.
 */

/** What settling a job's leases needs of a tenant's client: settlement, and its job records. */
export interface RecordingClient extends SettlementClient {
  jobs: JobStore;
}

/** A slash of a lease as the `slashed` event of a job, or of a batch, tells it. */
export function slashedEvent(lease: LeaseRecord, { compensation, refund, tx }: SlashRecord) {
  return {
    type: "slashed" as const,
    leaseId: BigInt(lease.leaseId),
    provider: lease.provider as Address,
    compensation,
    refund,
    tx,
  };
}

/** Told of a slash of one of the job's leases, once it is in the job's record. */
export type OnSlash = (lease: LeaseRecord, slash: SlashRecord) => void;

/**
 * Ends a lease of a job by {@link endLease}, and records a slash it made in the job's record.
 *
 * @example
 * const ended = await endRecordedLease(client, record, record.leases.at(-1)!);
 */
export async function endRecordedLease(
  client: RecordingClient,
  record: JobRecord,
  lease: LeaseRecord,
  { signal, onSlash }: { signal?: AbortSignal; onSlash?: OnSlash } = {},
): Promise<EndLeaseResult> {
  const ended = await endLease(client, { leaseId: BigInt(lease.leaseId), ...(signal ? { signal } : {}) });
  if (ended.call === "slashMissedHeartbeat") await recordSlash(client, record, lease, ended.slash, onSlash);
  return ended;
}

async function recordSlash(
  client: RecordingClient,
  record: JobRecord,
  lease: LeaseRecord,
  slash: SlashRecord,
  onSlash: OnSlash | undefined,
): Promise<void> {
  lease.slash = recordedSlash(slash);
  await client.jobs.save(record);
  onSlash?.(lease, slash);
}

/**
 * A lease whose opening a reorg took (see `lease-confirmation.ts`), settled in the record. One that
 * vanished never was: it is marked `vanished`, and its deposit no longer counts as deposited. One
 * mined again under another id is that lease now: it takes the id and is ended at once (its work runs
 * nowhere; `cancelled` if it was held, its provider not at fault), closed or, for a failed
 * provider's, slashed when due: `slashes` waits for that.
 */
export async function settleLostOpening(
  client: RecordingClient,
  record: JobRecord,
  lease: LeaseRecord,
  fate: LostOpening,
  { onSlash, slashes }: { onSlash: OnSlash; slashes: PendingSlashes },
): Promise<void> {
  lease.endedAt ??= Date.now();
  if (fate.state === "vanished") {
    lease.state = "vanished";
    record.deposited = (BigInt(record.deposited) - BigInt(lease.deposit)).toString();
    await client.jobs.save(record);
    return;
  }
  lease.leaseId = fate.leaseId.toString();
  if (lease.state === "starting" || lease.state === "running") lease.state = "cancelled";
  await client.jobs.save(record);
  await endRecordedLease(client, record, lease, { onSlash });
  await client.jobs.save(record);
  if (lease.state === "failed" && !lease.slash) slashes.add(lease);
}

/**
 * The slashes a job waits for, one per lease whose provider failed it: each made by
 * {@link slashWhenDue} in the background and recorded in the job's record. None is dropped: one that
 * cannot be made makes {@link PendingSlashes.settled} reject.
 */
export class PendingSlashes {
  readonly #client: RecordingClient;
  readonly #record: JobRecord;
  readonly #log: Logger;
  readonly #onSlash: OnSlash;
  readonly #pending: Promise<void>[] = [];

  constructor(client: RecordingClient, record: JobRecord, log: Logger, onSlash: OnSlash) {
    this.#client = client;
    this.#record = record;
    this.#log = log;
    this.#onSlash = onSlash;
  }

  /** Slashes `lease` once its deadline passes on chain, unless it ends first. */
  add(lease: LeaseRecord): void {
    const leaseId = BigInt(lease.leaseId);
    const slashed = slashWhenDue(this.#client, { leaseId, log: this.#log }).then(async (slash) => {
      if (slash) await recordSlash(this.#client, this.#record, lease, slash, this.#onSlash);
    });
    slashed.catch((error: unknown) => this.#log.warn("slash failed", { leaseId: lease.leaseId, error }));
    this.#pending.push(slashed);
  }

  /**
   * Resolves once every slash added so far was made, or was not due (its lease ended otherwise).
   *
   * @throws {ChainError} naming the slashes that could not be made.
   */
  async settled(): Promise<void> {
    const failed = (await Promise.allSettled(this.#pending)).filter((s) => s.status === "rejected");
    if (failed.length === 0) return;
    throw new ChainError(`${failed.length} lease(s) that should have been slashed were not`, {
      details: failed.map((s) => shortMessageOf(s.reason)).join("; "),
      cause: failed[0]!.reason,
    });
  }
}

/**
 * Ends every lease of the job still open (starting, running, or cancelled here but not yet ended),
 * so that its unused deposit comes back: on the job's failure or cancellation. A lease that cannot
 * be ended is logged and left.
 */
export async function endOpenLeases(
  client: RecordingClient,
  record: JobRecord,
  { log, onSlash }: { log: Logger; onSlash: OnSlash },
): Promise<void> {
  for (const lease of record.leases) {
    if (lease.state === "starting" || lease.state === "running" || lease.state === "cancelled") {
      try {
        await endRecordedLease(client, record, lease, { onSlash });
        if (lease.state !== "cancelled") lease.state = "failed";
        lease.endedAt ??= Date.now();
      } catch (error) {
        log.warn("lease not settled", { leaseId: lease.leaseId, error });
      }
    }
  }
}
