import { Option, type Command } from "commander";

import { MAX_CONFIRMATIONS } from "../sdk/chain/confirmations.ts";
import { networkOptions, resolveNetwork, type NetworkOptions } from "./network.ts";
import { examples, integerIn } from "./program.ts";

interface ExplorerOptions extends NetworkOptions {
  db: string;
  databaseUrl?: string;
  host: string;
  port: number;
  confirmations: number;
  maxLogRange?: number;
  pollMs: number;
}

/** Indexes the network's deployment and serves the explorer until SIGINT or SIGTERM. */
async function explorer(options: ExplorerOptions): Promise<void> {
  const network = await resolveNetwork(options);
  const [
    { checkChain, createChainClient },
    { loadDeploymentFile },
    { createIndexer },
    { checkedDatabaseUrl, openIndexStore },
    { startExplorer },
  ] = await Promise.all([
    import("../sdk/chain/client.ts"),
    import("../sdk/chain/deployments.ts"),
    import("../sdk/indexer/indexer.ts"),
    import("../sdk/indexer/store.ts"),
    import("./explorer/server.ts"),
  ]);
  const location =
    options.databaseUrl === undefined ? { file: options.db } : { databaseUrl: checkedDatabaseUrl(options.databaseUrl) };
  const chain = createChainClient({ rpcUrl: network.rpcUrl, deployment: await loadDeploymentFile(network.deployment) });
  await checkChain(chain);
  const store = await openIndexStore(location, chain.deployment);
  try {
    const indexer = createIndexer({
      publicClient: chain.publicClient,
      deployment: chain.deployment,
      store,
      confirmations: options.confirmations,
      ...(options.maxLogRange === undefined ? {} : { maxRange: BigInt(options.maxLogRange) }),
    });
    const server = await startExplorer({
      indexer,
      host: options.host,
      port: options.port,
      pollIntervalMs: options.pollMs,
      onError: (error) => console.error(`explorer: ${error instanceof Error ? error.message : String(error)}`),
      onSynced: (result) => {
        if (result.rolledBack > 0)
          console.error(`explorer: a reorg replaced ${result.rolledBack} block(s); indexed again`);
      },
    });
    console.log(`explorer: ${server.url} (index ${store.location})`);
    await new Promise<void>((resolve) => {
      process.once("SIGINT", resolve);
      process.once("SIGTERM", resolve);
    });
    await server.close();
  } finally {
    await store.close();
  }
}

/** `baton explorer`: an index of the contracts' events and web pages over it. */
export function explorerCommands(program: Command): void {
  examples(
    networkOptions(
      program
        .command("explorer")
        .description("index the network's contract events into SQL and serve pages of providers, leases and jobs"),
      { bootstrap: false },
    )
      .option("--db <file>", "the index's SQLite file (created if absent; kept across restarts)", "explorer.db")
      .addOption(
        new Option(
          "--database-url <url>",
          "keep the index in Postgres instead (postgres://user@host:5432/database; tables created if absent; the password from PGPASSWORD or ~/.pgpass keeps it off the command line)",
        ).conflicts("db"),
      )
      .option("--host <host>", "the address to serve on", "127.0.0.1")
      .option("--port <port>", "the port to serve on (0: any free one)", integerIn("--port", 0, 65_535), 8_080)
      .option(
        "--confirmations <blocks>",
        "index a block once it is this many blocks below the head (a reorg no deeper never reaches the index)",
        integerIn("--confirmations", 0, MAX_CONFIRMATIONS),
        0,
      )
      .option(
        "--max-log-range <blocks>",
        "the widest block range one eth_getLogs asks for (default 10000; a public RPC may allow less)",
        integerIn("--max-log-range", 1, 1_000_000_000),
      )
      .option("--poll-ms <ms>", "how often to look for new blocks", integerIn("--poll-ms", 50, 600_000), 1_000),
    [
      "baton explorer",
      "baton explorer --port 3000 --db .baton/explorer.db",
      "baton explorer --database-url postgres://baton@127.0.0.1:5432/explorer",
      "baton explorer --rpc-url https://sepolia.base.org --deployment deployments/84532.json --confirmations 12 --max-log-range 2000",
    ],
  ).action(explorer);
}
