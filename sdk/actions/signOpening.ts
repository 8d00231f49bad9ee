import type { Hex } from "viem";

import { chainBlockTime, nextBlockTime } from "../chain/block-time.ts";
import { contracts, leaseStatus, writeContract } from "../chain/client.ts";
import { leaseIdOf, signOpening as signTypedOpening, type Opening } from "../chain/opening.ts";
import type { Quote } from "../chain/quote.ts";
import type { BatonClient } from "../client.ts";
import { UserError } from "../errors.ts";
import type { OpeningWire } from "../wire/messages.ts";
import { poll } from "../utils/retry.ts";

/**
 * How long a signed opening gives its provider to get it mined: a few blocks of a 12-second chain
 * and a resend, well within the 120 s a node accepts by default (`maxOpeningWindowS`). It is also
 * how long the provider may run the job unpaid should the opening fail.
 */
export const OPENING_WINDOW_S = 60;

/**
 * What a client's allowance to the lease manager is promised to: the deposits of its signed openings
 * not yet landed (or failed), and what each of its jobs keeps for its next hand-off. Several jobs of
 * one client hand off at once (a provider with three of them dies): each opening needs its own share
 * of the allowance, or all but one fail on chain.
 */
interface AllowanceLedger {
  /** Deposits of signed openings whose fate is not known yet, by lease id. */
  promised: Map<bigint, bigint>;
  /** What each job keeps for its next hand-off's deposit, by job id. */
  reserved: Map<string, bigint>;
}

const ledgers = new WeakMap<BatonClient, AllowanceLedger>();

function ledgerOf(client: BatonClient): AllowanceLedger {
  let ledger = ledgers.get(client);
  if (!ledger) {
    ledger = { promised: new Map(), reserved: new Map() };
    ledgers.set(client, ledger);
  }
  return ledger;
}

const sum = (amounts: Iterable<bigint>): bigint => [...amounts].reduce((a, b) => a + b, 0n);

export interface SignOpeningParameters {
  quote: Quote;
  /** The provider's signature of the quote, as its bid answer carried it. */
  quoteSignature: Hex;
  deposit: bigint;
  /** The lease of the job this one continues (ended by the opening if still active), or 0n. */
  predecessor?: bigint;
  /** Seconds from the next block's time to the opening's deadline. Default {@link OPENING_WINDOW_S}. */
  windowS?: number;
  signal?: AbortSignal;
}

export interface SignOpeningReturnType {
  /** The id the lease gets once its provider submits the opening. */
  leaseId: bigint;
  /** What the provider is sent, on the lease session's `start`. */
  opening: OpeningWire;
}

/**
 * Signs a lease opening (EIP-712) for a provider to submit with `LeaseManager.openLeaseFor`: the hand-off
 * that waits for no block. The provider checks it, starts the job at once and submits it; the lease's
 * id is known now. The deposit is pulled from the tenant's allowance, which this tops up first when it
 * falls short (that one transaction waits for a block; {@link ensureAllowance} ahead of time avoids it).
 * Watch the opening land with {@link waitForOpening}.
 *
 * @throws {UserError} when the tenant does not hold the deposit.
 * @example
 * const { leaseId, opening } = await signOpening(client, { quote, quoteSignature, deposit, predecessor: 7n });
 */
export async function signOpening(
  client: BatonClient,
  { quote, quoteSignature, deposit, predecessor = 0n, windowS = OPENING_WINDOW_S, signal }: SignOpeningParameters,
): Promise<SignOpeningReturnType> {
  const { leaseManager } = contracts(client.chain.deployment);
  const { chainId } = client.chain.deployment;
  // From the next block's time: on a chain that mines on demand the latest block may be old.
  const [now] = await Promise.all([nextBlockTime(client.chain), ensureAllowance(client, { amount: deposit, signal })]);
  const opening: Opening = { quote, deposit, predecessor, deadline: now + BigInt(windowS) };
  const signature = await signTypedOpening(client.account, chainId, leaseManager.address, opening);
  const leaseId = leaseIdOf(chainId, leaseManager.address, quote);
  // Promised until the opening's fate is known ({@link waitForOpening}).
  ledgerOf(client).promised.set(leaseId, deposit);
  return { leaseId, opening: { ...opening, quoteSignature, signature } };
}

/**
 * Makes the tenant's allowance to the lease manager cover `amount` on top of the deposits its signed
 * openings in flight will pull (one `approve`, serialised with the tenant's other transactions, when
 * it is less), so that a new signed opening can pull its deposit.
 *
 * @throws {UserError} when the tenant holds less than `amount`.
 * @example
 * await ensureAllowance(client, { amount: deposit });
 */
export async function ensureAllowance(
  client: BatonClient,
  { amount, signal }: { amount: bigint; signal?: AbortSignal },
): Promise<void> {
  await raiseAllowance(client, () => amount + sum(ledgerOf(client).promised.values()), { needed: amount, signal });
}

/**
 * Keeps `amount` of the tenant's allowance for job `jobId`'s next hand-off (`undefined`: none any
 * more), so that its signed opening needs no `approve` first, a transaction that would wait for a
 * block: the allowance is raised to what every job keeps plus what openings in flight will pull.
 *
 * @example
 * await reserveAllowance(client, jobId, leaseDeposit(record, maxPricePerSecond));
 */
export async function reserveAllowance(client: BatonClient, jobId: string, amount: bigint | undefined): Promise<void> {
  const ledger = ledgerOf(client);
  if (amount === undefined) {
    ledger.reserved.delete(jobId);
    return;
  }
  ledger.reserved.set(jobId, amount);
  await raiseAllowance(client, () => sum(ledger.reserved.values()) + sum(ledger.promised.values()), {
    needed: amount,
  });
}

/**
 * Notes `amount` as job `jobId`'s allowance for its next hand-off without approving it, and returns
 * what the client's allowance should then be beyond a deposit being pulled now: for an `openLease`
 * whose permit (or approval) grants the deposit plus this (`keepAllowance`), which sets the allowance
 * in the same transaction as the open.
 */
export function allowanceToKeep(client: BatonClient, jobId: string, amount: bigint): bigint {
  const ledger = ledgerOf(client);
  ledger.reserved.set(jobId, amount);
  return sum(ledger.reserved.values()) + sum(ledger.promised.values());
}

/**
 * What the client's allowance should stay at beyond a deposit being pulled now, for an `openLease`
 * that no hand-off waits on (a holder's lease): what every job keeps plus what openings in flight
 * will pull, unchanged.
 */
export function allowanceKept(client: BatonClient): bigint {
  const ledger = ledgerOf(client);
  return sum(ledger.reserved.values()) + sum(ledger.promised.values());
}

/** Approves `target()` when the allowance is below it (having checked the balance covers `needed`). */
async function raiseAllowance(
  client: BatonClient,
  target: () => bigint,
  { needed: amount, signal }: { needed: bigint; signal?: AbortSignal | undefined },
): Promise<void> {
  const { leaseManager, paymentToken } = contracts(client.chain.deployment);
  const read = (functionName: "balanceOf" | "allowance") =>
    client.chain.publicClient.readContract({
      ...paymentToken,
      functionName,
      args: functionName === "balanceOf" ? [client.account.address] : [client.account.address, leaseManager.address],
    } as never) as Promise<bigint>;
  const [balance, allowance] = await Promise.all([read("balanceOf"), read("allowance")]);
  if (balance < amount) throw new UserError(`the tenant holds ${balance} payment tokens; the deposit is ${amount}`);
  if (allowance >= target()) return;
  await client.transact(async () => {
    // Read again in the queue: an approval queued before this one may have raised it already.
    const wanted = target();
    if ((await read("allowance")) >= wanted) return;
    await writeContract(client.chain, {
      ...paymentToken,
      functionName: "approve",
      args: [leaseManager.address, wanted],
      ...(signal ? { signal } : {}),
    });
  });
}

/**
 * Waits until a signed opening's lease exists on chain, or the next block would come after its
 * deadline without it (no block can open it any more).
 *
 * @returns whether the lease opened.
 * @example
 * if (!(await waitForOpening(client, { leaseId, deadline: opening.deadline }))) console.log("not opened");
 */
export async function waitForOpening(
  client: BatonClient,
  { leaseId, deadline, signal }: { leaseId: bigint; deadline: bigint; signal?: AbortSignal },
): Promise<boolean> {
  const { leaseManager } = contracts(client.chain.deployment);
  const { publicClient } = client.chain;
  const blockTimeS = await chainBlockTime(client.chain, signal ? { signal } : {}).catch(() => 1);
  const opened = await poll(
    async () => {
      // The time first: once the next block comes after the deadline, no block to come can open the
      // lease, and a read after that which still misses it settles it.
      const next = await nextBlockTime(client.chain);
      const lease = await publicClient.readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] });
      if (leaseStatus[lease.status] !== "None") return { done: true, value: true };
      if (next > deadline) return { done: true, value: false };
      return { done: false };
    },
    { delayMs: Math.min(2_000, Math.max(250, blockTimeS * 500)), backoff: 1, ...(signal ? { signal } : {}) },
  );
  // Its deposit is pulled (landed) or never will be: no longer promised.
  if (opened !== undefined) ledgerOf(client).promised.delete(leaseId);
  return opened === true;
}
