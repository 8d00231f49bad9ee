import type { Address, Hex } from "viem";

import type { JobEvent, JobEventListener, JobEventType, JobResult } from "./job-events.ts";

/** Where a job is, as its handle drives it (see the state machine in `job-runner.ts`). */
export type JobState = "starting" | "running" | "handing-off" | "completed" | "failed" | "cancelled";

/** A snapshot for displays: where the job is now. */
export interface JobStatus {
  jobId: Hex;
  state: JobState;
  leaseId: bigint | undefined;
  provider: Address | undefined;
  /** The current provider's libp2p peer id. */
  peerId: string | undefined;
  step: number | undefined;
  total: number | undefined;
  safeCheckpoints: number;
  lastSafeStep: number | undefined;
  handOffs: number;
  /** Price × time over every lease so far, capped by each deposit: what the job has cost. */
  costSoFar: bigint;
  deposited: bigint;
}

export interface JobHandle extends AsyncIterable<JobEvent> {
  readonly jobId: Hex;
  /** Calls `listener` for each event of `type` (or every event with `"*"`); returns an unsubscribe. */
  on<T extends JobEventType | "*">(type: T, listener: JobEventListener<T>): () => void;
  status(): JobStatus;
  /** Resolves when the job completed (output fetched and verified); rejects when it failed or was cancelled. */
  result(): Promise<JobResult>;
  /**
   * Resolves once every lease the job used is settled on chain: each failed provider's lease slashed
   * (once its timeout passed) or acknowledged by it, and every refund or compensation credited to
   * the tenant meanwhile withdrawn (`withdrawCredit`). Call after `result()` to see the compensation.
   * With the client's `confirmations`, also once every lease's opening and every slash lies that deep
   * (or was found taken by a reorg).
   */
  settled(): Promise<void>;
  /** Ends the job: closes its lease (unused deposit refunded) and stops watching. */
  cancel(): Promise<void>;
  /** Stops watching, leaving the job running; `attachJob` picks it up again. */
  detach(): Promise<void>;
}

export interface RunJobOptions {
  /** Highest price per second to pay, in payment-token base units. */
  maxPricePerSecond: bigint;
  /** Most payment tokens to deposit into this job's leases, top-ups and re-leases included. */
  budget?: bigint;
  /** Local files to send as inputs: work-dir path → file on this machine. */
  files?: Record<string, string>;
  /** Checkpoint interval hint in seconds; overrides the spec's `checkpointIntervalS`. */
  checkpointIntervalS?: number;
  /** Suspect a provider after this long without a heartbeat. Default: 3 of its heartbeats. */
  heartbeatWindowMs?: number;
  /** Fail a suspect provider after this long without a message. Default: 10 s. */
  failAfterMs?: number;
  /** Hand-offs allowed before the job fails. Default 3. */
  retryLimit?: number;
  /** Provider addresses or peer ids never to use. */
  exclude?: string[];
  /** More to leave out, asked at each lease (e.g. the providers already serving a service's other replicas). */
  excludeProviders?: () => readonly string[];
  /** Safe checkpoints to keep pinned; older ones are unpinned. Default 3. */
  keepCheckpoints?: number;
  /**
   * Where the job's checkpoints live besides its provider. `holders`: how many other providers pin
   * each one, each through a lease of its own (no GPUs, paid from the job's budget), fetching it
   * straight from the provider that serves the job; a hand-off resumes from them. `tenantCopy`:
   * `"full"` (the default) also fetches each into this client's own store; `"sample"` fetches none,
   * but checks each holder for each checkpoint by a few of its blocks picked at random (a proof of
   * retrievability: a holder that fails it is replaced); `"none"` leaves them to the holders. Without
   * a full copy, at least one holder. A checkpoint is safe once every copy asked for is made.
   * `diskGiB`: each holder's disk quota, the job's by default; it keeps `keepCheckpoints` of them.
   * `unpack`: each holder whose offer could run the job (a warm standby for a hand-off) is given the
   * job's key and keeps the newest checkpoint it holds decrypted and unpacked, within its disk
   * quota, so a hand-off to it resumes with no decryption or unpacking, whatever the checkpoint's
   * size. Such a holder can read the checkpoints, as the provider that runs the job can. Default false.
   */
  replication?: { holders: number; tenantCopy?: "full" | "sample" | "none"; diskGiB?: number; unpack?: boolean };
  /** Where the output goes. Default `<dataDir>/jobs/<jobId>/output`. */
  outputDir?: string;
  /** Job id (bytes32); random by default. */
  jobId?: Hex;
  signal?: AbortSignal;
}

export interface AttachOptions {
  heartbeatWindowMs?: number;
  failAfterMs?: number;
  outputDir?: string;
  signal?: AbortSignal;
}
