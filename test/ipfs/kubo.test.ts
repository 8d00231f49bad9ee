import * as dagPb from "@ipld/dag-pb";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { sha256 } from "multiformats/hashes/sha2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CheckpointUnavailableError, UserError } from "../../sdk/errors.ts";
import { publishCheckpoint } from "../../sdk/ipfs/checkpoint.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import { localDagBlocks } from "../../sdk/ipfs/dag.ts";
import { pinToKubo } from "../../sdk/ipfs/kubo.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";
import { tempDir, writeTree } from "./helpers.ts";

/**
 * A stand-in for Kubo's RPC API: no Kubo binary can be installed where these tests run. It
 * implements exactly the two endpoints pinToKubo calls, the way Kubo does: `block/put` takes one
 * multipart file, hashes it itself with the requested codec and hash, refuses blocks over 1 MiB
 * and answers the CID; `pin/add` pins recursively only if every block of the DAG is there. Any
 * other endpoint is a 404 the test fails on.
 */
interface FakeKubo {
  url: string;
  blocks: Map<string, Uint8Array>;
  pins: Set<string>;
  /** Endpoints called, in order. */
  calls: string[];
  /** Answer block/put with a wrong CID. */
  lie: boolean;
  close(): Promise<void>;
}

const CODECS: Record<string, number> = { raw: raw.code, "dag-pb": dagPb.code };

async function startFakeKubo(): Promise<FakeKubo> {
  const fake: FakeKubo = {
    url: "",
    blocks: new Map(),
    pins: new Set(),
    calls: [],
    lie: false,
    close: async () => {},
  };
  const fail = (res: ServerResponse, status: number, message: string): void => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify({ Message: message, Code: 0, Type: "error" }));
  };
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url!, "http://fake");
    fake.calls.push(url.pathname);
    const parts: Buffer[] = [];
    for await (const part of req) parts.push(part as Buffer);
    const body = Buffer.concat(parts);
    if (req.method !== "POST") return fail(res, 405, "only POST");

    if (url.pathname === "/api/v0/block/put") {
      const codec = CODECS[url.searchParams.get("cid-codec") ?? "raw"];
      if (codec === undefined || url.searchParams.get("mhtype") !== "sha2-256") {
        return fail(res, 400, "unsupported codec or hash");
      }
      // Minimal multipart: one part; its body runs from the blank line to the closing boundary.
      const boundary = /boundary=(.+)$/.exec(req.headers["content-type"] ?? "")?.[1];
      if (!boundary) return fail(res, 400, "not multipart");
      const start = body.indexOf("\r\n\r\n") + 4;
      const end = body.lastIndexOf(`\r\n--${boundary}--`);
      if (start < 4 || end < start) return fail(res, 400, "bad multipart body");
      const bytes = new Uint8Array(body.subarray(start, end));
      if (bytes.byteLength > 1024 * 1024) return fail(res, 400, "produced block is over 1MiB");
      if (codec === dagPb.code) dagPb.decode(bytes); // Kubo would refuse what its codec cannot read
      const cid = CID.createV1(codec, await sha256.digest(bytes));
      fake.blocks.set(cid.toString(), bytes);
      const answer = fake.lie ? CID.createV1(raw.code, await sha256.digest(randomBytes(8))) : cid;
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(JSON.stringify({ Key: answer.toString(), Size: bytes.byteLength }));
    }

    if (url.pathname === "/api/v0/pin/add") {
      const root = CID.parse(url.searchParams.get("arg") ?? "");
      if (url.searchParams.get("recursive") !== "true") return fail(res, 400, "expected a recursive pin");
      const pending = [root];
      for (let cid = pending.pop(); cid !== undefined; cid = pending.pop()) {
        const bytes = fake.blocks.get(cid.toString());
        if (!bytes) return fail(res, 500, `block ${cid} not found`);
        if (cid.code === dagPb.code) pending.push(...dagPb.decode(bytes).Links.map((link) => link.Hash));
      }
      fake.pins.add(root.toString());
      res.writeHead(200, { "content-type": "application/json" });
      return void res.end(JSON.stringify({ Pins: [root.toString()] }) + "\n");
    }
    fail(res, 404, `unknown endpoint ${url.pathname}`);
  };
  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => fail(res, 500, String(error)));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  fake.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  fake.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return fake;
}

let work: Awaited<ReturnType<typeof tempDir>>;
let host: BatonHost | undefined;
let ipfs: IpfsNode | undefined;
let kubo: FakeKubo | undefined;

beforeAll(async () => {
  work = await tempDir("kubo");
  host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
  ipfs = await createIpfsNode({ host, dir: path.join(work.dir, "ipfs") });
  kubo = await startFakeKubo();
});

afterAll(async () => {
  await ipfs?.stop();
  await host?.stop();
  await kubo?.close();
  await work?.remove();
});

describe("pinning to an external Kubo node", () => {
  it("copies every block of the DAG with block/put and pins the root, through only those two endpoints", async () => {
    const dir = path.join(work.dir, "checkpoint");
    await writeTree(dir, [
      { path: "weights.bin", size: 3 * 2 ** 20 + 5 },
      { path: "step.txt", size: 10 },
    ]);
    const { cid, size } = await publishCheckpoint(ipfs!, generateJobKey(), dir, { maxBytes: 2 ** 30 });
    const result = await pinToKubo(ipfs!, cid, { kubo: kubo!.url, signal: AbortSignal.timeout(30_000) });

    const local = new Map<string, Uint8Array>();
    for await (const block of localDagBlocks(ipfs!.helia, cid)) local.set(block.cid.toString(), block.bytes);
    expect(result.blocks).toBe(local.size);
    // The root, the 44-byte header leaf and a 1 MiB leaf per sealed chunk.
    expect(local.size).toBe(Math.ceil((size - 44) / 2 ** 20) + 2);
    expect([...kubo!.blocks.keys()].sort()).toEqual([...local.keys()].sort());
    for (const [key, bytes] of local) expect(Buffer.compare(kubo!.blocks.get(key)!, bytes)).toBe(0);
    expect([...kubo!.pins]).toEqual([cid.toString()]);
    expect(new Set(kubo!.calls)).toEqual(new Set(["/api/v0/block/put", "/api/v0/pin/add"]));
    expect(kubo!.calls.at(-1)).toBe("/api/v0/pin/add");
  });

  it("refuses a node that stores a block under another CID", async () => {
    const dir = path.join(work.dir, "checkpoint-lie");
    await writeTree(dir, [{ path: "a.bin", size: 1000 }]);
    const { cid } = await publishCheckpoint(ipfs!, generateJobKey(), dir, { maxBytes: 2 ** 30 });
    kubo!.lie = true;
    try {
      await expect(pinToKubo(ipfs!, cid, { kubo: kubo!.url })).rejects.toThrow(/under another CID/);
    } finally {
      kubo!.lie = false;
    }
    expect(kubo!.pins.has(cid.toString())).toBe(false);
  });

  it("says so when the DAG is not in the local store, or the node cannot be reached", async () => {
    const unknown = CID.createV1(raw.code, await sha256.digest(randomBytes(32)));
    await expect(pinToKubo(ipfs!, unknown, { kubo: kubo!.url })).rejects.toBeInstanceOf(CheckpointUnavailableError);

    const dir = path.join(work.dir, "checkpoint-down");
    await writeTree(dir, [{ path: "a.bin", size: 1000 }]);
    const { cid } = await publishCheckpoint(ipfs!, generateJobKey(), dir, { maxBytes: 2 ** 30 });
    const down = await startFakeKubo();
    await down.close();
    const error = await pinToKubo(ipfs!, cid, { kubo: down.url, callTimeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UserError);
    expect((error as Error).message).toContain(down.url);
  });
});
