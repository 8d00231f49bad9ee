import { readFile } from "node:fs/promises";
import path from "node:path";

import { createTestClient, http, parseEther, type Address } from "viem";
import { hardhat } from "viem/chains";
import { describe, expect, it, onTestFinished } from "vitest";

import { devAccount } from "../../deploy/local-chain.ts";
import { auditJob } from "../../sdk/actions/auditJob.ts";
import { runBatch, type BatchEvent } from "../../sdk/actions/runBatch.ts";
import { runJob } from "../../sdk/actions/runJob.ts";
import { createBatonClient, type BatonClient } from "../../sdk/client.ts";
import { parseJobSpec } from "../../sdk/job-spec.ts";
import { parseTasks } from "../../sdk/tenant/batch-tasks.ts";
import { openJobStore } from "../../sdk/tenant/job-store.ts";
import { pollUntil } from "../../sdk/utils/retry.ts";
import { reorg, snapshotChain, type ChainSnapshot } from "../helpers/reorg.ts";
import {
  expectTokensConserved,
  recorder,
  SCRIPT,
  serving,
  totals,
  trainSpec,
  useRunJobMarket,
} from "../helpers/run-job.ts";

// A reorg on the devnet that takes a lease's opening: evm_snapshot just before the opening is sent,
// and once the job runs on that lease, evm_revert and every other transaction of the dropped blocks
// sent again (test/helpers/reorg.ts): the new branch has all but the opening, as if no node had kept
// it. The tenant reads at 5 confirmations and the providers at 2, on a chain with 1 s blocks (so that
// blocks keep coming to be confirmed); mining pauses from the opening until the reorg, so that the
// lease holds a safe checkpoint before it could be confirmed however slow a loaded machine makes the
// job's start. Test-only: nothing in sdk/ or node/ uses Hardhat's methods.
const BLOCK_TIME_S = 1;
const TENANT_CONFIRMATIONS = 5;
const NODE_CONFIRMATIONS = 2;
const fixture = useRunJobMarket({
  blockTimeS: BLOCK_TIME_S,
  // No honest provider turns slashable while the reorg is under way.
  chainHeartbeatTimeoutS: 20,
  configFor: () => ({ confirmations: NODE_CONFIRMATIONS }),
});

/**
 * A tenant (dev account `account`, funded) reading at the tenant's confirmations, and the snapshot
 * taken just before its first transaction (the lease's opening), once it is sent.
 */
async function reorgTenant(
  account: number,
  dirName: string,
): Promise<{ client: BatonClient; snapshot: () => ChainSnapshot | undefined }> {
  const { market } = fixture;
  const tenant = devAccount(account);
  await market.fund(tenant.address, parseEther("100"));
  const client = await createBatonClient({
    rpcUrl: market.chain.rpcUrl,
    account: tenant,
    deployment: market.deployment,
    bootstrap: market.providers.map((p) => p.address!),
    dataDir: path.join(fixture.dir, dirName),
    blockTimeS: BLOCK_TIME_S,
    confirmations: TENANT_CONFIRMATIONS,
  });
  onTestFinished(() => client.close());
  let snapshot: ChainSnapshot | undefined;
  const transact = client.transact.bind(client);
  client.transact = async <T>(send: () => Promise<T>): Promise<T> => {
    snapshot ??= await snapshotChain(market.chain.rpcUrl);
    return transact(send);
  };
  return { client, snapshot: () => snapshot };
}

describe(`a reorg that takes a lease's opening (tenant at ${TENANT_CONFIRMATIONS} confirmations, providers at ${NODE_CONFIRMATIONS})`, () => {
  it("the tenant never believes the lease, leaves it, and finishes the job on a new one; its provider stops the phantom's job; no money moves for it", async () => {
    const { market } = fixture;
    const { client, snapshot } = await reorgTenant(10, "tenant");
    const before = await totals(market);

    const test = createTestClient({ mode: "hardhat", transport: http(market.chain.rpcUrl), chain: hardhat });
    let vanishedFrom: Address | undefined;
    const job = await runJob(client, trainSpec("40"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      // After the reorg the job goes to another provider, so that the first one's phantom job must stop.
      excludeProviders: () => (vanishedFrom ? [vanishedFrom] : []),
    });
    const { events, when } = recorder(job);
    job.on("lease-vanished", (event) => (vanishedFrom = event.provider));

    // The opening is mined, the tenant saw it (the job started there) and holds a checkpoint of it.
    const opened = await when("lease-opened");
    // No block until the reorg (the providers' transactions wait): the opening stays young.
    await test.setIntervalMining({ interval: 0 });
    const firstSafe = await when("checkpoint-safe", (e) => e.leaseId === opened.leaseId);
    const victim = serving(market, job);
    const record = async () => (await client.jobs.get(job.jobId))!;
    const phantom = (await record()).leases[0]!;
    expect(phantom.confirmedBlock).toBeUndefined();
    const openingBlock = (
      await market.admin.publicClient.getTransactionReceipt({ hash: phantom.openingTx as `0x${string}` })
    ).blockNumber;
    const head = await market.admin.publicClient.getBlockNumber();
    // Not yet as deep as the tenant's confirmations (else the test would reorg a confirmed lease).
    expect(head - openingBlock).toBeLessThan(BigInt(TENANT_CONFIRMATIONS));

    expect(snapshot()!.blockNumber).toBeLessThan(openingBlock);
    // The providers' heartbeats of those blocks (and of the mempool) come back; the opening does not.
    await reorg(market.chain.rpcUrl, snapshot()!, {
      drop: [phantom.openingTx as `0x${string}`],
      blockTimeS: BLOCK_TIME_S,
    });

    const vanished = await when("lease-vanished");
    expect(vanished).toMatchObject({ leaseId: opened.leaseId, provider: victim.account.address });
    expect(vanished.reason).toMatch(/its opening vanished: .*a reorg dropped it/);
    // The new lease: another provider, no predecessor (the phantom continues nothing and is continued by nothing).
    const reopened = await when("lease-opened", (e) => e !== opened);
    expect(reopened.provider).not.toBe(victim.account.address);
    expect(reopened.predecessor).toBe(0n);
    const restarted = await when("started", (e) => e.at > vanished.at);
    expect(restarted.resumed).toBe(true);
    expect(restarted.resumedFrom?.cid).toBeDefined();

    // The phantom's provider stops its job once the lease has been gone for its 2 blocks.
    const fenced = await victim.process!.waitFor(/lease gone from the chain \(a reorg took its opening\)/, 60_000);
    expect(fenced).toContain(`"leaseId":"${opened.leaseId}"`);

    const result = await job.result();
    await job.settled();
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);

    // What the tenant believes: the phantom vanished (never confirmed, no deposit counted, not a
    // hand-off); the lease that ran the job is confirmed.
    const final = await record();
    expect(final.leases.map((l) => l.state)).toEqual(["vanished", "completed"]);
    expect(final.leases[0]!.confirmedBlock).toBeUndefined();
    expect(final.leases[1]!.confirmedBlock).toBeDefined();
    expect(final.handOffs).toBe(0);
    expect(final.deposited).toBe(final.leases[1]!.deposit);
    const confirmed = events.filter((e) => e.type === "lease-confirmed");
    expect(confirmed.map((e) => e.type === "lease-confirmed" && e.leaseId)).toEqual([reopened.leaseId]);
    expect(events.filter((e) => e.type === "slashed" || e.type === "provider-failed")).toEqual([]);
    // It resumed from a checkpoint of the phantom's that the tenant held: work done there was not lost.
    const heldFromPhantom = events.flatMap((e) =>
      e.type === "checkpoint-safe" && e.leaseId === opened.leaseId && e.at < vanished.at ? [e.cid] : [],
    );
    expect(heldFromPhantom).toContain(firstSafe.cid);
    expect(heldFromPhantom).toContain(restarted.resumedFrom!.cid);

    // The chain agrees, read 5 blocks deep once the finish is that deep: one lease, the one that ran.
    const audit = () => auditJob(client, { jobId: job.jobId, tenant: client.account.address });
    expect(
      await pollUntil(async () => (await audit()).lineage.every((l) => l.status === "completed"), {
        delayMs: 500,
        backoff: 1,
        timeoutMs: 60_000,
      }),
    ).toBe(true);
    const { lineage, others, asOf } = await audit();
    expect(asOf.confirmations).toBe(TENANT_CONFIRMATIONS);
    expect(lineage.map((l) => [l.leaseId, l.provider])).toEqual([[reopened.leaseId, reopened.provider]]);
    expect(others).toEqual([]);

    await expectTokensConserved(market, before);
  }, 300_000);

  it("a batch: the lease whose opening vanished is left blamelessly, its running task queued again and done once elsewhere, results it had kept; nothing is slashed and no money moves for it", async () => {
    const { market } = fixture;
    const { client, snapshot } = await reorgTenant(11, "batch-tenant");
    const before = await totals(market);
    const test = createTestClient({ mode: "hardhat", transport: http(market.chain.rpcUrl), chain: hardhat });

    const spec = parseJobSpec({
      name: "square",
      command: ["sh", "-c", 'sleep 1; echo $((N * N)) > "$BATON_OUTPUT_DIR/square"'],
      resources: { gpus: 0, cpus: 1, memoryMiB: 128 },
      maxDurationS: 60,
    });
    const lines = Array.from({ length: 6 }, (_, i) => JSON.stringify({ id: `n${i + 1}`, env: { N: String(i + 1) } }));
    const tasks = parseTasks(lines.join("\n"), spec, { source: "tasks.jsonl", baseDir: "." });
    const manifest = path.join(fixture.dir, "reorged-batch.jsonl");
    const events: BatchEvent[] = [];
    const waiters: { match: (e: BatchEvent) => boolean; resolve: (e: BatchEvent) => void }[] = [];
    const when = (match: (e: BatchEvent) => boolean): Promise<BatchEvent> =>
      new Promise((resolve) => {
        const seen = events.find(match);
        if (seen) resolve(seen);
        else waiters.push({ match, resolve });
      });
    const batch = runBatch(client, {
      spec,
      tasks,
      source: "tasks.jsonl",
      manifest,
      parallelism: 1,
      maxPricePerSecond: parseEther("0.001"),
      onEvent: (event) => {
        events.push(event);
        for (const waiter of waiters.filter((w) => w.match(event))) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(event);
        }
      },
    });
    batch.catch(() => undefined);

    const opened = await when((e) => e.type === "lease-opened");
    if (opened.type !== "lease-opened") throw new Error("unreachable");
    // No block until the reorg: the opening stays young while the lease records a task and starts the next.
    await test.setIntervalMining({ interval: 0 });
    await when((e) => e.type === "task-started" && e.progress.done >= 1);
    const victim = market.providers.find((p) => p.account.address === opened.provider)!;
    // The batch's lease records, next to its manifest.
    const [batchRecord] = await (await openJobStore(`${manifest}.leases`)).list();
    const phantom = batchRecord!.leases[0]!;
    expect(phantom.confirmedBlock).toBeUndefined();
    await reorg(market.chain.rpcUrl, snapshot()!, {
      drop: [phantom.openingTx as `0x${string}`],
      blockTimeS: BLOCK_TIME_S,
    });

    const vanished = await when((e) => e.type === "lease-vanished");
    if (vanished.type !== "lease-vanished") throw new Error("unreachable");
    expect(vanished).toMatchObject({ leaseId: opened.leaseId, provider: victim.account.address });
    // The task it ran then (the one started above, or a later one) goes back to the queue, first of
    // those it was given.
    const requeued = vanished.requeued[0]!;
    expect(events.some((e) => e.type === "task-started" && e.taskId === requeued && e.leaseId === opened.leaseId)).toBe(
      true,
    );
    // Its provider is not excluded, and its next lease may even get the phantom's id (the reorg freed
    // it): how a provider fences a phantom is the job's test above.
    const result = await batch;

    // Every task once, with its square; the task the phantom ran when it vanished, on a later lease.
    expect(result.results.map((r) => r.taskId).sort()).toEqual(tasks.map((t) => t.id).sort());
    for (const r of result.results) {
      const n = Number(r.taskId.slice(1));
      expect(await readFile(path.join(result.outputDir, r.taskId, "square"), "utf8")).toBe(`${n * n}\n`);
    }
    // (Its new lease may have the phantom's id: the reorg freed it for the next opening.)
    expect(events.some((e) => e.type === "task-started" && e.taskId === requeued && e.at >= vanished.at)).toBe(true);
    // Blameless: no provider lost, nothing slashed; the phantom vanished, every other lease closed.
    expect(events.filter((e) => ["provider-lost", "task-requeued", "slashed"].includes(e.type))).toEqual([]);
    expect(result.leases[0]!.state).toBe("vanished");
    expect(result.leases.slice(1).map((l) => l.state)).toEqual(result.leases.slice(1).map(() => "completed"));
    // A lease is confirmed only once its opening lies 5 deep: never the phantom.
    expect(result.leases[0]!.confirmedBlock).toBeUndefined();
    expect(events.some((e) => e.type === "lease-confirmed" && e.leaseId === opened.leaseId && e.at < vanished.at)).toBe(
      false,
    );
    await expectTokensConserved(market, before);
  }, 300_000);
});
