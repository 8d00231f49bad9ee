import { parseEther } from "viem";
import { describe, expect, it } from "vitest";

import { eventLine, progressLine } from "../../cli/batch-display.ts";
import type { BatchEvent, BatchProgress } from "../../sdk/index.ts";

// What `baton batch run` prints for a person, from the batch's events.
const provider = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const progress: BatchProgress = {
  total: 10,
  done: 4,
  failed: 1,
  running: 2,
  queued: 3,
  leases: 2,
  costSoFar: parseEther("0.5"),
};
const at = 1_000_000;

describe("batch display", () => {
  it("a progress line: counts, leases, rate and ETA from the time since the start, cost", () => {
    expect(progressLine({ type: "no-provider", reason: "none", retryInMs: 1, at, progress }, at - 10_000)).toBe(
      "4/10 done  2 running  3 queued  1 failed  2 leases  0.5 tasks/s  eta 10 s  cost 0.5",
    );
  });

  it("a line for a lease lost to a reorg, naming the task queued again, and for one confirmed", () => {
    const vanished: BatchEvent = {
      type: "lease-vanished",
      leaseId: 7n,
      provider,
      reason: "its opening vanished: a reorg dropped it",
      requeued: ["n3"],
      at,
      progress,
    };
    expect(eventLine(vanished)).toBe(
      "lease 7 VANISHED in a reorg (its opening vanished: a reorg dropped it); task n3 queued again",
    );
    expect(eventLine({ ...vanished, requeued: [] })).toBe(
      "lease 7 VANISHED in a reorg (its opening vanished: a reorg dropped it)",
    );
    expect(eventLine({ ...vanished, type: "provider-lost", reason: "SIGKILL", requeued: ["n3", "n4"] })).toBe(
      `provider ${provider} lost (SIGKILL): lease 7 ended, tasks n3, n4 queued again`,
    );
    expect(eventLine({ type: "lease-confirmed", leaseId: 7n, blockNumber: 42n, at, progress })).toBe(
      "lease 7 confirmed (its opening in block 42 is deep enough)",
    );
  });

  it("a line for a task resumed from a checkpoint, none for one started afresh", () => {
    const started: BatchEvent = {
      type: "task-started",
      taskId: "n1",
      leaseId: 7n,
      provider,
      attempt: 1,
      at,
      progress,
    };
    expect(eventLine(started)).toBeUndefined();
    expect(eventLine({ ...started, resume: "bafyckpt" })).toBe(
      `task n1 resumes from checkpoint bafyckpt on ${provider}`,
    );
  });
});
