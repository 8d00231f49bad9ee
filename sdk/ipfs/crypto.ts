import { hkdfSync, randomBytes, timingSafeEqual, webcrypto } from "node:crypto";

import { CheckpointCorruptError, CheckpointKeyError, UserError } from "../errors.ts";
import { ByteReader, type ByteSource, type Lending } from "./bytes.ts";
import { ENCRYPTION_CHUNK_SIZE, MAX_ENCRYPTION_CHUNK_SIZE } from "./constants.ts";

/**
 * Streamed authenticated encryption of checkpoints with AES-256-GCM, in the shape of the STREAM
 * construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): the plaintext is cut into fixed-size
 * chunks, each sealed on its own, so a stream of any length is encrypted and checked with one
 * chunk in memory.
 *
 * Format, version 1 (integers big-endian):
 *
 *     header   magic "BATONCK" 0x01 (8) | chunk size u32 (4) | salt (16 random bytes) |
 *              key check (16)                                                   = 44 bytes
 *     chunk*   ciphertext (chunk size bytes; the final chunk 0..chunk size) | GCM tag (16)
 *
 * Per checkpoint, HKDF-SHA256(job key, salt, "baton checkpoint v1") gives a fresh AES key, a key
 * check and a 4-byte nonce prefix. Chunk i's nonce is prefix | i (u64), and its additional data is
 * header | i (u64) | final flag (u8). Hence:
 *
 * - reordered or swapped chunks fail (index in nonce and AAD), and so do chunks from another
 *   checkpoint (another salt, hence another key);
 * - truncation at a chunk boundary fails (the new last chunk was sealed as not final), and so does
 *   appending (the old final chunk is no longer last, so it is read as not final);
 * - a wrong key fails at the header with CheckpointKeyError, before any chunk: the key check
 *   commits the header to the key (plain GCM is not key-committing).
 *
 * Decryption yields a chunk only after its tag verified. A consumer must still treat the plaintext
 * as provisional until the stream ends: only the final chunk proves nothing was cut off.
 */

export const JOB_KEY_BYTES = 32;

const MAGIC = new Uint8Array([0x42, 0x41, 0x54, 0x4f, 0x4e, 0x43, 0x4b, 0x01]); // "BATONCK" v1
const SALT_BYTES = 16;
const KEY_CHECK_BYTES = 16;
const HEADER_BYTES = MAGIC.byteLength + 4 + SALT_BYTES + KEY_CHECK_BYTES;
const TAG_BYTES = 16;
const INFO = new TextEncoder().encode("baton checkpoint v1");
const MAX_CHUNKS = 2 ** 48; // nonces never repeat: i is a u64, and Number stays exact below 2^53
const { subtle } = webcrypto;

/** A fresh random job key (32 bytes). Keep it secret: never log it or put it in an error. */
export function generateJobKey(): Uint8Array {
  return new Uint8Array(randomBytes(JOB_KEY_BYTES));
}

/** The sealed length of `plaintextBytes` bytes. */
export function sealedLength(plaintextBytes: number, chunkSize = ENCRYPTION_CHUNK_SIZE): number {
  const chunks = Math.max(1, Math.ceil(plaintextBytes / chunkSize));
  return HEADER_BYTES + plaintextBytes + chunks * TAG_BYTES;
}

export interface EncryptOptions {
  /** Plaintext bytes per chunk. */
  chunkSize?: number;
  /** Where the source lends its pieces (as `pack` does given the same one): told as each is sealed. */
  lending?: Lending;
}

/**
 * Chunks sealed or opened at once. WebCrypto runs each in libuv's thread pool (four threads), off
 * the event loop, so both cores work while the loop reads, hashes and writes; three leaves a thread
 * for the file-system calls that share the pool.
 */
const CRYPTO_CONCURRENCY = 3;

/**
 * Calls `start` again and again with up to `depth` of the results it began running at once,
 * yielding them in order; `start` returns undefined once there is nothing more to begin. A result that fails is
 * thrown when its turn comes; the ones after it are dropped (their failures too).
 */
async function* inOrder<T>(depth: number, start: () => Promise<{ result: Promise<T> } | undefined>): AsyncGenerator<T> {
  const pending: Promise<T>[] = [];
  let more = true;
  try {
    for (;;) {
      while (more && pending.length < depth) {
        let next: Promise<T> | undefined;
        try {
          next = (await start())?.result;
        } catch (error) {
          // A failure to start comes out in its turn too, after the results before it.
          next = Promise.reject(error as Error);
          more = false;
        }
        if (next === undefined) more = false;
        else {
          next.catch(() => undefined); // awaited below in its turn; never an unhandled rejection meanwhile
          pending.push(next);
        }
      }
      const head = pending.shift();
      if (head === undefined) return;
      yield await head;
    }
  } finally {
    pending.length = 0;
  }
}

/**
 * Encrypts a byte stream with the job key. Yields the header, then each sealed chunk (ciphertext
 * and tag) as one piece: with the default chunk size a piece is exactly one 1 MiB UnixFS leaf.
 *
 * @example
 * const key = generateJobKey();
 * for await (const bytes of encryptStream(key, pack.stream)) sink(bytes);
 */
export async function* encryptStream(
  key: Uint8Array,
  source: ByteSource,
  { chunkSize = ENCRYPTION_CHUNK_SIZE, lending }: EncryptOptions = {},
): AsyncGenerator<Uint8Array> {
  checkKey(key);
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_ENCRYPTION_CHUNK_SIZE) {
    throw new UserError(`the encryption chunk size must be 1..${MAX_ENCRYPTION_CHUNK_SIZE} bytes`);
  }
  const header = new Uint8Array(HEADER_BYTES);
  header.set(MAGIC, 0);
  new DataView(header.buffer).setUint32(MAGIC.byteLength, chunkSize);
  header.set(randomBytes(SALT_BYTES), MAGIC.byteLength + 4);
  const keys = derive(key, header);
  header.set(keys.check, HEADER_BYTES - KEY_CHECK_BYTES);
  const aes = await subtle.importKey("raw", keys.aes, "AES-GCM", false, ["encrypt"]);
  yield header;

  const reader = new ByteReader(source);
  let index = 0;
  let final = false;
  try {
    yield* inOrder(CRYPTO_CONCURRENCY, async () => {
      if (final) return undefined;
      if (index >= MAX_CHUNKS) throw new UserError("the stream is too long to encrypt under one header");
      const plaintext = await reader.readUpTo(chunkSize);
      final = plaintext.byteLength < chunkSize || (await reader.atEnd());
      const parameters = {
        name: "AES-GCM",
        iv: nonce(keys.prefix, index),
        additionalData: chunkAad(header, index, final),
      };
      index++;
      // The ciphertext followed by the 16-byte tag: the sealed chunk as the format lays it out.
      const sealed = subtle.encrypt(parameters, aes, plaintext);
      // WebCrypto copied the chunk before it returned: every byte read so far is done with.
      lending?.done(reader.position);
      return { result: sealed.then((bytes) => new Uint8Array(bytes)) };
    });
  } finally {
    await reader.close();
  }
}

const truncated = (): CheckpointCorruptError =>
  new CheckpointCorruptError("the encrypted checkpoint is truncated (its header or a chunk is cut off)");

/**
 * Decrypts and checks a stream made by {@link encryptStream}. Throws CheckpointKeyError for another
 * key, CheckpointCorruptError for anything tampered, truncated, reordered or appended. With
 * `lending` (a source that lends its pieces, as `IpfsNode.cat` does given the same one), it tells
 * the source as each chunk's bytes are no longer needed.
 *
 * @example
 * for await (const bytes of decryptStream(key, ipfs.cat(cid, { signal }))) sink(bytes);
 */
export async function* decryptStream(
  key: Uint8Array,
  source: ByteSource,
  { lending }: { lending?: Lending } = {},
): AsyncGenerator<Uint8Array> {
  checkKey(key);
  const reader = new ByteReader(source);
  try {
    const header = new Uint8Array(await reader.readExactly(HEADER_BYTES, truncated));
    for (let i = 0; i < MAGIC.byteLength - 1; i++) {
      if (header[i] !== MAGIC[i]) throw new CheckpointCorruptError("not an encrypted Baton checkpoint");
    }
    const version = header[MAGIC.byteLength - 1];
    if (version !== MAGIC[MAGIC.byteLength - 1]) {
      throw new CheckpointCorruptError(`unsupported checkpoint encryption version ${version}`);
    }
    const chunkSize = new DataView(header.buffer).getUint32(MAGIC.byteLength);
    if (chunkSize < 1 || chunkSize > MAX_ENCRYPTION_CHUNK_SIZE) {
      throw new CheckpointCorruptError(`bad chunk size ${chunkSize} in the checkpoint header`);
    }
    const keys = derive(key, header);
    if (!timingSafeEqual(keys.check, header.subarray(HEADER_BYTES - KEY_CHECK_BYTES))) {
      throw new CheckpointKeyError(
        "the checkpoint was not encrypted with this job key (or its header was altered on the way)",
      );
    }
    const aes = await subtle.importKey("raw", keys.aes, "AES-GCM", false, ["decrypt"]);

    let index = 0;
    let final = false;
    // WebCrypto returns a chunk's plaintext only once its tag verified, and the chunks come out in
    // order: nothing after a chunk that failed is ever released.
    const opened = inOrder(CRYPTO_CONCURRENCY, async () => {
      if (final) return undefined;
      if (index >= MAX_CHUNKS) throw new CheckpointCorruptError("the encrypted checkpoint has too many chunks");
      const sealed = await reader.readUpTo(chunkSize + TAG_BYTES);
      if (sealed.byteLength < TAG_BYTES) throw truncated();
      final = sealed.byteLength < chunkSize + TAG_BYTES || (await reader.atEnd());
      const at = index++;
      const parameters = { name: "AES-GCM", iv: nonce(keys.prefix, at), additionalData: chunkAad(header, at, final) };
      const decrypted = subtle.decrypt(parameters, aes, sealed);
      // WebCrypto copied the chunk before it returned: every byte read so far is done with.
      lending?.done(reader.position);
      const result = decrypted.then(
        (plaintext) => new Uint8Array(plaintext),
        (cause: unknown) => {
          throw new CheckpointCorruptError(
            `chunk ${at} of the encrypted checkpoint failed authentication: ` +
              "it was altered, truncated, reordered, appended to, or comes from another checkpoint",
            { cause },
          );
        },
      );
      return { result };
    });
    for await (const plaintext of opened) if (plaintext.byteLength > 0) yield plaintext;
  } finally {
    await reader.close();
  }
}

function checkKey(key: Uint8Array): void {
  // Say only the length: the key itself never goes into an error.
  if (!(key instanceof Uint8Array) || key.byteLength !== JOB_KEY_BYTES) {
    throw new UserError(`a job key must be ${JOB_KEY_BYTES} bytes`);
  }
}

interface ChunkKeys {
  aes: Uint8Array;
  check: Uint8Array;
  prefix: Uint8Array;
}

function derive(key: Uint8Array, header: Uint8Array): ChunkKeys {
  const salt = header.subarray(MAGIC.byteLength + 4, MAGIC.byteLength + 4 + SALT_BYTES);
  const okm = new Uint8Array(hkdfSync("sha256", key, salt, INFO, 32 + KEY_CHECK_BYTES + 4));
  return {
    aes: okm.subarray(0, 32),
    check: okm.subarray(32, 32 + KEY_CHECK_BYTES),
    prefix: okm.subarray(32 + KEY_CHECK_BYTES),
  };
}

function nonce(prefix: Uint8Array, index: number): Uint8Array {
  const out = new Uint8Array(12);
  out.set(prefix, 0);
  new DataView(out.buffer).setBigUint64(4, BigInt(index));
  return out;
}

function chunkAad(header: Uint8Array, index: number, final: boolean): Uint8Array {
  const aad = new Uint8Array(HEADER_BYTES + 9);
  aad.set(header, 0);
  const view = new DataView(aad.buffer);
  view.setBigUint64(HEADER_BYTES, BigInt(index));
  view.setUint8(HEADER_BYTES + 8, final ? 1 : 0);
  return aad;
}
