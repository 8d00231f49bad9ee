import { createHash, randomBytes } from "node:crypto";
import { lstat, rename, rm } from "node:fs/promises";
import path from "node:path";

import type { Multiaddr } from "@multiformats/multiaddr";
import type { CID } from "multiformats/cid";

import { CheckpointCorruptError, UserError } from "../errors.ts";
import { silentLogger, type Logger } from "../logger.ts";
import { Lending } from "./bytes.ts";
import { ENCRYPTION_CHUNK_SIZE } from "./constants.ts";
import { decryptStream, encryptStream } from "./crypto.ts";
import { cidOfPieces } from "./importer.ts";
import type { FetchOptions, IpfsNode } from "./node.ts";
import { pack, unpack } from "./pack.ts";

export interface PublishCheckpointParameters {
  /** The most bytes the packed checkpoint may take. */
  maxBytes: number;
  /** The most files and directories. */
  maxFiles?: number;
  /**
   * A checkpoint whose ciphertext comes to at most this many bytes is not added to the store: its
   * pieces come back (`inline`), with the CID that adding them would give, to travel in a message.
   */
  inlineUpTo?: number;
  signal?: AbortSignal;
  log?: Logger;
}

export interface PublishCheckpointReturnType {
  cid: CID;
  /** Ciphertext bytes: what peers fetch and stores hold. */
  size: number;
  /** Hex SHA-256 of the plaintext pack, to announce with the CID so a restore can check it. */
  plaintextSha256: string;
  /** Regular files in the checkpoint. */
  files: number;
  /** Its ciphertext, piece by piece, when it was small enough not to be added (see `inlineUpTo`). */
  inline?: Uint8Array[];
}

/**
 * Packs a committed checkpoint directory, encrypts it with the job key, adds it to the local IPFS
 * store and pins it, streaming end to end (one chunk of the checkpoint in memory at a time).
 *
 * @example
 * const { cid, plaintextSha256 } = await publishCheckpoint(ipfs, jobKey, "ckpt/0007", { maxBytes: 8 * 2 ** 30 });
 */
export async function publishCheckpoint(
  ipfs: IpfsNode,
  key: Uint8Array,
  dir: string,
  { maxBytes, maxFiles, inlineUpTo, signal, log = silentLogger }: PublishCheckpointParameters,
): Promise<PublishCheckpointReturnType> {
  const started = performance.now();
  // Pieces of exactly one encryption chunk: the file data is read straight into them, each is
  // sealed into exactly one 1 MiB leaf, and nothing is copied or re-cut on the way. The pieces are
  // lent to the encryption, so that a few buffers carry the whole checkpoint.
  const lending = new Lending();
  const packed = await pack(dir, { maxBytes, maxFiles, signal, pieceSize: ENCRYPTION_CHUNK_SIZE, lending });
  const sealed = encryptStream(key, packed.stream, { lending })[Symbol.asyncIterator]();
  // Read up to `inlineUpTo` bytes ahead: a checkpoint that ends within them is not added.
  const head: Uint8Array[] = [];
  let size = 0;
  let ended = false;
  while (inlineUpTo !== undefined && size <= inlineUpTo && !ended) {
    const next = await sealed.next();
    if (next.done) ended = true;
    else {
      head.push(next.value);
      size += next.value.byteLength;
    }
  }
  const pieces = async function* (): AsyncGenerator<Uint8Array> {
    yield* head;
    for (let next = await sealed.next(); !next.done; next = await sealed.next()) {
      size += next.value.byteLength;
      yield next.value;
    }
  };
  const inline = ended ? head : undefined;
  const cid = inline ? await cidOfPieces(inline) : await ipfs.add(pieces(), { signal, pin: true, leaves: "pieces" });
  const result = { cid, size, plaintextSha256: packed.sha256(), files: packed.files, ...(inline ? { inline } : {}) };
  log.info(inline ? "checkpoint sealed to send inline" : "checkpoint published", {
    cid: cid.toString(),
    size,
    files: packed.files,
    ms: Math.round(performance.now() - started),
  });
  return result;
}

export interface RestoreCheckpointParameters {
  /** The plaintext SHA-256 announced with the CID ({@link PublishCheckpointReturnType}). */
  expectedSha256: string;
  /** The most ciphertext (and so plaintext) bytes to accept. */
  maxBytes: number;
  maxFiles?: number;
  signal?: AbortSignal;
  /** Peers known to hold it (full multiaddrs with `/p2p/<id>`). */
  providers?: Array<Multiaddr | string>;
  /** The longest wait for the next block; see {@link FetchOptions}. */
  stallTimeoutMs?: number;
  /** How to fetch what is not here; see {@link FetchOptions}. Default: the block stream, then bitswap. */
  via?: FetchOptions["via"];
  /** Also pin the fetched checkpoint in the local store (once it verified). Default: false. */
  pin?: boolean;
  /**
   * Its ciphertext at hand, piece by piece (one sent inline, see `PublishCheckpointParameters.inlineUpTo`):
   * checked against the CID and unpacked, with nothing fetched or stored.
   */
  pieces?: readonly Uint8Array[];
  log?: Logger;
}

export interface RestoreCheckpointReturnType {
  files: number;
  /** Plaintext pack bytes. */
  bytes: number;
  sha256: string;
}

/**
 * Fetches a checkpoint (from the local store, else from `providers` or connected peers), decrypts
 * it, checks its digest and unpacks it into `targetDir`, streaming end to end. It unpacks into a
 * temporary directory beside `targetDir` and renames it into place only once everything verified,
 * so a failure leaves no `targetDir` behind. `targetDir` must not exist.
 *
 * @example
 * await restoreCheckpoint(ipfs, jobKey, cid, process.env.BATON_RESUME_DIR!, {
 *   expectedSha256, maxBytes: 8 * 2 ** 30, providers: [tenantAddress], signal: AbortSignal.timeout(600_000),
 * });
 */
export async function restoreCheckpoint(
  ipfs: IpfsNode,
  key: Uint8Array,
  cid: CID,
  targetDir: string,
  {
    expectedSha256,
    maxBytes,
    maxFiles,
    signal,
    providers,
    stallTimeoutMs,
    via,
    pin = false,
    pieces,
    log = silentLogger,
  }: RestoreCheckpointParameters,
): Promise<RestoreCheckpointReturnType> {
  if (!/^[0-9a-f]{64}$/.test(expectedSha256)) throw new UserError("expectedSha256 must be 64 lowercase hex digits");
  if (pin && pieces) throw new UserError("pieces at hand are not stored, so cannot be pinned");
  if (await exists(targetDir)) throw new UserError(`the restore target already exists: ${targetDir}`);
  const started = performance.now();
  const partial = path.join(
    path.dirname(targetDir),
    `.${path.basename(targetDir)}.partial-${randomBytes(6).toString("hex")}`,
  );
  const run = async (): Promise<RestoreCheckpointReturnType> => {
    if (pieces) {
      const named = await cidOfPieces(pieces);
      if (!named.equals(cid)) {
        throw new CheckpointCorruptError(`the bytes sent for ${cid} are not it`, { details: `they make ${named}` });
      }
    }
    const lending = new Lending();
    const fetched =
      pieces ?? ipfs.cat(cid, { signal, providers, stallTimeoutMs, maxBytes, lending, ...(via ? { via } : {}) });
    const result = await unpack(decryptStream(key, fetched, { lending }), partial, { maxBytes, maxFiles, signal });
    if (result.sha256 !== expectedSha256) {
      throw new CheckpointCorruptError(`checkpoint ${cid} does not match its announced digest`, {
        details: `expected ${expectedSha256}, got ${result.sha256}`,
      });
    }
    if (pin) await ipfs.pin(cid, { signal });
    try {
      await rename(partial, targetDir);
    } catch (cause) {
      throw new UserError(`cannot move the restored checkpoint into ${targetDir}`, { cause });
    }
    log.info("checkpoint restored", {
      cid: cid.toString(),
      bytes: result.bytes,
      files: result.files,
      ms: Math.round(performance.now() - started),
    });
    return { files: result.files, bytes: result.bytes, sha256: result.sha256 };
  };
  try {
    // Pinning what was fetched: keep gc away until the pin is in.
    return await (pin ? ipfs.withGcPaused(run) : run());
  } finally {
    await rm(partial, { recursive: true, force: true });
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

export interface VerifyCheckpointParameters {
  expectedSha256: string;
  maxBytes: number;
  providers?: Array<Multiaddr | string>;
  stallTimeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Makes a checkpoint *safe* for its tenant: fetches it into the local store, checking as it comes
 * that it decrypts with the job key (every chunk authenticated) to the announced plaintext digest,
 * without writing the plaintext anywhere, and pins it once it passed. One pass: the blocks are
 * verified against their CIDs, stored and decrypted as they arrive. A checkpoint that fails is
 * never pinned (its blocks go at the next gc).
 *
 * @throws {CheckpointCorruptError}, {CheckpointKeyError}, {CheckpointTooLargeError} or
 * {CheckpointUnavailableError}, by what went wrong.
 * @example
 * await verifyCheckpoint(ipfs, jobKey, cid, { expectedSha256, maxBytes: 8 * 2 ** 30, providers });
 */
export async function verifyCheckpoint(
  ipfs: IpfsNode,
  key: Uint8Array,
  cid: CID,
  { expectedSha256, maxBytes, providers, stallTimeoutMs, signal }: VerifyCheckpointParameters,
): Promise<{ bytes: number }> {
  // Fetched, then pinned: keep gc away until the pin is in.
  return ipfs.withGcPaused(async () => {
    let bytes = 0;
    const lending = new Lending();
    const fetched = async function* (): AsyncGenerator<Uint8Array> {
      for await (const chunk of ipfs.cat(cid, { signal, providers, stallTimeoutMs, maxBytes, lending })) {
        bytes += chunk.byteLength;
        yield chunk;
      }
    };
    const hash = createHash("sha256");
    for await (const chunk of decryptStream(key, fetched(), { lending })) hash.update(chunk);
    const sha256 = hash.digest("hex");
    if (sha256 !== expectedSha256) {
      throw new CheckpointCorruptError(`checkpoint ${cid} does not match its announced digest`, {
        details: `expected ${expectedSha256}, got ${sha256}`,
      });
    }
    await ipfs.pin(cid, { signal });
    return { bytes };
  });
}
