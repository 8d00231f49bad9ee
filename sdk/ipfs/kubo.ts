import { create, type BlockPutOptions, type KuboRPCClient } from "kubo-rpc-client";
import type { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { sha256 } from "multiformats/hashes/sha2";

import { CheckpointUnavailableError, UserError } from "../errors.ts";
import { silentLogger, type Logger } from "../logger.ts";
import { DEFAULT_KUBO_CALL_TIMEOUT_MS, KUBO_PUT_CONCURRENCY } from "./constants.ts";
import { localDagBlocks } from "./dag.ts";
import type { IpfsNode } from "./node.ts";

/**
 * Pinning a checkpoint on an external IPFS node (Kubo) as well, through its RPC API, for users who
 * outgrow the embedded store. It uses the fewest endpoints that make Kubo hold and keep the same
 * CID without Kubo having to reach us over the network:
 *
 * - `POST /api/v0/block/put?cid-codec=<raw|dag-pb>&mhtype=sha2-256` (multipart, one block): for
 *   every block of the DAG, read from our local store, children before parents. Kubo hashes the
 *   block itself and answers its CID, which must equal ours.
 * - `POST /api/v0/pin/add?arg=<root>&recursive=true`: Kubo then finds every block locally.
 *
 * `cid-codec` is Kubo's parameter since 0.13 (the older `format` is deprecated). The tests run
 * against a small HTTP server of their own that implements exactly these two endpoints, because no
 * Kubo binary can be installed where they run.
 */

const CODEC_NAMES = new Map<number, string>([
  [raw.code, "raw"],
  [0x70, "dag-pb"],
]);

export interface PinToKuboParameters {
  /** The Kubo RPC API, e.g. `http://127.0.0.1:5001`, or a client made with kubo-rpc-client's `create`. */
  kubo: string | URL | KuboRPCClient;
  signal?: AbortSignal;
  /** The limit for each RPC call. */
  callTimeoutMs?: number;
  log?: Logger;
}

export interface PinToKuboReturnType {
  blocks: number;
  bytes: number;
}

/**
 * Copies the DAG under `cid` from the local store to a Kubo node and pins it there recursively.
 * The DAG must be in the local store (publish or fetch it first).
 *
 * @example
 * await pinToKubo(ipfs, cid, { kubo: "http://127.0.0.1:5001", signal: AbortSignal.timeout(600_000) });
 */
export async function pinToKubo(
  ipfs: IpfsNode,
  cid: CID,
  { kubo, signal, callTimeoutMs = DEFAULT_KUBO_CALL_TIMEOUT_MS, log = silentLogger }: PinToKuboParameters,
): Promise<PinToKuboReturnType> {
  const client = typeof kubo === "string" || kubo instanceof URL ? create({ url: kubo }) : kubo;
  const where = typeof kubo === "string" || kubo instanceof URL ? String(kubo) : "the Kubo node";
  const callSignal = (): AbortSignal =>
    AbortSignal.any([AbortSignal.timeout(callTimeoutMs), ...(signal ? [signal] : [])]);
  const call = async <T>(what: string, run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (cause) {
      if (signal?.aborted) throw signal.reason;
      throw new UserError(`${where} failed to ${what}`, { cause });
    }
  };

  const started = performance.now();
  let blocks = 0;
  let bytes = 0;
  const inFlight = new Set<Promise<void>>();
  const failures: unknown[] = [];
  const put = async (block: { cid: CID; bytes: Uint8Array }): Promise<void> => {
    const codec = CODEC_NAMES.get(block.cid.code);
    if (codec === undefined || block.cid.multihash.code !== sha256.code) {
      throw new UserError(`cannot copy ${block.cid} to Kubo: only raw and dag-pb blocks hashed with sha2-256`);
    }
    // `cid-codec` is not in kubo-rpc-client's types; it sends every option as a query parameter.
    const options = { signal: callSignal(), mhtype: "sha2-256", "cid-codec": codec } as BlockPutOptions;
    const stored = await call(`store block ${block.cid}`, () => client.block.put(block.bytes, options));
    if (!stored.equals(block.cid)) {
      throw new UserError(`${where} stored block ${block.cid} under another CID, ${stored}`);
    }
    blocks++;
    bytes += block.bytes.byteLength;
  };

  try {
    for await (const block of localDagBlocks(ipfs.helia, cid, signal)) {
      if (failures.length > 0) break;
      // A parent waits for its children: Kubo then never holds a block whose links are missing.
      const isParent = block.cid.code !== raw.code;
      while (inFlight.size >= KUBO_PUT_CONCURRENCY || (isParent && inFlight.size > 0)) await Promise.race(inFlight);
      const task: Promise<void> = put(block)
        .catch((error: unknown) => void failures.push(error))
        .finally(() => inFlight.delete(task));
      inFlight.add(task);
    }
    await Promise.all(inFlight);
  } catch (error) {
    await Promise.allSettled(inFlight);
    if (error instanceof CheckpointUnavailableError) {
      throw new CheckpointUnavailableError(`cannot copy ${cid} to Kubo: not all of it is in the local store`, {
        cause: error,
      });
    }
    throw error;
  }
  if (failures.length > 0) throw failures[0];

  const pinned = await call(`pin ${cid}`, () => client.pin.add(cid, { recursive: true, signal: callSignal() }));
  if (!pinned.equals(cid)) throw new UserError(`${where} pinned ${pinned} instead of ${cid}`);
  log.info("pinned on Kubo", { cid: cid.toString(), blocks, bytes, ms: Math.round(performance.now() - started) });
  return { blocks, bytes };
}
