/**
 * `npm run bench:serve`: the cost of Baton's serving path, and what a replica's death costs its
 * clients. Writes bench/results/serve.json.
 *
 * - Direct: the example server job (examples/serve/server.mjs) run as a plain process on a Unix
 *   socket, called over HTTP keep-alive: the floor.
 * - Gateway: the same job as 3 replicas on a devnet's providers, called through `baton serve`, run
 *   as users run it: a process of its own (HTTP → SDK routing → a lane: TLS keep-alive to the
 *   provider node, which copies the bytes to the job's socket, and back; see sdk/p2p/http-lanes.ts).
 * - Failover: the gateway under the same load while one replica's provider is SIGKILLed; failed
 *   requests, and p99 latency in the window from the kill until the replacement is ready.
 *
 * Each phase: `--requests` GET requests (default 2,000) from `--concurrency` clients (default 8),
 * the direct job, nginx and the gateway taking turns `--rounds` times (default 5): latencies are
 * of every round's requests, throughput the median of the rounds', CPU per request over all.
 * - nginx (when installed): the reverse proxy users would otherwise deploy, as two hops in front of
 *   the direct job: client → nginx → nginx over TLS → the job's socket (bench/nginx.ts).
 *
 * Every target is called by the same client (Node's HTTP, keep-alive), and CPU per request is given
 * for each process. Targets: gateway p50 ≤ 1.5 × nginx p50, throughput ≥ 0.5 × nginx's, zero failed
 * requests during the kill, p99 in the failover window ≤ 2 × steady p99.
 * `--block-time S` runs the devnet's chain with a block every S seconds (default 0: mined at once).
 */
import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

import { parseEther } from "viem";

import { STATUS_PATH } from "../cli/gateway.ts";
import { blockTimeArg } from "../cli/program.ts";
import { chainHeartbeatsFor, privateKeyOf, startDevnet } from "../deploy/devnet.ts";
import { devAccount } from "../deploy/local-chain.ts";
import { spawnScript, type Spawned } from "../deploy/processes.ts";
import type { ReplicaStatus } from "../sdk/index.ts";
import { nginxBinary, startNginxPair, type NginxPair } from "./nginx.ts";
import { median, percentile, printTable, writeResults, type Figure } from "./report.ts";

const { values } = parseArgs({
  options: {
    requests: { type: "string", default: "2000" },
    concurrency: { type: "string", default: "8" },
    rounds: { type: "string", default: "5" },
    "block-time": { type: "string", default: "0" },
  },
});
const blockTimeS = blockTimeArg()(values["block-time"]);
const REQUESTS = Number(values.requests);
const CONCURRENCY = Number(values.concurrency);
const REPLICAS = 3;
/** Requests that warm each job before anything is measured. */
const WARM_PER_JOB = 5_000;
const ROUNDS = Number(values.rounds);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error(`--rounds wants a whole number from 1: ${values.rounds}`);

interface Sample {
  ms: number;
  ok: boolean;
  at: number;
}

/** Runs `count` requests from `CONCURRENCY` clients (or until `until` resolves), timing each. */
async function drive(
  send: (i: number) => Promise<boolean>,
  count: number,
  until?: Promise<unknown>,
): Promise<{ samples: Sample[]; seconds: number }> {
  const samples: Sample[] = [];
  let next = 0;
  let stop = false;
  void until?.then(() => (stop = true));
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (!stop && (until ? true : next < count)) {
        const i = next++;
        const t0 = performance.now();
        let ok = false;
        try {
          ok = await send(i);
        } catch {
          ok = false;
        }
        samples.push({ ms: performance.now() - t0, ok, at: Date.now() });
      }
    }),
  );
  return { samples, seconds: (performance.now() - started) / 1000 };
}

const figures: Figure[] = [];
const tmp = await mkdtemp(path.join(os.tmpdir(), "baton-bench-serve-"));
const socket = path.join(tmp, "direct.sock");
const direct = spawn(process.execPath, [path.resolve(import.meta.dirname, "../examples/serve/server.mjs")], {
  env: { ...process.env, BATON_HTTP_SOCKET: socket },
  stdio: ["ignore", "pipe", "inherit"],
});
await new Promise<void>((resolve) => direct.stdout!.once("data", () => resolve()));
const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
/** The one client of every target: a GET over HTTP/1.1 keep-alive, `CONCURRENCY` connections. */
const call =
  (target: { socketPath: string } | { host: string; port: number }) =>
  (i: number): Promise<boolean> =>
    new Promise((resolve, reject) => {
      const req = http.get({ ...target, path: `/predict?text=hello%20${i}`, agent }, (res) => {
        res.resume();
        res.once("end", () => resolve(res.statusCode === 200));
      });
      req.once("error", reject);
    });
const callDirect = call({ socketPath: socket });

/** CPU seconds used so far by a process and, apart, by all its descendants (Linux /proc). */
async function cpuOfTree(pid: number): Promise<{ self: number; children: number }> {
  const ticks = 100; // USER_HZ: 100 on every Linux architecture Node runs on
  const stats = new Map<number, { ppid: number; cpu: number }>();
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const text = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => "");
    // Fields after the command name (which may hold spaces): state ppid … utime(14) stime(15).
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    if (fields.length < 13) continue;
    stats.set(Number(entry), { ppid: Number(fields[1]), cpu: (Number(fields[11]) + Number(fields[12])) / ticks });
  }
  let children = 0;
  const below = (parent: number): void => {
    for (const [child, stat] of stats) {
      if (stat.ppid !== parent) continue;
      children += stat.cpu;
      below(child);
    }
  };
  below(pid);
  return { self: stats.get(pid)?.cpu ?? 0, children };
}

const nginxAt = await nginxBinary();
if (!nginxAt) console.log("  · nginx not found: no nginx reference (apt-get install nginx)");
const nginx: NginxPair | undefined = nginxAt
  ? await startNginxPair(nginxAt, socket, path.join(tmp, "nginx"))
  : undefined;

const devnet = await startDevnet({
  providers: 4,
  blockTimeS,
  config: chainHeartbeatsFor(blockTimeS, { periodS: 1, timeoutS: 6 }),
  onStep: (m) => console.log(`  · ${m}`),
});
let gateway: Spawned | undefined;
try {
  const tenant = devAccount(10);
  await devnet.fund(tenant.address, parseEther("100"));
  gateway = spawnScript(
    "cli/baton.ts",
    [
      "serve",
      "examples/serve/serve.yaml",
      "--replicas",
      String(REPLICAS),
      "--port",
      "0",
      "--max-price",
      "0.001",
      "--network",
      devnet.networkFile,
      "--data-dir",
      path.join(tmp, "tenant"),
      "--json",
    ],
    { BATON_TENANT_KEY: privateKeyOf(tenant) },
  );
  const ready = await gateway.waitFor(/"type":"ready"/, 180_000).catch((error: unknown) => {
    throw new Error(
      `baton serve did not get ready (${String(error)}); its last lines:\n${gateway!.lines.slice(-20).join("\n")}`,
    );
  });
  const { url } = JSON.parse(ready) as { url: string };
  const { port } = new URL(url);
  const callGateway = call({ host: "127.0.0.1", port: Number(port) });
  const replicas = async (): Promise<ReplicaStatus[]> => {
    const res = await fetch(`${url}${STATUS_PATH}.json`);
    return ((await res.json()) as { replicas: ReplicaStatus[] }).replicas;
  };

  /**
   * CPU ms used while `run` runs: by this process (the clients), the gateway (`baton serve`), the
   * provider nodes and their jobs, the direct job, and nginx.
   */
  const cpuDuring = async (run: () => Promise<{ samples: Sample[]; seconds: number }>) => {
    const pids = devnet.providers.flatMap((p) => p.process?.child.pid ?? []);
    const others = [direct.pid!, gateway!.pid, ...(nginx?.pids ?? [])];
    const trees = () => Promise.all([...pids, ...others].map(cpuOfTree));
    const before = await trees();
    const own = process.cpuUsage();
    const result = await run();
    const ownUsage = process.cpuUsage(own);
    const after = await trees();
    const used = (pick: (x: { self: number; children: number }) => number, xs: typeof before) =>
      xs.slice(0, pids.length).reduce((total, x) => total + pick(x), 0) * 1000;
    return {
      result,
      ms: {
        bench: (ownUsage.user + ownUsage.system) / 1000,
        nodes: used((x) => x.self, after) - used((x) => x.self, before),
        jobs: used((x) => x.children, after) - used((x) => x.children, before),
        direct: (after[pids.length]!.self - before[pids.length]!.self) * 1000,
        gateway: (after[pids.length + 1]!.self - before[pids.length + 1]!.self) * 1000,
        nginx:
          after
            .slice(pids.length + 2)
            .reduce(
              (total, x, i) =>
                total + x.self + x.children - before[pids.length + 2 + i]!.self - before[pids.length + 2 + i]!.children,
              0,
            ) * 1000,
      },
    };
  };

  const callNginx = nginx ? call({ host: "127.0.0.1", port: nginx.port }) : undefined;

  // Warm every path (connections, TLS sessions, JIT), then measure. A job is warm after thousands of
  // requests, not hundreds (the example job's CPU per request: 0.32 ms over its first 1,000, 0.11-0.16
  // ms after 5,000), and the gateway's path has a job per replica: each gets as many as the direct one.
  await drive(callDirect, WARM_PER_JOB);
  if (callNginx) await drive(callNginx, 1_000);
  await drive(callGateway, WARM_PER_JOB * REPLICAS);
  // The nodes and jobs work when idle too (heartbeats, gossip, chain reads): 5 s with no traffic measure it.
  const idleS = 5;
  const idle = await cpuDuring(async () => {
    await new Promise((resolve) => setTimeout(resolve, idleS * 1000));
    return { samples: [], seconds: idleS };
  });
  // The targets take turns, `ROUNDS` times: a slow spell of this shared machine falls on each alike.
  type Phase = Awaited<ReturnType<typeof cpuDuring>>;
  const directRuns: Phase[] = [];
  const nginxRuns: Phase[] = [];
  const gatewayRuns: Phase[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    directRuns.push(await cpuDuring(() => drive(callDirect, REQUESTS)));
    if (callNginx) nginxRuns.push(await cpuDuring(() => drive(callNginx, REQUESTS)));
    gatewayRuns.push(await cpuDuring(() => drive(callGateway, REQUESTS)));
  }
  const latencies = (phases: Phase[]): number[] => phases.flatMap((p) => p.result.samples.map((s) => s.ms));
  /** The median of the rounds' requests per second. */
  const rate = (phases: Phase[]): number => median(phases.map((p) => REQUESTS / p.result.seconds));
  /** CPU ms per request of a process group over every round. */
  const perRequest = (phases: Phase[], group: keyof Phase["ms"]): number =>
    phases.reduce((total, p) => total + p.ms[group], 0) / (REQUESTS * phases.length);
  const gatewaySeconds = gatewayRuns.reduce((total, p) => total + p.result.seconds, 0);
  /** CPU ms per gateway request of a process group, less what it used idle in as long a time. */
  const serving = (group: "nodes" | "jobs" | "gateway") =>
    perRequest(gatewayRuns, group) - (idle.ms[group] * gatewaySeconds) / idleS / (REQUESTS * ROUNDS);
  const dMs = latencies(directRuns);
  const nMs = latencies(nginxRuns);
  const gMs = latencies(gatewayRuns);
  const n = nginxRuns.length > 0;

  // Failover: steady load, a replica's provider killed after 2 s, load until the replacement is ready + 2 s.
  const victimAddress = (await replicas())[0]!.provider;
  const victim = devnet.providers.find((p) => p.account.address === victimAddress)!;
  let killedAt = 0;
  let readyAt = 0;
  const window = (async () => {
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    killedAt = Date.now();
    victim.process!.child.kill("SIGKILL");
    await new Promise((resolve) => setTimeout(resolve, 500));
    const deadline = Date.now() + 60_000;
    while ((await replicas()).filter((r) => r.state === "ready").length < REPLICAS) {
      if (Date.now() > deadline) throw new Error("no replacement replica ready 60 s after the kill");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    readyAt = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 2_000));
  })();
  const f = await drive(callGateway, Infinity, window);
  const inWindow = f.samples.filter((s) => s.at >= killedAt && s.at <= readyAt).map((s) => s.ms);
  const failed = f.samples.filter((s) => !s.ok).length;

  figures.push(
    { name: "direct p50", value: median(dMs), unit: "ms", note: "the job alone, HTTP keep-alive on its Unix socket" },
    { name: "direct p99", value: percentile(dMs, 99), unit: "ms" },
    { name: "direct throughput", value: rate(directRuns), unit: "req/s" },
    ...(n
      ? [
          {
            name: "nginx p50",
            value: median(nMs),
            unit: "ms",
            reference: { value: median(dMs), label: "direct p50" },
            note: "client → nginx → nginx over TLS → the job's socket, keep-alive on every hop, one worker each",
          },
          { name: "nginx p99", value: percentile(nMs, 99), unit: "ms" },
          { name: "nginx throughput", value: rate(nginxRuns), unit: "req/s" },
        ]
      : []),
    {
      name: "gateway p50",
      value: median(gMs),
      unit: "ms",
      ...(n
        ? {
            reference: { value: median(nMs), label: "nginx p50" },
            target: { value: 1.5 * median(nMs), atMost: true },
          }
        : { reference: { value: median(dMs), label: "direct p50" } }),
      note: `${REPLICAS} replicas; HTTP → gateway → lane (TLS keep-alive) → provider node, copying bytes → the job's socket, and back`,
    },
    {
      name: "gateway p99",
      value: percentile(gMs, 99),
      unit: "ms",
      reference: n
        ? { value: percentile(nMs, 99), label: "nginx p99" }
        : { value: percentile(dMs, 99), label: "direct p99" },
    },
    {
      name: "gateway throughput",
      value: rate(gatewayRuns),
      unit: "req/s",
      ...(n
        ? {
            reference: { value: rate(nginxRuns), label: "nginx" },
            target: { value: 0.5 * rate(nginxRuns), atMost: false },
          }
        : { reference: { value: rate(directRuns), label: "direct" } }),
    },
    {
      name: "CPU per request: the clients",
      value: perRequest(directRuns, "bench"),
      unit: "ms",
      note: "the bench process in the direct run: the load generator",
    },
    { name: "CPU per request: the job, direct", value: perRequest(directRuns, "direct"), unit: "ms" },
    ...(n
      ? [
          {
            name: "CPU per request: nginx",
            value: perRequest(nginxRuns, "nginx"),
            unit: "ms",
            note: "both hops, masters and workers",
          },
        ]
      : []),
    {
      name: "CPU per request: gateway + SDK",
      value: serving("gateway"),
      unit: "ms",
      note: `the baton serve process, less its idle CPU (${(idle.ms.gateway / idleS / 10).toFixed(1)} % of a core)`,
    },
    {
      name: "CPU per request: provider nodes",
      value: serving("nodes"),
      unit: "ms",
      note: `all nodes, less their idle CPU (${(idle.ms.nodes / idleS / 10).toFixed(1)} % of a core)`,
    },
    {
      name: "CPU per request: replica jobs",
      value: serving("jobs"),
      unit: "ms",
      note: `sandbox and job processes, less their idle CPU (${(idle.ms.jobs / idleS / 10).toFixed(1)} % of a core)`,
    },
    {
      name: "failed requests during a replica kill",
      value: failed,
      unit: "requests",
      target: { value: 0, atMost: true },
      note: `${f.samples.length} requests; kill → replacement ready took ${((readyAt - killedAt) / 1000).toFixed(1)} s`,
    },
    {
      name: "p99 in the failover window",
      value: inWindow.length > 0 ? percentile(inWindow, 99) : 0,
      unit: "ms",
      reference: { value: percentile(gMs, 99), label: "steady p99" },
      target: { value: 2 * percentile(gMs, 99), atMost: true },
      note: `${inWindow.length} requests between the kill and the replacement being ready`,
    },
  );
  printTable(
    `Serving (${ROUNDS} rounds of ${REQUESTS} requests per target, ${CONCURRENCY} clients, loopback)`,
    figures,
  );
  console.log(
    `\nwrote ${await writeResults("serve", { figures, requests: REQUESTS, rounds: ROUNDS, concurrency: CONCURRENCY })}`,
  );
} finally {
  // SIGTERM first: the gateway closes every replica's lease before it exits.
  await gateway?.stop(30_000);
  await devnet.stop();
  direct.kill("SIGTERM");
  await nginx?.stop();
  agent.destroy();
  await rm(tmp, { recursive: true, force: true });
}
