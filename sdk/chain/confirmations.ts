/**
 * Confirmations: how deep a block must lie before what it holds counts. A reorg replaces the newest
 * blocks of a chain with others, and what they held (a lease's opening, a close, a slash) may vanish
 * or land elsewhere; a block N deep is replaced only by a reorg deeper than N. A reader at
 * `confirmations: N` trusts the block `latest − N` and everything below it, so what it acts on or
 * shows is never younger than N blocks. 0, the default, trusts the latest block: what a local chain
 * needs, and today's behaviour everywhere.
 *
 * (viem's and ethers' `confirmations` count the transaction's own block, so theirs is ours plus one.)
 */
import type { Hex, TransactionReceipt } from "viem";

import { ChainError, UserError } from "../errors.ts";
import { poll, type Look } from "../utils/retry.ts";
import type { ChainClient } from "./client.ts";

/**
 * Whether viem said the node has no such receipt or transaction. By name, so that this module loads
 * no viem code: the CLI takes {@link MAX_CONFIRMATIONS} from here before it loads the SDK.
 */
const notFound = (error: unknown): boolean =>
  error instanceof Error &&
  (error.name === "TransactionReceiptNotFoundError" || error.name === "TransactionNotFoundError");

/** A failure of the RPC endpoint: one of viem's errors (each carries viem's version), or our ChainError. */
const isRpcFailure = (error: unknown): boolean =>
  error instanceof ChainError ||
  (error instanceof Error && typeof (error as { version?: unknown }).version === "string" && "shortMessage" in error);

/** How soon a wait looks again after its RPC endpoint failed. */
const RPC_RETRY_MS = 1_000;

/** How long a wait goes on through an RPC endpoint that fails every look before it gives up. */
const RPC_GIVE_UP_MS = 10 * 60_000;

/** Blocks a reader waits on top of a block before it trusts it, unless told otherwise: none. */
export const DEFAULT_CONFIRMATIONS = 0;

/** More than any chain's finality needs (Ethereum finalizes in 64 blocks); a larger one is a typo. */
export const MAX_CONFIRMATIONS = 10_000;

/**
 * A confirmation depth, checked: a whole number of blocks from 0 to {@link MAX_CONFIRMATIONS}.
 *
 * @throws {UserError} naming `what` otherwise.
 */
export function checkConfirmations(value: number, what = "confirmations"): number {
  if (!Number.isInteger(value) || value < 0 || value > MAX_CONFIRMATIONS) {
    throw new UserError(`${what} must be a whole number of blocks from 0 to ${MAX_CONFIRMATIONS}, not ${value}`);
  }
  return value;
}

/** The newest block number a reader at `confirmations` trusts when the chain's head is `head` (never below 0). */
export function confirmedBlockNumber(head: bigint, confirmations: number): bigint {
  const depth = BigInt(confirmations);
  return head > depth ? head - depth : 0n;
}

/**
 * The newest block `chain` trusts: the latest, `chain.confirmations` blocks back.
 *
 * @example
 * const asOf = await confirmedBlock(client.chain); // read views at asOf.number, logs up to it
 */
export async function confirmedBlock(
  chain: Pick<ChainClient, "publicClient" | "confirmations">,
): Promise<{ number: bigint; hash: Hex; timestamp: bigint }> {
  const block =
    chain.confirmations === 0
      ? await chain.publicClient.getBlock({ blockTag: "latest" })
      : await chain.publicClient.getBlock({
          blockNumber: confirmedBlockNumber(
            await chain.publicClient.getBlockNumber({ cacheTime: 0 }),
            chain.confirmations,
          ),
        });
  return { number: block.number, hash: block.hash, timestamp: block.timestamp };
}

/** Where a mined transaction ended up once followed to a depth. */
export type TransactionFate =
  /** `confirmations` blocks lie on the block that holds it now (after a reorg, maybe another block than first). */
  | { state: "confirmed"; receipt: TransactionReceipt }
  /** No block holds it and the RPC node knows it no more (a reorg dropped it), or it was mined again and reverted. */
  | { state: "vanished"; reason: string };

export interface WaitForConfirmationsParameters {
  /** The transaction, mined (a receipt was seen) or thought to be. */
  hash: Hex;
  /** Blocks to wait for on top of its block. Default: the client's. */
  confirmations?: number;
  signal?: AbortSignal;
}

/**
 * Follows a mined transaction until `confirmations` blocks are built on the block that holds it, and
 * resolves with its receipt from there; or with `vanished` once it is in no block and the RPC node
 * does not know it either, at two heads in a row (a reorg dropped it and nobody sent it again), or
 * it was mined again after a reorg and reverted there. A transaction back in the mempool after a
 * reorg is waited for: it is
 * mined again, maybe in another block, and its depth counts from there. One look per new block, at
 * the client's polling interval; with 0 confirmations, one look in all. An RPC endpoint that fails
 * is asked again each second, for up to 10 minutes; then its error is thrown.
 *
 * @example
 * const fate = await waitForConfirmations(client.chain, { hash: receipt.transactionHash, confirmations: 12 });
 * if (fate.state === "vanished") console.log("reorged out:", fate.reason);
 */
export async function waitForConfirmations(
  chain: Pick<ChainClient, "publicClient" | "confirmations">,
  { hash, confirmations = chain.confirmations, signal }: WaitForConfirmationsParameters,
): Promise<TransactionFate> {
  const { publicClient } = chain;
  /** The head block at the last look, by hash: a reorg may replace it with another of the same height. */
  let lastHead: Hex | undefined;
  /**
   * The head at which the transaction was first found nowhere. It has vanished once it is still
   * nowhere at a later head: right after a reorg, a node may not have put it back in its mempool yet.
   */
  let missingAt: bigint | undefined;
  const look = async (): Promise<Look<TransactionFate>> => {
    const latest = await publicClient.getBlock({ blockTag: "latest" });
    const head = latest.number;
    // Nothing can have changed on a chain whose head is the same block (a reorg brings another).
    if (latest.hash === lastHead) return { done: false };
    lastHead = latest.hash;
    const receipt = await publicClient
      .getTransactionReceipt({ hash })
      .catch((error: unknown) => (notFound(error) ? undefined : Promise.reject(error)));
    if (!receipt) {
      const known = await publicClient
        .getTransaction({ hash })
        .catch((error: unknown) => (notFound(error) ? undefined : Promise.reject(error)));
      if (known) {
        // Pending again (a reorg put it back in the mempool): it will be mined again.
        missingAt = undefined;
        return { done: false };
      }
      missingAt ??= head;
      if (head === missingAt) return { done: false };
      return {
        done: true,
        value: { state: "vanished", reason: `transaction ${hash} is in no block and no mempool (a reorg dropped it)` },
      };
    }
    missingAt = undefined;
    if (head - receipt.blockNumber < BigInt(confirmations)) return { done: false };
    // The block at that height must still be the receipt's: a node behind a load balancer may
    // answer from a stale view.
    const block = await publicClient.getBlock({ blockNumber: receipt.blockNumber });
    if (block.hash !== receipt.blockHash) {
      lastHead = undefined;
      return { done: false };
    }
    if (receipt.status !== "success") {
      return {
        done: true,
        value: { state: "vanished", reason: `transaction ${hash} reverted in the block that holds it now` },
      };
    }
    return { done: true, value: { state: "confirmed", receipt } };
  };
  let failingSince: number | undefined;
  const fate = await poll(
    async () => {
      try {
        const found = await look();
        failingSince = undefined;
        return found;
      } catch (error) {
        // An RPC endpoint that fails for a while (the transport has retried already) delays the
        // answer; it does not change it. Anything else is a bug, and ends the wait, as does an
        // endpoint gone for good.
        failingSince ??= Date.now();
        if (!isRpcFailure(error) || Date.now() - failingSince > RPC_GIVE_UP_MS) throw error;
        lastHead = undefined;
        return { done: false, waitMs: RPC_RETRY_MS };
      }
    },
    { delayMs: publicClient.pollingInterval, backoff: 1, unref: true, ...(signal ? { signal } : {}) },
  );
  // `poll` returns undefined only past a limit of tries or time, and this one has none.
  return fate!;
}
