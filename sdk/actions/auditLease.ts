import { maxUint256 } from "viem";

import {
  asOfText,
  auditLeases,
  openAuditScope,
  type AuditEventSource,
  type AuditSnapshot,
  type LeaseAudit,
} from "../chain/audit-events.ts";
import type { LogScanProgress } from "../chain/logs.ts";
import type { ChainClient } from "../chain/client.ts";
import { UserError } from "../errors.ts";

export interface AuditLeaseParameters {
  leaseId: bigint;
  signal?: AbortSignal;
  /** Told after each page of blocks read: an audit of a long chain reads many (sdk/chain/logs.ts). */
  onProgress?: (progress: LogScanProgress) => void;
  /**
   * Read at the newest block this many blocks deep, so that nothing a reorg of up to that many
   * blocks could undo is shown. Default: the client's (sdk/chain/confirmations.ts).
   */
  confirmations?: number;
}

export type AuditLeaseReturnType = LeaseAudit & {
  /** The block the audit read at. */
  asOf: AuditSnapshot;
};

/**
 * Rebuilds one lease's history from the lease manager's events alone: its terms, how and when it
 * ended, what its provider was paid and its tenant refunded, its top-ups, heartbeats and
 * checkpoints, and the details of a slash.
 *
 * @throws {UserError} when `leaseId` is out of range or was never opened in this deployment.
 * @example
 * const lease = await auditLease(client, { leaseId: 7n });
 * console.log(lease.status, lease.paidToProvider, lease.checkpoints.map((c) => c.cid));
 */
export async function auditLease(
  client: { chain: ChainClient; events?: AuditEventSource },
  { leaseId, signal, onProgress, confirmations }: AuditLeaseParameters,
): Promise<AuditLeaseReturnType> {
  if (leaseId < 1n || leaseId > maxUint256) {
    throw new UserError(`not a lease id: ${leaseId} (lease ids are uint256 values from 1)`);
  }
  const scope = await openAuditScope(client.chain, { signal, onProgress, confirmations, events: client.events });
  const [lease] = await auditLeases(scope, { leaseId });
  if (!lease) {
    throw new UserError(`no lease ${leaseId} in this deployment (${asOfText(scope.asOf)})`);
  }
  return { ...lease, asOf: scope.asOf };
}
