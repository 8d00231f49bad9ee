import { spawn, type ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { parseEther } from "viem";
import { beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { contracts, leaseStatus } from "../../sdk/chain/client.ts";
import { BudgetExhaustedError } from "../../sdk/errors.ts";
import { attachJob } from "../../sdk/actions/attachJob.ts";
import { runJob } from "../../sdk/actions/runJob.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { until } from "../helpers/processes.ts";
import { recorder, SCRIPT, serving, trainSpec, useRunJobMarket } from "../helpers/run-job.ts";

// Many jobs on few providers, a budget that runs out, a machine with no core to spare.
// (f) and the untouched jobs of (g) expect no hand-off: room for a loaded machine.
const fixture = useRunJobMarket({ chainHeartbeatTimeoutS: 20 });

describe("runJob: many jobs, budgets, busy cores", () => {
  let client: BatonClient;

  beforeAll(async () => {
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant-a"));
  });

  it("(g) nine jobs on three providers: killing one moves exactly its jobs and slashes exactly its leases", async () => {
    const { leaseManager } = contracts(fixture.market.deployment);
    const jobs = await Promise.all(
      Array.from({ length: 9 }, async (_, i) => {
        // Spread the first leases evenly (three per provider); hand-offs may go anywhere.
        const home = fixture.market.providers[i % 3]!;
        let first = true;
        // 60 s each: every job is still running when the last of them has its first safe checkpoint
        // (at 30 s each, a full run on a loaded machine found the first job already finished).
        const job = await runJob(client, trainSpec("100"), {
          maxPricePerSecond: parseEther("0.001"),
          files: { "train.mjs": SCRIPT },
          excludeProviders: () => {
            const others = first
              ? fixture.market.providers.filter((p) => p !== home).map((p) => p.account.address)
              : [];
            first = false;
            return others;
          },
        });
        return { job, home, ...recorder(job) };
      }),
    );
    await Promise.all(jobs.map(({ when }) => when("checkpoint-safe")));
    const victim = fixture.market.providers[0]!;
    for (const { job, home, events } of jobs) {
      // A hand-off before the kill would be a false suspicion (or a lease ended early): say which.
      expect(events.filter((e) => e.type === "provider-failed")).toEqual([]);
      expect(serving(fixture.market, job)).toBe(home);
    }
    victim.process!.child.kill("SIGKILL");
    // Back for the next test even if this one fails.
    onTestFinished(() => victim.start());

    const results = await Promise.all(jobs.map(({ job }) => job.result()));
    await Promise.all(jobs.map(({ job }) => job.settled()));

    const moved = jobs.filter(({ home }) => home === victim);
    for (const [i, { home, events }] of jobs.entries()) {
      const result = results[i]!;
      expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
      const failed = events.filter((e) => e.type === "provider-failed");
      const slashed = events.filter((e) => e.type === "slashed");
      if (home === victim) {
        expect(result.handOffs).toBe(1);
        expect(failed.map((e) => e.type === "provider-failed" && e.provider)).toEqual([victim.account.address]);
        expect(slashed.map((e) => e.type === "slashed" && e.leaseId)).toEqual([BigInt(result.leases[0]!.leaseId)]);
      } else {
        expect(result.handOffs).toBe(0);
        expect(failed).toEqual([]);
        expect(slashed).toEqual([]);
      }
    }
    // On chain, the same: the victim's three leases slashed, every other lease completed (providers
    // finish on chain a moment after the tenant has the result).
    const onChain = () =>
      Promise.all(
        results.flatMap((result) =>
          result.leases.map(async (lease) => {
            const view = await fixture.market.admin.publicClient.readContract({
              ...leaseManager,
              functionName: "getLease",
              args: [BigInt(lease.leaseId)],
            });
            return { provider: lease.provider, status: leaseStatus[view.status] };
          }),
        ),
      );
    await until(async () => (await onChain()).every((s) => s.status !== "Active"), 60_000, "every lease ended");
    const statuses = await onChain();
    expect(moved).toHaveLength(3);
    expect(statuses.filter((s) => s.status === "Slashed")).toHaveLength(3);
    for (const { provider, status } of statuses) {
      expect(status).toBe(provider === victim.account.address ? "Slashed" : "Completed");
    }
    // Nine 60 s jobs, three of them moved, on two cores shared with three other test files: a CI
    // run went past the default 120 s (68 s alone on a quiet machine here).
  }, 240_000);

  it("(e) a budget that runs out fails the job cleanly, its lease closed and the rest refunded", async () => {
    const { paymentToken } = contracts(fixture.market.deployment);
    const balance = () =>
      fixture.market.admin.publicClient.readContract({
        ...paymentToken,
        functionName: "balanceOf",
        args: [client.account.address],
      });
    const before = await balance();
    const price = 1_000_000_000_000n;
    const started = Date.now();
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      budget: price * 8n,
    });
    const { events } = recorder(job);
    await expect(job.result()).rejects.toBeInstanceOf(BudgetExhaustedError);
    const elapsedS = BigInt(Math.ceil((Date.now() - started) / 1000));
    expect(events.at(-1)?.type).toBe("failed");
    const record = await client.jobs.get(job.jobId);
    expect(record?.state).toBe("failed");
    const { leaseManager } = contracts(fixture.market.deployment);
    const lease = await fixture.market.admin.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [BigInt(record!.leases[0]!.leaseId)],
    });
    expect(lease.status).not.toBe(1);
    // Paid for the time used, not the whole deposit: the rest came back.
    const spent = before - (await balance());
    expect(spent).toBeLessThan(price * 8n);
    expect(spent).toBeLessThanOrEqual(price * (elapsedS + 1n));

    // Attached afterwards, the failed job stays failed, with its reason, and its events end.
    const again = await attachJob(client, job.jobId);
    await expect(again.result()).rejects.toThrow(record!.error!);
    expect(again.status().state).toBe("failed");
    expect((await client.jobs.get(job.jobId))?.error).toBe(record!.error);
    for await (const event of again) throw new Error(`an ended job emitted ${event.type}`);
  });

  it("(f) with both cores busy for the whole job and no kill, there is no hand-off", async () => {
    const burners: ChildProcess[] = Array.from({ length: os.availableParallelism() }, () =>
      spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: "ignore" }),
    );
    try {
      const job = await runJob(client, trainSpec("10"), {
        maxPricePerSecond: parseEther("0.001"),
        files: { "train.mjs": SCRIPT },
      });
      const { events } = recorder(job);
      const result = await job.result();
      // The failures first: a hand-off's cause (its liveness reason) is then what a failure shows.
      expect(events.filter((e) => e.type === "provider-failed")).toEqual([]);
      expect(result.handOffs).toBe(0);
      expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);

      // Attached afterwards, the completed job gives its stored result at once and ends its events.
      const again = await attachJob(client, job.jobId);
      expect((await again.result()).outputCid).toBe(result.outputCid);
      expect(again.status().state).toBe("completed");
      for await (const event of again) throw new Error(`an ended job emitted ${event.type}`);
    } finally {
      for (const burner of burners) burner.kill("SIGKILL");
    }
  });
});
