import { BudgetExhaustedError, JobFailedError, NoProviderError } from "../errors.ts";
import type { SessionRefusalReason } from "../wire/messages.ts";
import type { JobRecord, LeaseRecord } from "./job-store.ts";

/**
 * The hand-off policy: which refusals move a job to another provider, which providers a new lease
 * avoids, how many hand-offs a job may take, how long it looks for offers, and what it deposits
 * within its budget. Numbers and pure functions: the job runner asks them, and nothing here talks
 * to the network or the chain.
 */

/** Hand-offs a job may take before it fails, unless its options say otherwise. */
export const DEFAULT_RETRY_LIMIT = 3;

/** How long a new lease waits for a matching offer: providers re-publish theirs every few seconds. */
export const OFFER_TIMEOUT_MS = 15_000;

/**
 * How long a hand-off keeps looking for a provider while none offers or quotes (all busy, or not
 * re-published yet) before the job fails: it holds no lease meanwhile, so waiting costs nothing but
 * time, and failing would throw away the job's progress.
 */
export const HAND_OFF_SEARCH_MS = 5 * 60_000;

/** How soon a hand-off that found no provider looks again (offers are re-published every few seconds). */
export const HAND_OFF_SEARCH_PAUSE_MS = 5_000;

/**
 * Whether a search that found no provider looks again (after {@link HAND_OFF_SEARCH_PAUSE_MS}): a
 * job or batch that has had a lease does, as providers free up; a first lease does only when
 * providers offered and none could be reached ({@link NoProviderError.unreachable}), since a market
 * with nobody in it is better told than waited on.
 */
export function searchesAgain(error: unknown, hadLease: boolean): error is NoProviderError {
  return error instanceof NoProviderError && (hadLease || error.unreachable);
}

/** A lease is topped up this long before its deposit runs out. */
export const TOP_UP_MARGIN_MS = 5_000;

/** How soon a failed top-up is tried again, until the deposit runs out. */
export const TOP_UP_RETRY_MS = 1_000;

/**
 * Whose doing each session refusal is. The provider's (or bad luck's) moves the job to another
 * provider, which may do better; the tenant's means the job as asked runs nowhere, so it fails.
 */
export const refusalFault: Readonly<Record<SessionRefusalReason, "provider" | "tenant">> = {
  timeout: "provider",
  draining: "provider",
  "unknown-lease": "provider",
  "not-our-lease": "tenant",
  "not-your-lease": "tenant",
  "lease-not-active": "provider",
  "opening-refused": "provider",
  "spec-mismatch": "tenant",
  "no-capacity": "provider",
  "bad-request": "tenant",
  "inputs-failed": "provider",
  "resume-failed": "provider",
  "image-refused": "tenant",
  "image-failed": "provider",
  internal: "provider",
};

/** Whether a provider's refusal of the job's session moves the job on (else the job fails). */
export function isProviderRefusal(reason: SessionRefusalReason): boolean {
  return refusalFault[reason] === "provider";
}

/**
 * Why the job moves on after a provider's refusal, as its `provider-failed` event says. A draining
 * provider does not refuse the job: it gives a running lease back, and the reason says so.
 */
export function refusalHandOffReason(reason: SessionRefusalReason, message: string): string {
  return reason === "draining" ? `provider draining: ${message}` : `refused: ${message}`;
}

/**
 * The providers (addresses or peer ids) a new lease avoids: it never goes to the user's list, to
 * `others` (a service's other replicas, say) or to the provider that failed the job last; the
 * providers that failed it before come last, after every other offer. One that failed earlier and
 * offers again (restarted, back online) beats no provider at all, which would stall a job, or a
 * service's replica for good, once every other provider had failed it or served a sibling.
 */
export function providersToAvoid(
  record: Pick<JobRecord, "options" | "leases">,
  others: readonly string[] = [],
): { exclude: string[]; lastResort: string[] } {
  const failed = record.leases.filter((lease) => lease.state === "failed").map((lease) => lease.provider);
  const exclude = [...new Set([...record.options.exclude, ...failed.slice(-1), ...others])];
  return { exclude, lastResort: [...new Set(failed)].filter((provider) => !exclude.includes(provider)) };
}

/**
 * Counts a hand-off on the job's record. Returns the error to fail the job with when that was one
 * hand-off past its retry limit.
 */
export function countHandOff(
  record: Pick<JobRecord, "options" | "handOffs">,
  reason: string,
): JobFailedError | undefined {
  record.handOffs += 1;
  if (record.handOffs <= record.options.retryLimit) return undefined;
  return new JobFailedError(
    `${record.handOffs} providers failed this job; its retry limit is ${record.options.retryLimit}`,
    { details: `last: ${reason}` },
  );
}

type BudgetView = Pick<JobRecord, "options" | "spec" | "deposited">;

/**
 * How much each deposit or top-up of a lease pays for. A job's lease: its `maxDurationS` (the
 * default). A batch lease, which runs task after task: longer (see `DEFAULT_BATCH_FUND_S`), so that
 * it is not topped up every few tasks; since what a lease is given counts against the budget whether
 * or not it is used, each of the `shares` leases that run at once is then given at most its share of
 * what is left, but never less than one `maxDurationS` (what one task may need).
 */
export interface Funding {
  seconds: number;
  shares: number;
}

/** What to give a lease at `price` now: see {@link Funding}; at most what is left of the budget. */
function fundingAmount(record: BudgetView, price: bigint, funding: Funding | undefined): bigint {
  const oneRun = price * BigInt(record.spec.maxDurationS);
  const whole = funding === undefined ? oneRun : price * BigInt(funding.seconds);
  const { budget } = record.options;
  if (budget === undefined) return whole;
  const left = BigInt(budget) - BigInt(record.deposited);
  const share = left / BigInt(funding?.shares ?? 1);
  let amount = whole;
  if (amount > share) amount = share > oneRun ? share : oneRun;
  return amount > left ? left : amount;
}

/**
 * The deposit of a new lease at `price` per second: the job's whole maximum duration (or what
 * `funding` says), or what is left of its budget when that is less.
 *
 * @throws {BudgetExhaustedError} when what is left of the budget does not pay one second.
 */
export function leaseDeposit(record: BudgetView, price: bigint, funding?: Funding): bigint {
  const { budget } = record.options;
  if (budget !== undefined && BigInt(budget) - BigInt(record.deposited) < price) {
    throw new BudgetExhaustedError(`the budget of ${budget} is spent; a new lease needs at least ${price}`);
  }
  return fundingAmount(record, price, funding);
}

/**
 * A top-up of a running lease: another whole maximum duration at its price (or what `funding`
 * says), or what is left of the budget when that is less; `undefined` when that does not pay one
 * second (the job fails then).
 */
export function topUpAmount(
  record: BudgetView,
  lease: Pick<LeaseRecord, "pricePerSecond">,
  funding?: Funding,
): bigint | undefined {
  const price = BigInt(lease.pricePerSecond);
  const amount = fundingAmount(record, price, funding);
  return amount < price ? undefined : amount;
}

/** When (ms since epoch) to top a lease up: {@link TOP_UP_MARGIN_MS} before its deposit runs out. */
export function topUpAt(lease: Pick<LeaseRecord, "deposit" | "pricePerSecond" | "openedAt">): number {
  const fundedMs = Number((BigInt(lease.deposit) * 1000n) / BigInt(lease.pricePerSecond));
  return lease.openedAt + fundedMs - TOP_UP_MARGIN_MS;
}

/** What a lease has cost: its price for each whole second from its opening to its end (or `now`), at most its deposit. */
export function leaseCost(
  lease: Pick<LeaseRecord, "pricePerSecond" | "deposit" | "openedAt" | "endedAt">,
  now = Date.now(),
): bigint {
  const end = lease.endedAt ?? now;
  const seconds = BigInt(Math.max(0, Math.floor((end - lease.openedAt) / 1000)));
  const cost = BigInt(lease.pricePerSecond) * seconds;
  const deposit = BigInt(lease.deposit);
  return cost < deposit ? cost : deposit;
}
