import { once } from "node:events";
import http from "node:http";

import { NoReplicaError, RequestNotRetriedError, shortMessageOf, type Service } from "../sdk/index.ts";
import { jsonReplacer } from "./output.ts";

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

/** The gateway's own pages live under this prefix; everything else goes to the service. */
export const STATUS_PATH = "/_baton/status";

/**
 * Serves HTTP on 127.0.0.1:`port` in front of a service: every request goes to a healthy replica;
 * `/_baton/status` shows the replicas (HTML, or JSON with `Accept: application/json`).
 */
export function startGateway(
  service: Service,
  port: number,
  names: Map<string, string> = new Map(),
): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    void (async () => {
      if (req.url === STATUS_PATH || req.url === `${STATUS_PATH}.json`) return status(req, res);
      const method = req.method ?? "GET";
      const headers: [string, string][] = [];
      for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i]!;
        if (!CONNECTION_HEADERS.has(name.toLowerCase())) headers.push([name, req.rawHeaders[i + 1]!]);
      }
      const hasBody = method !== "GET" && method !== "HEAD";
      const retryable = req.headers["x-baton-retryable"] === "1";
      // A client that goes away cancels its request: the stream to the replica is let go.
      const gone = new AbortController();
      res.once("close", () => {
        if (!res.writableFinished) gone.abort(new Error("the client went away"));
      });
      try {
        const response = await service.forward(
          { method, path: req.url ?? "/", headers, ...(hasBody ? { body: req } : {}) },
          { retryable, signal: gone.signal },
        );
        res.writeHead(response.status, response.headers.flat());
        // Backpressure: a slow client slows the read from the replica, nothing piles up here.
        for await (const chunk of response.body) {
          if (!res.write(chunk)) await once(res, "drain", { signal: gone.signal });
        }
        res.end();
      } catch (error) {
        const status = error instanceof RequestNotRetriedError ? 502 : error instanceof NoReplicaError ? 503 : 502;
        const message = shortMessageOf(error);
        if (!res.headersSent) {
          res.writeHead(status, {
            "content-type": "application/json",
            "x-baton-error": error instanceof Error ? error.name : "Error",
          });
          res.end(JSON.stringify({ error: message }));
        } else res.destroy(error as Error);
      }
    })();
  });
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
