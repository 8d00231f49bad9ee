import { BaseError as ViemBaseError, isAddressEqual, parseEventLogs, type Address, type Hex } from "viem";

import {
  contracts,
  leaseStatus,
  revertOf,
  writeContract,
  type ChainClient,
  type ChainLeaseStatus,
} from "../chain/client.ts";
import { nextBlockTime } from "../chain/block-time.ts";
import { confirmedBlockNumber, waitForConfirmations } from "../chain/confirmations.ts";
import { findLastLog } from "../chain/logs.ts";
import { ChainError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { poll, withRetry, type Look } from "../utils/retry.ts";

/**
 * Ending a lease the tenant leaves, and slashing it when its provider missed its deadline: one rule
 * for the job runner, `cancelJob` and every replica of a service. A job's leases are ended and
 * slashed through `job-settlement.ts`, which records each slash in the job's record.
 *
 * Every deadline is in chain time, and no read tells what the chain's time will be when a
 * transaction lands: a view answers for the latest block, which on an idle devnet lags the clock by
 * seconds and on a public chain by up to a block, while the transaction runs in the next block. So
 * the choice is made from the best guess of that next block's time (the pending block's, see
 * {@link nextBlockTime}), transactions are simulated against the pending block, and a revert that
 * says the guess was wrong takes the other path at once instead of failing: a close refused because the lease turned slashable becomes a slash, a slash refused
 * because the deadline has not passed on chain becomes a close (or, while waiting to slash, a wait).
 */

/** The three calls that end an `Active` lease from the tenant's side. */
export type EndingCall = "close" | "settleExpired" | "slashMissedHeartbeat";

/** What a slash paid the tenant, and in which transaction. */
export interface SlashRecord {
  compensation: bigint;
  refund: bigint;
  tx: Hex;
}

export interface LeaseTimes {
  deadline: bigint;
  endsAt: bigint;
}

export type EndLeaseResult =
  | { call: "close" | "settleExpired" }
  | { call: "slashMissedHeartbeat"; slash: SlashRecord }
  /** It was no longer `Active` when read: someone (its provider, another process) ended it. */
  | { call: undefined; status: ChainLeaseStatus };

/** What the settlement functions need of a tenant's client. */
export interface SettlementClient {
  chain: ChainClient;
  /** Serialises this account's transactions (see `BatonClient.transact`). */
  transact<T>(send: () => Promise<T>): Promise<T>;
}

/** Reverts that mean the chain's time is not what we guessed, and what to send instead. */
const INSTEAD: Readonly<Record<string, EndingCall>> = {
  LeaseManager_LeaseSlashable: "slashMissedHeartbeat",
  LeaseManager_LeaseExpired: "settleExpired",
  LeaseManager_HeartbeatNotMissed: "close",
  LeaseManager_LeaseNotExpired: "close",
};

/**
 * Attempts at ending one lease. Each failed attempt either names the call to make instead (a race
 * with the chain's time, settled by the next attempt) or re-reads the lease; more than a few in a
 * row mean the chain or RPC refuses for another reason, which the caller should see.
 */
const END_ATTEMPTS = 6;

/** Pause between attempts that failed for a reason other than a known race (an RPC hiccup). */
const RETRY_PAUSE_MS = 500;

/** How often a pending slash looks at the chain again: deadlines are whole seconds. */
const SLASH_POLL_MAX_MS = 5_000;

/**
 * How long past a lease's deadline (by the clock) a pending slash keeps trying before it reports
 * failure: longer than any chain's block time and an RPC outage worth waiting out.
 */
const SLASH_GIVE_UP_MS = 5 * 60_000;

/**
 * The call that ends an `Active` lease at chain time `now`: a slash when its heartbeat deadline has
 * passed before its end (a close would revert), a settlement when its deposit ran out with the
 * provider never in default, else a close. The same tests as `LeaseManager`'s `_isSlashable` and
 * `_isExpired`.
 */
export function endingCall({ deadline, endsAt }: LeaseTimes, now: bigint): EndingCall {
  if (now > deadline && deadline < endsAt) return "slashMissedHeartbeat";
  if (now >= endsAt && deadline >= endsAt) return "settleExpired";
  return "close";
}

/**
 * Ends a lease the tenant is leaving: `close` while it is active (its money settles; the provider
 * acknowledges, or is slashed once its deadline passes), `slashMissedHeartbeat` when its deadline
 * already passed, `settleExpired` when its deposit ran out. A lease no longer `Active` is left alone.
 *
 * @throws {ChainError} when the chain refuses every attempt for a reason other than a race with its clock.
 * @example
 * const ended = await endLease(client, { leaseId: 7n });
 */
export async function endLease(
  client: SettlementClient,
  { leaseId, signal }: { leaseId: bigint; signal?: AbortSignal },
): Promise<EndLeaseResult> {
  const { leaseManager } = contracts(client.chain.deployment);
  let instead: EndingCall | undefined;
  return withRetry(
    async () => {
      const view = await readLease(client, leaseId);
      const status = statusOf(client, view);
      if (status !== "Active") return { call: undefined, status };
      const call = instead ?? endingCall(view, await nextBlockTime(client.chain));
      instead = undefined;
      if (call === "slashMissedHeartbeat") return { call, slash: await slash(client, leaseId) };
      await client.transact(() =>
        writeContract(client.chain, { ...leaseManager, functionName: call, args: [leaseId], blockTag: "pending" }),
      );
      return { call };
    },
    {
      attempts: END_ATTEMPTS,
      shouldRetry: (error) => {
        if (!isChainFailure(error)) return false;
        const revert = revertOf(error);
        instead = revert ? INSTEAD[revert.name] : undefined;
        return !revert || instead !== undefined || revert.name === "LeaseManager_LeaseNotActive";
      },
      // A known race is settled by the next attempt at once; anything else gets a pause first.
      delayMs: () => (instead ? 0 : RETRY_PAUSE_MS),
      unref: true,
      ...(signal ? { signal } : {}),
    },
  );
}

/**
 * Slashes a lease whose provider the tenant left, as soon as chain time passes its deadline, unless
 * it ends otherwise first (its provider acknowledges the close, or finishes). Waits on the chain's
 * time, not the clock's, and a slash the chain refuses as early is tried again, never dropped.
 *
 * With `confirmations` (the client's), the slash counts once its transaction lies that deep, and an
 * end without one once the lease shows it that deep: a slash a reorg takes back is made again.
 *
 * @returns what the slash paid (ours or anyone's), or `undefined` when the lease ended unslashed.
 * @throws {ChainError} when the lease is still unslashed {@link SLASH_GIVE_UP_MS} past its deadline.
 */
export async function slashWhenDue(
  client: SettlementClient,
  { leaseId, log, signal }: { leaseId: bigint; log: Logger; signal?: AbortSignal },
): Promise<SlashRecord | undefined> {
  let giveUpAt = Date.now() + SLASH_GIVE_UP_MS;
  let lastError: unknown;
  return poll(
    async (): Promise<Look<SlashRecord | undefined>> => {
      let step: SlashStep;
      try {
        step = await trySlash(client, leaseId, signal);
      } catch (error) {
        if (!isChainFailure(error)) throw error;
        log.info("slash not done yet; trying again", { leaseId, error: error.shortMessage });
        step = { waitMs: RETRY_PAUSE_MS, error };
      }
      if ("done" in step) {
        const confirmed = await confirmedEnd(client, leaseId, step.done, signal);
        if (confirmed) return { done: true, value: confirmed.value };
        // A slash that a reorg took back, or an end too young to count: look at the lease again.
        return { done: false, waitMs: RETRY_PAUSE_MS };
      }
      if (step.deadline !== undefined) giveUpAt = Math.max(giveUpAt, Number(step.deadline) * 1000 + SLASH_GIVE_UP_MS);
      lastError = step.error ?? lastError;
      if (Date.now() > giveUpAt) {
        throw new ChainError(`lease ${leaseId} is still not slashed ${SLASH_GIVE_UP_MS / 1000} s past its deadline`, {
          cause: lastError,
        });
      }
      return { done: false, waitMs: step.waitMs };
    },
    { unref: true, ...(signal ? { signal } : {}) },
  );
}

type SlashStep = { done: SlashRecord | undefined } | { waitMs: number; deadline?: bigint; error?: unknown };

/** One look at a lease awaiting its slash: slash it if due, else say how long to wait. */
async function trySlash(client: SettlementClient, leaseId: bigint, signal?: AbortSignal): Promise<SlashStep> {
  const view = await readLease(client, leaseId);
  const status = statusOf(client, view);
  if (status === "Slashed") return { done: await findSlash(client, leaseId) };
  if (status !== "Active" && status !== "Closing") return { done: undefined };
  const now = await nextBlockTime(client.chain);
  if (status === "Active" && endingCall(view, now) !== "slashMissedHeartbeat") {
    // Still active: its close failed earlier. End it now; a slash, if due, comes next.
    const ended = await endLease(client, { leaseId, ...(signal ? { signal } : {}) });
    if (ended.call === "slashMissedHeartbeat") return { done: ended.slash };
    if (ended.call === "settleExpired") return { done: undefined };
    return { waitMs: 0, deadline: view.deadline };
  }
  if (now <= view.deadline) {
    const waitMs = Math.min(SLASH_POLL_MAX_MS, Number(view.deadline + 1n - now) * 1000);
    return { waitMs, deadline: view.deadline };
  }
  try {
    return { done: await slash(client, leaseId) };
  } catch (error) {
    // The chain's time has not passed the deadline yet (it lags the clock): wait for a block.
    if (revertOf(error)?.name !== "LeaseManager_HeartbeatNotMissed") throw error;
    return { waitMs: RETRY_PAUSE_MS, deadline: view.deadline, error };
  }
}

/**
 * What {@link trySlash} found, if it holds at the client's confirmation depth: a slash whose
 * transaction lies that deep (what it paid read from there: mined again after a reorg, it may have
 * paid otherwise), or an end without a slash that the lease shows that deep too. `undefined` when
 * it does not hold, or not yet: the slash vanished, or the end is younger than the depth.
 */
async function confirmedEnd(
  client: SettlementClient,
  leaseId: bigint,
  found: SlashRecord | undefined,
  signal: AbortSignal | undefined,
): Promise<{ value: SlashRecord | undefined } | undefined> {
  const { chain } = client;
  if (chain.confirmations === 0) return { value: found };
  if (found) {
    const fate = await waitForConfirmations(chain, { hash: found.tx, ...(signal ? { signal } : {}) });
    if (fate.state === "vanished") return undefined;
    const { leaseManager } = contracts(chain.deployment);
    const event = parseEventLogs({ abi: leaseManager.abi, logs: fate.receipt.logs, eventName: "LeaseSlashed" }).find(
      (log) => log.args.leaseId === leaseId,
    );
    if (!event) return undefined;
    return {
      value: { compensation: event.args.compensation, refund: event.args.refund, tx: fate.receipt.transactionHash },
    };
  }
  const head = await chain.publicClient.getBlockNumber({ cacheTime: 0 });
  const [deep, newest] = await Promise.all([
    readLease(
      client,
      leaseId,
      laterBlock(confirmedBlockNumber(head, chain.confirmations), chain.deployment.deployBlock),
    ),
    readLease(client, leaseId),
  ]);
  const status = statusOf(client, deep);
  if (status === "Active" || status === "Closing") return undefined;
  // Not there yet that deep, while the newest block has it: opened (and ended) less than the depth ago.
  if (status === "None" && statusOf(client, newest) !== "None") return undefined;
  return { value: undefined };
}

/** The later of two blocks: a read at a depth goes no lower than the deployment's block. */
const laterBlock = (a: bigint, b: bigint): bigint => (a > b ? a : b);

/** The `LeaseSlashed` event of a lease someone slashed, if the chain has one. */
async function findSlash(client: SettlementClient, leaseId: bigint): Promise<SlashRecord | undefined> {
  const { leaseManager } = contracts(client.chain.deployment);
  const { publicClient, deployment, maxLogRange } = client.chain;
  const event = await findLastLog(
    (range) =>
      publicClient.getContractEvents({ ...leaseManager, eventName: "LeaseSlashed", args: { leaseId }, ...range }),
    {
      what: `the slash of lease ${leaseId}`,
      fromBlock: deployment.deployBlock,
      toBlock: await publicClient.getBlockNumber({ cacheTime: 0 }),
      maxRange: maxLogRange,
    },
  );
  if (!event) return undefined;
  return { compensation: event.args.compensation!, refund: event.args.refund!, tx: event.transactionHash };
}

async function slash(client: SettlementClient, leaseId: bigint): Promise<SlashRecord> {
  const { leaseManager } = contracts(client.chain.deployment);
  const receipt = await client.transact(() =>
    writeContract(client.chain, {
      ...leaseManager,
      functionName: "slashMissedHeartbeat",
      args: [leaseId],
      blockTag: "pending",
    }),
  );
  const event = parseEventLogs({ abi: leaseManager.abi, logs: receipt.logs, eventName: "LeaseSlashed" })[0];
  if (!event) throw new ChainError(`slash of lease ${leaseId} emitted no LeaseSlashed event`);
  return { compensation: event.args.compensation, refund: event.args.refund, tx: receipt.transactionHash };
}

/** A refusal or failure of the chain or its RPC endpoint, as opposed to a bug or an abort. */
function isChainFailure(error: unknown): error is ChainError | ViemBaseError {
  return error instanceof ChainError || error instanceof ViemBaseError;
}

function readLease(client: SettlementClient, leaseId: bigint, blockNumber?: bigint) {
  const { leaseManager } = contracts(client.chain.deployment);
  return client.chain.publicClient.readContract({
    ...leaseManager,
    functionName: "getLease",
    args: [leaseId],
    ...(blockNumber === undefined ? {} : { blockNumber }),
  });
}

/**
 * A lease's status as this tenant may act on it: `None` for another tenant's lease too. After a
 * reorg a lease id may name someone else's lease (ids count up across every tenant's openings), and
 * no tenant ends or slashes a lease on the strength of an id that is no longer its own.
 */
function statusOf(client: SettlementClient, view: { status: number; tenant: Address }): ChainLeaseStatus {
  const status = leaseStatus[view.status] ?? "None";
  const tenant = client.chain.walletClient?.account.address;
  return status !== "None" && tenant !== undefined && !isAddressEqual(view.tenant, tenant) ? "None" : status;
}
