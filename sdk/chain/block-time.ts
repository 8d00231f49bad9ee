import type { PublicClient } from "viem";

import type { ChainClient } from "./client.ts";

/** Blocks whose timestamps {@link estimateBlockTime} compares: enough to see a chain's rhythm, one RPC batch. */
export const BLOCK_TIME_SAMPLE = 20;

/**
 * The chain's block time in seconds, estimated from the timestamps of its last
 * {@link BLOCK_TIME_SAMPLE} blocks: the lower quartile of the gaps between them. A chain with a
 * fixed slot (2 s on most L2s, 12 s on Ethereum) shows it in most gaps; whole-second timestamps put
 * a few one second off either way, and a missed slot makes one longer, which the quartile ignores.
 * A chain that mines on demand (a local chain mining each transaction at once, some L2 sequencers)
 * shows bursts of blocks in the same second and reads low: its long gaps while idle are not block
 * times. Several blocks a second (Arbitrum's 0.25 s) read 0. A chain with fewer than
 * two blocks reads 0.
 */
export async function estimateBlockTime(
  publicClient: Pick<PublicClient, "getBlock" | "getBlockNumber">,
  { signal }: { signal?: AbortSignal } = {},
): Promise<number> {
  const latest = await publicClient.getBlockNumber();
  signal?.throwIfAborted();
  const count = Number(latest < BigInt(BLOCK_TIME_SAMPLE) ? latest : BigInt(BLOCK_TIME_SAMPLE));
  if (count < 1) return 0;
  const blocks = await Promise.all(
    Array.from({ length: count + 1 }, (_, i) =>
      publicClient.getBlock({ blockNumber: latest - BigInt(i), includeTransactions: false }),
    ),
  );
  signal?.throwIfAborted();
  const gaps = blocks
    .slice(1)
    .map((block, i) => Math.max(0, Number(blocks[i]!.timestamp - block.timestamp)))
    .sort((a, b) => a - b);
  return gaps[Math.floor((gaps.length - 1) / 4)]!;
}

/**
 * The chain time the next block will most likely have: the pending block's, where the RPC serves
 * one (EDR, anvil and geth do), else the later of the latest block's and the clock's. On a chain
 * that mines on demand the latest block may be minutes old, and a deadline counted from it would
 * have passed before the next block.
 */
export async function nextBlockTime(chain: Pick<ChainClient, "publicClient">): Promise<bigint> {
  const { publicClient } = chain;
  const pending = await publicClient.getBlock({ blockTag: "pending" }).catch(() => undefined);
  if (pending) return pending.timestamp;
  const latest = await publicClient.getBlock();
  const clock = BigInt(Math.floor(Date.now() / 1000));
  return latest.timestamp > clock ? latest.timestamp : clock;
}

const known = new WeakMap<ChainClient, Promise<number>>();

/**
 * The chain's block time in seconds: the client's `blockTimeS` when it was given one (a devnet knows
 * its own), else {@link estimateBlockTime}, read once per client.
 */
export function chainBlockTime(chain: ChainClient, { signal }: { signal?: AbortSignal } = {}): Promise<number> {
  if (chain.blockTimeS !== undefined) return Promise.resolve(chain.blockTimeS);
  let estimate = known.get(chain);
  if (!estimate) {
    estimate = estimateBlockTime(chain.publicClient, signal ? { signal } : {});
    // A failed read is not remembered: the next caller asks again.
    estimate.catch(() => known.delete(chain));
    known.set(chain, estimate);
  }
  return estimate;
}

/**
 * The shortest on-chain heartbeat timeout a lease with heartbeat period `periodS` can keep on a chain
 * with `blockTimeS` blocks. A heartbeat sent when due waits up to one block to be mined, so two
 * heartbeats of a live provider can land `periodS + blockTimeS` apart on chain; the timeout covers
 * two such gaps, so that one late or lost heartbeat never makes an honest provider slashable. On a
 * chain that mines at once this is the lease manager's own rule: at least two periods per timeout.
 */
export function minHeartbeatTimeout(periodS: number, blockTimeS: number): number {
  return 2 * (periodS + blockTimeS);
}

/**
 * Why a heartbeat period and timeout cannot be kept on a chain with `blockTimeS` blocks (see
 * {@link minHeartbeatTimeout}), in words that name the block time; `undefined` when they can.
 *
 * @example
 * heartbeatTimingProblem({ periodS: 2, timeoutS: 10, blockTimeS: 12 });
 * // "a heartbeat timeout of 10 s cannot be kept on a chain with 12 s blocks: …"
 */
export function heartbeatTimingProblem({
  periodS,
  timeoutS,
  blockTimeS,
}: {
  periodS: number;
  timeoutS: number;
  blockTimeS: number;
}): string | undefined {
  const needed = minHeartbeatTimeout(periodS, blockTimeS);
  if (timeoutS >= needed) return undefined;
  return (
    `a heartbeat timeout of ${timeoutS} s cannot be kept on a chain with ${blockTimeS} s blocks: with a ${periodS} s ` +
    `period a heartbeat can land ${periodS + blockTimeS} s after the last, and the timeout must cover two such gaps ` +
    `(at least ${needed} s), or honest providers turn slashable`
  );
}
