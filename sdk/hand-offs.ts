/**
 * A job's hand-offs: the times it moved on from one lease to the next, so one fewer than the leases
 * in its line of succession. This is the one definition: `auditJob` counts the lineage it rebuilds
 * from chain events, and the CLI the leases of the tenant's job record (each new lease continues the
 * one before it), so both say the same of the same job. A provider failure the job did not move on
 * from (its retry limit was reached, or it was cancelled meanwhile) is not a hand-off; the record's
 * own `handOffs` counts failures, for the retry limit, and so may be one more.
 *
 * @example
 * handOffCount(record.leases); // 2 for a job that ran on three leases
 */
export function handOffCount(lineage: readonly unknown[]): number {
  return Math.max(0, lineage.length - 1);
}
