/**
 * `npm run bench:node`: the provider node's responsiveness and footprint, measured on one machine
 * over loopback with a real chain and a real node process, written to bench/results/node.json.
 *
 * - off-chain heartbeat delivery latency: provider's send time (in the signed heartbeat) to the
 *   tenant's receipt, same clock;
 * - bid → quote round trip, from opening the stream to a verified quote;
 * - the node's CPU (share of one core) and RSS, idle and with 10 active leases;
 * - the transactions the node sends: idle (target 0: no heartbeat without a lease, no claim with
 *   nothing owed), over a minute that spans six claim intervals of the devnet's; and with 10 live
 *   leases, per lease per day (heartbeats are batched over all leases, so this falls with more).
 *
 * `--block-time S` runs the chain with a block every S seconds (default 0: mined at once).
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";

import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { keccak256, parseEther, toHex, zeroHash } from "viem";

import { blockTimeArg } from "../cli/program.ts";
import { DEVNET_NODE_CONFIG } from "../deploy/devnet.ts";
import { loadNodeConfig } from "../node/config.ts";
import { contracts, writeContract } from "../sdk/chain/client.ts";
import { openLeaseSession, requestQuote } from "../sdk/wire/clients.ts";
import { signTenantAuth } from "../sdk/wire/tenant-auth.ts";
import { startMarket, type Tenant } from "../deploy/market.ts";
import { median, percentile, printTable, writeResults, type Figure } from "./report.ts";

const { values } = parseArgs({ options: { "block-time": { type: "string", default: "0" } } });
const blockTimeS = blockTimeArg()(values["block-time"]);

const LEASES = 10;
/** Long enough for several on-chain heartbeats (every 2 s) to count transactions per lease. */
const BUSY_WINDOW_MS = 30_000;
/** A minute: six of the devnet's claim intervals, when an idle node used to send a claim each. */
const IDLE_WINDOW_MS = 60_000;
const TICKS_PER_SECOND = 100;

async function cpuSeconds(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

/** The node's CPU and RSS over `windowMs`, and the transactions its account sent meanwhile. */
async function footprint(
  pid: number,
  windowMs: number,
  transactionsSent: () => Promise<number>,
): Promise<{ cpuPercent: number; rssMiB: number; transactions: number }> {
  const before = await cpuSeconds(pid);
  const sentBefore = await transactionsSent();
  await new Promise((r) => setTimeout(r, windowMs));
  const after = await cpuSeconds(pid);
  const transactions = (await transactionsSent()) - sentBefore;
  return { cpuPercent: ((after - before) / (windowMs / 1000)) * 100, rssMiB: await rssMiB(pid), transactions };
}

const market = await startMarket({
  providers: 1,
  blockTimeS,
  config: {
    cpuJobs: true,
    maxLeases: 16,
    claimIntervalMs: DEVNET_NODE_CONFIG.claimIntervalMs,
    price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
  },
});
try {
  const provider = market.providers[0]!;
  const { chainHeartbeatPeriodS: heartbeatPeriodS } = await loadNodeConfig(provider.dataDir);
  // Pending included: a transaction sent counts before it is mined.
  const transactionsSent = (): Promise<number> =>
    market.admin.publicClient.getTransactionCount({ address: provider.account.address, blockTag: "pending" });
  const peer = peerIdFromString(provider.peerId);
  const address = multiaddr(provider.address!);
  const { leaseManager, paymentToken } = contracts(market.deployment);
  const tenants: Tenant[] = [];
  for (let i = 0; i < 3; i++) tenants.push(await market.tenant(i));

  const bid = (tenant: Tenant, job: string) => ({
    chainId: market.deployment.chainId,
    leaseManager: leaseManager.address,
    jobId: keccak256(toHex(job)),
    tenant: tenant.account.address,
    requirements: { gpus: 0 },
    image: zeroHash,
    maxPricePerSecond: parseEther("0.001"),
    durationS: 600,
  });

  console.log("measuring the idle node for a minute …");
  const idle = await footprint(provider.process!.pid, IDLE_WINDOW_MS, transactionsSent);

  // Bid → quote: 20 per tenant stays under the node's per-peer rate limit.
  console.log("measuring bid → quote round trips …");
  const rtts: number[] = [];
  for (const tenant of tenants) {
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      const response = await requestQuote(tenant.host, peer, tenant.key, bid(tenant, `rtt-${i}`), { address });
      if (response.kind !== "quote") throw new Error(`refused: ${response.message}`);
      rtts.push(performance.now() - started);
    }
  }

  console.log(`opening ${LEASES} leases …`);
  // A tenant that has not bid yet, so the rate limit of the round trips above does not apply.
  const tenant = await market.tenant(3);
  await writeContract(tenant.chain, {
    ...paymentToken,
    functionName: "approve",
    args: [leaseManager.address, parseEther("100")],
  });
  const latencies: number[] = [];
  const sessions = [];
  for (let i = 0; i < LEASES; i++) {
    const response = await requestQuote(tenant.host, peer, tenant.key, bid(tenant, `lease-${i}`), { address });
    if (response.kind !== "quote") throw new Error(`refused: ${response.message}`);
    const receipt = await writeContract(tenant.chain, {
      ...leaseManager,
      functionName: "openLease",
      args: [response.quote, response.signature, response.quote.pricePerSecond * 600n, 0n],
    });
    const leaseId = BigInt(
      receipt.logs.find((l) => l.address.toLowerCase() === leaseManager.address.toLowerCase())!.topics[1]!,
    );
    const auth = await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString());
    const session = await openLeaseSession(
      tenant.host,
      peer,
      tenant.key,
      {
        type: "start",
        body: {
          leaseId,
          auth,
          spec: {
            name: "sleeper",
            command: ["sleep", "300"],
            env: {},
            inputs: [],
            resources: { gpus: 0, cpus: 1, memoryMiB: 64 },
            network: false,
            maxDurationS: 300,
          },
        },
      },
      { address },
    );
    sessions.push(session);
    void (async () => {
      for await (const event of session.messages) {
        if (event.type === "heartbeat") latencies.push(Date.now() - event.body.at);
      }
    })().catch(() => undefined);
  }

  console.log("sampling heartbeats, transactions and the node's footprint with 10 leases …");
  latencies.length = 0;
  const busy = await footprint(provider.process!.pid, BUSY_WINDOW_MS, transactionsSent);
  const sample = [...latencies];
  for (const session of sessions) await session.close();

  const figures: Figure[] = [
    {
      name: "heartbeat delivery p50",
      value: median(sample),
      unit: "ms",
      note: `${sample.length} heartbeats over ${LEASES} sessions`,
    },
    { name: "heartbeat delivery p99", value: percentile(sample, 99), unit: "ms" },
    {
      name: "bid → quote p50",
      value: median(rtts),
      unit: "ms",
      note: `${rtts.length} bids; includes stream open, EIP-712 signing and verification`,
    },
    { name: "bid → quote p99", value: percentile(rtts, 99), unit: "ms" },
    { name: "node CPU, idle", value: idle.cpuPercent, unit: "% of a core" },
    { name: "node RSS, idle", value: idle.rssMiB, unit: "MiB" },
    { name: `node CPU, ${LEASES} active leases`, value: busy.cpuPercent, unit: "% of a core" },
    { name: `node RSS, ${LEASES} active leases`, value: busy.rssMiB, unit: "MiB" },
    {
      name: "transactions an idle node sends per minute",
      value: idle.transactions / (IDLE_WINDOW_MS / 60_000),
      unit: "tx/min",
      target: { value: 0, atMost: true },
      note: `${idle.transactions} in ${IDLE_WINDOW_MS / 1000} s, claim interval ${DEVNET_NODE_CONFIG.claimIntervalMs / 1000} s; ${(idle.transactions / (IDLE_WINDOW_MS / 86_400_000)).toFixed(0)} a day`,
    },
    {
      name: "transactions per live lease per day",
      value: Math.round(busy.transactions / LEASES / (BUSY_WINDOW_MS / 86_400_000)),
      unit: "tx/day",
      note: `${busy.transactions} in ${BUSY_WINDOW_MS / 1000} s with ${LEASES} leases: batched heartbeats every ${heartbeatPeriodS} s, and claims; at the default 30 s period, 2,880 a day for all of a node's leases together`,
    },
  ];
  printTable("Provider node (loopback, one machine)", figures);
  console.log(
    `\nwrote ${await writeResults("node", { blockTimeS, figures, heartbeatLatenciesMs: sample, bidRttsMs: rtts })}`,
  );
} finally {
  await market.stop();
}
