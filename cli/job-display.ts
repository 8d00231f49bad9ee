import { formatEther } from "viem";

import { handOffCount } from "../sdk/hand-offs.ts";
import { imageKey } from "../sdk/images/reference.ts";
import type { JobEvent, JobHandle } from "../sdk/index.ts";
import type { JobRecord } from "../sdk/tenant/job-store.ts";
import { describeError, formatBytes, jsonLine, table } from "./output.ts";

export interface JobDisplayOptions {
  out?: NodeJS.WriteStream;
  /** Redraw a status line in place (a terminal); otherwise one plain line per event. */
  tty?: boolean;
  /** One JSON object per event instead of text. */
  json?: boolean;
  /** Names for provider addresses (e.g. "provider-2" on a devnet). */
  names?: Map<string, string>;
  /** Show the job's own output lines. */
  logs?: boolean;
}

/**
 * A live view of a job a person can follow: a timeline of what happened across providers and, on a
 * terminal, a status line kept at the bottom (state, provider, progress bar, safe checkpoints, cost
 * so far, hand-offs). Off a terminal, plain lines, with progress every tenth of the job.
 *
 * @returns a function that stops the display.
 */
export function showJob(job: JobHandle, options: JobDisplayOptions = {}): () => void {
  const out = options.out ?? process.stdout;
  const tty = options.tty ?? Boolean(out.isTTY);
  const start = Date.now();
  const name = (address: string | undefined): string =>
    address ? (options.names?.get(address.toLowerCase()) ?? `${address.slice(0, 8)}…`) : "-";
  let lastDecile = -1;
  let statusShown = false;

  const clearStatus = (): void => {
    if (tty && statusShown) out.write("\r\x1b[2K");
    statusShown = false;
  };
  const drawStatus = (): void => {
    if (!tty) return;
    const s = job.status();
    const bar = progressBar(s.step, s.total, 24);
    const line =
      `${s.state.padEnd(11)} lease ${s.leaseId ?? "-"} on ${name(s.provider)}  ${bar}  ` +
      `safe ${s.safeCheckpoints}${s.lastSafeStep === undefined ? "" : ` (step ${s.lastSafeStep})`}  ` +
      `cost ${formatEther(s.costSoFar)}  hand-offs ${s.handOffs}`;
    out.write(`\r\x1b[2K${line.slice(0, (out.columns ?? 160) - 1)}`);
    statusShown = true;
  };
  const print = (text: string): void => {
    clearStatus();
    out.write(`[+${((Date.now() - start) / 1000).toFixed(1).padStart(5)}s] ${text}\n`);
    drawStatus();
  };

  const unsubscribe = job.on("*", (event) => {
    if (options.json) {
      out.write(jsonLine(event));
      return;
    }
    if (event.type === "progress") {
      if (tty) return drawStatus();
      const decile = event.total && event.step !== undefined ? Math.floor((10 * event.step) / event.total) : -1;
      if (decile > lastDecile) {
        lastDecile = decile;
        print(`progress ${event.step}/${event.total}`);
      }
      return;
    }
    if (event.type === "log" && !options.logs) return;
    const text = describe(event, name);
    if (text) print(text);
  });
  const timer = tty ? setInterval(drawStatus, 250) : undefined;
  timer?.unref();
  return () => {
    unsubscribe();
    clearInterval(timer);
    clearStatus();
  };
}

/** One line of the timeline for an event. */
export function describe(event: JobEvent, name: (address: string | undefined) => string): string | undefined {
  switch (event.type) {
    case "offers-found":
      return `${event.count} matching offer(s)`;
    case "no-provider":
      return `no provider can take the job yet (${event.reason}); looking again in ${Math.round(event.retryInMs / 1000)} s`;
    case "lease-opened":
      return (
        `lease ${event.leaseId} opened with ${name(event.provider)} at ${formatEther(event.pricePerSecond)}/s, ` +
        `deposit ${formatEther(event.deposit)}${event.predecessor ? ` (continues lease ${event.predecessor})` : ""}`
      );
    case "lease-confirmed":
      return `lease ${event.leaseId} confirmed (its opening in block ${event.blockNumber} is deep enough)`;
    case "lease-vanished":
      return `lease ${event.leaseId} VANISHED in a reorg (${event.reason}); the job moves to a new lease`;
    case "started":
      return event.resumed
        ? `lease ${event.leaseId}: job resumed from step ${event.resumedFrom?.step ?? "?"} (${event.resumedFrom?.cid.slice(0, 16)}…)`
        : `lease ${event.leaseId}: job started`;
    case "checkpoint-safe":
      return event.holders === 0
        ? `checkpoint step ${event.step ?? "?"} safe: fetched, verified, pinned (${formatBytes(event.size)}, ${event.held} held)`
        : `checkpoint step ${event.step ?? "?"} safe: pinned by ${event.holders} holder(s) (${formatBytes(event.size)}, ${event.held} held)`;
    case "checkpoint-rejected":
      return `checkpoint ${event.cid.slice(0, 16)}… rejected: ${event.reason}`;
    case "holder-leased":
      return `holder lease ${event.leaseId} opened with ${name(event.provider)} at ${formatEther(event.pricePerSecond)}/s, deposit ${formatEther(event.deposit)}${event.unpacks ? "; it has the job's key and unpacks each checkpoint ahead" : ""}`;
    case "holder-unpacked":
      return `holder ${name(event.provider)} unpacked checkpoint ${event.cid.slice(0, 16)}… ahead: a hand-off to it takes those files as they are`;
    case "holder-retired":
      return `holder ${name(event.provider)} runs the job now (a warm standby); its hold lease ${event.leaseId} is closed, another is leased`;
    case "holder-lost":
      return `holder ${name(event.provider)} LOST (${event.reason}); lease ${event.leaseId} ended, another is leased`;
    case "provider-suspect":
      return `${name(event.provider)} suspect: ${event.reason}`;
    case "provider-recovered":
      return `${name(event.provider)} heard from again`;
    case "provider-failed":
      return `${name(event.provider)} FAILED (${event.reason}); last heard ${event.at - event.lastSeenAt} ms ago, at step ${event.lastStep ?? "?"}`;
    case "re-leased":
      return `handed off: lease ${event.from} → ${event.to} on ${name(event.provider)}, resuming from step ${event.resumeFrom?.step ?? 0}`;
    case "top-up":
      return `lease ${event.leaseId} topped up by ${formatEther(event.amount)}`;
    case "slashed":
      return `lease ${event.leaseId} slashed: ${name(event.provider)} lost collateral, tenant compensated ${formatEther(event.compensation)}`;
    case "completed":
      return `completed (exit ${event.result.exitCode}) after ${event.result.handOffs} hand-off(s); output in ${event.result.outputDir ?? "-"}`;
    case "failed":
      return `FAILED: ${describeError(event.error)}`;
    case "cancelled":
      return "cancelled";
    case "log":
      return `  ${event.stream === "stderr" ? "!" : "|"} ${event.line}`;
    case "progress":
      return undefined;
  }
}

export function progressBar(step: number | undefined, total: number | undefined, width: number): string {
  if (step === undefined || !total) return `[${" ".repeat(width)}]`;
  const filled = Math.min(width, Math.round((step / total) * width));
  return `[${"█".repeat(filled)}${"░".repeat(width - filled)}] ${step}/${total}`;
}

/** A job's record for people: its state (and why it failed), its image, its leases across providers, then totals. */
export function summary(record: JobRecord, names: Map<string, string>): string {
  const rows: (string | number | bigint)[][] = [
    ["lease", "provider", "state", "ran", "price/s", "deposit", "compensation"],
  ];
  const holders = record.holders ?? [];
  for (const lease of [...record.leases, ...holders]) {
    const ran = ((lease.endedAt ?? Date.now()) - lease.openedAt) / 1000;
    rows.push([
      lease.leaseId,
      names.get(lease.provider.toLowerCase()) ?? lease.provider,
      // A holder's lease pins the job's checkpoints; it runs no part of the job.
      holders.includes(lease) ? `holder, ${lease.state}` : lease.state,
      `${ran.toFixed(1)} s`,
      formatEther(BigInt(lease.pricePerSecond)),
      formatEther(BigInt(lease.deposit)),
      lease.slash ? formatEther(BigInt(lease.slash.compensation)) : "-",
    ]);
  }
  const lines = [
    `job ${record.jobId}: ${record.state}${record.error ? `: ${record.error}` : ""}`,
    // The image as every lease ran it: pinned at submit, which the chain cannot show (it carries no spec).
    ...(record.spec.image === undefined ? [] : [`image ${imageKey(record.spec.image)}`]),
    table(rows),
    `${handOffCount(record.leases.filter((lease) => lease.state !== "vanished"))} hand-off(s), safe checkpoints held ${record.safe.length}, deposited ${formatEther(BigInt(record.deposited))}`,
  ];
  if (record.result?.outputDir) lines.push(`output: ${record.result.outputDir}`);
  return lines.join("\n");
}
