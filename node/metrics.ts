import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { formatEther } from "viem";

/** Where the metrics read at scrape time come from (the node passes them; a bare registry has neither). */
export interface MetricsSources {
  /** The node account's balance of the chain's native token (gas), in wei. */
  gasBalance?: () => Promise<bigint>;
  /** Chain time now, in seconds: leases' deadlines are in chain time. */
  chainNow?: () => number;
}

/**
 * The provider node's Prometheus metrics (prom-client), in a registry of their own so that several
 * nodes in one process (tests) never mix their figures. Besides the node's counters and the process
 * metrics every exporter has (CPU, memory, event-loop lag, handles, GC), the series an operator
 * alerts on: how long heartbeat transactions take to land, how close each lease is to its on-chain
 * heartbeat timeout (at 0 anyone may slash it), and how much gas the node's account has left.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly bids = new Counter({
    name: "baton_bids_total",
    help: "Bids received, by outcome",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly bidSeconds = new Histogram({
    name: "baton_bid_seconds",
    help: "Time to answer a bid, from its message read to the signed answer, by kind (quote or refusal)",
    labelNames: ["kind"] as const,
    // Reading the store and signing a quote take milliseconds; seconds mean a starved event loop.
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly httpRequests = new Counter({
    name: "baton_http_requests_total",
    help: "HTTP requests proxied to server jobs",
    labelNames: ["status"] as const,
    registers: [this.registry],
  });
  readonly httpLanes = new Counter({
    name: "baton_http_lanes_total",
    help: "Lanes (TLS connections straight to a server job's socket) opened by tenants, by outcome",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly sessionHeartbeats = new Counter({
    name: "baton_session_heartbeats_total",
    help: "Off-chain heartbeats sent on lease sessions",
    registers: [this.registry],
  });
  readonly sessionsRefused = new Counter({
    name: "baton_sessions_refused_total",
    help: "Lease sessions refused",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly jobsStarted = new Counter({
    name: "baton_jobs_started_total",
    help: "Jobs started",
    labelNames: ["relaunch"] as const,
    registers: [this.registry],
  });
  readonly signedOpenings = new Counter({
    name: "baton_signed_openings_total",
    help: "Tenants' signed openings this node started a job on and submitted, by outcome (opened, failed)",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly leasesFenced = new Counter({
    name: "baton_leases_fenced_total",
    help: "Leases whose job was stopped because the chain ended them",
    registers: [this.registry],
  });
  readonly leasesHandedBack = new Counter({
    name: "baton_leases_handed_back_total",
    help: "Leases handed back to their tenants because the drain's grace ended before their jobs did",
    registers: [this.registry],
  });
  readonly leasesFinished = new Counter({
    name: "baton_leases_finished_total",
    help: "Leases finished on chain",
    registers: [this.registry],
  });
  readonly leasesActive = new Gauge({
    name: "baton_leases_active",
    help: "Leases this node is serving",
    registers: [this.registry],
  });
  readonly chainHeartbeats = new Counter({
    name: "baton_chain_heartbeats_total",
    help: "On-chain heartbeat transactions",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly chainHeartbeatLeases = new Counter({
    name: "baton_chain_heartbeat_leases_total",
    help: "Leases covered by on-chain heartbeats",
    registers: [this.registry],
  });
  readonly chainHeartbeatSeconds = new Histogram({
    name: "baton_chain_heartbeat_seconds",
    help: "Time for an on-chain heartbeat transaction to land, from sending to its receipt",
    // From a local chain's instant blocks, through L2 blocks of 0.25–2 s, to 12 s L1 blocks and a
    // congested mempool: past a heartbeat period (30 s by default) the lease's margin is eaten.
    buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60],
    registers: [this.registry],
  });
  readonly claims = new Counter({
    name: "baton_claims_total",
    help: "Claim transactions",
    registers: [this.registry],
  });
  readonly claimableWei = new Gauge({
    name: "baton_claimable_wei",
    help: "Earnings settled and not yet claimed, before the last claim",
    registers: [this.registry],
  });
  readonly checkpointsPublished = new Counter({
    name: "baton_checkpoints_published_total",
    help: "Checkpoints published to IPFS",
    registers: [this.registry],
  });
  readonly checkpointBytes = new Counter({
    name: "baton_checkpoint_bytes_total",
    help: "Bytes of checkpoints published",
    registers: [this.registry],
  });
  readonly blockBytesSent = new Counter({
    name: "baton_block_stream_bytes_sent_total",
    help: "Block bytes sent over block streams (checkpoints, outputs), by path: a block lane, a direct libp2p connection, or a relay",
    labelNames: ["path"] as const,
    registers: [this.registry],
  });
  readonly checkpointsRejected = new Counter({
    name: "baton_checkpoints_rejected_total",
    help: "Committed checkpoints that could not be published",
    registers: [this.registry],
  });
  readonly checkpointPublishSeconds = new Histogram({
    name: "baton_checkpoint_publish_seconds",
    help: "Time to publish a committed checkpoint: pack, encrypt, add and pin",
    // Kilobytes take milliseconds; a model's gigabytes take minutes at disk and AES speed.
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    registers: [this.registry],
  });
  readonly gpus = new Gauge({
    name: "baton_gpus",
    help: "GPUs on this node",
    registers: [this.registry],
  });

  /** The account's gas balance, when the node gave a way to read it. */
  readonly gasBalance: Gauge | undefined;
  /** Per active lease, seconds to its heartbeat timeout, when the node gave the chain's clock. */
  readonly leaseTimeoutSeconds: Gauge<"lease"> | undefined;
  /** Each active lease's on-chain heartbeat deadline, in chain seconds, as the chain duties last read it. */
  #deadlines = new Map<bigint, number>();

  constructor(sources: MetricsSources = {}) {
    collectDefaultMetrics({ register: this.registry });
    const { gasBalance, chainNow } = sources;
    if (gasBalance) {
      this.gasBalance = new Gauge({
        name: "baton_gas_balance_eth",
        help: "The node account's balance of the chain's native token (ETH on Ethereum and most L2s), which pays for heartbeats",
        registers: [this.registry],
        // Read at scrape time only: it changes with every transaction, and a scrape every 15-60 s
        // costs one RPC call. A failed read keeps the last value: one RPC hiccup must not fail the
        // whole scrape (prom-client rejects it when a collect throws).
        async collect() {
          const wei = await gasBalance().catch(() => undefined);
          if (wei !== undefined) this.set(Number(formatEther(wei)));
        },
      });
    }
    if (chainNow) {
      const deadlines = (): Map<bigint, number> => this.#deadlines;
      this.leaseTimeoutSeconds = new Gauge({
        name: "baton_lease_heartbeat_timeout_seconds",
        help: "Seconds until each active lease's on-chain heartbeat timeout passes and anyone may slash it",
        labelNames: ["lease"] as const,
        registers: [this.registry],
        // Computed at scrape time from the deadline last read: if the node's chain duties stall, the
        // figure keeps falling, which is exactly when it must.
        collect() {
          this.reset();
          const now = chainNow();
          for (const [leaseId, deadline] of deadlines()) this.set({ lease: leaseId.toString() }, deadline - now);
        },
      });
    }
  }

  /** Replaces the heartbeat deadlines (chain seconds) of the leases active on chain. */
  setLeaseDeadlines(deadlines: Map<bigint, number>): void {
    this.#deadlines = deadlines;
  }

  /** The registry in Prometheus text format. */
  render(): Promise<string> {
    return this.registry.metrics();
  }
}

/**
 * Serves `GET /metrics` on 127.0.0.1 only: metrics reveal earnings and load, so they are not
 * exposed beyond the machine unless an operator puts a proxy in front.
 */
export async function serveMetrics(metrics: Metrics, port: number): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer((request, response) => {
    if (request.method !== "GET" || request.url !== "/metrics") {
      response.writeHead(404).end();
      return;
    }
    metrics.render().then(
      (text) => {
        response.writeHead(200, { "content-type": metrics.registry.contentType });
        response.end(text);
      },
      () => response.writeHead(500).end(),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
