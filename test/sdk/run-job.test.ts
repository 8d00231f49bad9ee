import { readFile } from "node:fs/promises";
import path from "node:path";

import { parseEther } from "viem";
import { beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { contracts } from "../../sdk/chain/client.ts";
import { runJob } from "../../sdk/actions/runJob.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { recorder, SCRIPT, serving, totals, trainSpec, useRunJobMarket } from "../helpers/run-job.ts";

// Hand-offs: a provider killed or frozen under a running job.
const fixture = useRunJobMarket();

describe("runJob: hand-off to a new provider", () => {
  let client: BatonClient;

  beforeAll(async () => {
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant-a"));
  });

  it("(a) SIGKILL mid-job: the job completes elsewhere with the uninterrupted result; the dead lease is slashed; tokens are conserved", async () => {
    const before = await totals(fixture.market);
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
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
    // Work lost is at most one checkpoint interval plus what ran during detection.
    const resumedStep = restarted.resumedFrom!.step!;
    expect(failed.lastStep! - resumedStep).toBeLessThanOrEqual(50 + Math.ceil((failed.at - killedAt) / 20) + 10);

    const slashed = events.find((e) => e.type === "slashed");
    expect(slashed).toMatchObject({ leaseId: failed.leaseId, provider: victim.account.address });
    if (slashed?.type === "slashed") expect(slashed.compensation).toBeGreaterThan(0n);

    const after = await totals(fixture.market);
    // Nothing minted or lost: every token is held by someone, and the treasury's share burned is the only supply change.
    expect(after.payment).toBe(after.paymentSupply);
    expect(after.staking).toBe(after.stakingSupply);
    expect(after.paymentSupply).toBe(before.paymentSupply);
  });

  it("(b) SIGKILL the replacement too: two hand-offs, same result", async () => {
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { events, when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const first = serving(fixture.market, job);
    first.process!.child.kill("SIGKILL");
    // Back for the next test even if this one fails.
    onTestFinished(() => first.start());
    const moved = await when("re-leased");
    await when("checkpoint-safe", (e) => e.leaseId === moved.to);
    const second = serving(fixture.market, job);
    expect(second).not.toBe(first);
    second.process!.child.kill("SIGKILL");
    // Back for the next test even if this one fails.
    onTestFinished(() => second.start());
    const result = await job.result();
    expect(result.handOffs).toBe(2);
    expect(new Set(result.leases.map((l) => l.provider)).size).toBe(3);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    const starts = events.filter((e) => e.type === "started");
    expect(starts.map((e) => e.type === "started" && e.resumed)).toEqual([false, true, true]);
    await job.settled();
    expect(events.filter((e) => e.type === "slashed")).toHaveLength(2);
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
});
