import type { Command } from "commander";

import type { AuditEventSource } from "../sdk/chain/audit-events.ts";
import type { ChainClient } from "../sdk/chain/client.ts";
import type { Deployment } from "../sdk/chain/deployments.ts";
import { MAX_CONFIRMATIONS } from "../sdk/chain/confirmations.ts";
import type { LogScanProgress } from "../sdk/chain/logs.ts";
import { networkOptions, resolveNetwork, type NetworkOptions } from "./network.ts";
import { printJson } from "./output.ts";
import { addressArg, checkedAddress, examples, integerIn, jobIdArg, leaseIdArg } from "./program.ts";

interface AuditOptions extends NetworkOptions {
  json?: boolean;
  tenant?: `0x${string}`;
  maxLogRange?: number;
  confirmations?: number;
  indexer?: string;
}

/** The index `--indexer` names, checked (a file, or a Postgres URL) but not opened yet. */
async function indexNamed(text: string) {
  const { indexLocation, openIndexStore } = await import("../sdk/indexer/store.ts");
  const location = indexLocation(text);
  return {
    open: (deployment: Deployment) => openIndexStore(location, deployment, { mustExist: true }),
  };
}

/**
 * Runs `audit` with a read-only client for the network's deployment (see cli/network.ts), checked
 * to be on its chain, and with the explorer's index to read events from when `--indexer` names
 * one, closed when `audit` ends (an open Postgres pool would keep the process alive).
 */
async function connected<T>(
  options: AuditOptions,
  audit: (client: { chain: ChainClient; events?: AuditEventSource }) => Promise<T>,
): Promise<T> {
  // A bad `--indexer` is said before anything connects to the chain.
  const index = options.indexer === undefined ? undefined : await indexNamed(options.indexer);
  const network = await resolveNetwork(options);
  const [{ checkChain, createChainClient }, { loadDeploymentFile }] = await Promise.all([
    import("../sdk/chain/client.ts"),
    import("../sdk/chain/deployments.ts"),
  ]);
  const chain = createChainClient({
    rpcUrl: network.rpcUrl,
    deployment: await loadDeploymentFile(network.deployment),
    ...(options.maxLogRange ? { maxLogRange: BigInt(options.maxLogRange) } : {}),
    ...(options.confirmations === undefined ? {} : { confirmations: options.confirmations }),
  });
  await checkChain(chain);
  if (index === undefined) return audit({ chain });
  const events = await index.open(chain.deployment);
  try {
    return await audit({ chain, events });
  } finally {
    await events.close();
  }
}

/**
 * Reports a long scan on stderr (stdout stays the audit's), once a second: an audit of a public
 * chain reads its events in many pages. A scan that ends within a second prints nothing.
 */
function showProgress(): (progress: LogScanProgress) => void {
  const scans = new Map<string, LogScanProgress>();
  let shown = Date.now();
  return (progress) => {
    scans.set(progress.what, progress);
    if (Date.now() - shown < 1_000) return;
    shown = Date.now();
    let scanned = 0n;
    let total = 0n;
    for (const scan of scans.values()) {
      scanned += scan.scanned;
      total += scan.total;
    }
    const reading = [...scans.values()].filter((scan) => scan.scanned < scan.total).map((scan) => scan.what);
    process.stderr.write(
      `reading events: ${scanned} of ${total} blocks${reading.length ? ` (${reading.join(", ")})` : ""}\n`,
    );
  };
}

async function job(jobId: `0x${string}`, options: AuditOptions): Promise<void> {
  const tenant = options.tenant === undefined ? undefined : await checkedAddress(options.tenant);
  const { auditJob } = await import("../sdk/actions/auditJob.ts");
  const result = await connected(options, (client) =>
    auditJob(client, { jobId, ...(tenant ? { tenant } : {}), onProgress: showProgress() }),
  );
  if (options.json) return printJson(result);
  (await import("./audit-report.ts")).printJob(result);
}

async function lease(leaseId: bigint, options: AuditOptions): Promise<void> {
  const { auditLease } = await import("../sdk/actions/auditLease.ts");
  const result = await connected(options, (client) => auditLease(client, { leaseId, onProgress: showProgress() }));
  if (options.json) return printJson(result);
  (await import("./audit-report.ts")).printLease(result);
}

async function provider(address: `0x${string}`, options: AuditOptions): Promise<void> {
  const checked = await checkedAddress(address);
  const { auditProvider } = await import("../sdk/actions/auditProvider.ts");
  const result = await connected(options, (client) =>
    auditProvider(client, { provider: checked, onProgress: showProgress() }),
  );
  if (options.json) return printJson(result);
  (await import("./audit-report.ts")).printProvider(result);
}

/** Options every audit takes: the network, how it reads events, and JSON for machines. */
function auditOptions(command: Command): Command {
  return networkOptions(command, { bootstrap: false })
    .option(
      "--max-log-range <blocks>",
      "the widest block range one eth_getLogs asks for (default 10000; a public RPC may allow less)",
      integerIn("--max-log-range", 1, 1_000_000_000),
    )
    .option(
      "--confirmations <blocks>",
      "read as of the block this many blocks below the head, so that no event a reorg that deep could undo is shown (default 0: the latest block)",
      integerIn("--confirmations", 0, MAX_CONFIRMATIONS),
    )
    .option(
      "--indexer <file|url>",
      "read events from the explorer's index instead of the chain's logs (its SQLite file, or the postgres:// URL given to `baton explorer --database-url`): the same figures, as of the block the index holds everything up to",
    )
    .option("--json", "print the audit as JSON (amounts as decimal strings)");
}

/** `baton audit …`: jobs, leases and providers rebuilt from chain events alone. */
export function auditCommands(program: Command): void {
  const audit = program
    .command("audit")
    .description("rebuild a job, a lease or a provider from chain events alone: who served, how long, who was paid");
  examples(
    auditOptions(
      audit
        .command("job")
        .description("a job's leases across providers, in order, with payments, slashes and checkpoints")
        .argument("<jobId>", "the job id (0x and 64 hex digits)", jobIdArg)
        .option("--tenant <address>", "whose job, when more than one tenant used the id", addressArg),
    ),
    [
      "baton audit job 0x5f…",
      "baton audit job 0x5f… --network .baton/devnet/network.json --json",
      "baton audit job 0x5f… --rpc-url https://… --confirmations 12",
      "baton audit job 0x5f… --indexer explorer.db",
      "baton audit job 0x5f… --indexer postgres://baton@127.0.0.1:5432/explorer",
    ],
  ).action(job);
  examples(
    auditOptions(
      audit
        .command("lease")
        .description("one lease's terms, heartbeats, checkpoints, payments and end")
        .argument("<leaseId>", "the lease id (a whole number from 1)", leaseIdArg),
    ),
    ["baton audit lease 1", "baton audit lease 1 --rpc-url http://127.0.0.1:8545 --json"],
  ).action(lease);
  examples(
    auditOptions(
      audit
        .command("provider")
        .description("a provider's stake, leases, earnings and slashes")
        .argument("<address>", "the provider's address", addressArg),
    ),
    ["baton audit provider 0x7099…79C8", "baton audit provider 0x7099…79C8 --json"],
  ).action(provider);
}
