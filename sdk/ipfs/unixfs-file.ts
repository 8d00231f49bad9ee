import * as dagPb from "@ipld/dag-pb";
import { UnixFS } from "ipfs-unixfs";
import type { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { identity } from "multiformats/hashes/identity";

import { CheckpointCorruptError, CheckpointTooLargeError } from "../errors.ts";

/**
 * Reads a UnixFS file block by block in stream order (block-stream.ts): depth-first, a node's
 * own data before its children's, so the bytes come out in file order as the blocks arrive.
 * `getBlock(cid, first)` returns a block's bytes, `first` telling whether this is the block's
 * first occurrence in the file (the one a stream sends) or a repeat (already fetched and stored).
 *
 * It checks what the UnixFS exporter checks: only files (dag-pb `file`/`raw` nodes and raw leaves),
 * each child as long as its parent declares, the whole as long as the root declares, and no more
 * than `maxBytes` (refused from the root's declared size, before any leaf is asked for).
 */
export async function* readUnixfsFile(
  root: CID,
  getBlock: (cid: CID, first: boolean) => Promise<Uint8Array>,
  {
    maxBytes,
    upcoming,
    lookAhead = 4,
  }: {
    maxBytes?: number;
    /**
     * Told, before each block is asked for, which blocks come right after it (up to `lookAhead`
     * of them, in order): a reader that can begin them early (the local store) does.
     */
    upcoming?: (cids: CID[]) => void;
    lookAhead?: number;
  } = {},
): AsyncGenerator<Uint8Array> {
  const seen = new Set<string>();
  const stack: Array<{ cid: CID; size: bigint | undefined }> = [{ cid: root, size: undefined }];
  let total = 0;
  const corrupt = (why: string): CheckpointCorruptError =>
    new CheckpointCorruptError(`${root} is not a well-formed UnixFS file: ${why}`);
  for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
    const { cid, size } = item;
    let bytes: Uint8Array;
    if (cid.multihash.code === identity.code) bytes = cid.multihash.digest;
    else {
      const key = cid.toString();
      const first = !seen.has(key);
      seen.add(key);
      if (upcoming !== undefined && stack.length > 0) {
        upcoming(
          stack
            .slice(-lookAhead)
            .reverse()
            .map((next) => next.cid),
        );
      }
      bytes = await getBlock(cid, first);
    }
    if (cid.code === raw.code) {
      if (size !== undefined && BigInt(bytes.byteLength) !== size) {
        throw corrupt(`leaf ${cid} holds ${bytes.byteLength} bytes where its parent declares ${size}`);
      }
      total += bytes.byteLength;
      if (maxBytes !== undefined && total > maxBytes) {
        throw new CheckpointTooLargeError(`${root} is larger than ${maxBytes} bytes`);
      }
      if (bytes.byteLength > 0) yield bytes;
      continue;
    }
    if (cid.code !== dagPb.code) throw corrupt(`block ${cid} is neither dag-pb nor raw`);
    let node: dagPb.PBNode;
    let unixfs: UnixFS;
    try {
      node = dagPb.decode(bytes);
      if (node.Data === undefined) throw new Error("no UnixFS data");
      unixfs = UnixFS.unmarshal(node.Data);
    } catch (cause) {
      throw new CheckpointCorruptError(`${root} is not a well-formed UnixFS file: block ${cid} does not decode`, {
        cause,
      });
    }
    if (unixfs.type !== "file" && unixfs.type !== "raw") {
      throw new CheckpointCorruptError(`${root} is not a file: ${cid} is a UnixFS ${unixfs.type}`);
    }
    const fileSize = unixfs.fileSize();
    if (size === undefined) {
      // The root: refuse on its declared size, before fetching a single leaf.
      if (maxBytes !== undefined && fileSize > BigInt(maxBytes)) {
        throw new CheckpointTooLargeError(`${root} is ${fileSize} bytes, more than ${maxBytes}`);
      }
    } else if (fileSize !== size) {
      throw corrupt(`node ${cid} declares ${fileSize} bytes where its parent declares ${size}`);
    }
    if (node.Links.length !== unixfs.blockSizes.length) {
      throw corrupt(`node ${cid} has ${node.Links.length} links but ${unixfs.blockSizes.length} block sizes`);
    }
    const data = unixfs.data ?? new Uint8Array(0);
    const declared = unixfs.blockSizes.reduce((sum, n) => sum + n, BigInt(data.byteLength));
    if (node.Links.length > 0 && declared !== fileSize) {
      throw corrupt(`node ${cid}'s block sizes add up to ${declared}, not ${fileSize}`);
    }
    if (node.Links.length === 0 && BigInt(data.byteLength) !== fileSize) {
      throw corrupt(`node ${cid} holds ${data.byteLength} bytes but declares ${fileSize}`);
    }
    if (data.byteLength > 0) {
      total += data.byteLength;
      if (maxBytes !== undefined && total > maxBytes) {
        throw new CheckpointTooLargeError(`${root} is larger than ${maxBytes} bytes`);
      }
      yield data;
    }
    for (let i = node.Links.length - 1; i >= 0; i--) {
      stack.push({ cid: node.Links[i]!.Hash, size: unixfs.blockSizes[i]! });
    }
  }
}
