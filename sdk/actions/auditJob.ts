import { isAddressEqual, isHex, size, type Address, type Hex } from "viem";

import {
  asOfText,
  auditLeases,
  byChainOrder,
  leaseTotals,
  openAuditScope,
  type AuditSnapshot,
  type CheckpointCommit,
  type EventTime,
  type LeaseAudit,
  type LeaseTotals,
  type AuditEventSource,
} from "../chain/audit-events.ts";
import type { LogScanProgress } from "../chain/logs.ts";
import type { ChainClient } from "../chain/client.ts";
import { holdJobId } from "../chain/job-ids.ts";
import { UserError } from "../errors.ts";
import { handOffCount } from "../hand-offs.ts";

export interface AuditJobParameters {
  /** The job id every lease of the job carries (bytes32). */
  jobId: Hex;
  /**
   * The tenant whose job it is. Job ids are chosen by tenants, so anyone can open leases under
   * another tenant's id; only the tenant's own leases make its job. Needed only when more than one
   * tenant used the id.
   */
  tenant?: Address;
  signal?: AbortSignal;
  /** Told after each page of blocks read: an audit of a long chain reads many (sdk/chain/logs.ts). */
  onProgress?: (progress: LogScanProgress) => void;
  /**
   * Read at the newest block this many blocks deep, so that nothing a reorg of up to that many
   * blocks could undo is shown. Default: the client's (sdk/chain/confirmations.ts).
   */
  confirmations?: number;
}

export type JobCheckpoint = CheckpointCommit & { leaseId: bigint };

export interface AuditJobReturnType {
  jobId: Hex;
  /** The block the audit read at. */
  asOf: AuditSnapshot;
  /** The tenant whose job this is: every lease below is its own. */
  tenant: Address;
  /** Other tenants that opened leases under the same job id (ignored: not their job). */
  otherTenants: Address[];
  /**
   * The chain of leases that carried the job, first to last, across providers: the final lease
   * (the latest completed one, or else the latest opened) and its predecessors.
   */
  lineage: LeaseAudit[];
  /**
   * The tenant's leases with this job id off the lineage: restarts without a predecessor. (A lease
   * has at most one successor on chain, so the job never forks.)
   */
  others: LeaseAudit[];
  /** Times the job moved to another lease (see {@link handOffCount}). */
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
  /**
   * The leases of the job's holders (other providers that pinned its checkpoints, see `holdJobId`),
   * the tenant's own, in chain order; their money is in `holderTotals`, not `totals`.
   */
  holders: LeaseAudit[];
  holderTotals: LeaseTotals;
  /** The final lease's result, if it completed. */
  resultCid: string | undefined;
}

/**
 * Rebuilds a job from chain events alone: every lease its tenant opened with its job id, put in
 * order by their predecessor links into the lineage that carried the job from provider to
 * provider, with each lease's audit and the job's totals. Leases other tenants opened under the
 * same id are left out: a job id is only unique per tenant.
 *
 * @throws {UserError} when `jobId` is not a bytes32, no lease of the tenant carries it, or more
 * than one tenant used it and `tenant` does not say whose job to audit.
 * @example
 * const job = await auditJob(client, { jobId: "0x5f…" });
 * for (const lease of job.lineage) console.log(lease.leaseId, lease.provider, lease.status);
 * console.log(`${job.handOffs} hand-offs, paid ${job.totals.paidToProviders}`);
 */
export async function auditJob(
  client: { chain: ChainClient; events?: AuditEventSource },
  { jobId, tenant, signal, onProgress, confirmations }: AuditJobParameters,
): Promise<AuditJobReturnType> {
  if (!isHex(jobId, { strict: true }) || size(jobId) !== 32) {
    throw new UserError(`not a job id: ${jobId} (0x and 64 hex digits)`);
  }
  const scope = await openAuditScope(client.chain, { signal, onProgress, confirmations, events: client.events });
  const [all, held] = await Promise.all([
    auditLeases(scope, { jobId }),
    auditLeases(scope, { jobId: holdJobId(jobId) }),
  ]);
  const tenants = [...new Set(all.map((lease) => lease.tenant))];
  if (all.length === 0) throw new UserError(`no lease carries job ${jobId} (${asOfText(scope.asOf)})`);
  if (tenant === undefined && tenants.length > 1) {
    throw new UserError(
      `job ${jobId} is used by ${tenants.length} tenants (${tenants.join(", ")}): say whose job to audit`,
    );
  }
  const owner = tenant ?? tenants[0]!;
  const leases = all.filter((lease) => isAddressEqual(lease.tenant, owner));
  const first = leases[0];
  if (!first) throw new UserError(`no lease of tenant ${owner} carries job ${jobId} (${asOfText(scope.asOf)})`);

  const byId = new Map(leases.map((lease) => [lease.leaseId, lease]));
  // Walking back from the final lease gives the job's one line of succession: each lease names one
  // predecessor of the same tenant, opened before it (the lease manager checks both).
  const final = leases.findLast((lease) => lease.status === "completed") ?? leases.at(-1)!;
  const lineage: LeaseAudit[] = [];
  for (let lease: LeaseAudit | undefined = final; lease; lease = byId.get(lease.predecessor)) {
    lineage.unshift(lease);
  }
  const onLineage = new Set(lineage.map((lease) => lease.leaseId));

  const holders = held.filter((lease) => isAddressEqual(lease.tenant, owner));
  const endedAt = final.endedAt;
  const checkpoints = leases
    .flatMap((lease) => lease.checkpoints.map((commit) => ({ ...commit, leaseId: lease.leaseId })))
    .sort((a, b) => byChainOrder(a.at, b.at));
  return {
    jobId,
    asOf: scope.asOf,
    tenant: first.tenant,
    otherTenants: tenants.filter((other) => !isAddressEqual(other, owner)),
    lineage,
    others: leases.filter((lease) => !onLineage.has(lease.leaseId)),
    handOffs: handOffCount(lineage),
    startedAt: first.opened,
    endedAt,
    wallSeconds: (endedAt ?? scope.asOf.timestamp) - first.opened.timestamp,
    totals: leaseTotals(leases),
    checkpoints,
    holders,
    holderTotals: leaseTotals(holders),
    resultCid: final.resultCid,
  };
}
