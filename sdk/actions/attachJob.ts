import type { Hex } from "viem";

import type { BatonClient } from "../client.ts";
import { UserError } from "../errors.ts";
import type { AttachOptions, JobHandle } from "../tenant/job-handle.ts";
import { driveJob } from "../tenant/job-runner.ts";

export type { AttachOptions } from "../tenant/job-handle.ts";

/**
 * Re-attaches to a job this client's data dir knows, e.g. after the tenant process restarted: it
 * re-opens the session with the job's current provider (catching up on what it missed), or hands
 * the job on if that provider is gone, and resumes any slash still due. A job that already ended
 * gives a handle whose `result()` settles at once.
 *
 * @throws {UserError} when the data dir has no such job.
 * @example
 * const job = await attachJob(client, jobId);
 * for await (const event of job) console.log(event.type);
 */
export async function attachJob(client: BatonClient, jobId: Hex, options: AttachOptions = {}): Promise<JobHandle> {
  const record = await client.jobs.get(jobId);
  if (!record) throw new UserError(`no job ${jobId} in ${client.jobs.dir}`);
  return driveJob(client, record, options);
}
