/**
 * `baton explorer`'s web server: the pages (one HTML shell and its script, cli/explorer/web/), the
 * chart and graph libraries they use, served from the package so that the pages load with no
 * internet, a JSON API over the index (cli/explorer/api.ts), and a stream of server-sent events
 * that tells open pages when the index moved, so that they update without a reload.
 */
import { readFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { createRequire } from "node:module";
import path from "node:path";

import type { Indexer, SyncResult } from "../../sdk/indexer/indexer.ts";
import { jobView, leaseView, networkView, providerView, transactionView } from "./api.ts";

const require = createRequire(import.meta.url);
const web = path.join(import.meta.dirname, "web");

/** Files the pages load, by URL path: ours, and the libraries' browser builds from node_modules. */
const ASSETS: Record<string, { file: string; type: string }> = {
  "/assets/app.js": { file: path.join(web, "app.js"), type: "text/javascript" },
  "/assets/app.css": { file: path.join(web, "app.css"), type: "text/css" },
  "/assets/uPlot.js": { file: require.resolve("uplot/dist/uPlot.iife.min.js"), type: "text/javascript" },
  "/assets/uPlot.css": { file: require.resolve("uplot/dist/uPlot.min.css"), type: "text/css" },
  // dagre's package exports only its entry points: its browser build lies next to them.
  "/assets/dagre.js": {
    file: path.join(path.dirname(require.resolve("@dagrejs/dagre")), "dagre.min.js"),
    type: "text/javascript",
  },
};

/** A lease id in an API path: a uint256 in decimal (`openLeaseFor`'s ids have 19 or 20 digits). */
const LEASE_ID = /^\d{1,78}$/;

/** Page paths the shell answers; the script reads the path and draws the page. */
const PAGES = /^\/(?:$|provider\/0x[0-9a-fA-F]{40}$|lease\/\d+$|job\/0x[0-9a-fA-F]{64}$|tx\/0x[0-9a-fA-F]{64}$)/;

export interface StartExplorerParameters {
  indexer: Indexer;
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** How often the indexer looks for new blocks. */
  pollIntervalMs?: number;
  /** Told of a failed sync; the indexer tries again at its next poll. */
  onError: (error: unknown) => void;
  onSynced?: (result: SyncResult) => void;
}

export interface Explorer {
  url: string;
  close(): Promise<void>;
}

/** Starts indexing and serving; resolves once the server listens. */
export async function startExplorer({
  indexer,
  host,
  port,
  pollIntervalMs,
  onError,
  onSynced,
}: StartExplorerParameters): Promise<Explorer> {
  const streams = new Set<ServerResponse>();
  const server = createServer((request, response) => {
    handle(indexer, streams, request, response).catch((error: unknown) => {
      onError(error);
      if (!response.headersSent) send(response, 500, { error: "internal error" });
      else response.destroy();
    });
  });
  await listen(server, host, port);
  const unwatch = indexer.watch({
    ...(pollIntervalMs === undefined ? {} : { pollIntervalMs }),
    onError,
    onSynced: (result) => {
      onSynced?.(result);
      if (result.events === 0 && result.rolledBack === 0) return;
      const message = `event: indexed\ndata: ${JSON.stringify({ asOf: Number(result.blockNumber) })}\n\n`;
      for (const stream of streams) stream.write(message);
    },
  });
  const { port: bound } = server.address() as AddressInfo;
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${bound}`,
    async close() {
      // A page being written when the explorer stops is committed (or abandoned) before the caller
      // closes the store under it.
      await unwatch();
      for (const stream of streams) stream.end();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

function send(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  response.end(JSON.stringify(body));
}

async function handle(
  indexer: Indexer,
  streams: Set<ServerResponse>,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> {
  const { pathname } = new URL(request.url ?? "/", "http://explorer");
  if (request.method !== "GET") return send(response, 405, { error: "only GET" });
  const asset = ASSETS[pathname];
  if (asset !== undefined) {
    response.writeHead(200, { "content-type": asset.type, "cache-control": "max-age=3600" });
    response.end(await readFile(asset.file));
    return;
  }
  if (pathname === "/api/events") {
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" });
    response.write(": indexed blocks follow\n\n");
    streams.add(response);
    request.once("close", () => streams.delete(response));
    return;
  }
  const api = /^\/api\/(network|provider|lease|job|tx)(?:\/([^/]+))?$/.exec(pathname);
  if (api !== null) {
    const [, kind, id = ""] = api;
    const found = await indexer.store.snapshot(async (store) =>
      kind === "network"
        ? networkView(store)
        : kind === "provider" && /^0x[0-9a-fA-F]{40}$/.test(id)
          ? providerView(store, id)
          : kind === "lease" && LEASE_ID.test(id)
            ? leaseView(store, BigInt(id).toString())
            : kind === "job" && /^0x[0-9a-fA-F]{64}$/.test(id)
              ? jobView(store, id)
              : kind === "tx" && /^0x[0-9a-fA-F]{64}$/.test(id)
                ? transactionView(store, id)
                : undefined,
    );
    if (found === undefined) return send(response, 404, { error: `no ${kind} ${id} in the index` });
    return send(response, 200, found);
  }
  // An unknown page still gets the shell, which says what was not found.
  response.writeHead(PAGES.test(pathname) ? 200 : 404, { "content-type": "text/html; charset=utf-8" });
  response.end(await readFile(path.join(web, "index.html")));
}
