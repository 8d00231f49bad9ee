import { formatEther } from "viem";

import type { BatchEvent, RunBatchReturnType } from "../sdk/index.ts";

/*
 * What `baton batch run` shows a person: a progress line, a line for each event that matters, and a
 * summary. Loaded only by the command's action (viem is heavy), as job-display.ts is.
 */

/** One line for a person: where the batch stands after `event`. */
export function progressLine(event: BatchEvent, startedAt: number): string {
  const p = event.progress;
  const elapsedS = (event.at - startedAt) / 1000;
  const finished = p.done + p.failed;
  const rate = elapsedS > 0 ? finished / elapsedS : 0;
  const left = p.total - finished;
  const eta = rate > 0 ? `eta ${Math.ceil(left / rate)} s` : "eta -";
  return (
    `${p.done}/${p.total} done  ${p.running} running  ${p.queued} queued  ${p.failed} failed  ` +
    `${p.leases} leases  ${rate.toFixed(1)} tasks/s  ${eta}  cost ${formatEther(p.costSoFar)}`
  );
}

/** `, tasks a, b queued again`, or nothing when no task went back. */
function requeuedWords(separator: string, requeued: readonly string[]): string {
  if (requeued.length === 0) return "";
  return `${separator}${requeued.length === 1 ? "task" : "tasks"} ${requeued.join(", ")} queued again`;
}

/** The events worth a line of their own (the rest only move the progress line). */
export function eventLine(event: BatchEvent): string | undefined {
  switch (event.type) {
    case "lease-opened":
      return `lease ${event.leaseId} opened with ${event.provider} at ${formatEther(event.pricePerSecond)}/s`;
    case "provider-lost":
      return (
        `provider ${event.provider} lost (${event.reason}): lease ${event.leaseId} ended` +
        requeuedWords(", ", event.requeued)
      );
    case "lease-confirmed":
      return `lease ${event.leaseId} confirmed (its opening in block ${event.blockNumber} is deep enough)`;
    case "lease-vanished":
      return `lease ${event.leaseId} VANISHED in a reorg (${event.reason})` + requeuedWords("; ", event.requeued);
    case "task-started":
      return event.resume
        ? `task ${event.taskId} resumes from checkpoint ${event.resume} on ${event.provider}`
        : undefined;
    case "task-retry":
      return `task ${event.taskId} exited ${event.exitCode ?? "by a signal"}; trying again elsewhere (attempt ${event.attempts + 1})`;
    case "task-requeued":
      return `task ${event.taskId}: its output did not come from ${event.provider} (${event.reason}); queued again`;
    case "task-recorded":
      return event.result.state === "failed"
        ? `task ${event.result.taskId} failed after ${event.result.attempts} attempts`
        : undefined;
    case "slashed":
      return `lease ${event.leaseId} slashed: ${formatEther(event.compensation)} compensation`;
    case "no-provider":
      return `no provider takes the batch now (${event.reason}); looking again`;
    default:
      return undefined;
  }
}

/** The summary of a batch that ended. */
export function batchSummary(result: RunBatchReturnType, elapsedMs: number): string {
  const lines = [
    `${result.done} done, ${result.failed} failed, of ${result.results.length} recorded`,
    `leases: ${result.leases.length}  cost: ${formatEther(result.cost)}  time: ${(elapsedMs / 1000).toFixed(1)} s`,
    `manifest: ${result.manifest}`,
    `outputs: ${result.outputDir}`,
  ];
  for (const failed of result.results.filter((r) => r.state === "failed")) {
    lines.push(`failed: ${failed.taskId} (exit ${failed.exitCode ?? "signal"}): ${failed.logs?.at(-1) ?? ""}`);
  }
  return lines.join("\n");
}
