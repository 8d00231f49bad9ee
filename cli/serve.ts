import http from "node:http";
import { Readable } from "node:stream";
import { parseArgs } from "node:util";

import { formatEther } from "viem";

import {
  NoReplicaError,
  readJobFile,
  RequestNotRetriedError,
  serve,
  shortMessageOf,
  UserError,
  type Service,
} from "../sdk/index.ts";
import { amount, common, connect } from "./job.ts";

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
      res.end(JSON.stringify({ replicas }, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)));
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

async function serveCommand(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...common,
      replicas: { type: "string", default: "3" },
      port: { type: "string", default: "8080" },
      "max-price": { type: "string" },
      budget: { type: "string" },
    },
  });
  const file = positionals[0];
  if (!file) throw new UserError("usage: baton serve <spec.yaml> --replicas 3 --port 8080 --max-price <tokens/s>");
  const replicas = Number(values.replicas);
  if (!Number.isInteger(replicas) || replicas < 1) throw new UserError("--replicas must be 1 or more");
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new UserError("--port must be a TCP port");
  const maxPricePerSecond = amount(values["max-price"], "--max-price");
  if (maxPricePerSecond === undefined) throw new UserError("give --max-price: the most to pay per second per replica");
  const budget = amount(values.budget, "--budget");
  const { spec, files } = await readJobFile(file);
  const { client, names } = await connect(values);
  const service = await serve(client, spec, {
    replicas,
    maxPricePerSecond,
    ...(budget === undefined ? {} : { budgetPerReplica: budget }),
    files,
  });
  for (const job of service.jobs()) {
    job.on("re-leased", (e) =>
      console.log(`replica moved: lease ${e.from} → ${e.to} on ${names.get(e.provider.toLowerCase()) ?? e.provider}`),
    );
    job.on("slashed", (e) => console.log(`lease ${e.leaseId} slashed; compensation ${formatEther(e.compensation)}`));
  }
  console.log(`leasing ${replicas} replica(s) …`);
  await service.ready();
  const server = await startGateway(service, port, names);
  const address = server.address() as { port: number };
  console.log(`gateway on http://127.0.0.1:${address.port}  (status: http://127.0.0.1:${address.port}${STATUS_PATH})`);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  console.log("stopping: closing every replica's lease …");
  server.close();
  await service.close();
  await client.close();
}

export const serveCommands = {
  start: {
    run: serveCommand,
    help: "serve a spec on N providers behind a local HTTP gateway: --replicas 3 --port 8080",
  },
};
