import { peerIdFromString } from "@libp2p/peer-id";
import type { Address, Hex } from "viem";

import { bid, type QuoteChoice } from "../actions/bid.ts";
import { findOffers, type Requirements } from "../actions/findOffers.ts";
import { openLease } from "../actions/openLease.ts";
import { allowanceToKeep, signOpening } from "../actions/signOpening.ts";
import type { BatonClient } from "../client.ts";
import { imageDigestToBytes32, jobImageDigest } from "../images/digest.ts";
import { jobDiskGiB, type JobSpec } from "../job-spec.ts";
import { leaseDeposit, OFFER_TIMEOUT_MS, providersToAvoid, type Funding } from "./hand-off-policy.ts";
import type { JobEvents } from "./job-events.ts";
import type { CheckpointRecord, JobRecord, LeaseRecord } from "./job-store.ts";
import type { OpeningWire } from "../wire/messages.ts";

export interface AcquireLeaseParameters {
  jobId: Hex;
  record: JobRecord;
  events: JobEvents;
  /** The lease this one continues (its provider failed), if any. */
  predecessor: LeaseRecord | undefined;
  /**
   * Open the lease by a signed opening its provider submits (the hand-off that waits for no block),
   * rather than by the tenant's own transaction.
   */
  signed: boolean;
  /** The safe checkpoint the job resumes from on the new lease, if any. */
  resume: CheckpointRecord | undefined;
  /** More providers to avoid, asked now (a service's other replicas). */
  avoid: readonly string[];
  /** Providers that hold `resume` already (the job's holders): asked first, as a hand-off to one needs no transfer. */
  standby?: readonly string[];
  /**
   * The lease's longest life (its quote's max duration), when longer than one run of the spec: a
   * batch lease runs task after task, each within the spec's `maxDurationS`. Default: that.
   */
  durationS?: number;
  /** How much the deposit pays for; a job's `maxDurationS` by default (see {@link Funding}). */
  funding?: Funding;
  /**
   * Called once the provider is chosen and the deposit counted in `record.deposited`, before the
   * lease is opened: from then on another acquisition for the same record may run beside this one,
   * avoiding `provider`.
   */
  onChosen?: (provider: Address) => void;
  signal: AbortSignal;
}

/** What an offer must give to run `spec`. */
export function jobRequirements(spec: JobSpec): Requirements {
  return {
    gpus: spec.resources.gpus,
    gpuModel: spec.resources.gpuModel,
    minVramMiB: spec.resources.minVramMiB,
    diskGiB: jobDiskGiB(spec),
    runtime: spec.image === undefined ? "process" : "podman",
  };
}

/**
 * Finds offers for the job, bids, and opens a lease with the provider chosen, at a deposit the
 * hand-off policy sets: by the tenant's own transaction, or (`signed`) by signing an opening that
 * the provider submits once it has started the job; the lease joins the job's record (saved) as
 * `starting`. Its quote names the
 * job's image by its manifest digest, as every lease of the job does.
 *
 * @throws {UserError} when no provider offers or quotes what the job needs in time, or the job's
 * image has no manifest digest to name (see `jobImageDigest`).
 * @throws {BudgetExhaustedError} when the budget cannot pay for a new lease.
 */
export async function acquireLease(
  client: BatonClient,
  {
    jobId,
    record,
    events,
    predecessor,
    signed,
    resume,
    avoid,
    standby,
    durationS,
    funding,
    onChosen,
    signal,
  }: AcquireLeaseParameters,
): Promise<AcquiredLease> {
  const { spec, options } = record;
  const requirements = jobRequirements(spec);
  const maxPricePerSecond = BigInt(options.maxPricePerSecond!);
  // Every lease of the job names the same manifest, so every provider signs for the same image.
  const image = imageDigestToBytes32(await jobImageDigest(client, spec.image, { signal }));
  const offers = await findOffers(client, {
    requirements,
    maxPricePerSecond,
    image: spec.image,
    ...providersToAvoid(record, avoid),
    ...(standby ? { standby } : {}),
    timeoutMs: OFFER_TIMEOUT_MS,
    signal,
  });
  events.emit({ type: "offers-found", count: offers.length });
  const preferred = offers.filter((offer) => !offer.lastResort);
  if (preferred.length === 0) {
    client.log.warn("only providers that failed this job before offer: trying them again", { jobId });
  }
  const { chosen } = await bid(client, {
    jobId,
    offers: preferred.length > 0 ? preferred : offers,
    requirements,
    image,
    maxPricePerSecond,
    durationS: durationS ?? spec.maxDurationS,
    signal,
  });
  const price = chosen.quote.pricePerSecond;
  const deposit = leaseDeposit(record, price, funding);
  const provider: Address = chosen.quote.provider;
  const predecessorId = predecessor ? BigInt(predecessor.leaseId) : 0n;
  const parameters = { quote: chosen.quote, deposit, predecessor: predecessorId, signal };
  // Counted before the lease opens, and taken back if it does not: an acquisition that runs beside
  // this one (`onChosen`) sees it against the budget.
  record.deposited = (BigInt(record.deposited) + deposit).toString();
  let lease: LeaseRecord;
  let opening: OpeningWire | undefined;
  try {
    onChosen?.(provider);
    // The tenant's own open leaves the allowance the job's next hand-off will pull (in the same
    // transaction: its permit grants both), so that hand-off's signed opening needs no approval first.
    const opened = signed
      ? { ...(await signOpening(client, { ...parameters, quoteSignature: chosen.signature })), openingTx: undefined }
      : await openLease(client, {
          ...parameters,
          signature: chosen.signature,
          keepAllowance: allowanceToKeep(client, jobId, nextDeposit(record, maxPricePerSecond)),
        }).then(({ leaseId, receipt }) => ({ leaseId, opening: undefined, openingTx: receipt.transactionHash }));
    opening = opened.opening;
    lease = {
      ...(await openedLease(client, chosen, opened.leaseId, deposit)),
      ...(opened.openingTx ? { openingTx: opened.openingTx } : {}),
      ...(resume ? { resumedFrom: resume.cid } : {}),
      ...(opening ? { signedOpening: { deadline: opening.deadline.toString() } } : {}),
    };
  } catch (error) {
    record.deposited = (BigInt(record.deposited) - deposit).toString();
    throw error;
  }
  const leaseId = BigInt(lease.leaseId);
  record.leases.push(lease);
  await client.jobs.save(record);
  events.emit({
    type: "lease-opened",
    leaseId,
    provider,
    peerId: chosen.offer.peerId,
    pricePerSecond: price,
    deposit,
    predecessor: predecessorId,
  });
  if (predecessor) {
    events.emit({
      type: "re-leased",
      from: predecessorId,
      to: leaseId,
      provider,
      ...(resume ? { resumeFrom: { cid: resume.cid, step: resume.step } } : {}),
      handOffs: record.handOffs,
    });
  }
  return { lease, opening };
}

/** The record of a lease just opened on `chosen`'s quote, `starting`. */
export async function openedLease(
  client: BatonClient,
  chosen: Pick<QuoteChoice, "offer" | "quote">,
  leaseId: bigint,
  deposit: bigint,
): Promise<LeaseRecord> {
  // Where the provider serves blocks (checkpoints, outputs) and is found again after a restart: the
  // addresses its offers list, kept in the peer store with those learned since.
  const known = await client.host.peerStore.get(peerIdFromString(chosen.offer.peerId)).catch(() => undefined);
  return {
    leaseId: leaseId.toString(),
    provider: chosen.quote.provider,
    peerId: chosen.offer.peerId,
    addresses: (known?.addresses ?? []).map((a) => a.multiaddr.toString()),
    pricePerSecond: chosen.quote.pricePerSecond.toString(),
    deposit: deposit.toString(),
    openedAt: Date.now(),
    lastSeq: 0,
    state: "starting",
  };
}

/** The most a later lease of the job may deposit (none once the budget cannot pay one more second). */
function nextDeposit(record: JobRecord, maxPricePerSecond: bigint): bigint {
  try {
    return leaseDeposit(record, maxPricePerSecond);
  } catch {
    return 0n;
  }
}

/** A lease acquired: its record, and the signed opening to send its provider, if it was opened so. */
export interface AcquiredLease {
  lease: LeaseRecord;
  opening: OpeningWire | undefined;
}
