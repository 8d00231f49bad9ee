import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";

import { expect, it, onTestFinished, vi } from "vitest";

import { devAccount } from "../../deploy/local-chain.ts";
import { contracts, leaseStatus } from "../../sdk/chain/client.ts";
import { privateKeyOf } from "../helpers/market.ts";
import { spawnScript } from "../helpers/processes.ts";
import { expectTokensConserved, tenantCliArgs, totals, useRunJobMarket } from "../helpers/run-job.ts";

/*
 * The batch scenario of issue 19 in one run: 200 short tasks over 4 providers with `baton batch run
 * --json`. One provider is SIGKILLed, then another SIGSTOPped (and woken once the batch has dropped
 * it), then the tenant process itself is SIGKILLed and the same command run again. Every task must
 * appear once in the manifest with the result a serial run gives (the square of its N), the dead
 * provider's lease be slashed, and every token be where it should.
 */
const fixture = useRunJobMarket({ providers: 4 });

const TOTAL = 200;
/** Provider killed, provider stopped, tenant killed: at these counts of tasks done. */
const KILL_AT = 30;
const STOP_AT = 60;
const TENANT_KILL_AT = 90;

/** What `baton batch run --json` prints per event (bigints as strings). */
interface JsonEvent {
  type: string;
  taskId?: string;
  provider?: string;
  leaseId?: string;
  progress?: { done: number };
}

it("200 tasks over 4 providers: one SIGKILLed, one SIGSTOPped, the tenant SIGKILLed and run again; every task once with its serial result, the dead lease slashed, tokens conserved", async () => {
  const { market } = fixture;
  const dataDir = path.join(fixture.dir, "tenant");
  // Funds dev account 10, the CLI's.
  await market.client(0, path.join(fixture.dir, "tenant-fund"));
  const before = await totals(market);

  const specFile = path.join(fixture.dir, "square.json");
  await writeFile(
    specFile,
    JSON.stringify({
      name: "square",
      command: ["sh", "-c", 'sleep 0.2; echo $((N * N)) > "$BATON_OUTPUT_DIR/square"'],
      resources: { gpus: 0, cpus: 1, memoryMiB: 128 },
      maxDurationS: 60,
    }),
  );
  const tasksFile = path.join(fixture.dir, "tasks.jsonl");
  await writeFile(
    tasksFile,
    Array.from({ length: TOTAL }, (_, i) => JSON.stringify({ id: `n${i + 1}`, env: { N: String(i + 1) } })).join("\n"),
  );
  const manifest = path.join(dataDir, "batches", "tasks.jsonl");
  const args = ["batch", "run", specFile, "--tasks", tasksFile, "--max-price", "0.001", "--parallelism", "4", "--json"];
  args.push(...tenantCliArgs(market, dataDir));
  const env = { BATON_TENANT_KEY: privateKeyOf(devAccount(10)) };
  const providerOf = (address: string) => market.providers.find((p) => p.account.address === address)!;

  // Each fault is made at once from the event that calls for it (no I/O between), so a provider is
  // hit while it holds a task it was just given.
  const events: JsonEvent[] = [];
  let killed: string | undefined;
  let stopped: string | undefined;
  let tenantKilled = false;
  const lostLease = (provider: string | undefined) =>
    events.find((e) => e.type === "provider-lost" && e.provider === provider)?.leaseId;
  const first = spawnScript("cli/baton.ts", args, env, {
    onLine: (line) => {
      if (!line.startsWith("{")) return;
      const event = JSON.parse(line) as JsonEvent;
      events.push(event);
      const done = event.progress?.done ?? 0;
      if (event.type === "provider-lost" && stopped !== undefined && event.provider === stopped) {
        // Dropped by the batch: woken, it may finish what it held, too late to count.
        providerOf(stopped).process!.child.kill("SIGCONT");
      }
      if (event.type !== "task-started") return;
      if (killed === undefined && done >= KILL_AT) {
        killed = event.provider!;
        providerOf(killed).process!.child.kill("SIGKILL");
      } else if (stopped === undefined && lostLease(killed) && done >= STOP_AT && event.provider !== killed) {
        stopped = event.provider!;
        providerOf(stopped).process!.child.kill("SIGSTOP");
      } else if (!tenantKilled && lostLease(stopped) && done >= TENANT_KILL_AT) {
        tenantKilled = true;
        first.child.kill("SIGKILL");
      }
    },
  });
  onTestFinished(() => {
    first.child.kill("SIGKILL");
    if (stopped) providerOf(stopped).process?.child.kill("SIGCONT");
  });
  const firstExit = await first.exited;
  expect(
    tenantKilled,
    `the first run ended by itself (exit ${firstExit.code}): ${first.lines.slice(-10).join("\n")}`,
  ).toBe(true);
  const killedLease = lostLease(killed);
  const stoppedLease = lostLease(stopped);
  expect(killedLease).toBeDefined();
  expect(stoppedLease).toBeDefined();
  const recordedBefore = (await readFile(manifest, "utf8")).split("\n").filter(Boolean).length;
  expect(recordedBefore).toBeGreaterThanOrEqual(TENANT_KILL_AT);
  expect(recordedBefore).toBeLessThan(TOTAL);

  // Run again: the killed run's leases are ended, and only the tasks without a result run.
  const second = spawnScript("cli/baton.ts", args, env);
  onTestFinished(() => void second.child.kill("SIGKILL"));
  const secondExit = await second.exited;
  expect(secondExit.code, second.lines.slice(-20).join("\n")).toBe(0);

  // Every task once, done, with the square of its N.
  const lines = (await readFile(manifest, "utf8")).split("\n").filter(Boolean);
  const results = lines.map((line) => JSON.parse(line) as { taskId: string; state: string; provider: string });
  expect(results).toHaveLength(TOTAL);
  expect(new Set(results.map((r) => r.taskId)).size).toBe(TOTAL);
  expect(results.every((r) => r.state === "done")).toBe(true);
  for (const { taskId } of results) {
    const n = Number(taskId.slice(1));
    expect(await readFile(path.join(`${manifest}.outputs`, taskId, "square"), "utf8")).toBe(`${n * n}\n`);
  }

  // The dead provider's lease is slashed (by the first run, or by the second if it was killed
  // before the lease's timeout passed); the frozen one's has ended too, one way or the other.
  const { leaseManager } = contracts(market.deployment);
  const statusOf = async (leaseId: string) => {
    const lease = await market.admin.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [BigInt(leaseId)],
    });
    return leaseStatus[lease.status];
  };
  await vi.waitFor(async () => expect(await statusOf(killedLease!)).toBe("Slashed"), {
    timeout: 60_000,
    interval: 500,
  });
  expect(await statusOf(stoppedLease!)).not.toBe("Active");
  await expectTokensConserved(market, before);
}, 600_000);
