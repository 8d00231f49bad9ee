import { generateKeyPair } from "@libp2p/crypto/keys";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { httpProxy, type HttpProxy } from "../../node/http-proxy.ts";
import { Metrics } from "../../node/metrics.ts";
import { HTTP_SOCKET_NAME } from "../../node/sandbox/runner.ts";
import { NodeStore } from "../../node/store.ts";
import { leaseFetch, type LeaseFetchParameters } from "../../sdk/actions/leaseFetch.ts";
import { ProviderFaultError, RequestNotSentError } from "../../sdk/errors.ts";
import { silentLogger } from "../../sdk/logger.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";
import { httpStreams, type HttpStreams } from "../../sdk/p2p/http-streams.ts";
import { httpReader, httpResponseHeadSchema, writeHttpMessage } from "../../sdk/wire/http.ts";
import { protocols } from "../../sdk/wire/protocols.ts";
import { root, until } from "../helpers/processes.ts";

/**
 * The provider's HTTP proxy with real parts: two libp2p hosts on loopback, the node's store on
 * disk, and the example server job on its Unix socket. No chain: the lease row is written as the
 * node writes it when a lease starts.
 */
let dir: string;
let provider: BatonHost;
let tenant: BatonHost;
let store: NodeStore;
let proxy: HttpProxy;
let job: ChildProcess;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-http-proxy-"));
  const workDir = path.join(dir, "job");
  await mkdir(workDir);
  job = spawn(process.execPath, [path.join(root, "examples/serve/server.mjs")], {
    env: { ...process.env, BATON_HTTP_SOCKET: path.join(workDir, HTTP_SOCKET_NAME), BATON_LEASE_ID: "1" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve) => job.stdout!.once("data", () => resolve()));
  provider = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
  tenant = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
  store = new NodeStore(path.join(dir, "node.db"));
  store.insertLease({
    leaseId: 1n,
    jobId: "job-1",
    tenant: "0x0000000000000000000000000000000000000001",
    tenantPeer: tenant.peerId.toString(),
    state: "running",
    gpus: [],
    spec: {},
    workDir,
    pid: job.pid ?? null,
    startedAt: Math.floor(Date.now() / 1000),
    endedAt: null,
    exitCode: null,
    reason: null,
    chainPeriodS: 30,
    lastChainHeartbeat: null,
    resultCid: null,
    jobKey: null,
    taskId: null,
    holdKeep: null,
  });
  proxy = httpProxy({ host: provider, store, log: silentLogger, metrics: new Metrics() });
  await proxy.start();
  await tenant.dial(provider.getMultiaddrs()[0]!);
}, 60_000);

afterAll(async () => {
  await proxy?.stop();
  await tenant?.stop();
  await provider?.stop();
  store?.close();
  job?.kill("SIGTERM");
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The tenant's open HTTP streams to the provider. */
const openStreams = (): number =>
  tenant
    .getConnections(provider.peerId)
    .flatMap((c) => c.streams)
    .filter((s) => s.protocol === protocols.http && s.status === "open").length;

async function get(streams: HttpStreams, query: string, extra: Partial<LeaseFetchParameters> = {}) {
  const res = await leaseFetch(
    { host: tenant },
    { peerId: provider.peerId.toString(), leaseId: 1n, method: "GET", path: `/predict?${query}`, streams, ...extra },
  );
  const pieces: Uint8Array[] = [];
  for await (const piece of res.body) pieces.push(piece);
  return { status: res.status, headers: res.headers, text: Buffer.concat(pieces).toString() };
}

describe("HTTP proxy: many requests on a stream (/baton/http/1.1.0)", () => {
  it("carries requests one after another on one stream, each answered by the job", async () => {
    const streams = httpStreams(tenant);
    try {
      for (let i = 0; i < 30; i++) {
        const res = await get(streams, `text=hello%20${i}`);
        expect(res.status).toBe(200);
        expect(JSON.parse(res.text)).toMatchObject({ model: "mlp-trigram-seed1" });
        expect(res.headers).toContainEqual(["x-baton-lease", "1"]);
      }
      expect(streams.idle(provider.peerId)).toBe(1);
      expect(openStreams()).toBe(1);
    } finally {
      streams.close();
    }
  });

  it("opens a stream per concurrent request, and reuses them for the next ones", async () => {
    const streams = httpStreams(tenant);
    try {
      const wave = () => Promise.all(Array.from({ length: 6 }, (_, i) => get(streams, `text=${i}&delay=100`)));
      expect((await wave()).map((r) => r.status)).toEqual(Array(6).fill(200));
      expect(streams.idle(provider.peerId)).toBe(6);
      expect((await wave()).map((r) => r.status)).toEqual(Array(6).fill(200));
      expect(streams.idle(provider.peerId)).toBe(6);
      expect(openStreams()).toBe(6);
    } finally {
      streams.close();
    }
  });

  it("a refusal (another peer's lease) is not delivered, and the stream goes on serving", async () => {
    const streams = httpStreams(tenant);
    try {
      await expect(get(streams, "text=x", { leaseId: 2n })).rejects.toBeInstanceOf(RequestNotSentError);
      expect(streams.idle(provider.peerId)).toBe(1);
      expect((await get(streams, "text=after")).status).toBe(200);
      expect(openStreams()).toBe(1);
    } finally {
      streams.close();
    }
  });

  it("a POST body streams through on a reused stream, and one over the job's limit is answered, not cut", async () => {
    const streams = httpStreams(tenant);
    const post = async (bytes: Uint8Array) => {
      const res = await leaseFetch(
        { host: tenant },
        {
          peerId: provider.peerId.toString(),
          leaseId: 1n,
          method: "POST",
          path: "/predict",
          headers: [["content-type", "application/json"]],
          body: (async function* () {
            for (let at = 0; at < bytes.byteLength; at += 100_000) yield bytes.subarray(at, at + 100_000);
          })(),
          streams,
        },
      );
      for await (const piece of res.body) void piece;
      return res.status;
    };
    try {
      expect(await post(new TextEncoder().encode(JSON.stringify({ text: "a longer input" })))).toBe(200);
      // 2 MiB: the job answers 413 after 1 MiB; the node drops the rest, and the stream is reused.
      expect(await post(new Uint8Array(2 * 1024 * 1024).fill(0x61))).toBe(413);
      expect((await get(streams, "text=after")).status).toBe(200);
      expect(openStreams()).toBe(1);
    } finally {
      streams.close();
    }
  });

  it("a request aborted mid-way resets its stream only: the next request takes a new one", async () => {
    const streams = httpStreams(tenant);
    try {
      expect((await get(streams, "text=first")).status).toBe(200);
      const aborted = new AbortController();
      const slow = get(streams, "text=slow&delay=5000", { signal: aborted.signal });
      await until(() => streams.idle(provider.peerId) === 0, 10_000, "the stream taken");
      aborted.abort(new Error("client gave up"));
      await expect(slow).rejects.toThrow("client gave up");
      expect(streams.idle(provider.peerId)).toBe(0);
      expect((await get(streams, "text=next")).status).toBe(200);
      expect(streams.idle(provider.peerId)).toBe(1);
    } finally {
      streams.close();
    }
  });

  it("speaks 1.0.0 too: one request on a stream, as older tenants send it", async () => {
    const stream = await tenant.dialProtocol(provider.peerId, protocols.httpOneShot);
    const reader = httpReader(stream);
    await writeHttpMessage(stream, { leaseId: "1", method: "GET", path: "/health", headers: [] }, undefined, {
      maxBodyBytes: 1024,
    });
    await stream.close();
    const response = await reader.next(httpResponseHeadSchema, { maxBodyBytes: 1024 });
    expect(response?.head.status).toBe(200);
  });
});

describe("HTTP proxy: the provider goes away", () => {
  it("its idle streams leave the pool, and a new request is known not to have been sent", async () => {
    const streams = httpStreams(tenant);
    try {
      expect((await get(streams, "text=before")).status).toBe(200);
      expect(streams.idle(provider.peerId)).toBe(1);
      await proxy.stop();
      await provider.stop();
      await until(() => streams.idle(provider.peerId) === 0, 10_000, "the idle stream dropped");
      const error = await get(streams, "text=after").catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RequestNotSentError);
      expect(error).toBeInstanceOf(ProviderFaultError);
    } finally {
      streams.close();
    }
  });
});
