import { readFile } from "node:fs/promises";
import path from "node:path";

import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { keccak256, parseEther, toHex, zeroHash } from "viem";
import { beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { runJob } from "../../sdk/actions/runJob.ts";
import { contracts, leaseStatus } from "../../sdk/chain/client.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { requestQuote } from "../../sdk/wire/clients.ts";
import type { ProviderHandle } from "../helpers/market.ts";
import { nodeMetrics, sample } from "../helpers/node-metrics.ts";
import { recorder, SCRIPT, serving, trainSpec, useRunJobMarket } from "../helpers/run-job.ts";

// A provider drained by SIGTERM, as systemd stops it: provider 0 has a long grace, in which its job
// finishes; the others a short one, after which their leases are handed back.
const PATIENT_GRACE_MS = 120_000;
const SHORT_GRACE_MS = 1_500;
const fixture = useRunJobMarket({
  // No hand-off may come from a late heartbeat on a loaded machine: only from the drain.
  chainHeartbeatTimeoutS: 20,
  configFor: (index) => ({ drainTimeoutMs: index === 0 ? PATIENT_GRACE_MS : SHORT_GRACE_MS }),
});

/** Where the chain says a lease is. */
async function chainStatus(leaseId: string): Promise<string | undefined> {
  const lease = await fixture.market.admin.publicClient.readContract({
    ...contracts(fixture.market.deployment).leaseManager,
    functionName: "getLease",
    args: [BigInt(leaseId)],
  });
  return leaseStatus[lease.status];
}

/** Runs the trainer with its first lease on `home` (later ones anywhere). */
async function runOn(client: BatonClient, home: ProviderHandle) {
  let first = true;
  const job = await runJob(client, trainSpec("20"), {
    maxPricePerSecond: parseEther("0.001"),
    files: { "train.mjs": SCRIPT },
    excludeProviders: () => {
      const others = first ? fixture.market.providers.filter((p) => p !== home).map((p) => p.account.address) : [];
      first = false;
      return others;
    },
  });
  return { job, ...recorder(job) };
}

describe("runJob: a provider drained by SIGTERM", () => {
  let client: BatonClient;

  beforeAll(async () => {
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant-a"));
  });

  it("takes no new lease, lets the running job finish within the grace, serves its output, then exits by itself", async () => {
    const patient = fixture.market.providers[0]!;
    const { job, when } = await runOn(client, patient);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    expect(serving(fixture.market, job)).toBe(patient);

    patient.process!.child.kill("SIGTERM");
    onTestFinished(() => patient.start());
    await patient.process!.waitFor(/"msg":"draining: no new leases; running ones may finish"/);
    const { leaseManager } = contracts(fixture.market.deployment);
    const bid = await requestQuote(
      client.host,
      peerIdFromString(patient.peerId),
      client.peerKey,
      {
        chainId: fixture.market.deployment.chainId,
        leaseManager: leaseManager.address,
        jobId: keccak256(toHex("a job for a draining node")),
        tenant: client.account.address,
        requirements: { gpus: 0 },
        image: zeroHash,
        maxPricePerSecond: parseEther("0.001"),
        durationS: 300,
      },
      { address: multiaddr(patient.address!), signal: AbortSignal.timeout(10_000) },
    );
    expect(bid).toMatchObject({ kind: "refusal", reason: "draining" });

    const result = await job.result();
    expect(result.handOffs).toBe(0);
    expect(result.leases.map((l) => l.provider)).toEqual([patient.account.address]);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);

    expect((await patient.process!.exited).code).toBe(0);
    // Read once the node has exited: the tenant has its result before the node's finish lands.
    expect(await chainStatus(result.leases[0]!.leaseId)).toBe("Completed");
    const log = patient.process!.lines.join("\n");
    expect(log).toContain("jobs ended during the drain: serving their outputs a while longer");
    expect(log).not.toContain("lease handed back");
    await job.settled();
  });

  it("past the grace, hands the lease back: the tenant hands off at once for 'provider draining', the lease ends Closed (not slashed), and the provider exits by itself", async () => {
    const victim = fixture.market.providers[1]!;
    const { job, events, when } = await runOn(client, victim);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    expect(serving(fixture.market, job)).toBe(victim);
    const leaseId = job.status().leaseId!;

    // A node serving a lease, as an operator's dashboard sees it.
    const metrics = await nodeMetrics(victim.process!);
    const untilTimeout = sample(metrics, `baton_lease_heartbeat_timeout_seconds{lease="${leaseId}"}`);
    expect(untilTimeout).toBeGreaterThan(0);
    expect(untilTimeout).toBeLessThanOrEqual(20);
    expect(sample(metrics, "baton_chain_heartbeat_seconds_count")).toBeGreaterThanOrEqual(1);
    expect(sample(metrics, 'baton_bid_seconds_count{kind="quote"}')).toBeGreaterThanOrEqual(1);
    expect(sample(metrics, "baton_checkpoint_publish_seconds_count")).toBeGreaterThanOrEqual(2);
    expect(sample(metrics, "baton_gas_balance_eth")).toBeGreaterThan(0);

    const sigtermAt = Date.now();
    victim.process!.child.kill("SIGTERM");
    onTestFinished(() => victim.start());

    const failed = await when("provider-failed");
    expect(failed.provider).toBe(victim.account.address);
    expect(failed.leaseId).toBe(leaseId);
    expect(failed.reason).toBe(
      "provider draining: the node is shutting down and its drain grace ended: the lease is handed back",
    );
    // The job ran on through the grace, and was handed back when it ended.
    expect(failed.at - sigtermAt).toBeGreaterThanOrEqual(SHORT_GRACE_MS);
    expect(events.some((e) => e.type === "progress" && e.leaseId === leaseId && e.at > sigtermAt)).toBe(true);

    const restarted = await when("started", (e) => e.leaseId !== leaseId);
    expect(restarted.resumed).toBe(true);
    expect((await victim.process!.exited).code).toBe(0);
    const log = victim.process!.lines.join("\n");
    expect(log).toContain(`"msg":"lease handed back to its tenant","leaseId":"${leaseId}"`);
    // The tenant's close is acknowledged by the node (Closing → Closed): by the heartbeat it sends
    // for that, or by its routine heartbeat of the lease (still Active when it last read it) landing
    // just after the close, which the chain takes as the acknowledgement; the node then sees the lease
    // closed on chain. Either way it is Closed and nobody is slashed. (Not a lease out of deposit:
    // it holds 300 s of a job that runs well under that, and a close after its end leaves it Expired.)
    expect(log).toMatch(
      new RegExp(
        `"msg":"(hand-back acknowledged: the tenant closed the lease","leaseId":"${leaseId}"|lease ended on chain; job stopped","leaseId":"${leaseId}","reason":"closed by the tenant")`,
      ),
    );

    const result = await job.result();
    expect(result.handOffs).toBe(1);
    expect(result.leases[1]!.provider).not.toBe(victim.account.address);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    await job.settled();
    expect(await chainStatus(String(leaseId))).toBe("Closed");
    expect(events.filter((e) => e.type === "slashed")).toEqual([]);
  });
});
