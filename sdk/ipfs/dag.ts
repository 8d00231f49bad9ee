import type { GraphNode, GraphWalkerFactory, Helia, WalkOptions } from "helia";
import type { BlockView } from "multiformats";
import { createUnsafe } from "multiformats/block";
import type { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";

import { CheckpointUnavailableError } from "../errors.ts";

/**
 * Walking a DAG in the local blockstore only (never the network): to tell whether all of it is
 * here, and to export its blocks to another IPFS node.
 */

export interface LocalBlock {
  cid: CID;
  bytes: Uint8Array;
}

const missing = (cid: CID): CheckpointUnavailableError =>
  new CheckpointUnavailableError(`block ${cid} is not in the local store`);

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const bytes = new Uint8Array(parts.reduce((n, part) => n + part.byteLength, 0));
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.byteLength;
  }
  return bytes;
}

async function readLocal(helia: Helia, cid: CID, signal: AbortSignal | undefined): Promise<Uint8Array> {
  if (!(await helia.blockstore.has(cid, { signal }))) throw missing(cid);
  const parts: Uint8Array[] = [];
  for await (const part of helia.blockstore.get(cid, { offline: true, signal })) parts.push(part);
  return concat(parts);
}

async function links(helia: Helia, cid: CID, bytes: Uint8Array): Promise<CID[]> {
  const codec = await helia.getCodec(cid.code);
  return [...createUnsafe({ cid, bytes, codec }).links()].map(([, link]) => link);
}

/** Whether every block of the DAG under `root` is in the local blockstore. Reads only inner nodes. */
export async function hasLocalDag(helia: Helia, root: CID, signal?: AbortSignal): Promise<boolean> {
  const pending = [root];
  const seen = new Set<string>();
  for (let cid = pending.pop(); cid !== undefined; cid = pending.pop()) {
    signal?.throwIfAborted();
    const key = cid.toString();
    if (seen.has(key)) continue;
    seen.add(key);
    if (!(await helia.blockstore.has(cid, { signal }))) return false;
    if (cid.code === raw.code) continue; // a raw leaf links to nothing: no need to read it
    pending.push(...(await links(helia, cid, await readLocal(helia, cid, signal))));
  }
  return true;
}

/**
 * The blocks of the DAG under `root`, children before their parents (so a receiver that checks
 * links as blocks arrive never sees a dangling one), each block once. Throws
 * CheckpointUnavailableError if one is missing.
 */
export async function* localDagBlocks(helia: Helia, root: CID, signal?: AbortSignal): AsyncGenerator<LocalBlock> {
  const seen = new Set<string>();
  async function* visit(cid: CID): AsyncGenerator<LocalBlock> {
    signal?.throwIfAborted();
    const key = cid.toString();
    if (seen.has(key)) return;
    seen.add(key);
    const bytes = await readLocal(helia, cid, signal);
    if (cid.code !== raw.code) for (const link of await links(helia, cid, bytes)) yield* visit(link);
    yield { cid, bytes };
  }
  yield* visit(root);
}

/**
 * A graph walker for Helia's pins that reads only inner nodes: a raw leaf links to nothing, so its
 * 1 MiB need not come off the disk to learn that. Helia's `pins.add`/`pins.rm` use nothing of a
 * walked node but `block.cid`, so a leaf is handed over with empty bytes. Never use it where
 * block contents matter. Leaves are still checked to exist (`has`), so a pin never covers a hole.
 */
export const leafSkippingWalker: GraphWalkerFactory = ({ blockstore, getCodec }) => ({
  async *walk<T>(root: CID, options: WalkOptions<T> = {}): AsyncGenerator<GraphNode<T>> {
    const maxDepth = options.depth ?? Infinity;
    const pending: Array<{ cid: CID; depth: number; path: CID[] }> = [{ cid: root, depth: 0, path: [root] }];
    for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
      options.signal?.throwIfAborted();
      const { cid, depth, path } = next;
      if (cid.code === raw.code) {
        if (!(await blockstore.has(cid, options))) throw missing(cid);
        yield { block: createUnsafe({ cid, bytes: new Uint8Array(0), codec: raw }) as BlockView<T>, depth, path };
        continue;
      }
      const parts: Uint8Array[] = [];
      for await (const part of blockstore.get(cid, options)) parts.push(part);
      const block = createUnsafe({ cid, bytes: concat(parts), codec: await getCodec(cid.code) }) as BlockView<T>;
      if (depth < maxDepth) {
        const children = [...block.links()].map(([, link]) => link).reverse();
        for (const child of children) pending.push({ cid: child, depth: depth + 1, path: [...path, child] });
      }
      yield { block, depth, path };
    }
  },
});
