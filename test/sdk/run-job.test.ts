import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";

import { peerIdFromString } from "@libp2p/peer-id";
import { parseEther, type Hex } from "viem";
import { beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { contracts } from "../../sdk/chain/client.ts";
import { bid } from "../../sdk/actions/bid.ts";
import { findOffers, type FoundOffer } from "../../sdk/actions/findOffers.ts";
import { runJob } from "../../sdk/actions/runJob.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { createLogger } from "../../sdk/logger.ts";
import { releaseQuotes } from "../../sdk/wire/clients.ts";
import { startExplorerUnderTest } from "../helpers/explorer.ts";
import { blockBytesSent } from "../helpers/node-metrics.ts";
import { root, until } from "../helpers/processes.ts";
import {
  expectTokensConserved,
  recorder,
  SCRIPT,
  serving,
  totals,
  trainSpec,
  useRunJobMarket,
} from "../helpers/run-job.ts";

// Hand-offs: a provider killed or frozen under a running job.
const fixture = useRunJobMarket();

/** The tenant's log line for a DAG its block server sent (sdk/ipfs/block-stream.ts). */
interface SentDag {
  peer: string;
  lane: boolean;
}

describe("runJob: hand-off to a new provider", () => {
  let client: BatonClient;
  const sentDags: SentDag[] = [];

  beforeAll(async () => {
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant-a"), {
      log: createLogger("tenant", {
        level: "debug",
        write: (line) => {
          if (line.includes('"sent a DAG"')) sentDags.push(JSON.parse(line) as SentDag);
        },
      }),
    });
  });

  it("(a) SIGKILL mid-job: the job completes elsewhere with the uninterrupted result; the dead lease is slashed; tokens are conserved", async () => {
    const before = await totals(fixture.market);
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    // The explorer's page below shows the hand-off resumed from the last checkpoint the dead lease
    // committed on chain, which its provider does in the heartbeat after the tenant's ack: with
    // checkpoints copied quickly, a kill at once could come before any (a CI run saw that).
    const leaseId = BigInt(job.status().leaseId!);
    await expect
      .poll(
        async () =>
          (
            await fixture.market.admin.publicClient.getContractEvents({
              ...contracts(fixture.market.deployment).leaseManager,
              eventName: "CheckpointCommitted",
              args: { leaseId },
              fromBlock: 0n,
            })
          ).length,
        { timeout: 20_000 },
      )
      .toBeGreaterThan(0);
    const victim = serving(fixture.market, job);
    const killedAt = Date.now();
    victim.process!.child.kill("SIGKILL");
    // Back for the next test even if this one fails.
    onTestFinished(() => victim.start());

    const failed = await when("provider-failed");
    const restarted = await when("started", (e) => e.leaseId !== failed.leaseId);
    const result = await job.result();
    await job.settled();

    expect(failed.provider).toBe(victim.account.address);
    expect(failed.at - killedAt).toBeLessThan(5_000);
    expect(restarted.resumed).toBe(true);
    expect(result.handOffs).toBe(1);
    expect(result.leases).toHaveLength(2);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    // Nothing safe is lost: the job resumed from the newest checkpoint that was safe when its
    // provider failed. (How much ran after it depends on how long copying took, which a loaded
    // machine stretches: a bound of one interval plus detection failed at load 14-18.)
    const lastSafe = events
      .slice(0, events.indexOf(failed))
      .flatMap((e) => (e.type === "checkpoint-safe" && e.leaseId === failed.leaseId ? [e.cid] : []))
      .at(-1);
    expect(lastSafe).toBeDefined();
    expect(restarted.resumedFrom?.cid).toBe(lastSafe);

    const slashed = events.find((e) => e.type === "slashed");
    expect(slashed).toMatchObject({ leaseId: failed.leaseId, provider: victim.account.address });
    if (slashed?.type === "slashed") expect(slashed.compensation).toBeGreaterThan(0n);

    await expectTokensConserved(fixture.market, before);
    // The replacement sent its checkpoints and the output to the tenant on a block lane.
    const replacement = fixture.market.providers.find((p) => p.account.address === result.leases[1]!.provider)!;
    expect((await blockBytesSent(replacement.process!)).lane).toBeGreaterThan(0);
    // It fetched the job's files and the checkpoint from the tenant on the tenant's lane, though
    // the tenant dialled it.
    const toReplacement = sentDags.filter((sent) => sent.peer === replacement.peerId).map((sent) => sent.lane);
    expect(toReplacement.length).toBeGreaterThan(0);
    expect(toReplacement).not.toContain(false);

    // The explorer on this devnet, where a kill, a hand-off and a slash just happened: the job's page
    // links its two leases by the hand-off, from the checkpoint resumed, and shows the slash.
    const explorer = await startExplorerUnderTest({
      rpcUrl: fixture.market.chain.rpcUrl,
      deploymentFile: fixture.market.deploymentFile,
      db: path.join(fixture.dir, "explorer.db"),
    });
    onTestFinished(() => explorer.stop());
    await explorer.caughtUp(await fixture.market.admin.publicClient.getBlockNumber({ cacheTime: 0 }));
    const page = await explorer.open(`/job/${job.jobId}`);
    const [dead, next] = result.leases.map((lease) => lease.leaseId);
    expect(await page.locator("[data-lease]").count()).toBe(2);
    expect(await page.locator(`[data-hand-off="${dead}-${next}"]`).textContent()).toContain("resumed from");
    expect(await page.locator(`[data-lease="${dead}"] .status-slashed`).textContent()).toBe("slashed");
    const shots = path.join(root, ".baton", "test-artifacts", "explorer");
    await mkdir(shots, { recursive: true });
    await page.screenshot({ path: path.join(shots, "job-after-a-kill.png"), fullPage: true });
  });

  it("(b) SIGKILL the replacement, and its replacement: three hand-offs, the last back to the first provider, restarted", async () => {
    const job = await runJob(client, trainSpec("30"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const first = serving(fixture.market, job);
    first.process!.child.kill("SIGKILL");
    const moved = await when("re-leased");
    // The first provider is back, and every other fails in turn: the job must come back to it (it
    // failed the job once, so it is asked last) rather than find no provider at all.
    await first.start();
    await when("checkpoint-safe", (e) => e.leaseId === moved.to);
    const second = serving(fixture.market, job);
    expect(second).not.toBe(first);
    second.process!.child.kill("SIGKILL");
    // Back for the next test even if this one fails.
    onTestFinished(() => second.start());
    const movedAgain = await when("re-leased", (e) => e.from === moved.to);
    await when("checkpoint-safe", (e) => e.leaseId === movedAgain.to);
    const third = serving(fixture.market, job);
    expect([first, second]).not.toContain(third);
    third.process!.child.kill("SIGKILL");
    onTestFinished(() => third.start());
    const result = await job.result();
    expect(result.handOffs).toBe(3);
    expect(result.leases.map((l) => l.provider)).toEqual([first, second, third, first].map((p) => p.account.address));
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    const starts = events.filter((e) => e.type === "started");
    expect(starts.map((e) => e.type === "started" && e.resumed)).toEqual([false, true, true, true]);
    await job.settled();
    // The dead leases of the second and third providers are slashed. The first came back within its
    // lease's timeout and may have acknowledged the tenant's close of it in time: slashed or not.
    const slashed = events.flatMap((e) => (e.type === "slashed" ? [String(e.leaseId)] : []));
    expect(slashed).toEqual(expect.arrayContaining([result.leases[1]!.leaseId, result.leases[2]!.leaseId]));
    expect(slashed).not.toContain(result.leases[3]!.leaseId);
  });

  it("(c) SIGSTOP until replaced, then SIGCONT: the old provider is fenced, its job killed, and there is one result", async () => {
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      // As long a silence as the on-chain timeout (6 s): the hand-off meets the lease just as it turns
      // slashable, and must end it either way (a close raced the deadline here and failed the job).
      failAfterMs: 6_000,
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const frozen = serving(fixture.market, job);
    frozen.process!.child.kill("SIGSTOP");
    try {
      const failed = await when("provider-failed");
      expect(failed.provider).toBe(frozen.account.address);
      await when("started", (e) => e.leaseId !== failed.leaseId);
    } finally {
      frozen.process!.child.kill("SIGCONT");
    }
    await frozen.process!.waitFor(/lease ended on chain; job stopped/, 30_000);
    const result = await job.result();
    expect(events.filter((e) => e.type === "completed")).toHaveLength(1);
    expect(result.leases.at(-1)!.provider).not.toBe(frozen.account.address);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    // The frozen provider could not finish its old lease with a result: it was closed or slashed.
    const { leaseManager } = contracts(fixture.market.deployment);
    const old = await fixture.market.admin.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [BigInt(result.leases[0]!.leaseId)],
    });
    expect(["Closing", "Closed", "Slashed"]).toContain(
      ["None", "Active", "Closing", "Completed", "Closed", "Expired", "Slashed"][old.status],
    );
    await job.settled();
  });

  it("(d) a hand-off that finds no provider free looks again until one is back, and the job completes there", async () => {
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const victim = serving(fixture.market, job);
    const others = fixture.market.providers.filter((p) => p !== victim);
    // Every other provider down first: their offers are still in the tenant's book, but none answers a bid.
    for (const other of others) {
      other.process!.child.kill("SIGKILL");
      await other.process!.exited;
    }
    victim.process!.child.kill("SIGKILL");
    // Back for the next test even if this one fails.
    const down = new Set([...others, victim]);
    onTestFinished(() => Promise.all([...down].map((p) => p.start())).then(() => undefined));

    const failed = await when("provider-failed");
    const waiting = await when("no-provider");
    expect(waiting.at).toBeGreaterThan(failed.at);
    const [back] = others;
    await back!.start();
    down.delete(back!);
    const moved = await when("re-leased");
    const result = await job.result();
    await job.settled();

    expect(result.handOffs).toBe(1);
    expect(result.leases.map((l) => l.provider)).toEqual([victim, back].map((p) => p!.account.address));
    expect(moved.from).toBe(failed.leaseId);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    expect(events.filter((e) => e.type === "started").map((e) => e.type === "started" && e.resumed)).toEqual([
      false,
      true,
    ]);
  });
  it("(e) a first lease waits out providers that offer but cannot answer (all frozen), and the job runs once they answer", async () => {
    const { providers } = fixture.market;
    const offered = (p: (typeof providers)[number]): boolean =>
      client.offers.list().some((o) => o.provider.toLowerCase() === p.account.address.toLowerCase());
    // (d) restarted them: their offers are in the tenant's book again before they freeze.
    await until(() => providers.every(offered), 30_000, "every provider's offer");
    const frozen = new Set(providers);
    const thaw = (): void => {
      for (const p of frozen) p.process!.child.kill("SIGCONT");
      frozen.clear();
    };
    onTestFinished(thaw);
    for (const p of providers) p.process!.child.kill("SIGSTOP");
    const job = await runJob(client, trainSpec("5"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    const waiting = await when("no-provider");
    expect(waiting.reason).toMatch(/no provider quoted for this job/);
    thaw();
    const result = await job.result();
    await job.settled();
    expect(result.handOffs).toBe(0);
    expect(events.filter((e) => e.type === "offers-found").length).toBeGreaterThanOrEqual(2);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
  });
  it("(f) a bid gives back the quotes it does not open: the other providers' one GPU each quotes again at once", async () => {
    const maxPricePerSecond = parseEther("0.001");
    const requirements = { gpus: 1 };
    const ask = (jobId: Hex, offers: FoundOffer[]) =>
      bid(client, { jobId, offers, requirements, maxPricePerSecond, durationS: 300 });
    const offers = await findOffers(client, { requirements, maxPricePerSecond, minCount: 3 });
    const first = await ask(`0x${"f1".repeat(32)}`, offers);
    expect(first.quotes).toHaveLength(3);
    const others = fixture.market.providers.filter((p) => p.account.address !== first.chosen.quote.provider);
    await Promise.all(others.map((p) => p.process!.waitFor(/"msg":"quotes released"/, 10_000)));
    // Without the release each of them would refuse this with no-capacity for a minute.
    const second = await ask(
      `0x${"f2".repeat(32)}`,
      offers.filter((o) => o.offer.peerId !== first.chosen.offer.peerId),
    );
    expect(second.quotes.map((q) => q.quote.provider).sort()).toEqual(others.map((p) => p.account.address).sort());
    for (const { offer, quote } of [first.chosen, second.chosen]) {
      await releaseQuotes(client.host, peerIdFromString(offer.peerId), client.peerKey, [quote.nonce]);
    }
  });
});
