import type { Hex } from "viem";

import { contracts, endingCall, leaseStatus, writeContract } from "../chain/client.ts";
import type { BatonClient } from "../client.ts";
import { UserError } from "../errors.ts";

/**
 * Cancels a job from its record, also while another process watches it: marks it cancelled (so no
 * watcher re-leases it) and closes its open lease on chain, refunding the unused deposit. The
 * provider sees the close and stops the job.
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
  const { leaseManager } = contracts(client.chain.deployment);
  const leaseId = BigInt(open.leaseId);
  const view = await client.chain.publicClient.readContract({
    ...leaseManager,
    functionName: "getLease",
    args: [leaseId],
  });
  signal?.throwIfAborted();
  open.state = "cancelled";
  open.endedAt = Date.now();
  await client.jobs.save(record);
  // Only an active lease can be closed; one that ended meanwhile is already settled.
  if (leaseStatus[view.status] !== "Active") return { closed: undefined };
  await client.transact(() =>
    writeContract(client.chain, { ...leaseManager, functionName: endingCall(view), args: [leaseId] }),
  );
  return { closed: leaseId };
}
