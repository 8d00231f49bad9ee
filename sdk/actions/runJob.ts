import type { BatonClient } from "../client.ts";
import type { JobSpec, JobSpecInput } from "../job-spec.ts";
import { startJob, type JobHandle, type RunJobOptions } from "../tenant/job-runner.ts";

export type { JobEvent, JobEventType, JobHandle, JobResult, JobStatus, RunJobOptions } from "../tenant/job-runner.ts";

/**
 * Runs a job on the market and keeps it running: finds offers, bids, opens a lease, starts the job
 * and watches it. Every checkpoint the job commits is fetched into the tenant's store, verified and
 * pinned (then it is *safe*). When the provider fails, the job moves to another provider and resumes
 * from the last safe checkpoint; the failed lease is closed at once and slashed once its on-chain
 * timeout passes. The job's record lives in the client's data dir, so `attachJob` can pick it up
 * after a restart.
 *
 * @throws {UserError} for a bad spec or options; later failures arrive through the handle.
 * @example
 * const job = await runJob(client, spec, { maxPricePerSecond: parseEther("0.001"), files: { "train.mjs": "examples/train/train.mjs" } });
 * job.on("re-leased", (e) => console.log(`moved to ${e.provider}, resuming from step ${e.resumeFrom?.step}`));
 * const { outputDir } = await job.result();
 */
export function runJob(client: BatonClient, spec: JobSpec | JobSpecInput, options: RunJobOptions): Promise<JobHandle> {
  return startJob(client, spec, options);
}
