import { describe, expect, it } from "vitest";

import { BatchQueue, PROVIDER_FAILURE_LIMIT } from "../../sdk/tenant/batch-queue.ts";

/** A queue of tasks t1…tn, none recorded, with `retries`. */
function queue(n: number, retries = 2, recorded: string[] = []): BatchQueue {
  const tasks = Array.from({ length: n }, (_, i) => `t${i + 1}`);
  return new BatchQueue({ tasks, recorded: new Set(recorded), retries });
}

describe("BatchQueue", () => {
  it("serves one lease many tasks in turn, in order, until the batch is finished", () => {
    const q = queue(3);
    const ran: string[] = [];
    for (let task = q.next("L1", "P1"); task; task = q.next("L1", "P1")) {
      expect(task.attempt).toBe(1);
      expect(q.exited(task.taskId, "L1", 0)).toEqual({ kind: "done", attempts: 1 });
      ran.push(task.taskId);
    }
    expect(ran).toEqual(["t1", "t2", "t3"]);
    expect(q.finished).toBe(true);
    expect(q.counts()).toEqual({ done: 3, failed: 0, running: 0, queued: 0 });
  });

  it("never runs a task the manifest already holds (a batch resumed after a restart)", () => {
    const q = queue(3, 2, ["t1", "t3"]);
    expect(q.counts()).toEqual({ done: 2, failed: 0, running: 0, queued: 1 });
    expect(q.next("L1", "P1")?.taskId).toBe("t2");
    expect(q.next("L2", "P2")).toBeUndefined();
  });

  it("retries a failing task on other providers only, then reports it failed", () => {
    const q = queue(2, 1);
    expect(q.next("L1", "P1")?.taskId).toBe("t1");
    expect(q.exited("t1", "L1", 7)).toEqual({ kind: "retry", attempts: 1 });
    // P1 failed t1: it gets t2 instead, and t1 waits for another provider.
    expect(q.next("L1", "P1")?.taskId).toBe("t2");
    const again = q.next("L2", "P2");
    expect(again).toEqual({ taskId: "t1", attempt: 2 });
    expect(q.exited("t1", "L2", null)).toEqual({ kind: "failed", attempts: 2 });
    expect(q.exited("t2", "L1", 0)).toEqual({ kind: "done", attempts: 1 });
    expect(q.finished).toBe(true);
    expect(q.counts()).toEqual({ done: 1, failed: 1, running: 0, queued: 0 });
  });

  it("puts a lost lease's task back at the front, resuming from its checkpoint, without counting the attempt", () => {
    const q = queue(3);
    expect(q.next("L1", "P1")?.taskId).toBe("t1");
    q.checkpointed("t1", "L1", { cid: "c1", sha256: "a".repeat(64) });
    // A checkpoint from a lease that does not run the task changes nothing.
    q.checkpointed("t1", "L9", { cid: "forged", sha256: "b".repeat(64) });
    expect(q.leaseLost("L1")).toEqual(["t1"]);
    q.exclude("P1");
    expect(q.next("L3", "P1")).toBeUndefined();
    expect(q.next("L2", "P2")).toEqual({ taskId: "t1", attempt: 1, resume: { cid: "c1", sha256: "a".repeat(64) } });
  });

  it("resumes a task from the checkpoint an earlier run held for it, and ignores one of a task already recorded", () => {
    const held = { cid: "c2", sha256: "c".repeat(64) };
    const checkpoints = new Map([
      ["t1", { cid: "c1", sha256: "a".repeat(64) }],
      ["t2", held],
    ]);
    const q = new BatchQueue({ tasks: ["t1", "t2", "t3"], recorded: new Set(["t1"]), checkpoints, retries: 2 });
    expect(q.next("L1", "P1")).toEqual({ taskId: "t2", attempt: 1, resume: held });
    expect(q.exited("t2", "L1", 0)).toEqual({ kind: "done", attempts: 1 });
    expect(q.next("L1", "P1")).toEqual({ taskId: "t3", attempt: 1 });
  });

  it("discards a late completion from a lease that lost its task, so it is counted once", () => {
    const q = queue(1);
    q.next("L1", "P1");
    q.leaseLost("L1");
    q.next("L2", "P2");
    expect(q.exited("t1", "L1", 0)).toEqual({ kind: "stale" });
    expect(q.counts()).toEqual({ done: 0, failed: 0, running: 1, queued: 0 });
    expect(q.exited("t1", "L2", 0)).toEqual({ kind: "done", attempts: 1 });
    expect(q.exited("t1", "L2", 0)).toEqual({ kind: "stale" });
    expect(q.counts().done).toBe(1);
  });

  it(`excludes a provider after ${PROVIDER_FAILURE_LIMIT} failures in a row, not after failures between successes`, () => {
    const q = queue(10, 5);
    const fail = (): void => {
      const task = q.next("L1", "P1");
      expect(task).toBeDefined();
      q.exited(task!.taskId, "L1", 1);
    };
    for (let i = 1; i < PROVIDER_FAILURE_LIMIT; i += 1) fail();
    const ok = q.next("L1", "P1")!;
    q.exited(ok.taskId, "L1", 0);
    for (let i = 1; i < PROVIDER_FAILURE_LIMIT; i += 1) fail();
    expect(q.excluded.has("P1")).toBe(false);
    fail();
    expect(q.excluded.has("P1")).toBe(true);
    expect(q.next("L1", "P1")).toBeUndefined();
  });

  it("frees a lease for its next task while the last one's output is verified, and counts that task once verified", () => {
    const q = queue(2);
    expect(q.next("L1", "P1")?.taskId).toBe("t1");
    expect(q.exited("t1", "L1", 0, { verify: true })).toEqual({ kind: "verify", attempts: 1 });
    // The lease takes t2 at once; t1 counts as running, not done, and the batch is not finished.
    expect(q.next("L1", "P1")?.taskId).toBe("t2");
    expect(q.counts()).toEqual({ done: 0, failed: 0, running: 2, queued: 0 });
    expect(q.exited("t2", "L1", 0, { verify: true })).toEqual({ kind: "verify", attempts: 1 });
    expect(q.finished).toBe(false);
    expect(q.verified("t1")).toEqual({ kind: "done", attempts: 1 });
    expect(q.verified("t2")).toEqual({ kind: "done", attempts: 1 });
    expect(q.counts()).toEqual({ done: 2, failed: 0, running: 0, queued: 0 });
    expect(q.finished).toBe(true);
    expect(() => q.verified("t1")).toThrow("task t1 has no output being verified");
  });

  it("queues a task whose output did not verify again, first, without counting the attempt", () => {
    const q = queue(3);
    q.next("L1", "P1");
    q.exited("t1", "L1", 0, { verify: true });
    expect(q.next("L1", "P1")?.taskId).toBe("t2");
    q.unverified("t1");
    q.exclude("P1");
    expect(q.counts()).toEqual({ done: 0, failed: 0, running: 1, queued: 2 });
    expect(q.next("L2", "P2")).toEqual({ taskId: "t1", attempt: 1 });
    expect(q.exited("t1", "L2", 0)).toEqual({ kind: "done", attempts: 1 });
  });

  it("queues a task on a busy lease behind its running one, takes results in that order, and puts both back when the lease is lost", () => {
    const q = queue(3);
    expect(q.next("L1", "P1")?.taskId).toBe("t1");
    expect(q.next("L1", "P1")?.taskId).toBe("t2");
    expect(q.counts()).toEqual({ done: 0, failed: 0, running: 2, queued: 1 });
    // The queued task has not run: a result for it before the running one's is not the lease's to give.
    expect(q.exited("t2", "L1", 0)).toEqual({ kind: "stale" });
    expect(q.exited("t1", "L1", 0)).toEqual({ kind: "done", attempts: 1 });
    expect(q.next("L1", "P1")?.taskId).toBe("t3");
    expect(q.leaseLost("L1")).toEqual(["t2", "t3"]);
    expect(q.next("L2", "P2")).toEqual({ taskId: "t2", attempt: 1 });
    expect(q.next("L2", "P2")).toEqual({ taskId: "t3", attempt: 1 });
    expect(q.exited("t2", "L2", 0)).toEqual({ kind: "done", attempts: 1 });
    expect(q.exited("t3", "L2", 0)).toEqual({ kind: "done", attempts: 1 });
    expect(q.finished).toBe(true);
  });
});
