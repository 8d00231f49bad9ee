import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";

import { toHex } from "viem";

import type { BatonClient } from "../client.ts";
import { UserError } from "../errors.ts";
import { pinJobImage } from "../images/registry.ts";
import { generateJobKey } from "../ipfs/crypto.ts";
import { MAX_JOB_DISK_GIB, MIN_JOB_DISK_GIB, parseJobSpec, type JobSpec, type JobSpecInput } from "../job-spec.ts";
import { DEFAULT_KEEP_CHECKPOINTS } from "../tenant/checkpoint-replicator.ts";
import { DEFAULT_RETRY_LIMIT } from "../tenant/hand-off-policy.ts";
import type { JobHandle, RunJobOptions } from "../tenant/job-handle.ts";
import { driveJob } from "../tenant/job-runner.ts";
import { MAX_HOLDERS, type JobRecord } from "../tenant/job-store.ts";
import { HOLD_KEEP_MAX, MAX_SPEC_MESSAGE_BYTES, specMessageBytes } from "../wire/messages.ts";

export type { JobEvent, JobEventType, JobResult } from "../tenant/job-events.ts";
export type { JobHandle, JobStatus, RunJobOptions } from "../tenant/job-handle.ts";

/**
 * Runs a job on the market and keeps it running: finds offers, bids, opens a lease, starts the job
 * and watches it. Every checkpoint the job commits is fetched into the tenant's store, verified and
 * pinned (then it is *safe*). When the provider fails, the job moves to another provider and resumes
 * from the last safe checkpoint; the failed lease is closed at once and slashed once its on-chain
 * timeout passes. The job's record lives in the client's data dir, so `attachJob` can pick it up
 * after a restart. A registry image is pinned to the digest its tag names now, before anything
 * else: the record, and every lease of the job, hand-offs included, run that digest.
 *
 * @throws {UserError} for a bad spec or options, or an image that cannot be pinned
 * (`ImageResolutionError`); later failures arrive through the handle.
 * @example
 * const job = await runJob(client, spec, { maxPricePerSecond: parseEther("0.001"), files: { "train.mjs": "examples/train/train.mjs" } });
 * job.on("re-leased", (e) => console.log(`moved to ${e.provider}, resuming from step ${e.resumeFrom?.step}`));
 * const { outputDir } = await job.result();
 */
export async function runJob(
  client: BatonClient,
  specInput: JobSpec | JobSpecInput,
  options: RunJobOptions,
): Promise<JobHandle> {
  const spec = parseJobSpec(specInput);
  // Before anything is added or leased; again once its files are in, whose CIDs make it longer.
  checkSpecSize(spec);
  if (options.checkpointIntervalS !== undefined) spec.checkpointIntervalS = options.checkpointIntervalS;
  if (options.maxPricePerSecond <= 0n) throw new UserError("maxPricePerSecond must be positive");
  if (options.budget !== undefined && options.budget <= 0n) throw new UserError("budget must be positive");
  const replication = replicationOf(options);
  const jobId = options.jobId ?? toHex(randomBytes(32));
  if (await client.jobs.get(jobId)) throw new UserError(`job ${jobId} already exists; attach to it instead`);
  // Before anything is added or leased: the record, and with it every lease, runs this digest.
  if (spec.image !== undefined) spec.image = await pinJobImage(spec.image, { signal: options.signal });
  for (const [target, file] of Object.entries(options.files ?? {})) {
    const cid = await client.ipfs.add(createReadStream(file), {
      pin: true,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    spec.inputs.push({ cid: cid.toString(), path: target });
  }
  parseJobSpec(spec);
  checkSpecSize(spec);
  const record: JobRecord = {
    version: 1,
    jobId,
    spec,
    key: Buffer.from(generateJobKey()).toString("base64"),
    createdAt: Date.now(),
    state: "running",
    options: {
      maxPricePerSecond: options.maxPricePerSecond.toString(),
      ...(options.budget === undefined ? {} : { budget: options.budget.toString() }),
      retryLimit: options.retryLimit ?? DEFAULT_RETRY_LIMIT,
      keepCheckpoints: options.keepCheckpoints ?? DEFAULT_KEEP_CHECKPOINTS,
      exclude: options.exclude ?? [],
      ...(replication ? { replication } : {}),
    },
    leases: [],
    safe: [],
    deposited: "0",
    handOffs: 0,
  };
  await client.jobs.save(record);
  return driveJob(client, record, options);
}

/**
 * The job's replication as its record keeps it, checked: none without holders and with the tenant's
 * own copy (the default).
 *
 * @throws {UserError} for a count out of range, no copy at all, a disk quota out of range, more
 * checkpoints to keep than a holder keeps, or `unpack` without holders.
 */
function replicationOf({ replication, keepCheckpoints }: RunJobOptions): JobRecord["options"]["replication"] {
  if (replication === undefined) return undefined;
  const { holders, tenantCopy = "full", diskGiB, unpack = false } = replication;
  if (!Number.isInteger(holders) || holders < 0 || holders > MAX_HOLDERS) {
    throw new UserError(`replication.holders must be a whole number from 0 to ${MAX_HOLDERS}`);
  }
  if (holders === 0 && tenantCopy !== "full") {
    throw new UserError(
      `replication.tenantCopy ${tenantCopy} needs at least one holder: the checkpoints would live nowhere`,
    );
  }
  if (diskGiB !== undefined && !(diskGiB >= MIN_JOB_DISK_GIB && diskGiB <= MAX_JOB_DISK_GIB)) {
    throw new UserError(`replication.diskGiB must be from ${MIN_JOB_DISK_GIB} to ${MAX_JOB_DISK_GIB}`);
  }
  if (unpack && holders === 0) throw new UserError("replication.unpack needs at least one holder to unpack");
  if (holders > 0 && (keepCheckpoints ?? DEFAULT_KEEP_CHECKPOINTS) > HOLD_KEEP_MAX) {
    throw new UserError(`a holder keeps at most ${HOLD_KEEP_MAX} checkpoints: keepCheckpoints is over that`);
  }
  if (holders === 0 && tenantCopy === "full") return undefined;
  return { holders, tenantCopy, ...(diskGiB === undefined ? {} : { diskGiB }), ...(unpack ? { unpack } : {}) };
}

/** Refuses a spec too large for the lease message that starts its job: the provider would close the session. */
function checkSpecSize(spec: JobSpec): void {
  const bytes = specMessageBytes(spec);
  if (bytes > MAX_SPEC_MESSAGE_BYTES) {
    throw new UserError(
      `the job spec takes ${bytes} bytes as sent, over the ${MAX_SPEC_MESSAGE_BYTES} a lease message has room for`,
    );
  }
}
