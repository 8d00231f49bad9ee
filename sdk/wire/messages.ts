import { z } from "zod";

import { jobSpecSchema } from "../job-spec.ts";
import { toJson } from "./envelope.ts";
import { maxMessageBytes } from "./protocols.ts";
import {
  addressSchema,
  bytes32Schema,
  hexSchema,
  multiaddrSchema,
  peerIdSchema,
  timestampMsSchema,
  uintSchema,
} from "./schema-types.ts";

/*//////////////////////////////////////////////////////////////
                              OFFERS
//////////////////////////////////////////////////////////////*/

export const gpuInfoSchema = z.object({
  index: z.number().int().min(0).max(255),
  model: z.string().min(1).max(128),
  vramMiB: z.number().int().nonnegative(),
  /** A stand-in GPU for tests and development: never on by default, always labelled. */
  fake: z.boolean(),
});

/**
 * How a provider can run a job: `process`, a command in a bubblewrap sandbox against its own
 * system; `podman`, a container image (a job spec's `image`).
 */
export const jobRuntimes = ["process", "podman"] as const;
export type JobRuntime = (typeof jobRuntimes)[number];

/** The most addresses an offer lists (a node on every interface of a large host still fits). */
export const MAX_OFFER_ADDRESSES = 16;

/** A provider's signed advertisement, published on the offers topic. */
export const offerSchema = z.object({
  chainId: z.number().int().positive(),
  leaseManager: addressSchema,
  provider: addressSchema,
  peerId: peerIdSchema,
  /** Increases with every offer of this provider, so receivers keep only the newest. */
  seq: z.number().int().nonnegative(),
  gpus: z.array(gpuInfoSchema).max(64),
  gpusFree: z.number().int().nonnegative(),
  /** Whether it takes jobs that ask for no GPU. */
  cpuJobs: z.boolean(),
  /**
   * Whether it takes holders' leases (pins another job's checkpoints, runs nothing), whether or not
   * it takes CPU jobs; an offer from before this was added holds when it takes CPU jobs.
   */
  holds: z.boolean().optional(),
  /** Price per second of a lease: `base + perGpu × gpus`, in payment-token base units. */
  price: z.object({ basePerSecond: uintSchema, perGpuPerSecond: uintSchema }),
  collateralPerLease: uintSchema,
  /** Off-chain heartbeat period on lease sessions. */
  heartbeatMs: z.number().int().positive(),
  /** On-chain heartbeat period and timeout its quotes carry. */
  chainHeartbeatPeriodS: z.number().int().positive(),
  chainHeartbeatTimeoutS: z.number().int().positive(),
  maxDurationS: z.number().int().positive(),
  /** How it runs jobs; an offer from before images were added runs processes only. */
  runtimes: z.array(z.enum(jobRuntimes)).max(8).default(["process"]),
  /**
   * The images it holds already (`imageKey`: a pinned `registry/repository@sha256:…` or
   * `cid:<cid>`): a job in one of them starts without a pull.
   */
  images: z.array(z.string().max(600)).max(64).default([]),
  /** The largest disk quota it gives a job (its `maxJobDiskGiB`); an offer from before quotas names none. */
  maxJobDiskGiB: z.number().positive().optional(),
  /**
   * Where it listens now (`/ip4/…/tcp/…`, without `/p2p/<peerId>`, as identify lists them). An
   * offer can arrive relayed by another peer, from a provider the receiver never had an address
   * for, or had one from before the provider restarted on another port: these are the addresses
   * to dial it at. An offer from before they were added lists none.
   */
  addresses: z.array(multiaddrSchema).max(MAX_OFFER_ADDRESSES).default([]),
  expiresAt: timestampMsSchema,
});
export type Offer = z.output<typeof offerSchema>;

/*//////////////////////////////////////////////////////////////
                            BID → QUOTE
//////////////////////////////////////////////////////////////*/

export const requirementsSchema = z.object({
  gpus: z.number().int().min(0).max(64),
  gpuModel: z.string().max(128).optional(),
  minVramMiB: z.number().int().positive().optional(),
  /** The job's disk quota (`resources.diskGiB`); a bid from before quotas names none, and gets the spec's default. */
  diskGiB: z.number().positive().optional(),
  /**
   * A holder's lease (no GPUs, no job: it pins the job's checkpoints): quoted by a node that holds,
   * whether or not it takes CPU jobs, and counted apart from its job leases. Its session must start
   * a hold.
   */
  hold: z.literal(true).optional(),
});

export const bidSchema = z.object({
  chainId: z.number().int().positive(),
  leaseManager: addressSchema,
  jobId: bytes32Schema,
  tenant: addressSchema,
  requirements: requirementsSchema,
  /**
   * The manifest digest of the job's image (bytes32, as the quote carries it), zero for a process
   * job: the quote names it, and the provider runs that image only.
   */
  image: bytes32Schema,
  maxPricePerSecond: uintSchema,
  durationS: z.number().int().positive(),
});
export type Bid = z.output<typeof bidSchema>;

export const quoteWireSchema = z.object({
  provider: addressSchema,
  tenant: addressSchema,
  jobId: bytes32Schema,
  resources: bytes32Schema,
  image: bytes32Schema,
  pricePerSecond: uintSchema,
  collateral: uintSchema,
  heartbeatPeriod: uintSchema,
  heartbeatTimeout: uintSchema,
  maxDuration: uintSchema,
  expiry: uintSchema,
  nonce: uintSchema,
});

/**
 * A tenant's signed lease opening (`sdk/chain/opening.ts`): the provider's quote with its
 * signature, and the tenant's EIP-712 signature of the opening. The provider checks it, starts the
 * job at once and submits it on chain (`LeaseManager.openLeaseFor`) itself.
 */
export const openingWireSchema = z.object({
  quote: quoteWireSchema,
  /** The provider's own signature of the quote: it submits only quotes it issued. */
  quoteSignature: hexSchema,
  deposit: uintSchema,
  predecessor: uintSchema,
  /** Last chain time (seconds) at which the opening may be mined. */
  deadline: uintSchema,
  /** The tenant's signature of the opening. */
  signature: hexSchema,
});
export type OpeningWire = z.output<typeof openingWireSchema>;

/** Why a provider refuses a bid. */
export const bidRefusalReasons = [
  "no-capacity",
  "price-below-floor",
  "requirements-not-met",
  "bad-request",
  "unknown-tenant",
  "rate-limited",
  "draining",
  "internal",
] as const;
export type BidRefusalReason = (typeof bidRefusalReasons)[number];

export const bidResponseSchema = z.discriminatedUnion("kind", [
  z.object({
    kind: z.literal("quote"),
    quote: quoteWireSchema,
    signature: hexSchema,
    /** The GPUs reserved for this quote until it expires. */
    gpus: z.array(z.number().int().nonnegative()).max(64),
  }),
  z.object({ kind: z.literal("refusal"), reason: z.enum(bidRefusalReasons), message: z.string().max(512) }),
]);
export type BidResponse = z.output<typeof bidResponseSchema>;

/** The most quotes one release names: a bid asks a few providers, each for one quote. */
export const MAX_RELEASED_QUOTES = 16;

/**
 * A tenant's release of quotes it will not open, by nonce. The provider frees the GPUs each held
 * (only for the peer that bid for it); a lease opened on a released quote later is served if GPUs
 * are free then, as after the quote's reservation lapsed.
 */
export const quoteReleaseSchema = z.object({
  nonces: z.array(uintSchema).min(1).max(MAX_RELEASED_QUOTES),
});
export type QuoteRelease = z.output<typeof quoteReleaseSchema>;

/** The provider's answer: the nonces whose GPUs it freed (a quote already opened, lapsed or another peer's is not). */
export const quoteReleasedSchema = z.object({
  released: z.array(uintSchema).max(MAX_RELEASED_QUOTES),
});
export type QuoteReleased = z.output<typeof quoteReleasedSchema>;

/*//////////////////////////////////////////////////////////////
                          LEASE SESSION
//////////////////////////////////////////////////////////////*/

/**
 * Proof that the tenant's libp2p peer speaks for its Ethereum address: an EIP-191 signature of
 * {@link tenantAuthText}, fresh within a few minutes.
 */
export const tenantAuthSchema = z.object({
  address: addressSchema,
  at: timestampMsSchema,
  signature: hexSchema,
});

/** The text a tenant signs with its Ethereum key to open or re-attach to a lease session. */
export function tenantAuthText(leaseId: bigint, peerId: string, at: number): string {
  return `Baton lease session\nlease: ${leaseId}\npeer: ${peerId}\nat: ${at}`;
}

const leaseIdSchema = uintSchema;

/** A batch task's id: how the tenant's manifest names the task (its `id`, or its line in the task file). */
export const taskIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9._:-]+$/, "task ids are letters, digits and . _ : -");

/**
 * The largest job spec a lease session's `start` or `task` message carries, counted as it travels
 * (JSON, escaped again as the string the message's body is): the rest of the message (ids, the
 * tenant's proof, the job key, a resume, the signature) takes well under the 4 KiB left.
 */
export const MAX_SPEC_MESSAGE_BYTES = maxMessageBytes.lease - 4 * 1024;

/** A job spec's bytes in a lease message (see {@link MAX_SPEC_MESSAGE_BYTES}). */
export function specMessageBytes(spec: unknown): number {
  return Buffer.byteLength(JSON.stringify(toJson(spec)));
}

/**
 * The largest task output (its ciphertext) a node sends inside the task's result, to a tenant that
 * takes outputs so (`start.inlineOutputs`), instead of adding it to IPFS for the tenant to fetch:
 * well within a lease message (64 KiB) once in base64.
 */
export const MAX_INLINE_OUTPUT_BYTES = 16 * 1024;

/** The most checkpoints a holder's lease keeps (`start.hold.keep`). */
export const HOLD_KEEP_MAX = 16;

/** The most peers a `hold` names to fetch from. */
export const MAX_HOLD_PROVIDERS = 16;

/** A SHA-256 digest in lowercase hex (a checkpoint's or an output's plaintext). */
const sha256Schema = z.string().regex(/^[0-9a-f]{64}$/);

/**
 * A checkpoint to resume from: its CID and the SHA-256 of its plaintext, as announced; and peers that
 * hold it (the job's holders), asked for it before the tenant.
 */
const resumeSchema = z.object({
  cid: z.string().min(1).max(256),
  sha256: sha256Schema,
  providers: z.array(multiaddrSchema).max(MAX_HOLD_PROVIDERS).optional(),
});

export const tenantMessageSchemas = {
  /**
   * Starts the job of a lease just opened on chain, or, with `opening`, of a lease the provider opens
   * itself on the tenant's signed opening (`leaseId` is then the id that opening gets).
   */
  start: z.object({
    leaseId: leaseIdSchema,
    opening: openingWireSchema.optional(),
    auth: tenantAuthSchema,
    spec: jobSpecSchema,
    /**
     * The job's key (32 bytes, base64): checkpoints are encrypted with it. Generated by the tenant
     * for this job alone; it travels only inside this Noise-encrypted session. A holder's lease gets
     * it only when its tenant asks holders to unpack checkpoints ahead (`replication.unpack`).
     */
    key: z
      .string()
      .regex(/^[A-Za-z0-9+/]{43}=$/, "a 32-byte key in base64")
      .optional(),
    /** A checkpoint to resume from: its CID and the SHA-256 of its plaintext, as announced. */
    resume: resumeSchema.optional(),
    /**
     * Makes the lease a batch's, its job the batch's first task, so named. A task's exit ends the
     * task, not the lease: the node sends its result (with this id) and waits for the next `task`;
     * the lease runs, heartbeated and paid, until the tenant closes it.
     */
    taskId: taskIdSchema.optional(),
    /**
     * On a batch lease: the tenant takes a task's output of at most {@link MAX_INLINE_OUTPUT_BYTES}
     * inside its result (`outputInline`). A node from before this field adds every output to IPFS.
     */
    inlineOutputs: z.boolean().optional(),
    /**
     * Makes the lease a holder's: the node runs no job. It pins the checkpoints the tenant names in
     * `hold` messages, fetched from the peers named there, keeps the newest `keep` of them, and
     * acknowledges each (`held`). The spec gives the lease's resources
     * (no GPUs, no image) and its disk quota, which bounds the bytes it holds at once; its command
     * never runs.
     */
    hold: z.object({ keep: z.number().int().min(1).max(HOLD_KEEP_MAX) }).optional(),
  }),
  /**
   * On a holder's lease: a checkpoint to pin (its ciphertext), fetched from `providers` (the serving
   * provider, other holders), then acknowledged by `held`. Holds are taken one at a time in the order
   * sent; one still waiting when a newer one comes is passed over (`held` with `error`). A checkpoint
   * held already is acknowledged again at once. On a lease started with the job's `key`, `sha256`
   * (the digest of its plaintext, as announced) has the node also unpack the newest checkpoint held,
   * once acknowledged, for a job resumed there to take as it is.
   */
  hold: z.object({
    leaseId: leaseIdSchema,
    cid: z.string().min(1).max(256),
    providers: z.array(multiaddrSchema).max(MAX_HOLD_PROVIDERS),
    sha256: sha256Schema.optional(),
  }),
  /**
   * Starts a batch lease's next task: a spec with the lease's resources and image and the task's own
   * command, inputs and env, run in a fresh work dir, from `resume` if given. Sent while a task runs,
   * it waits behind that one (as many as `accepted.taskQueue` says). A task the lease has in hand,
   * queued or exited lately, sent again by a tenant that re-attached, is passed over.
   */
  task: z.object({
    leaseId: leaseIdSchema,
    taskId: taskIdSchema,
    spec: jobSpecSchema,
    resume: resumeSchema.optional(),
  }),
  /** Re-attaches to a running lease, e.g. after the tenant restarted. */
  attach: z.object({ leaseId: leaseIdSchema, auth: tenantAuthSchema, afterSeq: z.number().int().nonnegative() }),
  /** Acknowledges a checkpoint the tenant now holds. */
  "checkpoint-ack": z.object({ leaseId: leaseIdSchema, cid: z.string().min(1).max(256) }),
} as const;

export const progressSchema = z.object({
  step: z.number().int().nonnegative().optional(),
  total: z.number().int().positive().optional(),
  message: z.string().max(256).optional(),
});
export type Progress = z.output<typeof progressSchema>;

/** What a lease's job is doing, as its heartbeats say. */
export const jobStates = ["starting", "running", "exited"] as const;
export type JobState = (typeof jobStates)[number];

/**
 * Why a provider refuses a lease session (and ends it): when the session opens, or, for `draining`
 * only, later on a running lease. Which of them are the provider's doing, so that the tenant hands
 * the job on, is the tenant's hand-off policy (`sdk/tenant/hand-off-policy.ts`).
 */
export const sessionRefusalReasons = [
  /** No first message in time. */
  "timeout",
  /**
   * The node is shutting down: it opens no new session, and once its drain grace ends it sends this
   * on the session of each lease still running, stops the job and ends the lease (acknowledging the
   * tenant's close, or finishing it itself), so that the tenant hands the job on at once.
   */
  "draining",
  /** The chain has no such lease, or (on attach) this node runs no job for it. */
  "unknown-lease",
  /** The lease's provider is another node. */
  "not-our-lease",
  /** The lease's tenant is another account. */
  "not-your-lease",
  /** The lease ended, expired or turned slashable on chain; or its signed opening failed on chain. */
  "lease-not-active",
  /**
   * A signed opening this provider does not take: not its quote, badly signed, its deadline too close
   * or too far, or it would fail on chain (the tenant cannot pay, the predecessor is not the job's).
   */
  "opening-refused",
  /**
   * The spec asks for other resources than the quote reserved, or for a larger disk quota than this
   * provider gives a job (`maxJobDiskGiB`), or its inputs and resume checkpoint do not fit in its
   * own disk quota.
   */
  "spec-mismatch",
  /** The quote's GPUs are no longer free. */
  "no-capacity",
  /** A malformed, unsigned or inconsistent message. */
  "bad-request",
  /** The job's inputs could not be fetched. */
  "inputs-failed",
  /** The checkpoint to resume from could not be fetched, verified or decrypted. */
  "resume-failed",
  /**
   * The job's image cannot run anywhere as given: not pinned to a digest, not a CID, or not in its
   * registry.
   */
  "image-refused",
  /**
   * This provider could not get the job's image or run it: the registry timed out or failed, the
   * image is over this provider's size limit or for another platform, or it runs no image jobs.
   */
  "image-failed",
  /** Anything else that went wrong on the node. */
  "internal",
] as const;
export type SessionRefusalReason = (typeof sessionRefusalReasons)[number];

export const providerMessageSchemas = {
  accepted: z.object({
    leaseId: leaseIdSchema,
    seq: z.number().int().nonnegative(),
    startedAt: timestampMsSchema,
    resumed: z.boolean(),
    /** On a batch lease: the task that starts. */
    taskId: taskIdSchema.optional(),
    /**
     * On a batch lease: how many tasks the node takes waiting behind the running one, each started
     * the moment the one before it exits. Absent (a node before this): none, the next task is sent
     * only once the last one's result came.
     */
    taskQueue: z.number().int().nonnegative().max(16).optional(),
  }),
  refused: z.object({
    leaseId: leaseIdSchema.optional(),
    reason: z.enum(sessionRefusalReasons),
    message: z.string().max(512),
  }),
  heartbeat: z.object({
    leaseId: leaseIdSchema,
    seq: z.number().int().nonnegative(),
    at: timestampMsSchema,
    state: z.enum(jobStates),
    progress: progressSchema.optional(),
  }),
  log: z.object({
    leaseId: leaseIdSchema,
    seq: z.number().int().nonnegative(),
    at: timestampMsSchema,
    stream: z.enum(["stdout", "stderr", "node"]),
    line: z.string().max(4096),
    /** On a batch lease: the task whose line it is (the next task starts before the last one's result goes out). */
    taskId: taskIdSchema.optional(),
  }),
  checkpoint: z.object({
    leaseId: leaseIdSchema,
    seq: z.number().int().nonnegative(),
    cid: z.string().min(1).max(256),
    name: z.string().max(256),
    step: z.number().int().nonnegative().optional(),
    size: z.number().int().nonnegative(),
    sha256: sha256Schema,
    /** On a batch lease: the task that committed it. */
    taskId: taskIdSchema.optional(),
  }),
  result: z.object({
    leaseId: leaseIdSchema,
    seq: z.number().int().nonnegative(),
    /** On a batch lease: the task that ended (the lease goes on). */
    taskId: taskIdSchema.optional(),
    exitCode: z.number().int().nullable(),
    signal: z.string().max(16).nullable(),
    reason: z.string().max(64),
    /** The job's output dir, packed and encrypted with the job key like a checkpoint. */
    outputCid: z.string().max(256).optional(),
    outputSha256: sha256Schema.optional(),
    /**
     * A small output itself, when the tenant takes it so (`start.inlineOutputs`): its ciphertext's
     * pieces, in base64, as the node would have added them to IPFS; `outputCid` names them, and the
     * node did not add them anywhere.
     */
    outputInline: z
      .array(
        z
          .string()
          .regex(/^[A-Za-z0-9+/]*={0,2}$/)
          .max(Math.ceil(MAX_INLINE_OUTPUT_BYTES / 3) * 4),
      )
      .max(4)
      .optional(),
    finishedAt: timestampMsSchema,
  }),
  /**
   * On a holder's lease: a `hold` done. With `bytes`, the checkpoint is pinned on this node (its
   * size as fetched), and `released` lists the older ones it unpinned to keep the newest `keep`;
   * with `error`, it is not held (fetch failed, over the lease's disk quota, superseded). On a lease
   * given the job's key, a second `held` with `unpacked` follows once the checkpoint held is also
   * unpacked ahead: a hand-off to this node now takes its files as they are (a warm standby).
   */
  held: z.object({
    leaseId: leaseIdSchema,
    seq: z.number().int().nonnegative(),
    cid: z.string().min(1).max(256),
    bytes: z.number().int().nonnegative().optional(),
    released: z.array(z.string().min(1).max(256)).max(HOLD_KEEP_MAX).optional(),
    error: z.string().max(512).optional(),
    unpacked: z.literal(true).optional(),
  }),
} as const;

export type TenantMessageType = keyof typeof tenantMessageSchemas;
export type ProviderMessageType = keyof typeof providerMessageSchemas;
export type TenantMessage<T extends TenantMessageType> = z.output<(typeof tenantMessageSchemas)[T]>;
export type ProviderMessage<T extends ProviderMessageType> = z.output<(typeof providerMessageSchemas)[T]>;
