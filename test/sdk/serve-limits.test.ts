import { mkdtemp, readFile, rm } from "node:fs/promises";
import type { Server } from "node:http";
import https from "node:https";
import os from "node:os";
import path from "node:path";

import { parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { DEFAULT_ROUTE_TIMEOUT_MS, routeTimeout, startGateway } from "../../cli/gateway.ts";
import { parseRouteTimeouts } from "../../cli/serve.ts";
import { selfSignedCertificate } from "../../deploy/certificate.ts";
import { serve, type Service } from "../../sdk/actions/serve.ts";
import { readJobFile } from "../../sdk/job-spec.ts";
import { startMarket, type Market } from "../helpers/market.ts";
import { nodeMetrics, sample } from "../helpers/node-metrics.ts";
import { root, until } from "../helpers/processes.ts";

/** The gateway's limits, on one replica of the example server on a real provider. */
let market: Market;
let dir: string;
let service: Service;
let gateway: Server;
let base: string;
const accessLog: Record<string, unknown>[] = [];
const MAX_BODY = 64 * 1024;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-serve-limits-"));
  market = await startMarket({
    providers: 1,
    config: {
      cpuJobs: true,
      price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
      chainHeartbeatPeriodS: 1,
      chainHeartbeatTimeoutS: 6,
    },
  });
  const client = await market.client(0, path.join(dir, "tenant"));
  const { spec, files } = await readJobFile(path.join(root, "examples/serve/serve.yaml"));
  service = await serve(client, spec, {
    replicas: 1,
    maxPricePerSecond: parseEther("0.001"),
    files,
    maxConcurrentPerReplica: 2,
    maxQueued: 1,
  });
  await service.ready(1, 120_000);
  gateway = await startGateway(service, 0, new Map(), {
    maxRequestBodyBytes: MAX_BODY,
    accessLog: (line) => accessLog.push(JSON.parse(line) as Record<string, unknown>),
  });
  base = `http://127.0.0.1:${(gateway.address() as { port: number }).port}`;
}, 300_000);

afterAll(async () => {
  gateway?.close();
  await service?.close().catch(() => undefined);
  await market?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const predict = (text: string) => JSON.stringify({ text });

/** A WebSocket to the gateway at `path`, open: its messages parsed one by one, and how it closed. */
async function webSocket(path: string) {
  const ws = new WebSocket(`${base.replace("http", "ws")}${path}`);
  const messages: unknown[] = [];
  const waiting: ((message: unknown) => void)[] = [];
  ws.addEventListener("message", (event) => {
    const message = JSON.parse(String(event.data)) as unknown;
    const waiter = waiting.shift();
    if (waiter) waiter(message);
    else messages.push(message);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.addEventListener("close", (event) => resolve({ code: event.code, reason: event.reason })),
  );
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve);
    ws.addEventListener("error", () => reject(new Error(`the WebSocket to ${path} failed`)));
  });
  const next = (): Promise<unknown> =>
    messages.length > 0 ? Promise.resolve(messages.shift()) : new Promise((resolve) => waiting.push(resolve));
  return { ws, next, closed };
}

describe("serve: the gateway's limits", () => {
  it("answers 413 to a body over the limit, by its content-length, and never sends it to the replica", async () => {
    const served = service.replicas()[0]!.served;
    const res = await fetch(`${base}/predict`, { method: "POST", body: predict("x".repeat(MAX_BODY)) });
    expect(res.status).toBe(413);
    expect(res.headers.get("x-baton-error")).toBe("RequestTooLarge");
    expect(service.replicas()[0]!.served).toBe(served);
    // Under the limit, the same request goes through.
    const ok = await fetch(`${base}/predict`, { method: "POST", body: predict("a short one") });
    expect(ok.status).toBe(200);
  });

  it("answers 413 to a streamed body (no content-length) once it passes the limit", async () => {
    const chunk = new TextEncoder().encode("y".repeat(16 * 1024));
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= 2 * MAX_BODY) return controller.close();
        sent += chunk.byteLength;
        controller.enqueue(chunk);
      },
    });
    const res = await fetch(`${base}/predict`, { method: "POST", body, duplex: "half" } as RequestInit);
    expect(res.status).toBe(413);
    expect(res.headers.get("x-baton-error")).toBe("RequestTooLarge");
  });

  it("queues requests past the replica's limit, and answers 503 with retry-after once the queue is full", async () => {
    const slow = async (i: number) => {
      const res = await fetch(`${base}/predict?text=${i}&delay=3000`);
      await res.arrayBuffer();
      return {
        status: res.status,
        error: res.headers.get("x-baton-error"),
        retryAfter: res.headers.get("retry-after"),
      };
    };
    const first = [slow(1), slow(2)];
    await until(() => service.replicas()[0]!.outstanding === 2, 20_000, "two requests in flight");
    // The replica is full: of two more, one waits in the queue (of 1) and the other is refused.
    const answers = await Promise.all([...first, slow(3), slow(4)]);
    expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 200, 503]);
    expect(answers.find((a) => a.status === 503)).toEqual({ status: 503, error: "ServiceBusyError", retryAfter: "1" });
  });

  it("logs every request as one JSON line", async () => {
    await until(() => accessLog.some((l) => l.status === 503), 5_000, "the 503 logged");
    for (const status of [200, 413, 503]) {
      expect(accessLog).toContainEqual(
        expect.objectContaining({
          method: expect.any(String),
          path: expect.any(String),
          status,
          ms: expect.any(Number),
        }),
      );
    }
    expect(accessLog).toContainEqual(expect.objectContaining({ status: 503, error: "ServiceBusyError" }));
  });

  it("exposes Prometheus metrics: requests by status, latency, refusals, replica state", async () => {
    const res = await fetch(`${base}/_baton/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toMatch(/^baton_gateway_requests_total\{method="GET",status="503"\} 1$/m);
    expect(text).toMatch(/^baton_gateway_requests_total\{method="POST",status="413"\} 2$/m);
    expect(text).toMatch(/^baton_gateway_request_duration_seconds_count\{method="GET"\} [1-9]\d*$/m);
    expect(text).toMatch(/^baton_service_busy_total 1$/m);
    expect(text).toMatch(/^baton_replica_state\{replica="0",state="ready"\} 1$/m);
    expect(text).toMatch(/^baton_replica_in_flight\{replica="0"\} 0$/m);
  });

  it("answers 504 past a route's deadline, before the replica answers; other routes keep theirs", async () => {
    const timed = await startGateway(service, 0, new Map(), {
      routeTimeouts: [
        { prefix: "/predict", ms: 1_000 },
        { prefix: "/predict-slowly", ms: 60_000 },
      ],
    });
    try {
      const url = `http://127.0.0.1:${(timed.address() as { port: number }).port}`;
      const sentAt = Date.now();
      const late = await fetch(`${url}/predict?text=slow&delay=10000`);
      expect(late.status).toBe(504);
      expect(late.headers.get("x-baton-error")).toBe("GatewayTimeout");
      expect(await late.text()).toMatch(/within the route's 1000 ms/);
      // Answered by the deadline, not by the replica, which holds the request for 10 s.
      expect(Date.now() - sentAt).toBeLessThan(9_000);
      expect((await fetch(`${url}/health`)).status).toBe(200);
    } finally {
      timed.close();
    }
  });

  it("serves HTTPS when given a certificate and its key", async () => {
    const { certFile, keyFile } = await selfSignedCertificate(dir);
    const cert = await readFile(certFile);
    const secure = await startGateway(service, 0, new Map(), { tls: { cert, key: await readFile(keyFile) } });
    try {
      const { port } = secure.address() as { port: number };
      const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        https
          .get(`https://127.0.0.1:${port}/predict?text=secure`, { ca: cert }, (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (chunk: string) => (body += chunk));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
          })
          .on("error", reject);
      });
      expect(answer.status).toBe(200);
      expect(JSON.parse(answer.body)).toMatchObject({ label: expect.any(String), model: expect.any(String) });
      // Plain HTTP to the HTTPS port gets no answer from the service.
      await expect(fetch(`http://127.0.0.1:${port}/predict?text=plain`)).rejects.toThrow();
    } finally {
      secure.close();
    }
  });

  it("passes a WebSocket through: the handshake, messages both ways and pushed ones, and the close", async () => {
    const socket = await webSocket("/ws?every=300");
    const first = (await socket.next()) as { tick: number; lease: string };
    expect(first).toEqual({ tick: 0, lease: service.replicas()[0]!.leaseId!.toString() });
    socket.ws.send("what a lovely day");
    const direct = (await (
      await fetch(`${base}/predict?text=${encodeURIComponent("what a lovely day")}`)
    ).json()) as object;
    let answer: Record<string, unknown>;
    do answer = (await socket.next()) as Record<string, unknown>;
    while ("tick" in answer);
    expect(answer).toEqual({ lease: first.lease, ...direct });
    socket.ws.close(1000, "done");
    expect(await socket.closed).toMatchObject({ code: 1000, reason: "done" });
    await until(
      () => accessLog.some((line) => line.upgrade === "websocket"),
      10_000,
      "the WebSocket's access-log line",
    );
    expect(accessLog.find((line) => line.upgrade === "websocket")).toMatchObject({
      path: "/ws?every=300",
      status: 101,
    });
  });

  it("passes on a refused handshake: the client's WebSocket fails, the replica's answer in the log", async () => {
    const socket = new WebSocket(`${base.replace("http", "ws")}/not-a-socket`);
    // Node's WebSocket fires "error" on a refused handshake (and, as of Node 22.23, no "close").
    const failed = await new Promise<string>((resolve) => {
      socket.addEventListener("error", () => resolve("error"));
      socket.addEventListener("open", () => resolve("open"));
    });
    expect(failed).toBe("error");
    await until(() => accessLog.some((line) => line.path === "/not-a-socket"), 10_000, "the refusal's access-log line");
    expect(accessLog.find((line) => line.path === "/not-a-socket")).toMatchObject({
      status: 400,
      upgrade: "websocket",
    });
  });

  // Last: it kills the only provider.
  it("ends server-sent events with an error event, and a WebSocket with close code 1012, when the replica dies", async () => {
    const socket = await webSocket("/ws?every=200");
    await socket.next();
    const res = await fetch(`${base}/stream?text=tokens&n=10000&every=500`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const events = () => text.split("\n\n").filter((e) => e.startsWith("data: "));
    // Three events (1.5 s) of a stream that would take minutes to fill the 64 KiB read-ahead: they
    // came through as they were sent.
    while (events().length < 3) text += (await reader.read()).value ?? "";
    const leases = new Set(events().map((e) => (JSON.parse(e.slice(6)) as { lease: string }).lease));
    expect(leases.size).toBe(1);
    market.providers[0]!.process!.child.kill("SIGKILL");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    const last = text.trimEnd().split("\n\n").at(-1)!;
    expect(last).toMatch(/^event: baton-error\ndata: \{"error":"\w+","message":".+"\}$/);
    expect(events().length).toBeLessThan(10_000);
    // Service restart: the client may connect again (to a live replica).
    expect(await socket.closed).toMatchObject({ code: 1012, reason: expect.stringMatching(/connect again/) });
  });
});

describe("a replica that never passes its readiness probe", () => {
  it("is given up after the readiness timeout, its job cancelled, and a fresh replica takes its place", async () => {
    // The test before killed the market's one provider.
    await market.providers[0]!.start();
    const client = await market.client(1, path.join(dir, "tenant-unready"));
    const { spec, files } = await readJobFile(path.join(root, "examples/serve/serve.yaml"));
    const unready = await serve(
      client,
      { ...spec, service: { ...spec.service!, readinessPath: "/never-ready" } },
      { replicas: 1, maxPricePerSecond: parseEther("0.001"), files, readinessTimeoutMs: 3_000 },
    );
    try {
      const first = unready.replicas()[0]!.jobId;
      // Replaced: a replica with another job in its place (the fresh one, unready too, is replaced in turn).
      await until(
        () => unready.replicas().some((replica) => replica.jobId !== first),
        60_000,
        "a fresh replica in place of the unready one",
      );
      expect(unready.replicas().map((replica) => replica.jobId)).not.toContain(first);
      await until(
        async () => (await client.jobs.get(first))?.state === "cancelled",
        30_000,
        "the unready replica's job cancelled",
      );
    } finally {
      await unready.close();
    }
  });
});

describe("a replica whose server listens late", () => {
  it("is probed on its lane, which the node answers 503 not-delivered until the job listens, then serves", async () => {
    const provider = market.providers[0]!;
    const lanes = async (outcome: string): Promise<number> =>
      sample(await nodeMetrics(provider.process!), `baton_http_lanes_total{outcome="${outcome}"}`) || 0;
    const notListening = await lanes("not-listening");
    const client = await market.client(2, path.join(dir, "tenant-late"));
    const { spec, files } = await readJobFile(path.join(root, "examples/serve/serve.yaml"));
    // The job runs 5 s before its server listens: the probes in that time reach a running lease.
    const late = await serve(
      client,
      { ...spec, command: ["sh", "-c", "sleep 5; exec node server.mjs"] },
      { replicas: 1, maxPricePerSecond: parseEther("0.001"), files },
    );
    try {
      await late.ready(1, 120_000);
      // Each probe before the job listened was a lane the node joined to nothing, and refused as
      // not delivered (so the SDK may send it again); the one that passed went on a lane too.
      expect(await lanes("not-listening")).toBeGreaterThan(notListening);
      expect(late.stats().lanes.leases).toBe(1);
      const res = await late.fetch(new Request("http://service/predict?text=late"));
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ model: "mlp-trigram-seed1" });
    } finally {
      await late.close();
    }
  });
});

describe("a replica whose server closes idle connections early, unannounced", () => {
  it("fails no POST sent on a connection as its server closes it: the node answers it not delivered, the SDK sends it again, the job gets it once", async () => {
    const provider = market.providers[0]!;
    const client = await market.client(3, path.join(dir, "tenant-idle-close"));
    const { spec, files } = await readJobFile(path.join(root, "examples/serve/serve.yaml"));
    // The server closes a connection idle for 200 ms, unannounced: the SDK would keep it for 4 s.
    const closing = await serve(
      client,
      { ...spec, env: { ...spec.env, SERVE_IDLE_CLOSE_MS: "200" } },
      { replicas: 1, maxPricePerSecond: parseEther("0.001"), files },
    );
    try {
      await closing.ready(1, 120_000);
      const held: string[] = [];
      for (const job of closing.jobs()) {
        job.on("log", (event) => {
          if (event.line.startsWith("holding POST")) held.push(event.line);
        });
      }
      const post = async (text: string) => {
        const res = await closing.fetch(
          new Request("http://service/predict?delay=1", { method: "POST", body: predict(text) }),
        );
        return { status: res.status, body: await res.text() };
      };
      // Requests go on the replica's lane once it has one (the first ones may go over libp2p).
      await until(
        async () => {
          await (await closing.fetch(new Request("http://service/health"))).text();
          return closing.stats().lanes.leases === 1;
        },
        30_000,
        "a lane to the replica",
      );
      expect((await post("first")).status).toBe(200);
      const retries = closing.stats().retries;
      // The node stopped while the server closes the connection the first POST went on, and the
      // next POST is sent on it: the node takes the server's close and the POST in one go, as when
      // a request crosses the close on the wire. (Cut under the POST, the lane failed it, maybe
      // delivered: RequestNotRetriedError.)
      provider.process!.child.kill("SIGSTOP");
      let second: Promise<{ status: number; body: string }>;
      try {
        await new Promise((resolve) => setTimeout(resolve, 500));
        second = post("second");
        await new Promise((resolve) => setTimeout(resolve, 200));
      } finally {
        provider.process!.child.kill("SIGCONT");
      }
      expect(await second).toMatchObject({ status: 200 });
      expect(closing.stats().retries).toBe(retries + 1);
      // Each POST reached the job once: the second was not sent again after the job had it.
      await until(() => held.length >= 2, 10_000, "both POSTs held by the job");
      expect(held).toHaveLength(2);
    } finally {
      await closing.close();
    }
  });
});

describe("the gateway's options", () => {
  it("takes the longest matching route's deadline, else the default", () => {
    const routes = [
      { prefix: "/v1", ms: 5_000 },
      { prefix: "/v1/stream", ms: 600_000 },
    ];
    expect(routeTimeout(routes, "/v1/stream?n=3")).toBe(600_000);
    expect(routeTimeout(routes, "/v1/predict")).toBe(5_000);
    expect(routeTimeout(routes, "/health")).toBe(DEFAULT_ROUTE_TIMEOUT_MS);
  });

  it("parses --route-timeout, and refuses what is not /prefix=milliseconds", () => {
    expect(parseRouteTimeouts(["/stream=600000", "/a=b=5"])).toEqual([
      { prefix: "/stream", ms: 600_000 },
      { prefix: "/a=b", ms: 5 },
    ]);
    expect(() => parseRouteTimeouts(["stream=5"])).toThrow(
      "--route-timeout takes /path-prefix=milliseconds, not stream=5",
    );
    expect(() => parseRouteTimeouts(["/stream"])).toThrow("--route-timeout takes /path-prefix=milliseconds");
    expect(() => parseRouteTimeouts(["/stream=0"])).toThrow(/--route-timeout must be from 1 to 86400000/);
    expect(() => parseRouteTimeouts(["/stream=soon"])).toThrow(/--route-timeout/);
  });
});
