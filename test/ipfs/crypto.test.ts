import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";

import { CheckpointCorruptError, CheckpointKeyError, UserError } from "../../sdk/errors.ts";
import { ENCRYPTION_CHUNK_SIZE } from "../../sdk/ipfs/constants.ts";
import { decryptStream, encryptStream, generateJobKey, sealedLength } from "../../sdk/ipfs/crypto.ts";
import { collect, pieces } from "./helpers.ts";

const HEADER = 44;
const TAG = 16;
const C = ENCRYPTION_CHUNK_SIZE;

const seal = (key: Uint8Array, plaintext: Uint8Array, chunkSize?: number): Promise<Uint8Array> =>
  collect(encryptStream(key, pieces(plaintext, 65_537), { chunkSize }));

/** Splits a sealed stream into its header and its chunks (each ciphertext + tag). */
function split(sealed: Uint8Array, chunkSize: number): { header: Uint8Array; chunks: Uint8Array[] } {
  const chunks: Uint8Array[] = [];
  for (let i = HEADER; i < sealed.byteLength; i += chunkSize + TAG)
    chunks.push(sealed.subarray(i, i + chunkSize + TAG));
  return { header: sealed.subarray(0, HEADER), chunks };
}

const join = (...parts: Uint8Array[]): Uint8Array => new Uint8Array(Buffer.concat(parts));

/** Decrypts, returning what was released before the failure and the failure. */
async function open(key: Uint8Array, sealed: Uint8Array): Promise<{ released: number; error: unknown }> {
  let released = 0;
  try {
    for await (const chunk of decryptStream(key, pieces(sealed, 100_000))) released += chunk.byteLength;
  } catch (error) {
    return { released, error };
  }
  return { released, error: undefined };
}

describe("checkpoint encryption", () => {
  it.each([
    ["empty", 0],
    ["1 byte", 1],
    ["chunk - 1", C - 1],
    ["one chunk", C],
    ["chunk + 1", C + 1],
    ["5 chunks", 5 * C],
  ])("round-trips %s", async (_, size) => {
    const key = generateJobKey();
    const plaintext = new Uint8Array(randomBytes(size));
    const sealed = await seal(key, plaintext);
    expect(sealed.byteLength).toBe(sealedLength(size));
    expect(Buffer.compare(await collect(decryptStream(key, pieces(sealed, 99_991))), plaintext)).toBe(0);
  });

  it("seals the same plaintext differently each time (random per-checkpoint salt)", async () => {
    const key = generateJobKey();
    const plaintext = new Uint8Array(1000);
    expect(Buffer.compare(await seal(key, plaintext), await seal(key, plaintext))).not.toBe(0);
  });

  describe("with small chunks", () => {
    const chunkSize = 1024;
    const key = generateJobKey();
    const plaintext = new Uint8Array(randomBytes(5 * chunkSize + 100)); // 6 chunks, the last one short

    it("detects a flipped byte in any chunk, and releases only the chunks before it", async () => {
      const sealed = await seal(key, plaintext, chunkSize);
      for (const chunk of [0, 3, 5]) {
        const tampered = new Uint8Array(sealed);
        tampered[HEADER + chunk * (chunkSize + TAG) + 17]! ^= 0x01;
        const { released, error } = await open(key, tampered);
        expect(error).toBeInstanceOf(CheckpointCorruptError);
        expect((error as Error).message).toMatch(new RegExp(`chunk ${chunk} .*failed authentication`));
        expect(released).toBe(chunk * chunkSize);
      }
      const badTag = new Uint8Array(sealed);
      badTag[sealed.byteLength - 1]! ^= 0x80;
      expect((await open(key, badTag)).error).toBeInstanceOf(CheckpointCorruptError);
    });

    it("detects truncation: a cut inside a chunk, at a chunk boundary, and a dropped final chunk", async () => {
      const sealed = await seal(key, plaintext, chunkSize);
      const { header, chunks } = split(sealed, chunkSize);
      for (const cut of [sealed.byteLength - 1, HEADER + 2 * (chunkSize + TAG) + 5, HEADER + 3, 10]) {
        expect((await open(key, sealed.subarray(0, cut))).error, `cut at ${cut}`).toBeInstanceOf(
          CheckpointCorruptError,
        );
      }
      const dropFinal = join(header, ...chunks.slice(0, -1));
      expect((await open(key, dropFinal)).error).toBeInstanceOf(CheckpointCorruptError);
      const onlyHeader = header;
      expect((await open(key, onlyHeader)).error).toBeInstanceOf(CheckpointCorruptError);
    });

    it("detects a full-size final chunk cut off when the plaintext fills its chunks exactly", async () => {
      const exact = new Uint8Array(randomBytes(3 * chunkSize));
      const { header, chunks } = split(await seal(key, exact, chunkSize), chunkSize);
      expect(chunks).toHaveLength(3);
      expect((await open(key, join(header, ...chunks.slice(0, 2)))).error).toBeInstanceOf(CheckpointCorruptError);
    });

    it("detects swapped and reordered chunks, and chunks from another checkpoint", async () => {
      const { header, chunks } = split(await seal(key, plaintext, chunkSize), chunkSize);
      const [c0, c1, c2, c3, c4, c5] = chunks as [
        Uint8Array,
        Uint8Array,
        Uint8Array,
        Uint8Array,
        Uint8Array,
        Uint8Array,
      ];
      expect((await open(key, join(header, c0, c2, c1, c3, c4, c5))).error).toBeInstanceOf(CheckpointCorruptError);
      expect((await open(key, join(header, c1, c0, c2, c3, c4, c5))).error).toBeInstanceOf(CheckpointCorruptError);
      // Same key, same plaintext, another checkpoint: its chunk 2 does not fit ours.
      const other = split(await seal(key, plaintext, chunkSize), chunkSize);
      const spliced = join(header, c0, c1, other.chunks[2]!, c3, c4, c5);
      expect((await open(key, spliced)).error).toBeInstanceOf(CheckpointCorruptError);
      // And its header with our chunks neither.
      expect((await open(key, join(other.header, ...chunks))).error).toBeInstanceOf(CheckpointCorruptError);
    });

    it("detects appended data: a repeated chunk, another stream's chunk, or stray bytes", async () => {
      const sealed = await seal(key, plaintext, chunkSize);
      const { chunks } = split(sealed, chunkSize);
      expect((await open(key, join(sealed, chunks[0]!))).error).toBeInstanceOf(CheckpointCorruptError);
      expect((await open(key, join(sealed, new Uint8Array(TAG)))).error).toBeInstanceOf(CheckpointCorruptError);
      expect((await open(key, join(sealed, new Uint8Array([0])))).error).toBeInstanceOf(CheckpointCorruptError);
    });

    it("says when the key is wrong, without putting a key in the message", async () => {
      const sealed = await seal(key, plaintext, chunkSize);
      const wrong = generateJobKey();
      const { released, error } = await open(wrong, sealed);
      expect(error).toBeInstanceOf(CheckpointKeyError);
      expect(released).toBe(0);
      const text = `${(error as Error).message} ${(error as Error).stack}`;
      for (const k of [key, wrong]) {
        expect(text).not.toContain(Buffer.from(k).toString("hex"));
        expect(text).not.toContain(Buffer.from(k).toString("base64"));
      }
    });

    it("refuses a bad header: not ours, another version, an absurd chunk size", async () => {
      const sealed = await seal(key, plaintext, chunkSize);
      const notOurs = new Uint8Array(sealed);
      notOurs[0] = 0x58;
      expect((await open(key, notOurs)).error).toBeInstanceOf(CheckpointCorruptError);
      const version = new Uint8Array(sealed);
      version[7] = 2;
      expect(String((await open(key, version)).error)).toMatch(/unsupported checkpoint encryption version 2/);
      const chunkSizeField = new Uint8Array(sealed);
      new DataView(chunkSizeField.buffer).setUint32(8, 2 ** 31);
      expect(String((await open(key, chunkSizeField)).error)).toMatch(/bad chunk size/);
      const salt = new Uint8Array(sealed);
      salt[20]! ^= 1;
      expect((await open(key, salt)).error).toBeInstanceOf(CheckpointKeyError);
    });
  });

  it("refuses keys that are not 32 bytes, and says only their required length", async () => {
    const short = new Uint8Array(31).fill(0xab);
    await expect(collect(encryptStream(short, [new Uint8Array(1)]))).rejects.toBeInstanceOf(UserError);
    await expect(collect(decryptStream(short, [new Uint8Array(100)]))).rejects.toThrow("a job key must be 32 bytes");
    expect(generateJobKey()).toHaveLength(32);
  });
});
