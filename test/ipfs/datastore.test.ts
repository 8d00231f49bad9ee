import { spawnSync } from "node:child_process";
import { readdir, rm } from "node:fs/promises";
import path from "node:path";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { FsDatastore } from "datastore-fs";
import { Key } from "interface-datastore";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { publishCheckpoint } from "../../sdk/ipfs/checkpoint.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import { SqliteDatastore } from "../../sdk/ipfs/datastore.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";
import { root } from "../helpers/processes.ts";
import { exists, sampleTree, tempDir, writeTree } from "./helpers.ts";

const GiB = 2 ** 30;

let work: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  work = await tempDir("datastore");
});

afterAll(async () => {
  await work?.remove();
});

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

async function all<T>(source: AsyncIterable<T> | Iterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of source) out.push(item);
  return out;
}

describe("SqliteDatastore", () => {
  it("keeps records as a datastore does, across a reopen", async () => {
    const file = path.join(work.dir, "records.sqlite");
    let store = await SqliteDatastore.open(file);
    await store.put(new Key("/pin/b"), bytes("pin b"));
    await store.put(new Key("/pin/a"), bytes("pin a"));
    await store.put(new Key("/pinned-block/x"), bytes("count 1"));
    await store.put(new Key("/pinned-block/x"), bytes("count 2"));
    await store.put(new Key("/version"), bytes("1"));
    expect(await store.get(new Key("/pinned-block/x"))).toEqual(bytes("count 2"));
    expect(await store.has(new Key("/pin/a"))).toBe(true);
    expect(await store.has(new Key("/pin/c"))).toBe(false);
    expect(() => store.get(new Key("/pin/c"))).toThrow(expect.objectContaining({ name: "NotFoundError" }));
    await store.delete(new Key("/pin/b"));
    await store.delete(new Key("/pin/b"));
    expect(await store.has(new Key("/pin/b"))).toBe(false);

    store.close();
    store = await SqliteDatastore.open(file);
    // A prefix takes only what is under it ("/pinned-block" is not under "/pin/").
    const pins = await all(store.query({ prefix: "/pin/" }));
    expect(pins.map(({ key, value }) => [key.toString(), new TextDecoder().decode(value)])).toEqual([
      ["/pin/a", "pin a"],
    ]);
    expect((await all(store.queryKeys({}))).map(String)).toEqual(["/pin/a", "/pinned-block/x", "/version"]);
    expect((await all(store.queryKeys({ prefix: "/pin" }))).map(String)).toEqual(["/pin/a", "/pinned-block/x"]);
    // A query read whole before it yields: writing while iterating neither fails nor loops.
    for await (const { key } of store.query({ prefix: "/pin" })) await store.put(key.child(new Key("more")), bytes(""));
    expect(await all(store.queryKeys({ prefix: "/pin" }))).toHaveLength(4);
    await expect(all(store.query({}, { signal: AbortSignal.abort() }))).rejects.toThrow();
    store.close();
  });

  it("loads node:sqlite without its ExperimentalWarning, and lets other warnings through", () => {
    // A tenant's script run by plain `node` imports this with the SDK.
    const script =
      `await import(${JSON.stringify(path.join(root, "sdk/ipfs/datastore.ts"))});` +
      `process.emitWarning("still shown", "ExperimentalWarning");`;
    const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stderr).toContain("ExperimentalWarning: still shown");
    expect(run.stderr).not.toContain("SQLite");
  });

  it("moves in an older version's records (FsDatastore), pins included: gc keeps what they pin", async () => {
    const dir = path.join(work.dir, "node");
    const source = path.join(work.dir, "checkpoint");
    const { files, dirs } = sampleTree(3);
    await writeTree(source, files, dirs);

    const start = async (): Promise<{ host: BatonHost; ipfs: IpfsNode }> => {
      const host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
      return { host, ipfs: await createIpfsNode({ host, dir }) };
    };
    const stop = async ({ host, ipfs }: { host: BatonHost; ipfs: IpfsNode }): Promise<void> => {
      await ipfs.stop();
      await host.stop();
    };

    let node = await start();
    const { cid } = await publishCheckpoint(node.ipfs, generateJobKey(), source, { maxBytes: GiB });
    const unpinned = (await publishCheckpoint(node.ipfs, generateJobKey(), source, { maxBytes: GiB })).cid;
    await node.ipfs.unpin(unpinned);
    await stop(node);

    // The records as an older version kept them: a file each under datastore/.
    const current = await SqliteDatastore.open(path.join(dir, "datastore.sqlite"));
    const records = await all(current.query({}));
    current.close();
    expect(records.filter(({ key }) => key.toString().startsWith("/pinned-block/")).length).toBeGreaterThan(3);
    const legacy = new FsDatastore(path.join(dir, "datastore"));
    await legacy.open();
    for (const { key, value } of records) await legacy.put(key, value);
    await legacy.close();
    await rm(path.join(dir, "datastore.sqlite"));
    for (const suffix of ["-wal", "-shm"]) await rm(path.join(dir, `datastore.sqlite${suffix}`), { force: true });

    node = await start();
    try {
      expect(await exists(path.join(dir, "datastore"))).toBe(false);
      expect(await node.ipfs.isPinned(cid)).toBe(true);
      await node.ipfs.gc();
      expect(await node.ipfs.has(cid)).toBe(true);
      expect(await node.ipfs.has(unpinned)).toBe(false);
      expect((await readdir(dir)).sort()).toEqual(expect.arrayContaining(["blocks", "datastore.sqlite"]));
    } finally {
      await stop(node);
    }
  });
});
