/**
 * `npm run bench:node`: the provider node's responsiveness and footprint, measured on one machine
 * over loopback with a real chain and a real node process, written to bench/results/node.json.
 *
 * - off-chain heartbeat delivery latency: provider's send time (in the signed heartbeat) to the
 *   tenant's receipt, same clock;
 * - bid → quote round trip, from opening the stream to a verified quote;
 * - the node's CPU (share of one core) and RSS, idle and with 10 active leases.
 */
import { readFile } from "node:fs/promises";

import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { keccak256, parseEther, toHex, zeroHash } from "viem";

import { contracts, writeContract } from "../sdk/chain/client.ts";
import { openLeaseSession, requestQuote } from "../sdk/wire/clients.ts";
import { signTenantAuth } from "../sdk/wire/tenant-auth.ts";
import { startMarket, type Tenant } from "../deploy/market.ts";
import { median, percentile, printTable, writeResults, type Figure } from "./report.ts";

const LEASES = 10;
const HEARTBEAT_SAMPLE_MS = 10_000;
const CPU_WINDOW_MS = 10_000;
const TICKS_PER_SECOND = 100;

async function cpuSeconds(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

async function footprint(pid: number): Promise<{ cpuPercent: number; rssMiB: number }> {
  const before = await cpuSeconds(pid);
  await new Promise((r) => setTimeout(r, CPU_WINDOW_MS));
  const after = await cpuSeconds(pid);
  return { cpuPercent: ((after - before) / (CPU_WINDOW_MS / 1000)) * 100, rssMiB: await rssMiB(pid) };
}

const market = await startMarket({
  providers: 1,
  config: {
    cpuJobs: true,
    maxLeases: 16,
    claimIntervalMs: 60_000,
    price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
  },
});
try {
  const provider = market.providers[0]!;
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

  console.log("measuring the idle node …");
  const idle = await footprint(provider.process!.pid);

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

  console.log("sampling heartbeats and the node's footprint with 10 leases …");
  latencies.length = 0;
  const [busy] = await Promise.all([
    footprint(provider.process!.pid),
    new Promise((r) => setTimeout(r, HEARTBEAT_SAMPLE_MS)),
  ]);
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
  ];
  printTable("Provider node (loopback, one machine)", figures);
  console.log(`\nwrote ${await writeResults("node", { figures, heartbeatLatenciesMs: sample, bidRttsMs: rtts })}`);
} finally {
  await market.stop();
}
