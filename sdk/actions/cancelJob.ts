import type { Hex } from "viem";

import type { BatonClient } from "../client.ts";
import { UserError } from "../errors.ts";
import { endRecordedLease } from "../tenant/job-settlement.ts";

/**
 * Cancels a job from its record, also while another process watches it: marks it cancelled (so no
 * watcher re-leases it) and ends its open lease on chain by the rule of `endLease` (closed and the
 * unused deposit refunded, or slashed if its provider already missed its deadline). The provider
 * sees the close and stops the job.
 *
 * @returns the lease it closed, if one was open.
 * @example
 * await cancelJob(client, { jobId });
 */
export async function cancelJob(
  client: BatonClient,
  { jobId, signal }: { jobId: Hex; signal?: AbortSignal },
): Promise<{ closed: bigint | undefined }> {
  const record = await client.jobs.get(jobId);
  if (!record) throw new UserError(`no job ${jobId} in ${client.jobs.dir}`);
  if (record.state !== "running") throw new UserError(`job ${jobId} is already ${record.state}`);
  record.state = "cancelled";
  const open = record.leases.at(-1);
  await client.jobs.save(record);
  if (!open || (open.state !== "starting" && open.state !== "running")) return { closed: undefined };
  signal?.throwIfAborted();
  open.state = "cancelled";
  open.endedAt = Date.now();
  await client.jobs.save(record);
  // Only an active lease is ended; one that ended meanwhile is already settled.
  const ended = await endRecordedLease(client, record, open, signal ? { signal } : {});
  return { closed: ended.call === undefined ? undefined : BigInt(open.leaseId) };
}
