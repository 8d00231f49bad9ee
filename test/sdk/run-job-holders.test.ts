import { readFile } from "node:fs/promises";
import path from "node:path";

import { CID } from "multiformats/cid";
import { parseEther, type Hex } from "viem";
import { beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { runJob } from "../../sdk/actions/runJob.ts";
import { contracts } from "../../sdk/chain/client.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { holdJobId } from "../../sdk/tenant/holders.ts";
import { chainStatusOf } from "../helpers/leases.ts";
import {
  expectTokensConserved,
  recorder,
  SCRIPT,
  serving,
  totals,
  trainSpec,
  useRunJobMarket,
} from "../helpers/run-job.ts";

/*
 * Holders (issue 15, point 2) on a real devnet with three provider node processes: the job's
 * checkpoints are pinned by a holder, another provider paid through a lease of its own, and a
 * hand-off resumes from it, the tenant keeping no copy; a holder lost is replaced and slashed.
 */
const fixture = useRunJobMarket();

describe("runJob with holders", () => {
  let client: BatonClient;

  beforeAll(async () => {
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant"));
  });

  it("(a) the tenant keeps no copy: a SIGKILLed provider's job resumes from its holder, and the holder's lease is closed at the end", async () => {
    const before = await totals(fixture.market);
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      replication: { holders: 1, tenantCopy: "none", diskGiB: 1 },
    });
    const { events, when } = recorder(job);
    const leased = await when("holder-leased");
    const safe = await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    expect(safe.holders).toBe(1);
    // Safe without the tenant: its own store never had it.
    expect(await client.ipfs.has(CID.parse(safe.cid))).toBe(false);
    const holder = fixture.market.providers.find((p) => p.account.address === leased.provider)!;
    const victim = serving(fixture.market, job);
    expect(victim).not.toBe(holder);
    victim.process!.child.kill("SIGKILL");
    onTestFinished(() => victim.start());

    const failed = await when("provider-failed");
    const restarted = await when("started", (e) => e.leaseId !== failed.leaseId);
    const released = holder.process!.waitFor(/holds released/, 60_000);
    const result = await job.result();
    await job.settled();

    expect(restarted.resumed).toBe(true);
    const lastSafe = events
      .slice(0, events.indexOf(failed))
      .flatMap((e) => (e.type === "checkpoint-safe" ? [e.cid] : []))
      .at(-1);
    expect(restarted.resumedFrom?.cid).toBe(lastSafe);
    // The resumed checkpoint came from the holder: the tenant never held it.
    expect(await client.ipfs.has(CID.parse(lastSafe!))).toBe(false);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);

    const record = (await client.jobs.get(job.jobId))!;
    expect(record.holders).toHaveLength(1);
    expect(record.holders![0]).toMatchObject({ leaseId: leased.leaseId.toString(), state: "completed" });
    // The holder acknowledges the close, and lets its checkpoints go.
    expect(await released).toContain(`"leaseId":"${leased.leaseId}"`);
    await expect.poll(() => chainStatusOf(fixture.market, leased.leaseId), { timeout: 30_000 }).toBe("Closed");
    // Opened under the job's hold id, which an auditor derives from the job's.
    const opened = await fixture.market.admin.publicClient.getContractEvents({
      ...contracts(fixture.market.deployment).leaseManager,
      eventName: "LeaseOpened",
      args: { leaseId: leased.leaseId },
      fromBlock: 0n,
    });
    expect(opened[0]!.args.jobId).toBe(holdJobId(job.jobId as Hex));
    expect(events.some((e) => e.type === "slashed" && e.leaseId === failed.leaseId)).toBe(true);
    await expectTokensConserved(fixture.market, before);
  });

  it("(b) a SIGKILLed holder is replaced: checkpoints are safe on its replacement, and its lease is slashed", async () => {
    const before = await totals(fixture.market);
    const job = await runJob(client, trainSpec("30"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      replication: { holders: 1, diskGiB: 1 },
    });
    const { events, when } = recorder(job);
    const first = await when("holder-leased");
    await when("checkpoint-safe", (e) => e.holders === 1);
    const holder = fixture.market.providers.find((p) => p.account.address === first.provider)!;
    holder.process!.child.kill("SIGKILL");
    onTestFinished(() => holder.start());

    const lost = await when("holder-lost");
    const second = await when("holder-leased", (e) => e.leaseId !== first.leaseId);
    const lostAt = events.indexOf(lost);
    const result = await job.result();
    await job.settled();

    expect(lost).toMatchObject({ leaseId: first.leaseId, provider: first.provider });
    expect(second.provider).not.toBe(first.provider);
    expect(second.provider).not.toBe(result.leases[0]!.provider);
    // Checkpoints after the loss are safe on the replacement.
    expect(events.slice(lostAt).some((e) => e.type === "checkpoint-safe" && e.holders === 1)).toBe(true);
    expect(result.handOffs).toBe(0);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    expect(events.find((e) => e.type === "slashed")).toMatchObject({ leaseId: first.leaseId });
    const record = (await client.jobs.get(job.jobId))!;
    expect(record.holders!.map((h) => h.state)).toEqual(["failed", "completed"]);
    await expectTokensConserved(fixture.market, before);
  });
});
