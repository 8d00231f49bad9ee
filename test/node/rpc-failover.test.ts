import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { parseEther } from "viem";
import { afterAll, beforeAll, expect, it } from "vitest";

import { startMarket, type Market } from "../../deploy/market.ts";
import { auditLease } from "../../sdk/actions/auditLease.ts";
import { runJob } from "../../sdk/actions/runJob.ts";
import { providerDirs, runToEnd, startExampleJob } from "../helpers/example-jobs.ts";
import { until } from "../helpers/processes.ts";
import { startRpcProxy, type RpcProxy } from "../helpers/rpc-proxy.ts";
import { recorder, SCRIPT, TRAIN_ENV, trainSpec } from "../helpers/run-job.ts";

// A provider given two RPC endpoints: one stops answering for a minute (three heartbeat timeouts)
// under a running job, then both do for less than a timeout. No lease may be lost to either.
const TIMEOUT_S = 20;
const ONE_DOWN_MS = 60_000;
const BOTH_DOWN_MS = 8_000;

let market: Market;
let first: RpcProxy;
let second: RpcProxy;
let dir: string;
let reference: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-rpc-failover-"));
  const refDirs = await providerDirs(dir, "ref");
  reference = await runToEnd(startExampleJob([process.execPath, SCRIPT], refDirs, TRAIN_ENV), refDirs);
  first = await startRpcProxy();
  second = await startRpcProxy();
  market = await startMarket({
    providers: 1,
    config: {
      cpuJobs: true,
      price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
      chainHeartbeatPeriodS: 1,
      chainHeartbeatTimeoutS: TIMEOUT_S,
    },
    configFor: (_, chain) => {
      first.target = chain.rpcUrl;
      second.target = chain.rpcUrl;
      return { rpcUrl: [first.url, second.url] };
    },
  });
}, 240_000);

afterAll(async () => {
  await market?.stop();
  await first?.stop();
  await second?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

it("keeps its lease alive through a minute-long outage of one of its two RPCs, and a short one of both", async () => {
  const client = await market.client(0, path.join(dir, "tenant"));
  // 600 steps of 150 ms: the job outlasts both outages.
  const job = await runJob(client, trainSpec("150"), {
    maxPricePerSecond: parseEther("0.001"),
    files: { "train.mjs": SCRIPT },
  });
  const { events, when } = recorder(job);
  await when("checkpoint-safe");

  const beforeOutage = second.requests.length;
  first.fail("*", "blackhole", Number.POSITIVE_INFINITY);
  await new Promise((resolve) => setTimeout(resolve, ONE_DOWN_MS));
  first.heal();
  // The node moved to the second endpoint: it answered the heartbeats of the whole minute.
  const sendsDuringOutage = second.requests
    .slice(beforeOutage)
    .filter((r) => r.method === "eth_sendRawTransaction").length;
  expect(sendsDuringOutage).toBeGreaterThan(ONE_DOWN_MS / 1_000 / 4);

  first.fail("*", "blackhole", Number.POSITIVE_INFINITY);
  second.fail("*", "blackhole", Number.POSITIVE_INFINITY);
  await new Promise((resolve) => setTimeout(resolve, BOTH_DOWN_MS));
  first.heal();
  second.heal();

  const result = await job.result();
  await job.settled();
  expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(reference);
  expect(result.handOffs).toBe(0);
  expect(events.filter((e) => e.type === "provider-failed")).toEqual([]);
  // The provider's `finish` lands after the result reached the tenant (on a loaded machine, seconds later).
  const leaseId = BigInt(result.leases[0]!.leaseId);
  await until(async () => (await auditLease(client, { leaseId })).status !== "active", 60_000, "the lease's end");
  const lease = await auditLease(client, { leaseId });
  expect(lease.status).toBe("completed");
  expect(lease.slash).toBeUndefined();
});
