/**
 * `npm run bench:network`: how liveness holds on a slow, lossy link, and how fast it sees a real
 * partition. Writes bench/results/network.json.
 *
 * A devnet of `--providers` provider nodes (default 4), each behind its own link shaper
 * (test/helpers/link.ts: a userspace TCP proxy, since this kernel has no netem) with `--rtt-ms`
 * round trip (default 200, half each way, ±10 % jitter) and `--loss` percent of chunks lost each way
 * (default 2: a lost chunk arrives one retransmission later, as TCP delivers it). Each provider
 * announces only its link's address and the tenant listens nowhere, so every tenant↔provider byte
 * crosses a link; the providers reach the chain directly. Session heartbeats are the default's.
 *
 * 1. False failovers: one long job per provider, watched for `--minutes` (default 2) with nothing
 *    killed. Every `provider-failed` is a false failover (target 0 per provider-hour); suspicions
 *    that cleared by themselves are counted beside them.
 * 2. Detection of a real partition: `--partitions` times (default 5), a job runs on one provider
 *    (round robin), and once it has a safe checkpoint that provider's link goes silent (no RST: a
 *    cable pulled, a router gone). Time from the silence to `provider-failed` (target ≤ 2 s p50).
 *    The job is then cancelled and the link healed.
 *
 * 3. Kill → running again through a relay: a second devnet on plain loopback whose providers nobody
 *    can dial (they listen only through a relay: provider-1, too dear to be leased), as behind a
 *    NAT with no port forwarded. `--relay-kills` times (default 5), a job's provider is SIGKILLed
 *    after its first safe checkpoint; time to `started` on the next lease, which fetches the
 *    checkpoint through the relay too. The same with every provider dialled directly, in the same
 *    run, is the reference.
 *
 * 4. Kill → running again through NATs (as root): a devnet of separate hosts (`baton devnet
 *    --netns`), its providers behind NATs of their own but provider-1 (the relay, too dear to be
 *    leased), the tenant on a public address, as a process on the tenant host. Its connections to
 *    the NATed providers start relayed and turn direct (the provider dials out through its
 *    NAT). `--relay-kills` times, the job's provider is SIGKILLed after a safe checkpoint; time to
 *    `started` on the next lease. The NATed providers count the block bytes they send (checkpoints
 *    and outputs, `baton_block_stream_bytes_sent_total`) by connection, relayed or direct: the
 *    relayed share (target 0 once direct), from their metrics read before each kill and at the end.
 */
import path from "node:path";
import { parseArgs } from "node:util";

import { parseEther } from "viem";

import { privateKeyOf, startDevnet } from "../deploy/devnet.ts";
import { HOST_P2P_PORT } from "../deploy/devnet-hosts.ts";
import { devAccount } from "../deploy/local-chain.ts";
import { spawnScript, type Spawned } from "../deploy/processes.ts";
import { readJobFile, runJob, type BatonClient, type JobEvent, type JobHandle } from "../sdk/index.ts";
import { freePort, startLink, type LinkDelay, type LinkShaper } from "../test/helpers/link.ts";
import type { TenantRun } from "../test/helpers/netns-tenant.ts";
import { blockBytesSent } from "../test/helpers/node-metrics.ts";
import { median, percentile, printTable, writeResults, type Figure } from "./report.ts";

const { values } = parseArgs({
  options: {
    providers: { type: "string", default: "4" },
    minutes: { type: "string", default: "2" },
    partitions: { type: "string", default: "5" },
    "relay-kills": { type: "string", default: "5" },
    "rtt-ms": { type: "string", default: "200" },
    loss: { type: "string", default: "2" },
  },
});
const PROVIDERS = Number(values.providers);
const MINUTES = Number(values.minutes);
const PARTITIONS = Number(values.partitions);
const RTT_MS = Number(values["rtt-ms"]);
const LOSS = Number(values.loss);
const RELAY_KILLS = Number(values["relay-kills"]);
if (!Number.isInteger(PROVIDERS) || PROVIDERS < 2) throw new Error("--providers must be a whole number ≥ 2");
if (!(MINUTES > 0 && MINUTES <= 60)) throw new Error("--minutes must be more than 0 and at most 60");
if (!Number.isInteger(PARTITIONS) || PARTITIONS < 1) throw new Error("--partitions must be a whole number ≥ 1");
if (!(RTT_MS >= 0)) throw new Error("--rtt-ms must be a number of ms ≥ 0");
if (!(LOSS >= 0 && LOSS < 100)) throw new Error("--loss must be a percentage below 100");
if (!Number.isInteger(RELAY_KILLS) || RELAY_KILLS < 0) throw new Error("--relay-kills must be a whole number ≥ 0");

/** A job event as the tenant process prints it (`jsonLine`: bigints as decimal strings). */
interface JobEventLine {
  type: JobEvent["type"];
  at: number;
  leaseId?: string;
  provider?: string;
}

const delay: LinkDelay = { upMs: RTT_MS / 2, downMs: RTT_MS / 2, jitterMs: RTT_MS / 10, lossPercent: LOSS };
const link = `${RTT_MS} ms RTT, ${LOSS} % loss`;

const { spec, files } = await readJobFile("examples/train/train.yaml");
// Steps of ≈ 10 ms, a checkpoint every 200: far more steps than any phase waits for.
spec.env = { ...spec.env, TRAIN_STEPS: "1000000", TRAIN_CHECKPOINT_EVERY: "200", TRAIN_STEP_DELAY_MS: "10" };

const ports = await Promise.all(Array.from({ length: PROVIDERS }, () => freePort()));
const links: LinkShaper[] = [];
const figures: Figure[] = [];
const results: Record<string, unknown> = { providers: PROVIDERS, rttMs: RTT_MS, lossPercent: LOSS };
try {
  for (const port of ports) links.push(await startLink(port, delay));
  const devnet = await startDevnet({
    providers: PROVIDERS,
    // No block lanes: a lane beside the link would carry checkpoints around it.
    configFor: (index) => ({
      listen: [`/ip4/127.0.0.1/tcp/${ports[index]!}`],
      announce: [links[index]!.multiaddr],
      blockLanePort: null,
    }),
    onStep: (m) => console.log(`  · ${m}`),
  });
  const client = await devnet.tenantClient({ listen: [] });
  const providerIndex = (address: string): number => devnet.providers.findIndex((p) => p.account.address === address);
  try {
    figures.push(...(await falseFailovers(client, providerIndex)));
    figures.push(...(await partitions(client, providerIndex)));
  } finally {
    await client.close();
    await devnet.stop();
  }
} finally {
  await Promise.all(links.map((l) => l.close()));
}
if (RELAY_KILLS > 0) figures.push(...(await relayFailover()));
if (RELAY_KILLS > 0) figures.push(...(await throughNats()));
printTable(`Network (${PROVIDERS} providers, each behind a link of ${link}; loopback)`, figures);
console.log(`\nwrote ${await writeResults("network", { figures, ...results })}`);

/** Starts the job on a provider that `pick` accepts (by its address). */
function startJob(client: BatonClient, pick: (address: string) => boolean): Promise<JobHandle> {
  let first = true;
  return runJob(client, spec, {
    maxPricePerSecond: parseEther("0.001"),
    files,
    // Only the first lease is steered: a hand-off may go anywhere.
    excludeProviders: () => {
      if (!first) return [];
      first = false;
      return client.offers
        .list()
        .map((o) => o.provider)
        .filter((p) => !pick(p));
    },
  });
}

/** Resolves with the job's first event of `type` that `match` accepts; rejects if the job ends first. */
function nextEvent<T extends JobEvent["type"]>(
  job: JobHandle,
  type: T,
  match: (event: Extract<JobEvent, { type: T }>) => boolean = () => true,
): Promise<Extract<JobEvent, { type: T }>> {
  return new Promise((resolve, reject) => {
    job.on(type, (event) => {
      if (match(event as Extract<JobEvent, { type: T }>)) resolve(event as Extract<JobEvent, { type: T }>);
    });
    job.result().then(() => reject(new Error(`the job ended before ${type}`)), reject);
  });
}

async function falseFailovers(client: BatonClient, providerIndex: (a: string) => number): Promise<Figure[]> {
  console.log(`\nfalse failovers: one job per provider for ${MINUTES} min on links of ${link}`);
  const jobs: JobHandle[] = [];
  const used = new Set<number>();
  const events: JobEvent[] = [];
  try {
    for (let i = 0; i < PROVIDERS; i++) {
      const job = await startJob(client, (address) => !used.has(providerIndex(address)));
      await nextEvent(job, "started");
      used.add(providerIndex(job.status().provider!));
      job.on("*", (event) => events.push(event));
      jobs.push(job);
    }
    const watchedFrom = Date.now();
    await new Promise((resolve) => setTimeout(resolve, MINUTES * 60_000));
    const hours = ((Date.now() - watchedFrom) / 3_600_000) * jobs.length;
    const failed = events.filter((e) => e.type === "provider-failed");
    const suspected = events.filter((e) => e.type === "provider-suspect").length;
    const failures = jobs.map((job) => job.status().state).filter((state) => state === "failed").length;
    console.log(`  ${failed.length} provider-failed, ${suspected} suspicions, ${failures} jobs failed`);
    results.falseFailovers = { providerHours: hours, failed: failed.length, suspected, reasons: failed };
    return [
      {
        name: "false failovers per provider-hour",
        value: failed.length / hours,
        unit: "/h",
        target: { value: 0, atMost: true },
        note: `${failed.length} in ${(hours * 60).toFixed(1)} provider-minutes on links of ${link}; ${suspected} suspicions cleared or not`,
      },
      {
        name: "suspicions per provider-hour",
        value: suspected / hours,
        unit: "/h",
        note: "a provider silent past the suspect window (3 heartbeats): pinged, and cleared by its next message",
      },
    ];
  } finally {
    await Promise.all(jobs.map((job) => job.cancel().catch(() => undefined)));
  }
}

async function partitions(client: BatonClient, providerIndex: (a: string) => number): Promise<Figure[]> {
  console.log(`\ndetection of a silent partition, ${PARTITIONS} times`);
  const detected: number[] = [];
  const suspected: number[] = [];
  for (let round = 0; round < PARTITIONS; round++) {
    const target = round % PROVIDERS;
    const job = await startJob(client, (address) => providerIndex(address) === target);
    try {
      await nextEvent(job, "checkpoint-safe");
      const shaper = links[providerIndex(job.status().provider!)]!;
      const suspect = nextEvent(job, "provider-suspect");
      const failed = nextEvent(job, "provider-failed");
      const silentAt = Date.now();
      shaper.stall();
      try {
        suspected.push((await suspect).at - silentAt);
        const event = await failed;
        detected.push(event.at - silentAt);
        console.log(
          `  round ${round + 1}/${PARTITIONS}: suspect after ${suspected.at(-1)} ms, failed after ${event.at - silentAt} ms (${event.reason})`,
        );
      } finally {
        shaper.heal();
      }
    } finally {
      await job.cancel().catch(() => undefined);
    }
  }
  results.partitions = { failed: detected, suspected };
  // Detection is the suspicion: the job moves only after `failAfterMs` more of silence, which a
  // flapping link (3 s silent at a time) must not reach; no detector tells those 3 s from a partition.
  return [
    {
      name: "partition detection p50 (silence → suspect)",
      value: median(suspected) / 1000,
      unit: "s",
      target: { value: 2, atMost: true },
      note: `${suspected.length} partitions of a link of ${link}, each a silence (no RST), not a kill`,
    },
    {
      name: "silence → failed (the job moves), p50",
      value: median(detected) / 1000,
      unit: "s",
      note: "the suspicion held for failAfterMs (10 s): a 3 s flap must not move the job",
    },
    { name: "silence → failed, p95", value: percentile(detected, 95) / 1000, unit: "s" },
  ];
}
/**
 * Kill → running again, `RELAY_KILLS` times each, with the providers reached through a relay and
 * then dialled directly, on one devnet of loopback peers (no link shaper).
 */
async function relayFailover(): Promise<Figure[]> {
  const relayPort = await freePort();
  console.log(`\nkill → running again through a relay, ${RELAY_KILLS} times, and directly`);
  const measure = async (relayed: boolean): Promise<number[]> => {
    const devnet = await startDevnet({
      providers: PROVIDERS + 1,
      configFor: (index, { peerIds }) =>
        index === 0
          ? {
              listen: [`/ip4/127.0.0.1/tcp/${relayPort}`],
              relayReservations: PROVIDERS,
              price: { basePerSecond: "2000000000000000", perGpuPerSecond: "0" },
            }
          : relayed
            ? { listen: [`/ip4/127.0.0.1/tcp/${relayPort}/p2p/${peerIds[0]!}/p2p-circuit`] }
            : {},
      onStep: (m) => console.log(`  · ${m}`),
    });
    const client = await devnet.tenantClient();
    const times: number[] = [];
    try {
      for (let round = 1; round <= RELAY_KILLS; round++) {
        const job = await startJob(client, () => true);
        try {
          await nextEvent(job, "checkpoint-safe");
          const victim = devnet.providers.find((p) => p.account.address === job.status().provider)!;
          const failed = nextEvent(job, "provider-failed");
          const killedAt = Date.now();
          victim.process!.child.kill("SIGKILL");
          const { leaseId } = await failed;
          const started = await nextEvent(job, "started", (e) => e.leaseId !== leaseId);
          times.push(started.at - killedAt);
          console.log(
            `  ${relayed ? "relayed" : "direct"} ${round}/${RELAY_KILLS}: running again after ${started.at - killedAt} ms`,
          );
          await victim.start();
        } finally {
          await job.cancel().catch(() => undefined);
        }
      }
    } finally {
      await client.close();
      await devnet.stop();
    }
    return times;
  };
  const relayed = await measure(true);
  const direct = await measure(false);
  results.relayFailover = { relayed, direct };
  return [
    {
      name: "kill → running again through a relay, p50",
      value: median(relayed) / 1000,
      unit: "s",
      reference: { value: median(direct) / 1000, label: "dialled directly, same run" },
      target: { value: 3, atMost: true },
      note: `${relayed.length} SIGKILLs; the checkpoint comes through the relay too`,
    },
  ];
}

/**
 * Kill → running again, `RELAY_KILLS` times, on a devnet of separate hosts whose providers sit
 * behind NATs; and the share of their bytes to the tenant that went through the relay.
 */
async function throughNats(): Promise<Figure[]> {
  if (process.getuid?.() !== 0) {
    console.log("\nkill → running again through NATs: skipped (network namespaces need root)");
    return [];
  }
  console.log(`\nkill → running again through NATs, ${RELAY_KILLS} times (separate hosts, providers behind NATs)`);
  const devnet = await startDevnet({
    providers: PROVIDERS + 1,
    netns: { behindNat: PROVIDERS },
    configFor: (index) => (index === 0 ? { price: { basePerSecond: "2000000000000000", perGpuPerSecond: "0" } } : {}),
    onStep: (m) => console.log(`  · ${m}`),
  });
  const hosts = devnet.hosts!;
  const natted = devnet.providers.slice(1);
  // Each NATed provider process's counts, read from its metrics (inside its host) before a kill and
  // at the end: a restart begins at 0.
  const sent = new Map<Spawned, { relayed: number; direct: number }>();
  const readCounts = async (): Promise<void> => {
    for (const provider of natted)
      sent.set(provider.process!, await blockBytesSent(provider.process!, hosts.provider(provider.index)));
  };
  const events: JobEventLine[] = [];
  const account = devAccount(10);
  await devnet.fund(account.address, parseEther("1000"));
  const tenantRun: TenantRun = {
    rpcUrl: hosts.rpcUrl,
    deploymentFile: devnet.deploymentFile,
    dataDir: path.join(devnet.dir, "bench-tenant"),
    privateKey: privateKeyOf(account),
    bootstrap: devnet.providers.map((p) => p.address!),
    listen: [`/ip4/0.0.0.0/tcp/${HOST_P2P_PORT}`],
    spec,
    files,
    maxPricePerSecond: parseEther("0.001").toString(),
    // One job through every kill.
    retryLimit: RELAY_KILLS,
    untilStdinEnds: true,
  };
  const tenant = spawnScript(
    "test/helpers/netns-tenant.ts",
    [JSON.stringify(tenantRun)],
    {},
    {
      wrap: hosts.tenant.command,
      onLine: (line) => {
        if (line.startsWith("event ")) events.push(JSON.parse(line.slice("event ".length)) as JobEventLine);
      },
    },
  );
  const eventWhere = async (match: (e: JobEventLine) => boolean, what: string): Promise<JobEventLine> => {
    const deadline = Date.now() + 180_000;
    for (;;) {
      const event = events.find(match);
      if (event) return event;
      if (tenant.child.exitCode !== null)
        throw new Error(`the tenant exited before ${what}: ${tenant.lines.slice(-10).join("\n")}`);
      if (Date.now() > deadline) throw new Error(`no ${what} in 3 minutes`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const times: number[] = [];
  try {
    let current = await eventWhere((e) => e.type === "started", "a start");
    for (let round = 1; round <= RELAY_KILLS; round++) {
      const leaseId = current.leaseId;
      await eventWhere(
        (e) => e.type === "checkpoint-safe" && e.leaseId === leaseId,
        `a safe checkpoint of lease ${leaseId}`,
      );
      const opened = await eventWhere((e) => e.type === "lease-opened" && e.leaseId === leaseId, "its opening");
      const victim = devnet.providers.find((p) => p.account.address === opened.provider)!;
      await readCounts();
      const killedAt = Date.now();
      victim.process!.child.kill("SIGKILL");
      current = await eventWhere(
        (e) => e.type === "started" && e.leaseId !== leaseId && e.at > killedAt,
        "a new start",
      );
      times.push(current.at - killedAt);
      console.log(`  ${round}/${RELAY_KILLS}: ${victim.name} killed, running again after ${current.at - killedAt} ms`);
      await victim.start();
    }
    await readCounts();
  } finally {
    tenant.child.stdin?.end();
    await tenant.exited;
    await devnet.stop();
  }
  const relayed = [...sent.values()].reduce((sum, c) => sum + c.relayed, 0);
  const direct = [...sent.values()].reduce((sum, c) => sum + c.direct, 0);
  console.log(`  the NATed providers sent ${relayed} block bytes through the relay and ${direct} directly`);
  results.throughNats = { times, relayedBlockBytes: relayed, directBlockBytes: direct };
  return [
    {
      name: "kill → running again through NATs, p50",
      value: median(times) / 1000,
      unit: "s",
      target: { value: 3, atMost: true },
      note: `${times.length} SIGKILLs; providers behind NATs, relayed first, then direct`,
    },
    {
      name: "NATed providers' checkpoint bytes through the relay, share",
      value: (relayed / (relayed + direct)) * 100,
      unit: "%",
      target: { value: 0, atMost: true },
      note: `${relayed} of ${relayed + direct} block-stream bytes (checkpoints and outputs) sent over relayed connections`,
    },
  ];
}

// Exits at once: runs here hung after their last line about one time in two, the event loop empty
// and the main thread spinning in Node's exit cleanup (gdb: Environment::CleanupHandles → uv_run,
// a handle that never finished closing), most likely one of the links' sockets reset mid-shutdown.
process.exit(process.exitCode ?? 0);
