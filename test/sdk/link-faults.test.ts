import { readFile } from "node:fs/promises";
import path from "node:path";

import { peerIdFromString } from "@libp2p/peer-id";
import { keccak256, parseEther, toHex } from "viem";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { bid } from "../../sdk/actions/bid.ts";
import { findOffers } from "../../sdk/actions/findOffers.ts";
import { runBatch, type BatchEvent } from "../../sdk/actions/runBatch.ts";
import { runJob, type JobEvent, type JobHandle } from "../../sdk/actions/runJob.ts";
import { contracts } from "../../sdk/chain/client.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { parseJobSpec } from "../../sdk/job-spec.ts";
import { parseTasks } from "../../sdk/tenant/batch-tasks.ts";
import { freePort, startLink, type LinkShaper } from "../helpers/link.ts";
import type { ProviderHandle } from "../helpers/market.ts";
import {
  expectEverySuspicionCleared,
  expectTokensConserved,
  recorder,
  SCRIPT,
  serving,
  totals,
  trainSpec,
  useRunJobMarket,
} from "../helpers/run-job.ts";

// Faults on the tenant↔provider link. provider-1 listens on a port only the link shaper knows and
// announces the shaper's address, so its peers reach it through the shaper; it keeps its own path
// to the chain. It is the cheapest provider, so a job's first lease lands on it. The tenant listens
// nowhere (as one behind a NAT), so provider-1 cannot dial it around the shaper either.
let link: LinkShaper;
let shapedPort: number;
// provider-1's path to the chain: its RPC URL names this link, in front of the devnet's chain.
let chainLink: LinkShaper;
let chainPort: number | undefined;
beforeAll(async () => {
  shapedPort = await freePort();
  link = await startLink(shapedPort);
  chainLink = await startLink(() => {
    if (chainPort === undefined) throw new Error("the chain link was dialled before the devnet's chain started");
    return chainPort;
  });
});
// Hooks after a file run in reverse: the links close after the market stops.
afterAll(() => Promise.all([link?.close(), chainLink?.close()]));

const fixture = useRunJobMarket({
  // Every test here waits on the tenant's detection, not the chain's, and one asserts that the
  // cut-off provider is not slashed: its heartbeat transactions get a loaded machine's slack.
  chainHeartbeatTimeoutS: 20,
  configFor: (index, devnet) => {
    if (index !== 0) return {};
    chainPort = Number(new URL(devnet.rpcUrl).port);
    return {
      listen: [`/ip4/127.0.0.1/tcp/${shapedPort}`],
      announce: [link.multiaddr],
      // No block lanes: a lane beside the link would carry checkpoints around it.
      blockLanePort: null,
      rpcUrl: `http://127.0.0.1:${chainLink.port}`,
      price: { basePerSecond: "900000000000", perGpuPerSecond: "1000000000000" },
    };
  },
});

const STATUS = ["None", "Active", "Closing", "Completed", "Closed", "Expired", "Slashed"] as const;

describe("runJob on a shaped tenant↔provider link", () => {
  let client: BatonClient;
  let shaped: ProviderHandle;

  beforeAll(async () => {
    shaped = fixture.market.providers[0]!;
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant-a"), { listen: [] });
  });

  /** Every connection between the tenant and provider-1 is one the tenant dialled through the link. */
  const expectOnlyThroughLink = (): void => {
    const connections = client.host.getConnections(peerIdFromString(shaped.peerId));
    for (const connection of connections) {
      expect(connection.direction).toBe("outbound");
      expect(connection.remoteAddr.toString()).toMatch(new RegExp(`^${link.multiaddr}/p2p/`));
    }
  };

  const leaseStatus = async (leaseId: string): Promise<(typeof STATUS)[number]> => {
    const { leaseManager } = contracts(fixture.market.deployment);
    const lease = await fixture.market.admin.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [BigInt(leaseId)],
    });
    return STATUS[lease.status]!;
  };

  /** The lease's end as its provider sees it: `Active` until the provider's `finish` lands, which `settled()` does not wait for. */
  const endedStatus = (leaseId: string): Promise<(typeof STATUS)[number]> =>
    waitFor(async () => {
      const status = await leaseStatus(leaseId);
      return status === "Active" ? undefined : status;
    });

  /**
   * The job ran to its end on provider-1 with the reference result: no hand-off, no failure, every
   * suspicion cleared by itself, its lease `Completed`, no token minted or lost since `before`.
   */
  const expectUndisturbed = async (
    job: Awaited<ReturnType<typeof runJob>>,
    events: JobEvent[],
    before: Awaited<ReturnType<typeof totals>>,
  ): Promise<void> => {
    const result = await job.result();
    await job.settled();
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    expect(result.handOffs).toBe(0);
    expect(result.leases.map((l) => l.provider)).toEqual([shaped.account.address]);
    expect(events.filter((e) => ["provider-failed", "re-leased", "slashed"].includes(e.type))).toEqual([]);
    expectEverySuspicionCleared(events);
    expect(await endedStatus(result.leases[0]!.leaseId)).toBe("Completed");
    await expectTokensConserved(fixture.market, before);
  };

  /**
   * A 36 s job on provider-1, once it has a safe checkpoint: long enough that it cannot end there in
   * the ~12 s a silent partition takes to be seen (a job that did would be paid there while the
   * tenant, which never got the result, ran the rest again elsewhere). `cutOff` is its lease.
   */
  const longJobOnProvider1 = async () => {
    // Its offer known first: the tenant bids only to providers it heard of.
    await waitFor(() => client.offers.list().find((o) => o.peerId === shaped.peerId));
    const before = await totals(fixture.market);
    const job = await runJob(client, trainSpec("60"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    // A test that fails mid-way leaves no job running into the next one.
    onTestFinished(() => job.cancel());
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 50);
    expect(serving(fixture.market, job)).toBe(shaped);
    return { before, job, events, when, cutOff: job.status().leaseId! };
  };

  /** The job left provider-1's lease `cutOff` and resumed on another provider; why it left. */
  const handedOff = async (
    job: JobHandle,
    when: ReturnType<typeof recorder>["when"],
    cutOff: bigint,
  ): Promise<string> => {
    const failed = await when("provider-failed");
    expect(failed.leaseId).toBe(cutOff);
    const resumed = await when("started", (e) => e.leaseId !== cutOff);
    expect(resumed.resumed).toBe(true);
    expect(serving(fixture.market, job)).not.toBe(shaped);
    return failed.reason;
  };

  /** The job completed once, after one hand-off, with the reference result. */
  const expectOneResult = async (job: JobHandle, events: JobEvent[]): Promise<void> => {
    const result = await job.result();
    await job.settled();
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    expect(result.handOffs).toBe(1);
    expect(events.filter((e) => e.type === "completed")).toHaveLength(1);
  };

  it("provider-1 announces only the link's address, and the tenant reaches it only through the link", async () => {
    expect(shaped.address).toBe(`${link.multiaddr}/p2p/${shaped.peerId}`);
    const offer = await waitFor(() => client.offers.list().find((o) => o.peerId === shaped.peerId));
    expect(offer.addresses).toEqual([link.multiaddr]);
    await waitFor(() => client.host.getConnections(peerIdFromString(shaped.peerId)).length > 0 || undefined);
    expectOnlyThroughLink();
    expect(link.accepted).toBeGreaterThan(0);
  });

  it("a bid whose connection is reset mid-handshake is sent again on a fresh one, and provider-1 quotes", async () => {
    const requirements = { gpus: 1 };
    const maxPricePerSecond = parseEther("0.001");
    await waitFor(() => client.offers.list().find((o) => o.peerId === shaped.peerId));
    const offers = (
      await findOffers(client, { requirements, maxPricePerSecond, minCount: fixture.market.providers.length })
    ).filter((found) => found.offer.peerId === shaped.peerId);
    expect(offers).toHaveLength(1);
    // No connection to reuse: the bid dials, through the link, which resets that connection.
    await client.host.hangUp(peerIdFromString(shaped.peerId));
    const accepted = link.accepted;
    link.resetNext(1);
    const { chosen, refusals } = await bid(client, {
      jobId: keccak256(toHex("link-faults: a bid after a reset")),
      offers,
      requirements,
      maxPricePerSecond,
      durationS: 60,
    });
    expect(refusals).toEqual([]);
    expect(chosen.quote.provider).toBe(shaped.account.address);
    // The reset connection, and the one the second try made.
    expect(link.accepted - accepted).toBe(2);
    expectOnlyThroughLink();
  });

  it("(a) 200 ms RTT with jitter: the job runs to its end on provider-1, and liveness stays quiet", async () => {
    link.delay({ upMs: 100, downMs: 100, jitterMs: 20 });
    onTestFinished(() => link.delay({ upMs: 0, downMs: 0 }));
    const before = await totals(fixture.market);
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    await when("started");
    expect(serving(fixture.market, job)).toBe(shaped);
    expectOnlyThroughLink();
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 300);
    expectOnlyThroughLink();
    // 100 ms each way is far inside the 1.5 s (three heartbeats) that makes a provider suspect; a
    // suspicion here comes from a loaded machine's stalls, and must clear without a failure.
    await expectUndisturbed(job, events, before);
  });

  it("(b) tenant and provider-1 partitioned without a word, provider-1 still on the chain: the tenant hands off, provider-1 acknowledges the close and stops before the link heals, unslashed, and there is one result", async () => {
    const { before, job, events, when, cutOff } = await longJobOnProvider1();
    onTestFinished(() => link.heal());
    link.stall();
    // The session's liveness saw it, not the chain: provider-1's heartbeats still land there.
    expect(await handedOff(job, when, cutOff)).not.toMatch(/on chain/);
    // No split brain: provider-1 learns of the close from the chain alone, acknowledges it (its
    // collateral freed) and stops the job, while the tenant is still out of its reach.
    await shaped.process!.waitFor(
      new RegExp(`"msg":"lease ended on chain; job stopped","leaseId":"${cutOff}","reason":"closed by the tenant"`),
      60_000,
    );
    link.heal();
    await expectOneResult(job, events);
    // The honest party is paid to its last heartbeat and not slashed.
    expect(await leaseStatus(cutOff.toString())).toBe("Closed");
    expect(events.filter((e) => e.type === "slashed")).toEqual([]);
    await expectTokensConserved(fixture.market, before);
  });

  it("(c) a flapping link (silent 3 s, forwarding 3 s, three times): no hand-off, each suspicion clears, provider-1 finishes", async () => {
    const before = await totals(fixture.market);
    const job = await runJob(client, trainSpec("40"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      // Pinned to provider-1: after a partition test it was not always the first pick again (one
      // run put this job on provider-3). A false failure still shows, as `provider-failed`.
      exclude: fixture.market.providers.filter((p) => p !== shaped).map((p) => p.account.address),
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 50);
    expect(serving(fixture.market, job)).toBe(shaped);
    onTestFinished(() => link.heal());
    // The fault is a schedule in time, so it is slept out; what the test asserts waits on events.
    const suspicions: number[] = [];
    for (let cycle = 0; cycle < 3; cycle++) {
      link.stall();
      await sleep(3_000);
      link.heal();
      suspicions.push(events.filter((e) => e.type === "provider-suspect").length);
      await sleep(3_000);
    }
    expect(job.status().state).toBe("running");
    // 3 s of silence makes provider-1 suspect (no heartbeat for 1.5 s) but not failed: that takes
    // 10 s of suspicion (`failAfterMs`), and pings that time out say nothing. So the SDK hands off
    // nothing at all, where a hand-off per flap would be a storm.
    await expectUndisturbed(job, events, before);
    // Each silence was noticed, and each cleared when the link came back.
    expect(suspicions).toEqual([1, 2, 3]);
  });

  it("(d) provider-1 cut off from the chain, not from the tenant: the tenant leaves its lease before it turns slashable, the job resumes elsewhere, and provider-1 stops once it reaches the chain again", async () => {
    const { before, job, events, when, cutOff } = await longJobOnProvider1();
    onTestFinished(() => chainLink.heal());
    // Silent: provider-1's RPC requests hang, its heartbeat transactions never reach the chain,
    // and its session with the tenant goes on as before.
    chainLink.stall();
    // The chain told the tenant to leave, before anyone could slash the lease: its session with
    // provider-1 never failed (every byte of it still flows).
    expect(await handedOff(job, when, cutOff)).toMatch(
      /^no heartbeat on chain for \d+ s: its lease turns slashable in \d+ s$/,
    );
    chainLink.heal();
    // The successor's opening ended the lease: closed while its deadline had not passed (provider-1
    // then has a whole timeout from the close to acknowledge it, which it does once it reaches the
    // chain again), else slashed by that same transaction, the tenant taking the slash's share.
    // Either way provider-1 stops the job once it reads the chain.
    await shaped.process!.waitFor(
      new RegExp(`"msg":"lease ended on chain; job stopped","leaseId":"${cutOff}"`),
      60_000,
    );
    await expectOneResult(job, events);
    const slashed = events.flatMap((e) => (e.type === "slashed" ? [e.leaseId] : []));
    const ended = await leaseStatus(cutOff.toString());
    expect(["Closed", "Slashed"]).toContain(ended);
    expect(slashed).toEqual(ended === "Closed" ? [] : [cutOff]);
    await expectTokensConserved(fixture.market, before);
  });

  it("(e) a batch whose lease is on provider-1 when provider-1 is cut off from the chain: the lease is dropped before it turns slashable, its task runs again elsewhere, and every task is recorded once with its result", async () => {
    const before = await totals(fixture.market);
    const spec = parseJobSpec({
      name: "square",
      command: ["sh", "-c", 'sleep 2; echo $((N * N)) > "$BATON_OUTPUT_DIR/square"'],
      resources: { gpus: 0, cpus: 1, memoryMiB: 128 },
      maxDurationS: 60,
    });
    const ids = Array.from({ length: 16 }, (_, i) => `n${i + 1}`);
    const tasks = parseTasks(ids.map((id) => JSON.stringify({ id, env: { N: id.slice(1) } })).join("\n"), spec, {
      source: "tasks.jsonl",
      baseDir: ".",
    });
    await waitFor(() => client.offers.list().find((o) => o.peerId === shaped.peerId));
    const events: BatchEvent[] = [];
    const onEvent = (event: BatchEvent): void => void events.push(event);
    const seen = <T extends BatchEvent["type"]>(type: T) =>
      waitFor(() => events.find((e): e is Extract<BatchEvent, { type: T }> => e.type === type), 60_000);
    const batch = runBatch(client, {
      spec,
      tasks,
      source: "tasks.jsonl",
      parallelism: 1,
      maxPricePerSecond: parseEther("0.001"),
      manifest: path.join(fixture.dir, "chain-cut.jsonl"),
      onEvent,
    });
    batch.catch(() => undefined);
    const first = await seen("task-started");
    expect(first.provider).toBe(shaped.account.address);
    // A task done there first: cut off before it read the lease's opening, provider-1 would never
    // start the lease's session at all.
    await seen("task-recorded");
    onTestFinished(() => chainLink.heal());
    chainLink.stall();
    const lost = await seen("provider-lost");
    expect(lost.leaseId).toBe(first.leaseId);
    expect(lost.reason).toMatch(/^no heartbeat on chain for \d+ s: its lease turns slashable in \d+ s$/);
    chainLink.heal();
    const result = await batch;
    expect(result.results.map((r) => r.taskId).sort()).toEqual([...ids].sort());
    for (const id of ids) {
      const n = Number(id.slice(1));
      expect(await readFile(path.join(result.outputDir, id, "square"), "utf8")).toBe(`${n * n}\n`);
    }
    expect(result.results.filter((r) => r.provider === shaped.account.address).length).toBeLessThan(ids.length);
    await shaped.process!.waitFor(
      new RegExp(`"msg":"lease ended on chain; job stopped","leaseId":"${first.leaseId}"`),
      60_000,
    );
    await expectTokensConserved(fixture.market, before);
  });
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `look` every 100 ms until it gives a value; fails after `timeoutMs`. */
async function waitFor<T>(look: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await look();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`not so within ${timeoutMs} ms`);
    await sleep(100);
  }
}
