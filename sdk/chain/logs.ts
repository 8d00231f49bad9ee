/**
 * Event logs read in pages of block ranges. Public RPC nodes refuse `eth_getLogs` over a wide range
 * (10,000 blocks is common; some allow 2,000, some cap the number of results instead), so a scan
 * from a deployment's block to today is a series of pages: each page is retried on its own when the
 * node fails (a scan resumes where it stopped, not from the start), a page the node finds too large
 * is halved, and progress is reported after each page.
 */
import { BaseError as ViemBaseError } from "viem";

import { ChainError, walk } from "../errors.ts";
import { withRetry } from "../utils/retry.ts";

/** The widest `eth_getLogs` range a scan asks for unless told otherwise: what public RPC nodes commonly accept. */
export const DEFAULT_MAX_LOG_RANGE = 10_000n;

/** Tries of one page before a scan gives up (the transport already retries each request twice). */
const PAGE_ATTEMPTS = 5;

export interface BlockRange {
  fromBlock: bigint;
  toBlock: bigint;
}

/** Where a scan stands, after each page. */
export interface LogScanProgress extends BlockRange {
  /** What the scan is reading, e.g. an event name. */
  what: string;
  /** Blocks of the range read so far. */
  scanned: bigint;
  /** Blocks in the range. */
  total: bigint;
}

export interface LogScanOptions extends BlockRange {
  /** What is read, for progress and errors. */
  what: string;
  /** The widest range one request asks for. Default {@link DEFAULT_MAX_LOG_RANGE}. */
  maxRange?: bigint;
  signal?: AbortSignal;
  onProgress?: (progress: LogScanProgress) => void;
}

/** How public RPC nodes word a refusal of a wide range or of too many results. */
const RANGE_REFUSAL =
  /block range|range (is )?too (large|wide|big)|max(imum)? (block )?range|range limit|too many (results|logs)|more than [\d,]+ (results|logs)|response size/i;

/**
 * Whether an RPC error says the range (or the number of results) was too large: words public nodes
 * use, JSON-RPC error -32005 ("limit exceeded") unless it is about the rate of requests, which a
 * pause cures and smaller pages would make worse, or a response over viem's size limit (10 MB: a
 * node that caps neither range nor results, e.g. a local chain, answers a busy range with more).
 */
export function isLogRangeError(error: unknown): boolean {
  if (walk(error, (e) => e instanceof Error && RANGE_REFUSAL.test(e.message)) !== undefined) return true;
  if (walk(error, (e) => e instanceof Error && e.name === "ResponseBodyTooLargeError") !== undefined) return true;
  const limited = walk(error, (e) => e instanceof ViemBaseError && (e as { code?: unknown }).code === -32005);
  return limited instanceof Error && !/rate|request/i.test(limited.message);
}

/**
 * Reads `read` over `fromBlock`…`toBlock` in ascending pages of at most `maxRange` blocks and
 * returns the results in chain order.
 *
 * @example
 * const logs = await scanLogs((range) => publicClient.getContractEvents({ ...lm, eventName, ...range }), {
 *   what: "LeaseOpened", fromBlock: deployment.deployBlock, toBlock: head,
 * });
 */
export async function scanLogs<T>(read: (range: BlockRange) => Promise<T[]>, options: LogScanOptions): Promise<T[]> {
  const found: T[] = [];
  await scan(read, options, "ascending", (page) => {
    found.push(...page);
    return false;
  });
  return found;
}

/**
 * The last result of `read` over the range, reading pages from the newest block back: what finds a
 * recent event (a lease's slash) in one request, however old the deployment.
 */
export async function findLastLog<T>(
  read: (range: BlockRange) => Promise<T[]>,
  options: LogScanOptions,
): Promise<T | undefined> {
  let last: T | undefined;
  await scan(read, options, "descending", (page) => {
    last = page.at(-1);
    return last !== undefined;
  });
  return last;
}

async function scan<T>(
  read: (range: BlockRange) => Promise<T[]>,
  { what, fromBlock, toBlock, maxRange = DEFAULT_MAX_LOG_RANGE, signal, onProgress }: LogScanOptions,
  direction: "ascending" | "descending",
  onPage: (page: T[]) => boolean,
): Promise<void> {
  const total = toBlock >= fromBlock ? toBlock - fromBlock + 1n : 0n;
  let width = maxRange;
  let scanned = 0n;
  while (scanned < total) {
    signal?.throwIfAborted();
    const size = width < total - scanned ? width : total - scanned;
    const range: BlockRange =
      direction === "ascending"
        ? { fromBlock: fromBlock + scanned, toBlock: fromBlock + scanned + size - 1n }
        : { fromBlock: toBlock - scanned - size + 1n, toBlock: toBlock - scanned };
    let page: T[];
    try {
      page = await withRetry(() => read(range), {
        attempts: PAGE_ATTEMPTS,
        signal,
        shouldRetry: (error) => !isLogRangeError(error),
      });
    } catch (error) {
      if (signal?.aborted || !isLogRangeError(error)) {
        throw new ChainError(`reading ${what} in blocks ${range.fromBlock}–${range.toBlock} failed`, { cause: error });
      }
      if (size === 1n) {
        throw new ChainError(`the RPC node refuses to return ${what} even for block ${range.fromBlock} alone`, {
          cause: error,
        });
      }
      // The node's limit is below ours: halve the pages from here on.
      width = size / 2n;
      continue;
    }
    scanned += size;
    onProgress?.({ what, fromBlock, toBlock, scanned, total });
    if (onPage(page)) return;
  }
}
