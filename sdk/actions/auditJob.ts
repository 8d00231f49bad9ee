import { isHex, size, type Address, type Hex } from "viem";

import type { ChainClient } from "../chain/client.ts";
import { UserError } from "../errors.ts";
import {
  auditLeases,
  byChainOrder,
  leaseTotals,
  openAuditScope,
  type AuditSnapshot,
  type CheckpointCommit,
  type EventTime,
  type LeaseAudit,
  type LeaseTotals,
} from "./audit-events.ts";

export interface AuditJobParameters {
  /** The job id every lease of the job carries (bytes32). */
  jobId: Hex;
  signal?: AbortSignal;
}

/** A lease that more than one later lease names as its predecessor. */
export interface JobFork {
  predecessor: bigint;
  /** The leases continuing it, by id. */
  successors: bigint[];
}

export type JobCheckpoint = CheckpointCommit & { leaseId: bigint };

export interface AuditJobReturnType {
  jobId: Hex;
  /** The block the audit read at. */
  asOf: AuditSnapshot;
  /** Tenants that opened leases with this job id: one, unless two tenants chose the same id. */
  tenants: Address[];
  /**
   * The chain of leases that carried the job, first to last, across providers: the final lease
   * (the latest completed one, or else the latest opened) and its predecessors.
   */
  lineage: LeaseAudit[];
  /** Leases with this job id off the lineage: other branches of a fork, or restarts without a predecessor. */
  others: LeaseAudit[];
  forks: JobFork[];
  /** Times the job moved to another lease: `lineage.length - 1`. */
  handOffs: number;
  /** The first lease's opening. */
  startedAt: EventTime;
  /** When the final lease stopped running, unix seconds; undefined while it is active. */
  endedAt: bigint | undefined;
  /** From the first opening to `endedAt`, or to the audit's block while the job runs. */
  wallSeconds: bigint;
  /** Money of every lease with this job id, lineage or not. */
  totals: LeaseTotals;
  /** Every checkpoint committed for the job, in chain order. */
  checkpoints: JobCheckpoint[];
  /** The final lease's result, if it completed. */
  resultCid: string | undefined;
}

/**
 * Rebuilds a job from chain events alone: every lease opened with its job id, put in order by
 * their predecessor links into the lineage that carried the job from provider to provider, with
 * each lease's audit and the job's totals.
 *
 * @throws {UserError} when `jobId` is not a bytes32 or no lease carries it.
 * @example
 * const job = await auditJob(client, { jobId: "0x5f…" });
 * for (const lease of job.lineage) console.log(lease.leaseId, lease.provider, lease.status);
 * console.log(`${job.handOffs} hand-offs, paid ${job.totals.paidToProviders}`);
 */
export async function auditJob(
  client: { chain: ChainClient },
  { jobId, signal }: AuditJobParameters,
): Promise<AuditJobReturnType> {
  if (!isHex(jobId, { strict: true }) || size(jobId) !== 32) {
    throw new UserError(`not a job id: ${jobId} (0x and 64 hex digits)`);
  }
  const scope = await openAuditScope(client.chain, signal);
  const leases = await auditLeases(scope, { jobId });
  const first = leases[0];
  if (!first) throw new UserError(`no lease carries job ${jobId} (as of block ${scope.asOf.blockNumber})`);

  const byId = new Map(leases.map((lease) => [lease.leaseId, lease]));
  const successors = new Map<bigint, bigint[]>();
  for (const lease of leases) {
    if (lease.predecessor === 0n) continue;
    const ids = successors.get(lease.predecessor) ?? [];
    ids.push(lease.leaseId);
    successors.set(lease.predecessor, ids);
  }

  // Walking back from the final lease always gives one chain (each lease names one predecessor,
  // opened before it), however the job forked on the way.
  const final = leases.findLast((lease) => lease.status === "completed") ?? leases.at(-1)!;
  const lineage: LeaseAudit[] = [];
  for (let lease: LeaseAudit | undefined = final; lease; lease = byId.get(lease.predecessor)) {
    lineage.unshift(lease);
  }
  const onLineage = new Set(lineage.map((lease) => lease.leaseId));

  const endedAt = final.endedAt;
  const checkpoints = leases
    .flatMap((lease) => lease.checkpoints.map((commit) => ({ ...commit, leaseId: lease.leaseId })))
    .sort((a, b) => byChainOrder(a.at, b.at));
  return {
    jobId,
    asOf: scope.asOf,
    tenants: [...new Set(leases.map((lease) => lease.tenant))],
    lineage,
    others: leases.filter((lease) => !onLineage.has(lease.leaseId)),
    forks: [...successors]
      .filter(([, ids]) => ids.length > 1)
      .map(([predecessor, ids]) => ({ predecessor, successors: ids })),
    handOffs: lineage.length - 1,
    startedAt: first.opened,
    endedAt,
    wallSeconds: (endedAt ?? scope.asOf.timestamp) - first.opened.timestamp,
    totals: leaseTotals(leases),
    checkpoints,
    resultCid: final.resultCid,
  };
}
