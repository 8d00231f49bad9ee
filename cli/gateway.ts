import { once } from "node:events";
import http from "node:http";
import https from "node:https";
import type { Duplex } from "node:stream";

import { Counter, Gauge, Histogram, Registry } from "prom-client";

import { NoReplicaError, ServiceBusyError, shortMessageOf, type Service } from "../sdk/index.ts";
import { jsonReplacer } from "./output.ts";
import { closeFrame, frameBoundaries, SERVICE_RESTART } from "./websocket-frames.ts";

/** Headers about the client's connection to the gateway, not the request: never forwarded. */
const CONNECTION_HEADERS = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/**
 * Headers of an upgrade request never forwarded: those of the client's connection that do not ask
 * for the upgrade (`Connection` and `Upgrade` do), and `Host`.
 */
const UPGRADE_DROPPED_HEADERS = new Set([
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "host",
]);

/** What the gateway records of a request that ended. */
interface RequestRecord {
  started: number;
  status: number;
  bytes: number;
  aborted: boolean;
  refused: string | undefined;
}

/** The gateway's own pages live under this prefix; everything else goes to the service. */
export const STATUS_PATH = "/_baton/status";

/** Prometheus metrics of the gateway, in text format (`text/plain; version=0.0.4`). */
export const METRICS_PATH = "/_baton/metrics";

/**
 * The gateway's Prometheus series: requests and their latency as clients saw them, the service's
 * retries, hedges and refusals, and each replica's state and load, read at scrape time.
 */
function gatewayMetrics(service: Service): { registry: Registry; requests: Counter; latency: Histogram } {
  const registry = new Registry();
  const requests = new Counter({
    name: "baton_gateway_requests_total",
    help: "Requests answered by the gateway, by method and status",
    labelNames: ["method", "status"] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: "baton_gateway_request_duration_seconds",
    help: "Time from a request's arrival to the end of its response",
    labelNames: ["method"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  const counted = (name: string, help: string, key: "retries" | "hedges" | "busy") =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(service.stats()[key]);
      },
    });
  counted("baton_service_retries_total", "Attempts sent again after a replica failed a request", "retries");
  counted("baton_service_hedges_total", "Second attempts sent because the first was slow", "hedges");
  counted("baton_service_busy_total", "Requests refused because every replica and the queue were full", "busy");
  new Gauge({
    name: "baton_replica_state",
    help: "1 for each replica's current state",
    labelNames: ["replica", "state"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const r of service.replicas()) this.set({ replica: String(r.index), state: r.state }, 1);
    },
  });
  new Gauge({
    name: "baton_replica_in_flight",
    help: "Requests in flight on each replica",
    labelNames: ["replica"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const r of service.replicas()) this.set({ replica: String(r.index) }, r.outstanding);
    },
  });
  new Gauge({
    name: "baton_replica_failed_total",
    help: "Attempts that failed on each replica",
    labelNames: ["replica"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const r of service.replicas()) this.set({ replica: String(r.index) }, r.failed);
    },
  });
  return { registry, requests, latency };
}

/** The largest request body the gateway takes by default: the provider node's own limit. */
export const MAX_REQUEST_BODY_BYTES = 64 * 1024 * 1024;

/** How long a request may take, retries and its response body included, unless a route says otherwise. */
export const DEFAULT_ROUTE_TIMEOUT_MS = 30_000;

/** A deadline for the requests whose path starts with `prefix`. */
export interface RouteTimeout {
  prefix: string;
  ms: number;
}

export interface GatewayOptions {
  /** Largest request body; a larger one is answered 413 and never reaches a replica. Default 64 MiB. */
  maxRequestBodyBytes?: number;
  /** Where each request's access-log line goes (one JSON object per line); none by default. */
  accessLog?: (line: string) => void;
  /**
   * Deadlines by path prefix, the longest matching prefix winning (a streaming route wants more than
   * {@link DEFAULT_ROUTE_TIMEOUT_MS}, a health check less). Past its deadline a request is answered
   * 504, or its response cut if it had begun.
   */
  routeTimeouts?: readonly RouteTimeout[];
  /** A certificate chain and its private key (PEM): the gateway serves HTTPS instead of HTTP. */
  tls?: { cert: string | Buffer; key: string | Buffer };
}

/** The deadline of a request to `path`: its longest matching route's, else the default. */
export function routeTimeout(routes: readonly RouteTimeout[], path: string): number {
  let best: RouteTimeout | undefined;
  for (const route of routes) {
    if (path.startsWith(route.prefix) && (!best || route.prefix.length > best.prefix.length)) best = route;
  }
  return best?.ms ?? DEFAULT_ROUTE_TIMEOUT_MS;
}

/** Why the gateway answers an error itself: the status and a name the client can act on. */
class GatewayRefusal extends Error {
  readonly status: number;
  override readonly name: string;

  constructor(status: number, name: string, message: string) {
    super(message);
    this.status = status;
    this.name = name;
  }
}

/** Yields `body`, refusing (413) once it passes `max` bytes. */
async function* limited(body: AsyncIterable<Uint8Array>, max: number): AsyncGenerator<Uint8Array> {
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > max) throw new GatewayRefusal(413, "RequestTooLarge", `the request body is over ${max} bytes`);
    yield chunk;
  }
}

/**
 * Serves HTTP (HTTPS when given `tls`) on 127.0.0.1:`port` in front of a service: every request goes to a healthy replica, within its route's deadline;
 * `/_baton/status` shows the replicas (HTML, or JSON with `Accept: application/json`),
 * `/_baton/metrics` the Prometheus metrics (requests, latency, retries, replica health). A body over
 * the size limit is answered 413; a service whose replicas and queue are all full, 503 with
 * `retry-after`; each request is logged as a JSON line when `accessLog` is given.
 */
export function startGateway(
  service: Service,
  port: number,
  names: Map<string, string> = new Map(),
  { maxRequestBodyBytes = MAX_REQUEST_BODY_BYTES, accessLog, routeTimeouts = [], tls }: GatewayOptions = {},
): Promise<http.Server> {
  const metrics = gatewayMetrics(service);
  /** Counts a request that ended, and logs it. `refused`: the `x-baton-error` the gateway answered with. */
  const record = (req: http.IncomingMessage, { started, status, bytes, aborted, refused }: RequestRecord): void => {
    const method = req.method ?? "GET";
    metrics.requests.inc({ method, status: String(status) });
    metrics.latency.observe({ method }, (performance.now() - started) / 1000);
    accessLog?.(
      JSON.stringify({
        time: new Date().toISOString(),
        method: req.method,
        path: req.url,
        status,
        ms: Number((performance.now() - started).toFixed(2)),
        bytes,
        ...(req.headers.upgrade ? { upgrade: req.headers.upgrade } : {}),
        ...(aborted ? { aborted: true } : {}),
        ...(refused ? { error: refused } : {}),
      }),
    );
  };
  /** What the gateway answers for a request that failed: past its deadline (`timedOut` ms) 504, else by its error. */
  const refusalFor = (error: unknown, timedOut: number | undefined): GatewayRefusal => {
    // A body refused on its way to the replica comes back wrapped in the request's failure.
    for (let e: unknown = error; e instanceof Error; e = e.cause) if (e instanceof GatewayRefusal) return e;
    if (timedOut !== undefined) {
      return new GatewayRefusal(504, "GatewayTimeout", `no answer within the route's ${timedOut} ms`);
    }
    const name = error instanceof Error ? error.name : "Error";
    const status = error instanceof NoReplicaError || error instanceof ServiceBusyError ? 503 : 502;
    return new GatewayRefusal(status, name, shortMessageOf(error));
  };
  const handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const started = performance.now();
    const deadlineMs = routeTimeout(routeTimeouts, req.url ?? "/");
    let bytes = 0;
    /** The `x-baton-error` the gateway answered with, if it answered an error itself. */
    let refused: string | undefined;
    /** The content type of the replica's response, once its head went out. */
    let sentType: string | undefined;
    // A client that goes away cancels its request: the stream to the replica is let go.
    const gone = new AbortController();
    res.once("close", () => {
      if (!res.writableFinished) gone.abort(new Error("the client went away"));
      record(req, { started, status: res.statusCode, bytes, aborted: !res.writableFinished, refused });
    });
    void (async () => {
      if (req.url === STATUS_PATH || req.url === `${STATUS_PATH}.json`) return status(req, res);
      if (req.url === METRICS_PATH) {
        res.writeHead(200, { "content-type": metrics.registry.contentType });
        res.end(await metrics.registry.metrics());
        return;
      }
      const method = req.method ?? "GET";
      const headers: [string, string][] = [];
      for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i]!;
        if (!CONNECTION_HEADERS.has(name.toLowerCase())) headers.push([name, req.rawHeaders[i + 1]!]);
      }
      const hasBody = method !== "GET" && method !== "HEAD";
      const declared = Number(req.headers["content-length"] ?? 0);
      if (declared > maxRequestBodyBytes) {
        refused = "RequestTooLarge";
        res.writeHead(413, {
          "content-type": "application/json",
          "x-baton-error": "RequestTooLarge",
          connection: "close",
        });
        res.end(JSON.stringify({ error: `the request body is over ${maxRequestBodyBytes} bytes` }));
        return;
      }
      const retryable = req.headers["x-baton-retryable"] === "1";
      try {
        const response = await service.forward(
          { method, path: req.url ?? "/", headers, ...(hasBody ? { body: limited(req, maxRequestBodyBytes) } : {}) },
          { retryable, deadlineMs, signal: gone.signal },
        );
        sentType = response.headers.find(([name]) => name.toLowerCase() === "content-type")?.[1];
        res.writeHead(response.status, response.headers.flat());
        // Backpressure: a slow client slows the read from the replica, nothing piles up here.
        for await (const chunk of response.body) {
          bytes += chunk.byteLength;
          if (!res.write(chunk)) await once(res, "drain", { signal: gone.signal });
        }
        res.end();
      } catch (error) {
        const refusal = refusalFor(
          error,
          performance.now() - started >= deadlineMs && !gone.signal.aborted ? deadlineMs : undefined,
        );
        refused = refusal.name;
        if (!res.headersSent) {
          res.writeHead(refusal.status, {
            "content-type": "application/json",
            "x-baton-error": refusal.name,
            ...(refusal.status === 503 ? { "retry-after": "1" } : {}),
            // The rest of a refused body is not read: the connection cannot carry another request.
            ...(refusal.status === 413 ? { connection: "close" } : {}),
          });
          res.end(JSON.stringify({ error: refusal.message }));
        } else if (sentType?.startsWith("text/event-stream")) {
          // An event stream cut by its replica's failure ends with an event that says so, which a
          // client can act on (reconnect: the next request goes to a live replica).
          res.end(`event: baton-error\ndata: ${JSON.stringify({ error: refusal.name, message: refusal.message })}\n\n`);
        } else res.destroy(error as Error);
      }
    })();
  };
  /**
   * A WebSocket (or another protocol upgrade) through to a replica: the handshake within the
   * route's deadline, then the bytes both ways until either side ends the connection. A replica
   * lost mid-connection ends a WebSocket with a close frame 1012 (service restart), for the client
   * to connect again, when the replica's last frame was whole; otherwise the connection is cut.
   */
  const upgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    const started = performance.now();
    const deadlineMs = routeTimeout(routeTimeouts, req.url ?? "/");
    const headers: [string, string][] = [];
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
      const name = req.rawHeaders[i]!;
      if (!UPGRADE_DROPPED_HEADERS.has(name.toLowerCase())) headers.push([name, req.rawHeaders[i + 1]!]);
    }
    const gone = new AbortController();
    socket.once("close", () => gone.abort(new Error("the client went away")));
    // A client's reset ends the connection through "close"; the error itself says nothing more.
    socket.on("error", () => undefined);
    const fromClient = (async function* () {
      if (head.byteLength > 0) yield head;
      for await (const chunk of socket) yield chunk as Buffer;
    })();
    const frames = req.headers.upgrade?.toLowerCase() === "websocket" ? frameBoundaries() : undefined;
    let status = 0;
    let bytes = 0;
    let refused: string | undefined;
    void (async () => {
      try {
        const response = await service.upgrade(
          { method: req.method ?? "GET", path: req.url ?? "/", headers, body: fromClient },
          { deadlineMs, signal: gone.signal },
        );
        status = response.status;
        // Names and values come from the provider: a line break in one would forge a header.
        const lines = response.headers
          .filter(([name, value]) => !/[\r\n]/.test(name + value))
          .map(([name, value]) => `${name}: ${value}`);
        if (status !== 101) lines.push("connection: close");
        socket.write(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\n${lines.join("\r\n")}\r\n\r\n`);
        for await (const chunk of response.body) {
          bytes += chunk.byteLength;
          if (status === 101) frames?.feed(chunk);
          if (!socket.write(chunk)) await once(socket, "drain", { signal: gone.signal });
        }
        socket.end();
      } catch (error) {
        const refusal = refusalFor(
          error,
          status === 0 && performance.now() - started >= deadlineMs && !gone.signal.aborted ? deadlineMs : undefined,
        );
        refused = refusal.name;
        if (status === 0) {
          status = refusal.status;
          const body = JSON.stringify({ error: refusal.message });
          socket.end(
            `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\ncontent-type: application/json\r\n` +
              `x-baton-error: ${refusal.name}\r\n${status === 503 ? "retry-after: 1\r\n" : ""}` +
              `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
          );
        } else if (status === 101 && frames?.atBoundary && !gone.signal.aborted) {
          socket.end(closeFrame(SERVICE_RESTART, `${refusal.name}: the replica was lost; connect again`));
        } else socket.destroy();
      } finally {
        record(req, { started, status, bytes, aborted: gone.signal.aborted, refused });
      }
    })();
  };
  const server = tls ? https.createServer(tls, handle) : http.createServer(handle);
  server.on("upgrade", upgrade);
  const status = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const replicas = service.replicas();
    if (req.url?.endsWith(".json") || req.headers.accept?.includes("application/json")) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ replicas }, jsonReplacer));
      return;
    }
    const rows = replicas
      .map(
        (r) =>
          `<tr><td>${r.index}</td><td>${r.state}</td><td>${r.leaseId ?? "-"}</td><td>${names.get(r.provider?.toLowerCase() ?? "") ?? r.provider ?? "-"}</td>` +
          `<td>${r.outstanding}</td><td>${r.served}</td><td>${r.failed}</td><td>${r.latencyMs?.toFixed(1) ?? "-"}</td><td>${r.handOffs}</td></tr>`,
      )
      .join("");
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(
      `<!doctype html><title>Baton service</title><meta http-equiv="refresh" content="2"><h1>Replicas</h1>` +
        `<table border="1" cellpadding="4"><tr><th>#</th><th>state</th><th>lease</th><th>provider</th><th>in flight</th><th>served</th><th>failed</th><th>latency ms</th><th>hand-offs</th></tr>${rows}</table>`,
    );
  };
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}
