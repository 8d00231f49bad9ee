/**
 * The explorer's indexer: it follows a Baton deployment's chain and keeps every event of its
 * ProviderRegistry and LeaseManager in SQL (sdk/indexer/store.ts: an embedded SQLite file or a
 * Postgres database; the indexer is the same over both).
 *
 * - It reads at a confirmation depth: blocks younger than `confirmations` are not indexed yet, so a
 *   reorg no deeper than that never reaches the index.
 * - It reads events in pages of block ranges (sdk/chain/logs.ts: what public RPC nodes accept, halved
 *   when a node refuses) and commits each page with its cursor, so a restart resumes at the last page.
 * - It remembers the hash of each block it read events from and of each page's last block; before
 *   each sync it checks the cursor's block against the chain, and on a mismatch (a reorg deeper than
 *   the confirmation depth) walks back to the newest remembered block the chain still has, deletes
 *   what lies above it, and reads again from there.
 */
import type { Address, Hex, Log, PublicClient } from "viem";

import { DEFAULT_MAX_LOG_RANGE, scanLogs } from "../chain/logs.ts";
import { confirmedBlockNumber } from "../chain/confirmations.ts";
import type { Deployment } from "../chain/deployments.ts";
import { leaseManagerAbi, providerRegistryAbi } from "../generated/abis.ts";
import type { Cursor, IndexedEvent, IndexStore } from "./store.ts";

/** How often a watching indexer looks for new blocks: about a block time of a fast L2. */
export const DEFAULT_POLL_INTERVAL_MS = 1_000;
/** Blocks whose timestamps are fetched at once: enough to hide a public node's latency, few enough not to be rate limited. */
const BLOCK_FETCH_CONCURRENCY = 8;

export interface CreateIndexerParameters {
  publicClient: PublicClient;
  deployment: Deployment;
  /** The index to write to (see `openIndexStore`); its opener closes it. */
  store: IndexStore;
  /** Blocks below the head before a block is indexed. Default 0 (a local chain). */
  confirmations?: number;
  /** The widest block range one event read asks for. Default {@link DEFAULT_MAX_LOG_RANGE}. */
  maxRange?: bigint;
}

/** What one sync did. */
export interface SyncResult {
  /** The block the index holds everything up to. */
  blockNumber: bigint;
  /** Events written. */
  events: number;
  /** Blocks forgotten because a reorg replaced them (0 when none). */
  rolledBack: number;
}

export interface SyncOptions {
  signal?: AbortSignal;
  /** Called after each committed page, with the events it held. */
  onPage?: (page: { toBlock: bigint; events: readonly IndexedEvent[] }) => void;
}

export interface WatchOptions extends SyncOptions {
  pollIntervalMs?: number;
  onSynced?: (result: SyncResult) => void;
  onError: (error: unknown) => void;
}

export interface Indexer {
  readonly store: IndexStore;
  /** Indexes up to the confirmed head, undoing a reorg first if the chain changed under the index. */
  sync(options?: SyncOptions): Promise<SyncResult>;
  /**
   * Syncs now and then every `pollIntervalMs`; returns the function that stops it, which resolves
   * once a sync under way has ended (its page committed or abandoned): the store can be closed then.
   */
  watch(options: WatchOptions): () => Promise<void>;
}

type Contract = IndexedEvent["contract"];
type DecodedLog = Log<bigint, number, false> & { eventName: string; args: Record<string, unknown> };

/**
 * An indexer of `deployment`'s events into `store`.
 *
 * @example
 * const store = await openIndexStore({ file: "explorer.db" }, deployment);
 * const indexer = createIndexer({ publicClient, deployment, store, confirmations: 12 });
 * const unwatch = indexer.watch({ onError: console.error });
 */
export function createIndexer({
  publicClient,
  deployment,
  store,
  confirmations = 0,
  maxRange = DEFAULT_MAX_LOG_RANGE,
}: CreateIndexerParameters): Indexer {
  const sources: { contract: Contract; address: Address; abi: typeof leaseManagerAbi | typeof providerRegistryAbi }[] =
    [
      { contract: "ProviderRegistry", address: deployment.contracts.providerRegistry, abi: providerRegistryAbi },
      { contract: "LeaseManager", address: deployment.contracts.leaseManager, abi: leaseManagerAbi },
    ];

  /** Undoes a reorg under the cursor, if any; returns how many blocks were forgotten. */
  async function undoReorg(cursor: Cursor): Promise<number> {
    if ((await blockHash(cursor.blockNumber)) === cursor.blockHash) return 0;
    for (const { number, hash } of await store.rememberedBlocks()) {
      if ((await blockHash(number)) === hash) {
        await store.rollBack({ blockNumber: number, blockHash: hash });
        return cursor.blockNumber - number;
      }
    }
    await store.reset();
    return cursor.blockNumber - Number(deployment.deployBlock) + 1;
  }

  async function blockHash(number: number): Promise<string | undefined> {
    const block = await publicClient.getBlock({ blockNumber: BigInt(number) }).catch((error: unknown) => {
      // A block above the chain's head (a reorg to a shorter chain) has no hash.
      if (error instanceof Error && error.name === "BlockNotFoundError") return undefined;
      throw error;
    });
    return block?.hash.toLowerCase();
  }

  async function readPage(fromBlock: bigint, toBlock: bigint, signal?: AbortSignal): Promise<IndexedEvent[]> {
    const logs: { contract: Contract; log: DecodedLog }[] = [];
    for (const { contract, address, abi } of sources) {
      const found = await scanLogs(
        (range) =>
          publicClient.getContractEvents({ address, abi, ...range, strict: true }) as unknown as Promise<DecodedLog[]>,
        { what: `${contract} events`, fromBlock, toBlock, maxRange, signal },
      );
      for (const log of found) logs.push({ contract, log });
    }
    logs.sort((a, b) => Number(a.log.blockNumber - b.log.blockNumber) || a.log.logIndex - b.log.logIndex);
    const times = await blockTimes([...new Set(logs.map(({ log }) => log.blockNumber))], signal);
    return logs.map(({ contract, log }) => toIndexed(contract, log, times.get(log.blockNumber)!));
  }

  async function blockTimes(numbers: bigint[], signal?: AbortSignal): Promise<Map<bigint, number>> {
    const times = new Map<bigint, number>();
    for (let i = 0; i < numbers.length; i += BLOCK_FETCH_CONCURRENCY) {
      signal?.throwIfAborted();
      const blocks = await Promise.all(
        numbers.slice(i, i + BLOCK_FETCH_CONCURRENCY).map((blockNumber) => publicClient.getBlock({ blockNumber })),
      );
      for (const block of blocks) times.set(block.number, Number(block.timestamp));
    }
    return times;
  }

  async function sync({ signal, onPage }: SyncOptions = {}): Promise<SyncResult> {
    let rolledBack = 0;
    const before = await store.cursor();
    if (before !== undefined) rolledBack = await undoReorg(before);
    // Uncached: a head remembered from before a reorg to a shorter chain names blocks that are gone.
    const head = await publicClient.getBlockNumber({ cacheTime: 0 });
    const target = confirmedBlockNumber(head, confirmations);
    const start = await store.cursor();
    let next = start === undefined ? deployment.deployBlock : BigInt(start.blockNumber) + 1n;
    let written = 0;
    while (next <= target) {
      signal?.throwIfAborted();
      const toBlock = next + maxRange - 1n < target ? next + maxRange - 1n : target;
      const events = await readPage(next, toBlock, signal);
      const end = await publicClient.getBlock({ blockNumber: toBlock });
      const blocks = new Map(events.map((e) => [e.blockNumber, e.blockHash]));
      await store.writePage(events, blocks, { blockNumber: Number(toBlock), blockHash: end.hash.toLowerCase() });
      written += events.length;
      onPage?.({ toBlock, events });
      next = toBlock + 1n;
    }
    const cursor = await store.cursor();
    return {
      blockNumber: cursor === undefined ? deployment.deployBlock - 1n : BigInt(cursor.blockNumber),
      events: written,
      rolledBack,
    };
  }

  function watch({ pollIntervalMs = DEFAULT_POLL_INTERVAL_MS, onSynced, onError, signal, onPage }: WatchOptions) {
    const stop = new AbortController();
    const combined = signal === undefined ? stop.signal : AbortSignal.any([signal, stop.signal]);
    const loop = (async () => {
      while (!combined.aborted) {
        try {
          // Not `onSynced?.(await sync(…))`: without an `onSynced`, that skips the sync itself.
          const result = await sync({ signal: combined, onPage });
          onSynced?.(result);
        } catch (error) {
          if (!combined.aborted) onError(error);
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, pollIntervalMs);
          combined.addEventListener(
            "abort",
            () => {
              clearTimeout(timer);
              resolve();
            },
            { once: true },
          );
        });
      }
    })();
    return () => {
      stop.abort();
      return loop;
    };
  }

  return { store, sync, watch };
}

/** A decoded log as a row: bigints as decimal strings, addresses and hashes lower case. */
function toIndexed(contract: Contract, log: DecodedLog, timestamp: number): IndexedEvent {
  const args = plain(log.args) as Record<string, unknown>;
  const leaseId = log.args.leaseId;
  const provider = log.args.provider;
  const jobId = log.args.jobId;
  return {
    blockNumber: Number(log.blockNumber),
    logIndex: log.logIndex,
    blockHash: log.blockHash.toLowerCase(),
    txHash: log.transactionHash.toLowerCase(),
    timestamp,
    contract,
    name: log.eventName,
    leaseId: typeof leaseId === "bigint" ? leaseId.toString() : null,
    provider: typeof provider === "string" ? provider.toLowerCase() : null,
    jobId: typeof jobId === "string" ? (jobId as Hex).toLowerCase() : null,
    args,
    topics: log.topics,
    data: log.data,
  };
}

function plain(value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "string") return /^0x[0-9a-fA-F]+$/.test(value) ? value.toLowerCase() : value;
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}
