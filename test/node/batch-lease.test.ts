import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { restoreCheckpoint } from "../../sdk/ipfs/checkpoint.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import type { JobSpec } from "../../sdk/job-spec.ts";
import type { LeaseSession, ProviderEvent } from "../../sdk/wire/clients.ts";
import type { ProviderMessage, TenantMessage } from "../../sdk/wire/messages.ts";
import { signTenantAuth } from "../../sdk/wire/tenant-auth.ts";
import { chainStatusOf, openSession, quoteAndOpenLease, readUntil } from "../helpers/leases.ts";
import { startMarket, type Market, type ProviderHandle, type Tenant } from "../helpers/market.ts";

/*
 * A batch lease on a real provider node process, real chain, loopback libp2p: a lease started with a
 * task id runs one task after another on the same lease, each reported by its own result, and the
 * lease stays active on chain between them; a task that does not fit the lease, or comes while one
 * runs, is refused.
 */

const LEASE_S = 600;

let market: Market;
let provider: ProviderHandle;
let tenant: Tenant;
let tenantDir: string | undefined;
let leaseId: bigint;

function taskSpec(script: string, env: Record<string, string> = {}): JobSpec {
  return {
    name: "batch-task",
    command: ["sh", "-c", script],
    env,
    inputs: [],
    resources: { gpus: 0, cpus: 1, memoryMiB: 256 },
    network: false,
    maxDurationS: 120,
  };
}

const openLease = (): Promise<bigint> =>
  quoteAndOpenLease(tenant, market.deployment, provider, {
    jobName: "batch-lease",
    requirements: { gpus: 0 },
    durationS: LEASE_S,
  });

const open = (
  first: { type: "start"; body: TenantMessage<"start"> } | { type: "attach"; body: TenantMessage<"attach"> },
): Promise<LeaseSession> => openSession(tenant, provider, first);

const resultOf = (taskId: string) => (e: ProviderEvent) => e.type === "result" && e.body.taskId === taskId;
const lines = (events: ProviderEvent[]) =>
  events.flatMap((e) => (e.type === "log" && e.body.stream === "stdout" ? [e.body.line] : []));

const chainStatus = (): Promise<string> => chainStatusOf(market, leaseId);

beforeAll(async () => {
  market = await startMarket({
    providers: 1,
    configFor: () => ({ cpuJobs: true, price: { basePerSecond: "1000000000", perGpuPerSecond: "1000000000000" } }),
  });
  provider = market.providers[0]!;
  tenantDir = await mkdtemp(path.join(os.tmpdir(), "baton-batch-lease-"));
  tenant = await market.tenant(0, { ipfsDir: path.join(tenantDir, "ipfs") });
  leaseId = await openLease();
});

afterAll(async () => {
  await market?.stop();
  if (tenantDir) await rm(tenantDir, { recursive: true, force: true });
}, 60_000);

describe("a batch lease (real node process, real chain, loopback libp2p)", () => {
  it("runs tasks one after another on one lease, each with its own result, the lease active throughout", async () => {
    const auth = await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString());
    const session = await open({
      type: "start",
      body: {
        leaseId,
        auth,
        spec: taskSpec('touch left-by-t1 /tmp/left-by-t1; chmod 755 "$BATON_CHECKPOINT_DIR"; echo "task $N"', {
          N: "1",
        }),
        taskId: "t1",
      },
    });
    const first = await readUntil(session, resultOf("t1"));
    // It says it takes a next task waiting behind the running one.
    expect(first.find((e) => e.type === "accepted")?.body).toMatchObject({
      taskId: "t1",
      resumed: false,
      taskQueue: 1,
    });
    expect(lines(first)).toEqual(["task 1"]);
    expect(first.at(-1)!.body).toMatchObject({ taskId: "t1", exitCode: 0 });

    // The next task runs in the same sandbox, its dirs its own: what the first task left is gone.
    await session.send("task", {
      leaseId,
      taskId: "t2",
      spec: taskSpec('ls -A . /tmp; stat -c "checkpoints %a" "$BATON_CHECKPOINT_DIR"; echo "task $N"; exit 3', {
        N: "2",
      }),
    });
    const second = await readUntil(session, resultOf("t2"));
    expect(second.find((e) => e.type === "accepted")?.body).toMatchObject({ taskId: "t2" });
    expect(lines(second)).toContain("task 2");
    expect(lines(second)).not.toContain("left-by-t1");
    // A dir of the job's that the last task changed is made again as the runner makes it.
    expect(lines(second)).toContain("checkpoints 700");
    const starts = provider
      .process!.lines.filter((line) => line.includes('"msg":"job started"') && line.includes(`"leaseId":"${leaseId}"`))
      .map((line) => JSON.parse(line) as { pid: number; prepared: boolean });
    expect(starts).toHaveLength(2);
    expect(starts[1]).toEqual(expect.objectContaining({ pid: starts[0]!.pid, prepared: true }));
    expect(second.at(-1)!.body).toMatchObject({ taskId: "t2", exitCode: 3 } satisfies Partial<
      ProviderMessage<"result">
    >);
    // Between tasks the session keeps heartbeating and the lease stays active on chain.
    await readUntil(session, (e) => e.type === "heartbeat");
    expect(await chainStatus()).toBe("Active");

    // A task with other resources than the lease's is refused, and ends the session.
    await session.send("task", {
      leaseId,
      taskId: "t3",
      spec: { ...taskSpec("true"), resources: { gpus: 0, cpus: 2, memoryMiB: 256 } },
    });
    const refused = await readUntil(session, (e) => e.type === "refused");
    expect(refused.at(-1)!.body).toMatchObject({ reason: "spec-mismatch" });

    // Re-attached, the lease takes the next task; one sent while it runs waits behind it, and a third
    // (a second one waiting) is refused.
    const again = await open({
      type: "attach",
      body: {
        leaseId,
        auth: await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString()),
        afterSeq: 1_000_000,
      },
    });
    await again.send("task", { leaseId, taskId: "t4", spec: taskSpec("echo started; sleep 8") });
    await readUntil(again, (e) => e.type === "log" && e.body.line === "started");
    await again.send("task", { leaseId, taskId: "t5", spec: taskSpec("echo t5 ran after t4") });
    await again.send("task", { leaseId, taskId: "t6", spec: taskSpec("true") });
    const busy = await readUntil(again, (e) => e.type === "refused");
    expect(busy.at(-1)!.body).toMatchObject({
      reason: "bad-request",
      message: `lease ${leaseId} has task t5 queued already`,
    });
    expect(busy.some((e) => e.type === "result")).toBe(false);
    expect(await chainStatus()).toBe("Active");
    // Neither the running task nor the queued one is disturbed by the refusal: t4 ends with its
    // result, and t5 starts then and ends with its own.
    const resumed = await open({
      type: "attach",
      body: {
        leaseId,
        auth: await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString()),
        afterSeq: 0,
      },
    });
    // A tenant that re-attached sends again what it gave the lease: the node has both, and passes over them.
    await resumed.send("task", { leaseId, taskId: "t4", spec: taskSpec("echo started; sleep 8") });
    await resumed.send("task", { leaseId, taskId: "t5", spec: taskSpec("echo t5 ran after t4") });
    const both = await readUntil(resumed, resultOf("t5"));
    expect(both.some((e) => e.type === "refused")).toBe(false);
    expect(both.filter((e) => e.type === "accepted" && e.body.taskId === "t5")).toHaveLength(1);
    const t4 = both.findIndex(resultOf("t4"));
    expect(both[t4]!.body).toMatchObject({ exitCode: 0 });
    expect(both.at(-1)!.body).toMatchObject({ exitCode: 0 });
    // t5 starts as t4 exits, maybe before t4's result goes out: its messages name it.
    expect(both.some((e) => e.type === "accepted" && e.body.taskId === "t5")).toBe(true);
    const t5Lines = both.filter((e) => e.type === "log" && e.body.taskId === "t5");
    expect(lines(t5Lines)).toEqual(["t5 ran after t4"]);
    expect(lines(both.filter((e) => e.type === "log" && e.body.taskId === "t4"))).toEqual(["started"]);
    // Sent again once its result is out, a task does not run again either.
    await resumed.send("task", { leaseId, taskId: "t5", spec: taskSpec("echo t5 ran after t4") });
    let beats = 0;
    const after = await readUntil(resumed, (e) => e.type === "heartbeat" && ++beats === 2);
    expect(after.filter((e) => e.type !== "heartbeat")).toEqual([]);
    await resumed.close();
  });

  it("resumes a task from a checkpoint in the sandbox its last task ran in, and gives a task another network in a new one", async () => {
    const resumable = await openLease();
    const key = Buffer.from(generateJobKey()).toString("base64");
    const auth = await signTenantAuth(tenant.account, resumable, tenant.host.peerId.toString());
    const checkpointing =
      'mkdir "$BATON_CHECKPOINT_DIR/.s" && echo "$N" > "$BATON_CHECKPOINT_DIR/.s/progress" && ' +
      'mv "$BATON_CHECKPOINT_DIR/.s" "$BATON_CHECKPOINT_DIR/step-1" && sleep 3';
    const session = await open({
      type: "start",
      body: {
        leaseId: resumable,
        auth,
        key,
        taskId: "c1",
        spec: taskSpec(`${checkpointing}; echo "$N" > "$BATON_OUTPUT_DIR/n"`, { N: "41" }),
        inlineOutputs: true,
      },
    });
    const first = await readUntil(session, resultOf("c1"));
    // Its output is small: it comes in the result, named by its CID, and the node added it nowhere.
    const result = first.at(-1)!;
    if (result.type !== "result" || !result.body.outputCid || !result.body.outputInline) {
      throw new Error(`no output inline: ${JSON.stringify(result.body)}`);
    }
    const restored = path.join(tenantDir!, "c1-output");
    await restoreCheckpoint(tenant.ipfs!, Buffer.from(key, "base64"), CID.parse(result.body.outputCid), restored, {
      expectedSha256: result.body.outputSha256!,
      maxBytes: 2 ** 20,
      pieces: result.body.outputInline.map((piece) => Buffer.from(piece, "base64")),
    });
    expect(await readFile(path.join(restored, "n"), "utf8")).toBe("41\n");
    expect(await tenant.ipfs!.has(CID.parse(result.body.outputCid))).toBe(false);
    const checkpoint = first.find((e) => e.type === "checkpoint");
    if (checkpoint?.type !== "checkpoint")
      throw new Error(`no checkpoint; saw ${JSON.stringify(first.map((e) => e.type))}`);

    // c2 runs in c1's sandbox, in its emptied dir: the checkpoint becomes its `resume/`, and the
    // task's user owns it as in a sandbox set up after it.
    await session.send("task", {
      leaseId: resumable,
      taskId: "c2",
      resume: { cid: checkpoint.body.cid, sha256: checkpoint.body.sha256 },
      spec: taskSpec('cat "$BATON_RESUME_DIR/progress"; touch "$BATON_RESUME_DIR/mine" && echo owned'),
    });
    const second = await readUntil(session, resultOf("c2"));
    expect(second.find((e) => e.type === "accepted")?.body).toMatchObject({ taskId: "c2", resumed: true });
    expect(lines(second)).toEqual(["41", "owned"]);
    expect(second.at(-1)!.body).toMatchObject({ taskId: "c2", exitCode: 0 });

    // c2's sandbox has no network, as c2 had none: a task that asks for the host's network runs in
    // a new one that has it (the host's interfaces: loopback and more), and the next without
    // network in one without (its own loopback only).
    const interfaces = "echo $(($(wc -l < /proc/net/dev) - 2))";
    const count = async (taskId: string, network: boolean): Promise<number> => {
      await session.send("task", { leaseId: resumable, taskId, spec: { ...taskSpec(interfaces), network } });
      return Number(lines(await readUntil(session, resultOf(taskId)))[0]);
    };
    expect(await count("c3", true)).toBeGreaterThan(1);
    expect(await count("c4", false)).toBe(1);
    await session.close();
  });

  it("keeps an idle batch lease across a SIGKILL and restart of the node, and takes its next task", async () => {
    const old = provider.process!;
    old.child.kill("SIGKILL");
    await old.exited;
    await provider.start();
    const session = await open({
      type: "attach",
      body: {
        leaseId,
        auth: await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString()),
        afterSeq: 0,
      },
    });
    await session.send("task", { leaseId, taskId: "t6", spec: taskSpec("echo after restart") });
    const events = await readUntil(session, resultOf("t6"));
    // Nothing was relaunched: the lease was idle.
    expect(events.some((e) => e.type === "log" && /relaunched/.test(e.body.line))).toBe(false);
    expect(lines(events)).toEqual(["after restart"]);
    expect(events.at(-1)!.body).toMatchObject({ taskId: "t6", exitCode: 0 });
    expect(await chainStatus()).toBe("Active");
    await session.close();
  });

  it("relaunches a running task after a SIGKILL and restart of the node, and takes the task that was queued behind it when the tenant sends it again", async () => {
    const auth = async () => signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString());
    const session = await open({ type: "attach", body: { leaseId, auth: await auth(), afterSeq: 0 } });
    const t7 = taskSpec('echo "t7 started"; sleep 4; echo "t7 done"');
    const t8 = taskSpec('echo "t8 ran"');
    await session.send("task", { leaseId, taskId: "t7", spec: t7 });
    const before = await readUntil(session, (e) => e.type === "log" && e.body.line === "t7 started");
    await session.send("task", { leaseId, taskId: "t8", spec: t8 });
    // t8 waits behind t7 in the node's memory, which the SIGKILL takes.
    const old = provider.process!;
    old.child.kill("SIGKILL");
    await old.exited;
    await session.close();
    await provider.start();
    const lastSeen = Math.max(...before.flatMap((e) => ("seq" in e.body ? [e.body.seq] : [])));
    const again = await open({ type: "attach", body: { leaseId, auth: await auth(), afterSeq: lastSeen } });
    await again.send("task", { leaseId, taskId: "t7", spec: t7 });
    await again.send("task", { leaseId, taskId: "t8", spec: t8 });
    const events = await readUntil(again, resultOf("t8"));
    expect(events.some((e) => e.type === "refused")).toBe(false);
    // t7 was relaunched (not started a second time by its resend), and t8 ran after it.
    expect(events.some((e) => e.type === "log" && /relaunched/.test(e.body.line))).toBe(true);
    expect(lines(events)).toEqual(["t7 started", "t7 done", "t8 ran"]);
    expect(events.find(resultOf("t7"))!.body).toMatchObject({ exitCode: 0 });
    expect(events.at(-1)!.body).toMatchObject({ taskId: "t8", exitCode: 0 });
    expect(await chainStatus()).toBe("Active");
    await again.close();
  });
});
