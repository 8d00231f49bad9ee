import http from "node:http";
import { Readable } from "node:stream";

import { NoReplicaError, RequestNotRetriedError, shortMessageOf, type Service } from "../sdk/index.ts";
import { jsonReplacer } from "./output.ts";

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
      const hasBody = req.method !== "GET" && req.method !== "HEAD";
      const request = new Request(`http://service${req.url ?? "/"}`, {
        method: req.method ?? "GET",
        headers: Object.entries(req.headers).flatMap(([k, v]) =>
          v === undefined
            ? []
            : Array.isArray(v)
              ? v.map((x): [string, string] => [k, x])
              : [[k, v] as [string, string]],
        ),
        ...(hasBody ? { body: Readable.toWeb(req) as ReadableStream, duplex: "half" } : {}),
      } as RequestInit);
      const retryable = req.headers["x-baton-retryable"] === "1";
      try {
        const response = await service.fetch(request, { retryable });
        res.writeHead(response.status, Object.fromEntries(response.headers.entries()));
        if (response.body)
          for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) res.write(chunk);
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
