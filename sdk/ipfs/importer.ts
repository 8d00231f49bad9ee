import { webcrypto } from "node:crypto";

import { unixfs, type AddOptions } from "@helia/unixfs";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import * as Digest from "multiformats/hashes/digest";
import { sha256 } from "multiformats/hashes/sha2";

import { UserError } from "../errors.ts";
import { fixedSizeChunks, type ByteSource } from "./bytes.ts";
import { BLOCK_SIZE } from "./constants.ts";

/**
 * The parts of the UnixFS import that run per byte, made to keep both cores busy: the importer
 * (ipfs-unixfs-importer) hashes each leaf on the event loop and pulls the next leaf only when a
 * batch of ten is written, so reading, encrypting, hashing and writing took turns.
 */

const { subtle } = webcrypto;

/** Leaves hashed and written at once (the importer's `blockWriteConcurrency`). */
export const LEAF_WRITE_CONCURRENCY = 8;

/** Pieces of the source pulled ahead of the importer, so that the stages before it never wait on it. */
const READ_AHEAD = 4;

type BufferImporter = NonNullable<AddOptions["bufferImporter"]>;

/**
 * The importer's leaf step for raw leaves (CIDv1, sha2-256), with the hash computed by WebCrypto in
 * libuv's thread pool instead of on the event loop, and begun as soon as a leaf arrives rather
 * than when its batch is full. Same CIDs, same blocks as the importer's own.
 */
export const threadPoolBufferImporter: BufferImporter = async function* (file, blockstore) {
  for await (const leaf of file.content) {
    const written = (async () => {
      const digest = new Uint8Array(await subtle.digest("SHA-256", leaf));
      const cid = CID.createV1(raw.code, Digest.create(sha256.code, digest));
      await blockstore.put(cid, leaf);
      return { cid, size: BigInt(leaf.byteLength), block: leaf };
    })();
    written.catch(() => undefined); // awaited by the importer in its turn
    yield () => written;
  }
};

/**
 * Pulls `source` up to `depth` pieces ahead of the consumer, in the background, so that what
 * produces them (reading, encryption) goes on while the consumer waits on something else.
 */
export async function* readAhead<T>(source: AsyncIterable<T>, depth = READ_AHEAD): AsyncGenerator<T> {
  const iterator = source[Symbol.asyncIterator]();
  const queue: Promise<IteratorResult<T>>[] = [];
  let ended = false;
  const pull = (): void => {
    while (!ended && queue.length < depth) {
      const next = queue.length === 0 ? iterator.next() : queue.at(-1)!.then(() => iterator.next());
      next.then(
        (result) => void (result.done && (ended = true)),
        () => void (ended = true),
      );
      queue.push(next);
    }
  };
  try {
    for (;;) {
      pull();
      const result = await queue.shift()!;
      if (result.done) return;
      yield result.value;
    }
  } finally {
    // Let the pulls in flight settle before the source is told to stop: a generator cannot be
    // returned from while it runs.
    await Promise.allSettled(queue);
    await iterator.return?.();
  }
}

/**
 * The chunker for a source whose pieces are the leaves (each 1..{@link BLOCK_SIZE} bytes; empty
 * ones are dropped): no re-cutting, no copying.
 */
export async function* pieceLeaves(source: ByteSource): AsyncGenerator<Uint8Array> {
  for await (const piece of readAhead(toAsync(source))) {
    if (piece.byteLength === 0) continue;
    if (piece.byteLength > BLOCK_SIZE) {
      throw new UserError(`a leaf of ${piece.byteLength} bytes is larger than the block size, ${BLOCK_SIZE}`);
    }
    yield piece;
  }
}

async function* toAsync<T>(source: AsyncIterable<T> | Iterable<T>): AsyncGenerator<T> {
  yield* source;
}

/**
 * How `IpfsNode.add` imports a source: raw leaves under CIDv1, cut into fixed 1 MiB leaves, or with
 * each piece of the source a leaf as it is (`pieces`, for a producer that cuts its output itself).
 */
export function importOptions(leaves: "fixed" | "pieces"): AddOptions {
  return {
    cidVersion: 1,
    rawLeaves: true,
    chunker: leaves === "pieces" ? pieceLeaves : (stream) => readAhead(fixedSizeChunks(stream, BLOCK_SIZE)),
    bufferImporter: threadPoolBufferImporter,
    blockWriteConcurrency: LEAF_WRITE_CONCURRENCY,
  };
}

/**
 * The CID that `IpfsNode.add(pieces, { leaves: "pieces" })` gives, reckoned without storing a block:
 * what names an output small enough to travel in its task's result instead of through IPFS, and
 * what its tenant checks it against.
 */
export async function cidOfPieces(pieces: readonly Uint8Array[]): Promise<CID> {
  const nowhere = {
    put: async (cid: CID) => cid,
    get: () => {
      throw new UserError("nothing is stored while reckoning a CID");
    },
    has: async () => false,
  };
  return unixfs({ blockstore: nowhere }).addByteStream(toAsync(pieces), importOptions("pieces"));
}
