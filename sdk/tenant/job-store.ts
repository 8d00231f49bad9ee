import { mkdir, open, readdir, readFile, rename } from "node:fs/promises";
import path from "node:path";

import type { Hex } from "viem";
import { z } from "zod";

import { JobCancelledError, JobFailedError, UserError } from "../errors.ts";
import { jobSpecSchema } from "../job-spec.ts";
import type { JobResult } from "./job-events.ts";

const bigintString = z.string().regex(/^\d+$/);

/** The most holders a job may ask for. */
export const MAX_HOLDERS = 8;
const hex32 = z.string().regex(/^0x[0-9a-f]{64}$/);

export const leaseRecordSchema = z.object({
  leaseId: bigintString,
  provider: z.string(),
  peerId: z.string(),
  /** The provider's listen addresses when the lease opened, to find it again after a restart. */
  addresses: z.array(z.string()),
  pricePerSecond: bigintString,
  deposit: bigintString,
  openedAt: z.number(),
  /** Resumed from this checkpoint CID, if any. */
  resumedFrom: z.string().optional(),
  /** The last session message seen, to re-attach without replays. */
  lastSeq: z.number().int().nonnegative(),
  /**
   * `vanished`: a reorg took the lease's opening off the chain before it was confirmed (or it reads
   * `None`): the lease never existed, and the job went on without it.
   */
  state: z.enum(["starting", "running", "failed", "completed", "cancelled", "vanished"]),
  endedAt: z.number().optional(),
  /**
   * A lease its provider opens on the tenant's signed opening (a hand-off that waits for no block):
   * the opening's deadline, and whether it landed on chain (unset while the tenant waits to see). A
   * lease whose opening did not land never existed on chain: no later lease names it as predecessor.
   */
  signedOpening: z.object({ deadline: bigintString, landed: z.boolean().optional() }).optional(),
  /** The transaction that opened the lease: followed until it is confirmed (see `lease-confirmation.ts`). */
  openingTx: z
    .string()
    .regex(/^0x[0-9a-f]{64}$/)
    .optional(),
  /** Set once the opening lies as deep as the client's `confirmations`: the block that holds it. */
  confirmedBlock: bigintString.optional(),
  /** Set once the lease is slashed (by us or anyone): what the tenant got back from the collateral. */
  slash: z.object({ compensation: bigintString, refund: bigintString, tx: z.string() }).optional(),
});

const checkpointRecordSchema = z.object({
  cid: z.string(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  name: z.string(),
  step: z.number().int().nonnegative().optional(),
  size: z.number().int().nonnegative(),
  leaseId: bigintString,
  at: z.number(),
});

export const jobRecordSchema = z.object({
  version: z.literal(1),
  jobId: hex32,
  spec: jobSpecSchema,
  /** The job's checkpoint key (base64). Kept in the tenant's own data dir (mode 0600), nowhere else. */
  key: z.string(),
  createdAt: z.number(),
  state: z.enum(["running", "completed", "failed", "cancelled"]),
  options: z.object({
    maxPricePerSecond: bigintString.optional(),
    budget: bigintString.optional(),
    retryLimit: z.number().int().nonnegative(),
    keepCheckpoints: z.number().int().positive(),
    exclude: z.array(z.string()),
    /** Where the job's checkpoints live besides its provider (see `RunJobOptions.replication`). */
    replication: z
      .object({
        holders: z.number().int().min(0).max(MAX_HOLDERS),
        tenantCopy: z.enum(["full", "sample", "none"]),
        diskGiB: z.number().positive().optional(),
        unpack: z.boolean().optional(),
      })
      .optional(),
  }),
  leases: z.array(leaseRecordSchema),
  /** The leases of the job's holders (see `holders.ts`), ended ones included, oldest first. */
  holders: z.array(leaseRecordSchema).optional(),
  /** Checkpoints the tenant holds (fetched, verified, pinned), oldest first. */
  safe: z.array(checkpointRecordSchema),
  /**
   * A batch's record only: each task without a result that holds a safe checkpoint (pinned in the
   * tenant's store), by task id. A run again resumes those tasks from it.
   */
  taskCheckpoints: z
    .record(z.string(), z.object({ cid: z.string(), sha256: z.string().regex(/^[0-9a-f]{64}$/) }))
    .optional(),
  /** Payment tokens deposited into leases so far (refunds not subtracted). */
  deposited: bigintString,
  handOffs: z.number().int().nonnegative(),
  result: z
    .object({
      exitCode: z.number().int().nullable(),
      reason: z.string(),
      outputCid: z.string().optional(),
      outputDir: z.string().optional(),
      leaseId: bigintString,
    })
    .optional(),
  error: z.string().optional(),
});

export type JobRecord = z.output<typeof jobRecordSchema>;
export type LeaseRecord = JobRecord["leases"][number];
export type CheckpointRecord = JobRecord["safe"][number];

/** A slash as a lease record keeps it (amounts as decimal strings). */
export function recordedSlash(slash: { compensation: bigint; refund: bigint; tx: string }): LeaseRecord["slash"] {
  return { compensation: slash.compensation.toString(), refund: slash.refund.toString(), tx: slash.tx };
}

/**
 * How a job that ended says it did, from its record: its result when it completed.
 *
 * @throws {JobCancelledError} when it was cancelled; {JobFailedError} when it failed, or never ended.
 */
export function storedResult(record: JobRecord): JobResult {
  const { result, state } = record;
  if (state === "completed" && result) {
    return {
      jobId: record.jobId as Hex,
      exitCode: result.exitCode,
      reason: result.reason,
      outputDir: result.outputDir,
      outputCid: result.outputCid,
      leaseId: BigInt(result.leaseId),
      handOffs: record.handOffs,
      leases: record.leases,
    };
  }
  if (state === "cancelled") throw new JobCancelledError("the job was cancelled");
  throw new JobFailedError(`the job ${state === "failed" ? "failed" : "has no result"}`, {
    details: record.error ?? "",
  });
}

/** The tenant's job records: one JSON file per job, replaced atomically on every change. */
export interface JobStore {
  readonly dir: string;
  get(jobId: string): Promise<JobRecord | undefined>;
  list(): Promise<JobRecord[]>;
  /** Writes the record durably (temp file, fsync, rename), so a crash leaves the old or the new one. */
  save(record: JobRecord): Promise<void>;
}

/** Opens (creating) the job records under `dir`. */
export async function openJobStore(dir: string): Promise<JobStore> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = (jobId: string): string => {
    if (!/^0x[0-9a-f]{64}$/.test(jobId)) throw new UserError(`not a job id: ${jobId} (0x and 64 hex digits)`);
    return path.join(dir, `${jobId}.json`);
  };
  const read = async (name: string): Promise<JobRecord | undefined> => {
    let text: string;
    try {
      text = await readFile(name, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    const parsed = jobRecordSchema.safeParse(JSON.parse(text));
    if (!parsed.success)
      throw new UserError(`job record ${name} is damaged`, { details: z.prettifyError(parsed.error) });
    return parsed.data;
  };
  // One write at a time: two saves of a record racing on its temp file could interleave.
  let writing: Promise<void> = Promise.resolve();
  const write = async (record: JobRecord): Promise<void> => {
    const target = file(record.jobId);
    const temp = `${target}.${process.pid}.tmp`;
    const handle = await open(temp, "w", 0o600);
    try {
      await handle.writeFile(JSON.stringify(record, null, 2));
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, target);
  };
  return {
    dir,
    get: (jobId) => read(file(jobId.toLowerCase())),
    async list() {
      const names = (await readdir(dir)).filter((n) => /^0x[0-9a-f]{64}\.json$/.test(n));
      const records = await Promise.all(names.map((n) => read(path.join(dir, n))));
      return records.filter((r): r is JobRecord => r !== undefined).sort((a, b) => a.createdAt - b.createdAt);
    },
    save(record) {
      // A snapshot now: the caller goes on changing its record while the write waits its turn.
      const snapshot = structuredClone(record);
      const next = writing.then(() => write(snapshot));
      writing = next.catch(() => undefined);
      return next;
    },
  };
}
