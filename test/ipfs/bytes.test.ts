import { randomBytes, webcrypto } from "node:crypto";

import { describe, expect, it } from "vitest";

import { BufferPool, Lending } from "../../sdk/ipfs/bytes.ts";

/**
 * The reused buffers of a fetch (block-stream.ts, node.ts): a pool hands out only its own buffers
 * again, and a lent piece goes back only once its reader is done with every byte of it. The
 * fetch gives a buffer back right after WebCrypto was handed it, which is safe only because
 * WebCrypto copies its input before it returns: checked here too, so that a Node.js that stopped
 * doing so fails a test instead of corrupting fetches.
 */

describe("BufferPool", () => {
  it("hands a buffer given back out again, and only its own, whole buffers", () => {
    const pool = new BufferPool(1024, 2);
    const first = pool.take();
    expect(first.byteLength).toBe(1024);
    expect(first.buffer.byteLength).toBe(1024); // a buffer of its own, not a slice of Node's pool
    expect(pool.owns(first)).toBe(true);
    pool.give(first);
    expect(pool.take()).toBe(first);

    const foreign = Buffer.alloc(1024);
    pool.give(foreign);
    pool.give(first.subarray(0, 512));
    expect(pool.owns(foreign)).toBe(false);
    expect(pool.take()).not.toBe(foreign);
  });

  it("keeps at most `max` free buffers, and a buffer given back twice once", () => {
    const pool = new BufferPool(16, 2);
    const taken = [pool.take(), pool.take(), pool.take()];
    pool.give(taken[0]!);
    pool.give(taken[0]!);
    const again = [pool.take(), pool.take()];
    expect(again[0]).toBe(taken[0]);
    expect(again[1]).not.toBe(taken[0]);

    for (const buffer of taken) pool.give(buffer);
    const reused = new Set([pool.take(), pool.take(), pool.take()]);
    expect(taken.filter((buffer) => reused.has(buffer))).toHaveLength(2);
  });
});

describe("Lending", () => {
  it("releases a piece once the reader is done with all of it, in order", () => {
    const lending = new Lending();
    const released: string[] = [];
    lending.lend(100, () => released.push("a")); // bytes 0-99
    lending.lend(200, () => released.push("b")); // bytes 100-199
    lending.done(99);
    expect(released).toEqual([]);
    lending.done(150);
    expect(released).toEqual(["a"]);
    lending.done(120); // never backwards
    lending.done(200);
    expect(released).toEqual(["a", "b"]);
    lending.lend(150, () => released.push("late")); // the reader is past it already
    expect(released).toEqual(["a", "b", "late"]);
  });

  it("keeps everything from a reader that never says it is done", () => {
    const lending = new Lending();
    let released = 0;
    for (let end = 1; end <= 5; end++) lending.lend(end * 10, () => released++);
    expect(released).toBe(0);
  });
});

describe("WebCrypto, as the fetch relies on it", () => {
  it("copies the bytes to digest or decrypt before it returns", async () => {
    const bytes = randomBytes(1 << 20);
    const expected = Buffer.from(await webcrypto.subtle.digest("SHA-256", bytes));
    const digesting = webcrypto.subtle.digest("SHA-256", bytes);
    bytes.fill(0);
    expect(Buffer.from(await digesting)).toEqual(expected);

    const key = await webcrypto.subtle.importKey("raw", randomBytes(32), "AES-GCM", false, ["encrypt", "decrypt"]);
    const plaintext = randomBytes(1 << 20);
    const parameters = { name: "AES-GCM", iv: randomBytes(12) };
    const sealed = Buffer.from(await webcrypto.subtle.encrypt(parameters, key, plaintext));
    const opening = webcrypto.subtle.decrypt(parameters, key, sealed);
    sealed.fill(0);
    expect(Buffer.from(await opening)).toEqual(plaintext);
  });
});
