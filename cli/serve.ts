import { createWriteStream } from "node:fs";
import { readFile } from "node:fs/promises";

import type { Command } from "commander";

import { connect, tenantOptions, type TenantOptions } from "./job.ts";
import { jsonLine } from "./output.ts";
import { collect, examples, integerIn, tokenAmount, UsageError } from "./program.ts";

interface ServeOptions extends TenantOptions {
  replicas: number;
  port: number;
  maxPrice: string;
  budget?: string;
  maxBody: number;
  maxConcurrent: number;
  maxQueued: number;
  accessLog?: string;
  routeTimeout?: string[];
  tlsCert?: string;
  tlsKey?: string;
}

/** The longest deadline a route may have: a day (a stream of tokens may run long, not for ever). */
const MAX_ROUTE_TIMEOUT_MS = 86_400_000;

/** `--route-timeout /prefix=ms` values, checked: a path prefix and a whole number of milliseconds. */
export function parseRouteTimeouts(values: readonly string[]): { prefix: string; ms: number }[] {
  const ms = integerIn("--route-timeout", 1, MAX_ROUTE_TIMEOUT_MS);
  return values.map((value) => {
    const at = value.lastIndexOf("=");
    const prefix = value.slice(0, at);
    if (at < 0 || !prefix.startsWith("/")) {
      throw new UsageError(`--route-timeout takes /path-prefix=milliseconds, not ${value}`);
    }
    return { prefix, ms: ms(value.slice(at + 1)) };
  });
}

/** `baton serve`: N replicas of a server job behind a local HTTP gateway, until Ctrl-C. */
async function serveCommand(file: string, options: ServeOptions): Promise<void> {
  const [{ readJobFile, serve }, { formatEther, parseEther }, { startGateway, STATUS_PATH }] = await Promise.all([
    import("../sdk/index.ts"),
    import("viem"),
    import("./gateway.ts"),
  ]);
  // Bad gateway options are refused before anything is leased.
  const routeTimeouts = parseRouteTimeouts(options.routeTimeout ?? []);
  if ((options.tlsCert === undefined) !== (options.tlsKey === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  const tls =
    options.tlsCert === undefined
      ? undefined
      : { cert: await readFile(options.tlsCert), key: await readFile(options.tlsKey!) };
  const { spec, files } = await readJobFile(file);
  const { client, names } = await connect(options);
  const say = (text: string, event: object): void => {
    process.stdout.write(options.json ? jsonLine(event) : `${text}\n`);
  };
  const service = await serve(client, spec, {
    replicas: options.replicas,
    maxPricePerSecond: parseEther(options.maxPrice),
    ...(options.budget === undefined ? {} : { budgetPerReplica: parseEther(options.budget) }),
    files,
    maxConcurrentPerReplica: options.maxConcurrent,
    maxQueued: options.maxQueued,
  });
  for (const job of service.jobs()) {
    job.on("re-leased", (e) =>
      say(`replica moved: lease ${e.from} → ${e.to} on ${names.get(e.provider.toLowerCase()) ?? e.provider}`, e),
    );
    job.on("slashed", (e) => say(`lease ${e.leaseId} slashed; compensation ${formatEther(e.compensation)}`, e));
  }
  if (!options.json) console.log(`leasing ${options.replicas} replica(s) …`);
  await service.ready();
  const log = options.accessLog === undefined ? undefined : createWriteStream(options.accessLog, { flags: "a" });
  const server = await startGateway(service, options.port, names, {
    maxRequestBodyBytes: options.maxBody,
    routeTimeouts,
    ...(tls ? { tls } : {}),
    ...(log ? { accessLog: (line: string) => log.write(`${line}\n`) } : {}),
  });
  const url = `${tls ? "https" : "http"}://127.0.0.1:${(server.address() as { port: number }).port}`;
  say(`gateway on ${url}  (status: ${url}${STATUS_PATH})`, {
    type: "ready",
    url,
    status: `${url}${STATUS_PATH}`,
    replicas: service.replicas(),
  });
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  if (!options.json) console.log("stopping: closing every replica's lease …");
  server.close();
  await service.close();
  await client.close();
  log?.end();
}

export function serveCommands(program: Command): void {
  examples(
    tenantOptions(
      program
        .command("serve")
        .description("serve a spec on N providers behind a local HTTP gateway, until Ctrl-C")
        .argument("<spec>", "the server job's spec (YAML or JSON)")
        .requiredOption(
          "--max-price <tokens>",
          "the most to pay per second per replica, in payment tokens",
          tokenAmount("--max-price"),
        )
        .option("--replicas <n>", "replicas, each on its own provider", integerIn("--replicas", 1, 64), 3)
        .option(
          "--port <port>",
          "the gateway's port on 127.0.0.1 (0 picks a free one)",
          integerIn("--port", 0, 65_535),
          8080,
        )
        .option("--budget <tokens>", "the most to spend per replica", tokenAmount("--budget"))
        .option(
          "--max-body <bytes>",
          "the largest request body the gateway takes (413 past it)",
          integerIn("--max-body", 0, 64 * 1024 * 1024),
          64 * 1024 * 1024,
        )
        .option(
          "--max-concurrent <n>",
          "requests in flight per replica; more wait in a queue",
          integerIn("--max-concurrent", 1, 100_000),
          64,
        )
        .option(
          "--max-queued <n>",
          "requests waiting for a replica; past that the gateway answers 503",
          integerIn("--max-queued", 0, 1_000_000),
          1_024,
        )
        .option("--access-log <file>", "append one JSON line per request to this file")
        .option(
          "--route-timeout <prefix=ms>",
          "the deadline of requests whose path starts with prefix (default 30000 ms; repeatable, the longest prefix wins; 504 past it)",
          collect,
        )
        .option("--tls-cert <file>", "serve HTTPS with this certificate chain (PEM); needs --tls-key")
        .option("--tls-key <file>", "the certificate's private key (PEM)"),
    ),
    [
      "baton serve examples/serve/serve.yaml --replicas 3 --port 8080 --max-price 0.001",
      "curl 'http://127.0.0.1:8080/predict?text=hello'",
    ],
  ).action(serveCommand);
}
