import { renameSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";

import type { Connection, Stream } from "@libp2p/interface";
import type { Multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";
import { parseEventLogs, type Address } from "viem";

import { contracts, leaseStatus } from "../sdk/chain/client.ts";
import { findLastLog } from "../sdk/chain/logs.ts";
import { BaseError, ProtocolError, RefusalError, shortMessageOf } from "../sdk/errors.ts";
import { imageDigestFromBytes32 } from "../sdk/images/digest.ts";
import type { ImageDigest } from "../sdk/images/reference.ts";
import { publishCheckpoint, restoreCheckpoint } from "../sdk/ipfs/checkpoint.ts";
import { MAX_CHECKPOINT_BYTES } from "../sdk/ipfs/constants.ts";
import { diskQuotaBytes, formatDiskQuota, jobDiskGiB, parseJobSpec, type JobSpec } from "../sdk/job-spec.ts";
import { openMessage, parseBody, sealMessage } from "../sdk/wire/envelope.ts";
import { readMessages, writeMessage } from "../sdk/wire/framing.ts";
import {
  MAX_INLINE_OUTPUT_BYTES,
  progressSchema,
  tenantMessageSchemas,
  type Progress,
  type ProviderMessage,
  type ProviderMessageType,
  type SessionRefusalReason,
  type TenantMessage,
} from "../sdk/wire/messages.ts";
import { maxMessageBytes, protocols } from "../sdk/wire/protocols.ts";
import { verifyTenantAuth } from "../sdk/wire/tenant-auth.ts";
import { quoteHolder } from "./bids.ts";
import { watchCheckpoints, type CheckpointWatcher } from "./checkpoints.ts";
import { startContainerJob } from "./containers/container-job.ts";
import { imageMismatch, ImageRefusedError, type HeldImage } from "./containers/images.ts";
import { HoldQueue } from "./holds.ts";
import { fetchInputs } from "./inputs.ts";
import type { Openings } from "./openings.ts";
import type { NodeComponents } from "./components.ts";
import {
  nodeRuntimeBind,
  prepareSandbox,
  startJob,
  type JobExit,
  type JobProcess,
  type PreparedSandbox,
} from "./sandbox/runner.ts";
import { leasePins, releaseExpiredOutputs, releaseLeasePins } from "./lease-pins.ts";
import { LIVE_STATES, type LeaseRow } from "./store.ts";
import { UnpackedCheckpoints, type ClaimedCheckpoint } from "./unpacked-checkpoints.ts";
import type { WorkDir } from "./work-dirs.ts";

/** What a tenant is told when its lease is handed back at the end of a drain's grace. */
const HAND_BACK_MESSAGE = "the node is shutting down and its drain grace ended: the lease is handed back";

/**
 * How a handed-back lease is recorded: why, and the result its `finish` carries should the tenant
 * never close it (a marker, like the one for a job without output, not an IPFS CID).
 */
const HANDED_BACK = { reason: "provider draining", resultCid: "baton-result:v1:handed-back:draining" } as const;

/** A line a job prints on stdout to report progress: `BATON_PROGRESS {"step":10,"total":100}`. */
export const PROGRESS_PREFIX = "BATON_PROGRESS ";

const leaseHolder = (leaseId: bigint): string => `lease:${leaseId}`;

/** The longest between two looks for outputs past their retention. */
const OUTPUT_SWEEP_MAX_MS = 10 * 60_000;

/**
 * Where a lease's message numbers start again after the node restarted: the time in µs, past any
 * number the node gave before (fewer than a thousand messages a millisecond), and a safe integer
 * until the year 2255.
 */
const restartedSeq = (): number => Date.now() * 1000;

/** How many tasks a batch lease takes waiting behind its running one (`LeaseRuntime.queued`), as `accepted` says. */
const TASK_QUEUE = 1;

/**
 * How many exited tasks a batch lease remembers (`LeaseRuntime.exited`): a tenant holds the task
 * running and the one queued until their results come, and both may have exited by then.
 */
const EXITED_TASKS_KEPT = TASK_QUEUE + 1;

/** A refusal of a session, with a reason the tenant can act on: only session reasons are thrown while a session opens. */
const sessionRefusal = (reason: SessionRefusalReason, message: string): RefusalError<SessionRefusalReason> =>
  new RefusalError(reason, message);

/**
 * One lease's job as the node runs it: the process, the numbered messages it produced (kept for a
 * tenant that re-attaches), and the sessions currently watching.
 */
class LeaseRuntime {
  readonly leaseId: bigint;
  seq = 0;
  state: "starting" | "running" | "exited" = "starting";
  progress: Progress | undefined;
  job: JobProcess | undefined;
  exit: JobExit | undefined;
  /** Settles once the job's exit is handled: result recorded and sent, work dir removed. */
  ended: Promise<void> | undefined;
  readonly replay: { seq: number; bytes: Uint8Array }[] = [];
  readonly sessions = new Set<Stream>();
  heartbeatTimer: NodeJS.Timeout | undefined;
  checkpoints: CheckpointWatcher | undefined;
  /** An image job's image, held in the cache while the job runs. */
  image: HeldImage | undefined;
  /** The image the lease's quote named (none for a process job): each task of a batch lease is checked against it. */
  leaseImage: ImageDigest | undefined;
  /**
   * On a batch lease: the task being prepared or run, cleared once it exited (the lease is then idle,
   * and starts its queued task, if any, at once; the exited task's result goes out meanwhile).
   */
  task: string | undefined;
  /**
   * On a batch lease: the task the tenant sent while another was in hand, waiting for its turn. One at
   * most: the next task is at hand the moment a task exits, with no round trip between.
   */
  queued: string | undefined;
  /**
   * On a batch lease: the tasks that exited last, newest last, their results sent or on the way. With
   * the task in hand and the one queued, they are what a tenant that re-attached may send again.
   */
  readonly exited: string[] = [];
  /** Starts waiting for the task in hand to be done with (see {@link LeaseRuntime.untilFree}). */
  readonly #free: (() => void)[] = [];
  /** On a batch lease: the dir its tasks run in (see `WorkDirs.taskDir`). */
  taskDir: WorkDir | undefined;
  /** On a batch lease: the last task's dir being emptied, once it exited; whether its job's dirs are kept. */
  emptying: Promise<boolean> | undefined;
  /** On a batch lease of process jobs: the sandbox its tasks run in, one after another (`reusable`). */
  sandbox: PreparedSandbox | undefined;
  /** On a batch lease: settles once the results of the tasks that ended are sent, in order (see `taskEnded`). */
  results: Promise<void> = Promise.resolve();
  /** On a batch lease: its tenant takes a small output inside the task's result (`start.inlineOutputs`). */
  inlineOutputs = false;
  /** On a batch lease: how many task outputs were moved aside to be published (each gets its own name). */
  outputs = 0;
  /**
   * The nonce of the quote its lease was opened with (unknown for a job relaunched after a restart):
   * a start with another is for another lease, one that took the id after a reorg dropped this one's
   * opening (see `reusedLeaseId`).
   */
  nonce: bigint | undefined;
  /** On a holder's lease (`start.hold`): the checkpoints it pins, in place of a job. */
  holds: HoldQueue | undefined;

  constructor(leaseId: bigint) {
    this.leaseId = leaseId;
  }

  /** Settles once no task is in hand: it exited, its start failed, or the lease stopped. */
  untilFree(): Promise<void> {
    return this.task === undefined ? Promise.resolve() : new Promise((resolve) => this.#free.push(resolve));
  }

  /** The task in hand is done with: a start waiting for its turn goes on. */
  taskDone(): void {
    this.task = undefined;
    for (const resume of this.#free.splice(0)) resume();
  }
}

export interface Leases {
  start(): Promise<void>;
  /** Stops taking sessions; running jobs keep running until `killAll`. */
  stop(): Promise<void>;
  /** Relaunches jobs of live leases after a restart. */
  recover(): Promise<void>;
  /** Kills a lease's job because the chain says the lease ended without us (fencing). */
  fence(leaseId: bigint, reason: string): Promise<void>;
  /** Frees a finished lease's GPUs and closes its sessions. */
  release(leaseId: bigint): Promise<void>;
  /** Unpins what the jobs of leases that ended pinned (a lease handed back ends on chain later). */
  releaseEndedPins(): Promise<void>;
  /**
   * Gives every lease whose job has not ended back to its tenant (the end of a drain's grace): the
   * starts under way are refused, each tenant is told on its session (a `draining` refusal, so that
   * it hands the job on at once), and the job is stopped. The chain duties then acknowledge each
   * tenant's close, or finish the lease (see `handed-back` in `store.ts`).
   */
  handBack(): Promise<void>;
  /** Kills every job (shutdown), and waits until every work dir being removed is gone. */
  killAll(reason: string): Promise<void>;
}

export interface LeasesInit {
  /** Tenants' signed openings: checked, submitted and watched (see `openings.ts`). */
  openings: Openings;
  /** Called when a job ends, with its exit; the chain duties finish the lease. */
  onExit: (leaseId: bigint, exit: JobExit) => void;
  /** Called when GPUs are taken or freed, so the offer is refreshed. */
  onCapacityChange: () => void;
}

/**
 * The lease session protocol (`/baton/lease/1.0.0`) and the jobs behind it. A tenant opens a stream,
 * proves it is the lease's tenant, and either starts the job (first time) or re-attaches (after its
 * own restart). The node checks the lease on chain before running anything, then streams signed
 * heartbeats, log lines, progress and the result.
 */
export function leases(components: NodeComponents, init: LeasesInit): Leases {
  const { host, peerKey, chain, store, gpus, config, log, metrics, account, workDirs } = components;
  const runtimes = new Map<bigint, LeaseRuntime>();
  /** Starts under way (inputs and checkpoint downloading): a hand-back waits until each has launched or failed. */
  const starting = new Set<Promise<void>>();
  /** Aborted by the hand-back: downloads under way stop, and their starts are refused as `draining`. */
  const handingBack = new AbortController();
  /** Work dirs of ended jobs being removed: the node's stop waits for them. */
  const removals = new Set<Promise<void>>();
  /**
   * Removes a lease's work dir without anyone waiting: freeing its file system's loop device can
   * take the kernel many seconds (30 s and more while another mount namespace still holds a copy of
   * the mount), and the chain duties end leases through here. Awaited, one such removal held up a
   * round of heartbeats for a minute, and another lease of the node was slashed.
   */
  const removeWorkDir = (leaseId: bigint): void => {
    const removal = workDirs.remove(leaseId);
    removals.add(removal);
    void removal.finally(() => removals.delete(removal));
  };
  const me = host.peerId.toString();
  const { leaseManager } = contracts(chain.deployment);
  /**
   * Checkpoints holders' leases keep unpacked, beside the work dirs: a resume takes one with a
   * rename, or, where work dirs are quota file systems, takes its file system as the work dir.
   */
  const unpacked = new UnpackedCheckpoints(path.join(components.jobsDir, "unpacked"), workDirs.enforcement, log);

  const send = async (stream: Stream, bytes: Uint8Array): Promise<void> => {
    try {
      await writeMessage(stream, bytes, AbortSignal.timeout(5_000));
    } catch {
      stream.abort(new BaseError("session write failed"));
    }
  };

  /** Numbers, signs, records (unless ephemeral) and sends a message to every watching session. */
  const emit = async <T extends ProviderMessageType>(
    runtime: LeaseRuntime,
    type: T,
    body: Omit<ProviderMessage<T>, "seq" | "leaseId">,
    ephemeral = false,
  ): Promise<void> => {
    const seq = ++runtime.seq;
    const bytes = await sealMessage(peerKey, me, type, { ...body, leaseId: runtime.leaseId, seq });
    if (!ephemeral) {
      runtime.replay.push({ seq, bytes });
      if (runtime.replay.length > config.sessionReplayMessages) runtime.replay.shift();
    }
    await Promise.all([...runtime.sessions].map((stream) => send(stream, bytes)));
  };

  const heartbeat = (runtime: LeaseRuntime): void => {
    void emit(
      runtime,
      "heartbeat",
      { at: Date.now(), state: runtime.state, ...(runtime.progress ? { progress: runtime.progress } : {}) },
      true,
    );
    metrics.sessionHeartbeats.inc();
  };

  const onLine = (runtime: LeaseRuntime, stream: "stdout" | "stderr", line: string): void => {
    if (stream === "stdout" && line.startsWith(PROGRESS_PREFIX)) {
      try {
        runtime.progress = progressSchema.parse(JSON.parse(line.slice(PROGRESS_PREFIX.length)));
        return;
      } catch {
        // Not a valid progress report: pass it on as an ordinary line.
      }
    }
    void emit(runtime, "log", {
      at: Date.now(),
      stream,
      line: line.slice(0, 4096),
      // A batch lease's tasks share a sandbox, and its output: a line is the task's in hand.
      ...(runtime.task === undefined ? {} : { taskId: runtime.task }),
    });
  };

  const realGpus = (indices: number[]): { gpus: number[]; gpuUuids: string[] } => {
    const real = indices.map((i) => gpus.all.find((g) => g.index === i)).filter((g) => g !== undefined && !g.fake);
    return { gpus: real.map((g) => g!.index), gpuUuids: real.map((g) => g!.uuid) };
  };

  /** What a job of the lease runs with, in `workDir`, but its command and env. */
  const jobOptions = (runtime: LeaseRuntime, row: LeaseRow, spec: JobSpec, workDir: WorkDir) => ({
    leaseId: row.leaseId.toString(),
    workDir: workDir.path,
    // The log beside the lease's work dir, where its tasks' dirs (in it) would otherwise put it.
    logPath: path.join(path.dirname(workDir.root), `${row.leaseId}.log`),
    // Fake GPUs have no device to bind; real ones are named by UUID, which CUDA resolves
    // whatever numbering the sandbox's device nodes give them.
    ...realGpus(row.gpus),
    network: spec.network,
    limits: {
      cpuCores: Math.min(spec.resources.cpus, config.jobLimits.cpus),
      memoryBytes: Math.min(spec.resources.memoryMiB, config.jobLimits.memoryMiB) * 1024 * 1024,
      wallTimeMs: spec.maxDurationS * 1000,
    },
    logger: log.child(`job.${row.leaseId}`),
    onLine: (stream: "stdout" | "stderr", line: string) => onLine(runtime, stream, line),
  });

  /**
   * Starts the job: in a container of its image (held in `runtime.image`), in the sandbox `prepared`
   * for it (its batch lease's last task ran there), or in a new sandbox: a batch lease's in `bwrap`
   * mode is reusable, and kept in `runtime.sandbox` for the lease's next task.
   */
  const startRuntimeJob = async (
    runtime: LeaseRuntime,
    row: LeaseRow,
    spec: JobSpec,
    workDir: WorkDir,
    prepared: PreparedSandbox | undefined,
  ): Promise<JobProcess> => {
    const common = { ...jobOptions(runtime, row, spec, workDir), env: spec.env };
    if (spec.image !== undefined) {
      if (!runtime.image || !components.containers) throw new BaseError("an image job was launched without its image");
      return startContainerJob({
        ...common,
        podman: components.containers.podman,
        image: runtime.image.id,
        node: components.containers.node,
        ...(spec.command ? { command: spec.command } : {}),
        ...(spec.workdir ? { workdir: spec.workdir } : {}),
      });
    }
    const sandboxOptions = { ...common, runtimeBinds: [nodeRuntimeBind()], sandbox: config.sandbox };
    if (row.taskId === null || config.sandbox !== "bwrap")
      return startJob({ ...sandboxOptions, command: spec.command! });
    const sandbox = prepared ?? (await prepareSandbox({ ...sandboxOptions, reusable: true }));
    runtime.sandbox = sandbox;
    try {
      return sandbox.run({ command: spec.command!, env: spec.env, wallTimeMs: spec.maxDurationS * 1000 });
    } catch (error) {
      runtime.sandbox = undefined;
      await sandbox.discard();
      throw error;
    }
  };

  /**
   * The image of an image job, from the node's cache (pulled or fetched by CID first if need be),
   * checked to be `leaseImage`, the manifest the lease's quote named, and held until the job ends.
   * Refused with the cause when it cannot be had or is another image.
   */
  const acquireImage = async (
    row: LeaseRow,
    spec: JobSpec,
    leaseImage: ImageDigest | undefined,
    providers: Multiaddr[],
  ): Promise<HeldImage | undefined> => {
    if (spec.image === undefined) return undefined;
    if (!components.containers) {
      startFailed(row.leaseId, "image-failed");
      throw sessionRefusal("image-failed", "this provider runs no image jobs (no Podman)");
    }
    if (leaseImage === undefined) throw new BaseError("an image job's lease was not checked to name an image");
    try {
      return await components.containers.images.acquire(spec.image, {
        digest: leaseImage,
        providers,
        signal: AbortSignal.any([AbortSignal.timeout(config.containers.pullTimeoutS * 1000), handingBack.signal]),
      });
    } catch (error) {
      if (handingBack.signal.aborted) throw startHandedBack(row.leaseId);
      startFailed(row.leaseId, "image-failed");
      if (!(error instanceof ImageRefusedError)) throw error;
      throw sessionRefusal(error.anywhere ? "image-refused" : "image-failed", error.shortMessage);
    }
  };

  const launch = async (
    runtime: LeaseRuntime,
    row: LeaseRow,
    spec: JobSpec,
    workDir: WorkDir,
    relaunch: boolean,
    prepared?: PreparedSandbox,
  ): Promise<void> => {
    let job: JobProcess;
    try {
      job = await startRuntimeJob(runtime, row, spec, workDir, prepared);
    } catch (error) {
      runtime.image?.release();
      await prepared?.discard();
      throw error;
    }
    runtime.job = job;
    runtime.state = "running";
    if (row.jobKey) {
      runtime.checkpoints = watchCheckpoints({
        dir: path.join(workDir.path, "checkpoints"),
        key: Buffer.from(row.jobKey, "base64"),
        ipfs: components.ipfs,
        maxBytes: MAX_CHECKPOINT_BYTES,
        log: log.child(`checkpoints.${row.leaseId}`),
        metrics,
        pins: leasePins({ store, ipfs: components.ipfs }, row.leaseId),
        pinned: store.leasePins(row.leaseId),
        onPublished: (checkpoint) => {
          store.addPendingCheckpoint(row.leaseId, checkpoint.cid);
          void emit(runtime, "checkpoint", {
            ...(row.taskId === null ? {} : { taskId: row.taskId }),
            cid: checkpoint.cid,
            name: checkpoint.name,
            ...(checkpoint.step === undefined ? {} : { step: checkpoint.step }),
            size: checkpoint.size,
            sha256: checkpoint.sha256,
          });
        },
        onRejected: (name, reason) =>
          void emit(runtime, "log", {
            at: Date.now(),
            stream: "node",
            line: `checkpoint ${name} not published: ${reason}`,
          }),
      });
    }
    // A batch lease's task dir is recorded: a node restarted meanwhile relaunches the task there.
    // A batch task's launch is its own bookkeeping, not synced: see `NodeStore.updateLease`.
    store.updateLease(
      row.leaseId,
      { state: "running", pid: job.pid, workDir: workDir.path },
      { synced: row.taskId === null },
    );
    metrics.jobsStarted.inc({ relaunch: String(relaunch) });
    log.info("job started", { leaseId: row.leaseId, pid: job.pid, gpus: row.gpus, relaunch, prepared: !!prepared });
    if (row.taskId !== null) runtime.taskDir = workDir;
    runtime.ended = workDirs
      .supervise(job, workDir)
      .then(async (exit) => {
        await jobEnded(runtime, row, workDir, exit);
        // A batch lease keeps its work dir for its next task (see `WorkDirs.renew`), until the lease
        // ends (`stopRuntime`). Otherwise nothing reads it any more: the output is published, the
        // checkpoint watcher stopped.
        if (row.taskId === null) removeWorkDir(row.leaseId);
      })
      .catch((error: unknown) => log.error("a job's exit was not handled", { leaseId: row.leaseId, error }));
  };

  /**
   * The job exited: its image and checkpoints let go, and unless the lease already ended without
   * it, its output published and its result recorded and sent to the tenant.
   */
  const jobEnded = async (runtime: LeaseRuntime, row: LeaseRow, workDir: WorkDir, exit: JobExit): Promise<void> => {
    runtime.exit = exit;
    runtime.state = "exited";
    runtime.image?.release();
    const current = store.getLease(row.leaseId);
    const taskId = current?.taskId ?? null;
    // A batch lease goes on after its task: its session heartbeats too, until the lease ends.
    if (taskId === null) clearInterval(runtime.heartbeatTimer);
    // The job is over: a checkpoint still publishing is dropped, never delaying the result (a
    // large one takes seconds, and no tenant resumes a job that ended from it).
    await runtime.checkpoints?.stop();
    // Stopped because the chain ended the lease, or because the node handed it back: no result.
    if (current?.state === "fenced" || current?.state === "handed-back") return;
    log.info("job exited", {
      leaseId: row.leaseId,
      code: exit.code,
      signal: exit.signal,
      reason: exit.reason,
      ...(exit.detail ? { detail: exit.detail } : {}),
    });
    // The tenant is told which limit a `disk` exit went over: `disk: the job used more than its 1 GiB disk quota`.
    const reason = exit.detail ? `${exit.reason}: ${exit.detail}` : exit.reason;
    if (taskId !== null) return taskEnded(runtime, row, workDir, taskId, exit, reason);
    // Publish the output first: `exited` is what tells the chain duties to finish with its CID.
    const output = await publishOutput(row, path.join(workDir.path, "output"));
    store.updateLease(row.leaseId, {
      state: "exited",
      pid: null,
      exitCode: exit.code,
      reason: exit.reason,
      endedAt: Date.now(),
      ...(output ? { resultCid: output.cid } : {}),
    });
    await emit(runtime, "result", {
      exitCode: exit.code,
      signal: exit.signal,
      reason,
      ...(output ? { outputCid: output.cid, outputSha256: output.sha256 } : {}),
      finishedAt: Date.now(),
    });
    init.onExit(row.leaseId, exit);
  };

  /**
   * Packs, encrypts and adds the job's output dir (its `output/`, at `dir`), so the tenant can fetch
   * it by CID; none without a job key, or when it cannot be.
   */
  const publishOutput = async (
    row: LeaseRow,
    dir: string,
    inline = false,
  ): Promise<{ cid: string; sha256: string; inline?: Uint8Array[] } | undefined> => {
    if (!row.jobKey) return undefined;
    try {
      const key = Buffer.from(row.jobKey, "base64");
      const published = await publishCheckpoint(components.ipfs, key, dir, {
        maxBytes: MAX_CHECKPOINT_BYTES,
        ...(inline ? { inlineUpTo: MAX_INLINE_OUTPUT_BYTES } : {}),
      });
      // Pinned for its tenant to fetch, for `outputRetentionS` (one sent inline is not stored).
      if (!published.inline) store.addLeasePin(row.leaseId, published.cid.toString(), "output");
      return {
        cid: published.cid.toString(),
        sha256: published.plaintextSha256,
        ...(published.inline ? { inline: published.inline } : {}),
      };
    } catch (error) {
      log.warn("output not published", { leaseId: row.leaseId, error });
      return undefined;
    }
  };

  /**
   * A batch task exited: the lease is free for its next task at once, while the task's output is
   * published and its result sent. The output is moved beside the task dir (a rename), the task dir
   * emptied for the next task, and the task's result goes out once its output is published and the
   * results of the tasks before it went out (`runtime.results`), so that they come in the order the
   * tasks ran. Until it is published and removed, an output counts against the lease's disk quota.
   */
  const taskEnded = async (
    runtime: LeaseRuntime,
    row: LeaseRow,
    taskDir: WorkDir,
    taskId: string,
    exit: JobExit,
    reason: string,
  ): Promise<void> => {
    const finishedAt = Date.now();
    // The lease stays `running`, idle, until the tenant's next task or its close. Written even with a
    // task queued, which records itself at once: a node killed in between then relaunches nothing on
    // its restart, where it would run the exited task again (its tenant sends the queued one again).
    store.updateLease(row.leaseId, { pid: null, exitCode: exit.code, reason: exit.reason }, { synced: false });
    const aside = path.join(taskDir.root, `output.${++runtime.outputs}`);
    // One call, synchronous: the lease's next task waits on it, and the event loop may be busy.
    let moved = true;
    try {
      renameSync(path.join(taskDir.path, "output"), aside);
    } catch (error) {
      log.warn("output not published", { leaseId: row.leaseId, taskId, error });
      moved = false;
    }
    runtime.emptying = workDirs.emptyTaskDir(taskDir);
    const before = runtime.results;
    runtime.results = (async () => {
      // A small output goes in the result to a tenant that takes it so: nothing added, pinned or served.
      const output = moved ? await publishOutput(row, aside, runtime.inlineOutputs) : undefined;
      await rm(aside, { recursive: true, force: true });
      await before;
      // A lease that ended meanwhile (fenced, handed back) sends no more results.
      const state = store.getLease(row.leaseId)?.state;
      if (state === undefined || state === "fenced" || state === "handed-back") return;
      await emit(runtime, "result", {
        taskId,
        exitCode: exit.code,
        signal: exit.signal,
        reason,
        ...(output ? { outputCid: output.cid, outputSha256: output.sha256 } : {}),
        ...(output?.inline
          ? { outputInline: output.inline.map((piece) => Buffer.from(piece).toString("base64")) }
          : {}),
        finishedAt,
      });
    })().catch((error: unknown) => log.error("a task's result was not sent", { leaseId: row.leaseId, taskId, error }));
    runtime.exited.push(taskId);
    runtime.exited.splice(0, runtime.exited.length - EXITED_TASKS_KEPT);
    // The queued task starts, or the tenant's next one finds the lease free.
    runtime.taskDone();
  };

  const runtimeFor = (leaseId: bigint): LeaseRuntime => {
    let runtime = runtimes.get(leaseId);
    if (!runtime) {
      runtime = new LeaseRuntime(leaseId);
      runtimes.set(leaseId, runtime);
      const r = runtime;
      r.heartbeatTimer = setInterval(() => heartbeat(r), config.heartbeatMs);
    }
    return runtime;
  };

  /** Reads the lease from the chain and checks it is active, ours, and the tenant's. */
  const checkLease = async (leaseId: bigint, tenant: Address): Promise<void> => {
    const lease = await chain.publicClient.readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] });
    if (leaseStatus[lease.status] === "None")
      throw sessionRefusal("unknown-lease", `lease ${leaseId} does not exist on chain`);
    if (lease.provider !== account.address)
      throw sessionRefusal("not-our-lease", `lease ${leaseId} is not served by this provider`);
    if (lease.tenant !== tenant) throw sessionRefusal("not-your-lease", `lease ${leaseId} belongs to another tenant`);
    if (leaseStatus[lease.status] !== "Active" || lease.expired || lease.slashable) {
      throw sessionRefusal("lease-not-active", `lease ${leaseId} is not active on chain`);
    }
  };

  /**
   * What the lease's quote said that the node needs and the lease manager keeps only in the
   * lease's `LeaseOpened` event: its nonce (which names the GPUs the quote reserved) and its image.
   */
  const leaseOpening = async (leaseId: bigint): Promise<{ nonce: bigint; image: ImageDigest | undefined }> => {
    // Read back from the newest block: the lease was opened moments ago, the deployment maybe years.
    const log = await findLastLog(
      (range) =>
        chain.publicClient.getContractEvents({
          ...leaseManager,
          eventName: "LeaseOpened",
          args: { leaseId },
          ...range,
        }),
      {
        what: `the opening of lease ${leaseId}`,
        fromBlock: chain.deployment.deployBlock,
        // Uncached: viem keeps a block number for its polling interval, and a tenant starts its
        // session the moment its opening is mined (a cached number missed that block, and the
        // lease was refused as having no opening).
        toBlock: await chain.publicClient.getBlockNumber({ cacheTime: 0 }),
        maxRange: chain.maxLogRange,
      },
    );
    const opened = log && parseEventLogs({ abi: leaseManager.abi, logs: [log], eventName: "LeaseOpened" })[0];
    if (!opened) throw sessionRefusal("lease-not-active", `no LeaseOpened event for lease ${leaseId}`);
    return { nonce: opened.args.terms.nonce, image: imageDigestFromBytes32(opened.args.terms.image) };
  };

  /**
   * The GPUs the lease's quote (by its nonce) reserved, taken over by the lease. A holder's quote
   * starts a hold and nothing else: holders' leases count apart from job leases, so a job started on
   * one would run past `maxLeases`. (A hold on a job's quote took a job's slot: a tenant from before
   * bids said `hold` asks so.)
   */
  const reservedGpus = (leaseId: bigint, nonce: bigint, spec: JobSpec, hold: boolean): number[] => {
    const quote = store.getQuote(nonce);
    if (quote?.hold && !hold) throw sessionRefusal("spec-mismatch", "the quote was for a holder's lease: start a hold");
    const wanted = spec.resources.gpus;
    // Check before taking the quote's GPUs over, so a wrong spec leaves the reservation for a retry.
    if (quote && quote.gpus.length !== wanted) {
      throw sessionRefusal(
        "spec-mismatch",
        `the spec asks for ${wanted} GPU(s); the quote was for ${quote.gpus.length}`,
      );
    }
    const committed = gpus.commit(quoteHolder(nonce), leaseHolder(leaseId));
    const indices =
      committed ??
      gpus.reserve(leaseHolder(leaseId), {
        gpus: wanted,
        ...(spec.resources.gpuModel ? { gpuModel: spec.resources.gpuModel } : {}),
      });
    if (!indices) throw sessionRefusal("no-capacity", "the quote's GPUs are no longer free");
    if (indices.length !== wanted) {
      gpus.release(leaseHolder(leaseId));
      throw sessionRefusal(
        "spec-mismatch",
        `the spec asks for ${wanted} GPU(s); the quote was for ${quote?.gpus.length ?? indices.length}`,
      );
    }
    return indices;
  };

  const attach = async (runtime: LeaseRuntime, stream: Stream, afterSeq: number): Promise<void> => {
    for (const { seq, bytes } of runtime.replay) if (seq > afterSeq) await send(stream, bytes);
    runtime.sessions.add(stream);
    stream.addEventListener("close", () => runtime.sessions.delete(stream), { once: true });
  };

  /** The session's first message, `start` or `attach`, read within the open timeout and checked. */
  const readOpening = async (
    messages: AsyncIterator<Uint8Array>,
    remote: string,
  ): Promise<
    { type: "start"; body: TenantMessage<"start"> } | { type: "attach"; body: TenantMessage<"attach"> } | undefined
  > => {
    const first = await Promise.race([
      messages.next(),
      new Promise<never>((_, reject) =>
        setTimeout(
          () => reject(sessionRefusal("timeout", "no session message in time")),
          config.sessionOpenTimeoutMs,
        ).unref(),
      ),
    ]);
    if (first.done) return undefined;
    const opened = await openMessage(first.value, {
      maxBytes: maxMessageBytes.lease,
      types: ["start", "attach"],
      from: remote,
    });
    return opened.type === "start"
      ? { type: "start", body: parseBody(tenantMessageSchemas.start, opened) }
      : { type: "attach", body: parseBody(tenantMessageSchemas.attach, opened) };
  };

  /**
   * Who opens the session: the lease's tenant, by its signed proof, for a lease of ours that is
   * active on chain, or that its signed opening opens (checked, and to be submitted by this node);
   * while the node drains, only for a job it runs. Returns the tenant's address.
   */
  const authorize = async (body: TenantMessage<"attach" | "start">, remote: string): Promise<Address> => {
    const tenant = await verifyTenantAuth(body.auth, body.leaseId, remote);
    if (components.draining.value && !runtimes.has(body.leaseId)) {
      throw sessionRefusal("draining", "the node is shutting down");
    }
    if (init.openings.pending(body.leaseId)) {
      // Its opening is on its way to the chain: only its tenant comes back to it.
      if (store.getLease(body.leaseId)?.tenant !== tenant) {
        throw sessionRefusal("not-your-lease", `lease ${body.leaseId} belongs to another tenant`);
      }
      return tenant;
    }
    if ("opening" in body && body.opening) await init.openings.check(body.leaseId, body.opening, tenant);
    else await checkLease(body.leaseId, tenant);
    return tenant;
  };

  /** A tenant back on a running job: what it missed after `afterSeq` is replayed, then it follows live. */
  const reattach = async (stream: Stream, remote: string, leaseId: bigint, afterSeq: number): Promise<void> => {
    const runtime = runtimes.get(leaseId);
    if (!runtime) throw sessionRefusal("unknown-lease", `lease ${leaseId} has no job on this node`);
    await attach(runtime, stream, afterSeq);
    log.info("tenant attached", { leaseId, peer: remote, afterSeq });
  };

  /**
   * The job of a lease just opened: its GPUs reserved, the lease recorded, its inputs and the
   * checkpoint it resumes from fetched, and only then launched (the tenant gets `accepted` first).
   */
  const startSession = async (
    stream: Stream,
    connection: Connection,
    body: TenantMessage<"start">,
    tenant: Address,
  ): Promise<void> => {
    const spec = parseJobSpec(body.spec, "job spec");
    if (jobDiskGiB(spec) > config.maxJobDiskGiB) {
      throw sessionRefusal(
        "spec-mismatch",
        `the spec asks for a ${formatDiskQuota(diskQuotaBytes(jobDiskGiB(spec)))} disk quota; this provider gives a job at most ${config.maxJobDiskGiB} GiB`,
      );
    }
    // A signed opening carries its quote; a lease opened on chain has it in its `LeaseOpened` event.
    const opening = body.opening
      ? { nonce: body.opening.quote.nonce, image: imageDigestFromBytes32(body.opening.quote.image) }
      : await leaseOpening(body.leaseId);
    // The node signed for one image (or none): a spec that says otherwise is refused before
    // anything is reserved or fetched.
    const mismatch = imageMismatch(spec.image, opening.image);
    if (mismatch !== undefined) throw sessionRefusal("spec-mismatch", mismatch);
    if (body.hold) checkHoldStart(body, spec);
    const row = await recordLease(body, spec, tenant, connection.remotePeer.toString(), opening.nonce);
    // The job starts now, before the opening is mined: it is submitted meanwhile, and the job
    // stopped if it fails.
    if (body.opening)
      init.openings.submit(body.leaseId, body.opening, (reason) => void openingFailed(body.leaseId, reason));
    if (row.holdKeep !== null) {
      await startHolding(stream, row, spec, opening.nonce);
      return;
    }
    try {
      await prepareAndLaunch(stream, connection, body, row, spec, opening);
    } catch (error) {
      // The job never ran: nothing needs its work dir.
      if (runtimes.get(body.leaseId)?.job === undefined) await workDirs.remove(body.leaseId);
      throw error;
    }
  };

  /** A holder's lease runs no job: it takes no GPUs, names no image, and has no task or checkpoint to start from. */
  const checkHoldStart = (body: TenantMessage<"start">, spec: JobSpec): void => {
    if (spec.resources.gpus !== 0) {
      throw sessionRefusal("spec-mismatch", "a holder's lease runs no job: it takes no GPUs");
    }
    if (spec.image !== undefined) throw sessionRefusal("spec-mismatch", "a holder's lease runs no image");
    if (body.taskId !== undefined || body.resume !== undefined) {
      throw sessionRefusal("bad-request", "a holder's lease has no task and resumes nothing");
    }
  };

  /** The pins a holder's lease keeps, in its quota (the spec's disk quota), reported on its sessions. */
  const holdQueueFor = (runtime: LeaseRuntime, row: LeaseRow, spec: JobSpec): HoldQueue =>
    new HoldQueue({
      leaseId: runtime.leaseId,
      keep: row.holdKeep!,
      quotaBytes: diskQuotaBytes(jobDiskGiB(spec)),
      timeoutMs: config.resumeFetchTimeoutMs,
      ipfs: components.ipfs,
      store,
      log,
      report: (held) => emit(runtime, "held", held),
      key: row.jobKey === null ? undefined : Buffer.from(row.jobKey, "base64"),
      unpacked,
    });

  /** A holder's lease recorded: it runs at once, heartbeated, pinning what its tenant names (`hold`). */
  const startHolding = async (stream: Stream, row: LeaseRow, spec: JobSpec, nonce: bigint): Promise<void> => {
    const runtime = runtimeFor(row.leaseId);
    runtime.nonce = nonce;
    runtime.state = "running";
    runtime.holds = holdQueueFor(runtime, row, spec);
    store.updateLease(row.leaseId, { state: "running" });
    init.onCapacityChange();
    await attach(runtime, stream, 0);
    await emit(runtime, "accepted", { startedAt: row.startedAt, resumed: false });
    log.info("holding checkpoints", { leaseId: row.leaseId, keep: row.holdKeep });
  };

  /**
   * The start of a lease recorded: its work dir made with its quota, its inputs, the checkpoint it
   * resumes from and its image (the one the lease names) fetched, then its job launched.
   */
  const prepareAndLaunch = async (
    stream: Stream,
    connection: Connection,
    body: TenantMessage<"start">,
    row: LeaseRow,
    spec: JobSpec,
    opening: { nonce: bigint; image: ImageDigest | undefined },
  ): Promise<void> => {
    const leaseImage = opening.image;
    // A warm standby's checkpoint, unpacked ahead on this node: waited for if it is being unpacked.
    const claimed = body.resume ? await unpacked.claim(body.resume.cid, body.resume.sha256) : undefined;
    const { workDir, tenantAddresses } = await (async () => {
      const leaseDir = await takeOrMakeWorkDir(row, spec, claimed);
      return {
        // A batch lease's tasks run in a dir of its work dir (see `WorkDirs.taskDir`).
        workDir: row.taskId === null ? leaseDir : await firstTaskDir(leaseDir),
        tenantAddresses: await tenantAddressesOf(connection, row),
      };
    })().catch(async (error: unknown) => {
      await claimed?.discard();
      throw error;
    });
    // The image is pulled while the inputs and the checkpoint arrive: a cold pull takes seconds to
    // minutes, and a hand-off waits on the slowest of the three, not on their sum.
    const pulling = acquireImage(row, spec, leaseImage, tenantAddresses);
    // Awaited below whichever way the fetches go; never an unhandled rejection meanwhile.
    pulling.catch(() => undefined);
    try {
      await fetchJobInputs(row, spec, workDir, tenantAddresses);
      if (body.resume) await restoreResume(row, body.resume, workDir, tenantAddresses, claimed);
    } catch (error) {
      // The fetch's failure is what the tenant is told (unless it ran out of the job's quota); the
      // image, had or not, is let go.
      (await pulling.catch(() => undefined))?.release();
      throw (await quotaTooSmall(workDir, error)) ?? error;
    } finally {
      await claimed?.discard();
    }
    const image = await pulling;
    if (handingBack.signal.aborted) {
      image?.release();
      throw startHandedBack(row.leaseId);
    }
    // Only now, with inputs, checkpoint and image in place, does the lease get a runtime (and session heartbeats).
    const runtime = runtimeFor(body.leaseId);
    runtime.nonce = opening.nonce;
    runtime.inlineOutputs = body.inlineOutputs === true;
    runtime.image = image;
    runtime.leaseImage = leaseImage;
    runtime.task = body.taskId;
    init.onCapacityChange();
    await attach(runtime, stream, 0);
    await emit(runtime, "accepted", {
      startedAt: row.startedAt,
      resumed: body.resume !== undefined,
      ...(body.taskId === undefined ? {} : { taskId: body.taskId, taskQueue: TASK_QUEUE }),
    });
    await launch(runtime, row, spec, workDir, false);
  };

  /**
   * Where the tenant serves blocks (inputs, the checkpoint to resume from). It dialled us, so the
   * connection's remote address is an ephemeral port: the listen addresses it announced (identify);
   * or, for a tenant that listens nowhere, that connection itself, which a block stream takes as any
   * new stream does. Without an address the fetch would fall to bitswap alone.
   */
  const tenantAddressesOf = async (connection: Connection, row: LeaseRow): Promise<Multiaddr[]> => {
    const known = await host.peerStore.get(connection.remotePeer).catch(() => undefined);
    const listening = (known?.addresses ?? []).map((a) => a.multiaddr);
    // A relayed connection's address ends in the tenant's id already; a listen address does not.
    return (listening.length > 0 ? listening : [connection.remoteAddr]).map((a) =>
      a.getComponents().at(-1)?.name === "p2p" ? a : a.encapsulate(`/p2p/${row.tenantPeer}`),
    );
  };

  /**
   * A batch lease's next task, once the previous one exited: checked to run with the
   * lease's resources and image, recorded (`preparing`, so that a node restarted meanwhile fails it
   * rather than relaunching it half fetched), then prepared and launched like a lease's first job,
   * in the sandbox its last task ran in when it suits (`nextTaskDir`; the lease's file system is
   * made once per lease).
   * A task sent while another is in hand is queued, and starts once that one exited. Refused, ending
   * the session, when the lease runs no batch, has a task queued already, or ended.
   */
  const startTask = async (connection: Connection, body: TenantMessage<"task">, leaseId: bigint): Promise<void> => {
    const runtime = runtimes.get(leaseId);
    if (body.leaseId !== leaseId || !runtime || (store.getLease(leaseId)?.taskId ?? null) === null) {
      throw sessionRefusal("bad-request", `lease ${body.leaseId} runs no batch on this session`);
    }
    // A tenant that re-attached sends again the tasks it gave the lease, not knowing which a restart
    // of this node lost: one the lease has in hand, queued or exited lately is no new task.
    if (body.taskId === runtime.task || body.taskId === runtime.queued || runtime.exited.includes(body.taskId)) {
      log.info("task sent again, already had", { leaseId, taskId: body.taskId });
      return;
    }
    if (runtime.task !== undefined) {
      if (runtime.queued !== undefined) {
        throw sessionRefusal("bad-request", `lease ${leaseId} has task ${runtime.queued} queued already`);
      }
      // Waiting is no start under way: a hand-back stops the task in hand, and this one is refused.
      runtime.queued = body.taskId;
      try {
        await runtime.untilFree();
      } finally {
        runtime.queued = undefined;
      }
      if (handingBack.signal.aborted) throw sessionRefusal("draining", HAND_BACK_MESSAGE);
    }
    try {
      await track(launchTask(connection, body, leaseId));
    } catch (error) {
      if (runtime.task === body.taskId) runtime.taskDone();
      throw error;
    }
  };

  /** A batch lease's next task, its turn come (see {@link startTask}). */
  const launchTask = async (connection: Connection, body: TenantMessage<"task">, leaseId: bigint): Promise<void> => {
    const runtime = runtimes.get(leaseId);
    const row = store.getLease(leaseId);
    if (!runtime || !row) throw sessionRefusal("lease-not-active", `lease ${leaseId} ended`);
    if (runtime.task !== undefined) {
      throw sessionRefusal("bad-request", `lease ${leaseId} is still running task ${runtime.task}`);
    }
    if (row.state !== "running") throw sessionRefusal("lease-not-active", `lease ${leaseId} is ${row.state}`);
    const spec = parseJobSpec(body.spec, "task spec");
    const leaseSpec = parseJobSpec(row.spec, `stored spec of lease ${leaseId}`);
    // The lease's GPUs, quota and image were reserved and checked for its first spec: a task keeps them.
    if (
      JSON.stringify(spec.resources) !== JSON.stringify(leaseSpec.resources) ||
      JSON.stringify(spec.image) !== JSON.stringify(leaseSpec.image)
    ) {
      throw sessionRefusal("spec-mismatch", "a task runs with its lease's resources and image");
    }
    if (body.resume && !row.jobKey) throw sessionRefusal("bad-request", "a resume checkpoint needs the job key");
    runtime.task = body.taskId;
    // The previous task's exit handled: its output moved aside (to be published meanwhile), its dir being emptied.
    await runtime.ended;
    const jobDirsKept = (await runtime.emptying) === true;
    Object.assign(runtime, { job: undefined, exit: undefined, ended: undefined, progress: undefined });
    runtime.state = "starting";
    const next: LeaseRow = {
      ...row,
      state: "preparing",
      spec,
      taskId: body.taskId,
      pid: null,
      exitCode: null,
      reason: null,
    };
    store.updateLease(
      leaseId,
      { state: "preparing", spec, taskId: body.taskId, pid: null, exitCode: null, reason: null },
      { synced: false },
    );
    const { workDir, prepared } = await nextTaskDir(runtime, next, spec, leaseSpec);
    const tenantAddresses = await tenantAddressesOf(connection, next);
    const pulling = acquireImage(next, spec, runtime.leaseImage, tenantAddresses);
    pulling.catch(() => undefined);
    try {
      await fetchJobInputs(next, spec, workDir, tenantAddresses);
      if (body.resume) {
        // The last task's `resume/`, kept (empty) in the task dir: the checkpoint takes its place.
        await rm(path.join(workDir.path, "resume"), { recursive: true, force: true });
        await restoreResume(next, body.resume, workDir, tenantAddresses);
      }
      // In the last task's sandbox, the job's dirs were kept as they were made, unless that task
      // changed them or a checkpoint was restored: then they are made again.
      if (!jobDirsKept || body.resume) await prepared?.ownWorkDir();
      runtime.image = await pulling;
    } catch (error) {
      (await pulling.catch(() => undefined))?.release();
      await prepared?.discard();
      await workDirs.remove(leaseId);
      throw (await quotaTooSmall(workDir, error)) ?? error;
    }
    if (handingBack.signal.aborted) {
      runtime.image?.release();
      await prepared?.discard();
      await workDirs.remove(leaseId);
      throw startHandedBack(leaseId);
    }
    await emit(runtime, "accepted", {
      startedAt: Date.now(),
      resumed: body.resume !== undefined,
      taskId: body.taskId,
      taskQueue: TASK_QUEUE,
    });
    await launch(runtime, next, spec, workDir, false, prepared);
  };

  /**
   * A batch lease's next task's dir, with the sandbox its last task ran in when that suits this task
   * (alive, and the same network; its resources are the lease's): the task dir, emptied since.
   * Otherwise that sandbox is ended, and the lease's work dir renewed (emptied, its file system kept)
   * with a task dir in it.
   */
  const nextTaskDir = async (
    runtime: LeaseRuntime,
    row: LeaseRow,
    spec: JobSpec,
    lastSpec: JobSpec,
  ): Promise<{ workDir: WorkDir; prepared?: PreparedSandbox }> => {
    const { sandbox, taskDir } = runtime;
    // Kept in `runtime.sandbox` meanwhile: a lease stopped while the task's inputs come ends it.
    if (sandbox?.ready && taskDir && spec.network === lastSpec.network) return { workDir: taskDir, prepared: sandbox };
    runtime.sandbox = undefined;
    await sandbox?.discard();
    // Renewing empties the whole work dir: the outputs set aside there are published first.
    await runtime.results;
    return { workDir: await firstTaskDir(await makeWorkDir(row, spec, "renew")) };
  };

  /** A batch lease's task dir in its work dir, made: its inputs and resume checkpoint go there before its sandbox does. */
  const firstTaskDir = async (leaseDir: WorkDir): Promise<WorkDir> => {
    const dir = workDirs.taskDir(leaseDir);
    await mkdir(dir.path, { recursive: true, mode: 0o700 });
    return dir;
  };

  /**
   * The lease's work dir, with the spec's disk quota: made (`create`), or for a batch lease's next
   * task its last one's emptied (`renew`); a start refused (`internal`) when it cannot be made.
   */
  const makeWorkDir = async (row: LeaseRow, spec: JobSpec, how: "create" | "renew" = "create"): Promise<WorkDir> => {
    try {
      return await workDirs[how](row.leaseId, diskQuotaBytes(jobDiskGiB(spec)));
    } catch (error) {
      gpus.release(leaseHolder(row.leaseId));
      store.updateLease(row.leaseId, { state: "failed", reason: "work dir not made", endedAt: Date.now() });
      throw error;
    }
  };

  /**
   * The lease's work dir: the file system a checkpoint it resumes from was unpacked in ahead, when
   * that was made at the job's quota (see `WorkDirs.adopt`); otherwise made (a failure to take it
   * only logged: its files are copied in then).
   */
  const takeOrMakeWorkDir = async (row: LeaseRow, spec: JobSpec, claimed: ClaimedCheckpoint | undefined) => {
    const fileSystem = claimed?.fileSystem;
    if (claimed && fileSystem?.quotaBytes === diskQuotaBytes(jobDiskGiB(spec))) {
      const started = performance.now();
      try {
        const dir = await workDirs.adopt(row.leaseId, fileSystem);
        claimed.movedTo(dir.root);
        log.info("work dir taken from an unpacked checkpoint", {
          leaseId: row.leaseId,
          ms: Math.round(performance.now() - started),
        });
        return dir;
      } catch (error) {
        log.warn("unpacked checkpoint's file system not taken as the work dir", { leaseId: row.leaseId, error });
      }
    }
    return makeWorkDir(row, spec);
  };

  /**
   * A refusal saying that the job's inputs and resume checkpoint do not fit in its disk quota, when
   * that is why they could not be fetched: the same spec fails so on every provider, so the job fails
   * (`spec-mismatch`) rather than moving on.
   */
  const quotaTooSmall = async (
    workDir: WorkDir,
    error: unknown,
  ): Promise<RefusalError<SessionRefusalReason> | undefined> => {
    const reason = error instanceof RefusalError ? (error as RefusalError<SessionRefusalReason>).reason : undefined;
    if (reason !== "inputs-failed" && reason !== "resume-failed") return undefined;
    const excess = await workDirs.overQuota(workDir).catch(() => undefined);
    if (excess === undefined) return undefined;
    return sessionRefusal(
      "spec-mismatch",
      `the job's inputs and resume checkpoint do not fit in its ${formatDiskQuota(workDir.quotaBytes)} disk quota`,
    );
  };

  /**
   * Takes the quote's GPUs for the lease and records it, `preparing`, in the store: from there the
   * chain duties heartbeat it while its inputs and checkpoint download (which can take minutes), so
   * the lease does not look abandoned meanwhile. A retried start after a failed one takes its row over.
   */
  const recordLease = async (
    body: TenantMessage<"start">,
    spec: JobSpec,
    tenant: Address,
    tenantPeer: string,
    nonce: bigint,
  ): Promise<LeaseRow> => {
    const indices = reservedGpus(body.leaseId, nonce, spec, body.hold !== undefined);
    const row: LeaseRow = {
      leaseId: body.leaseId,
      jobId: "",
      tenant,
      tenantPeer,
      state: "preparing",
      gpus: indices,
      spec,
      // Recorded before the work dir is made: a node killed meanwhile finds it at its next start.
      workDir: workDirs.pathOf(body.leaseId),
      pid: null,
      startedAt: Date.now(),
      endedAt: null,
      exitCode: null,
      reason: null,
      chainPeriodS: config.chainHeartbeatPeriodS,
      lastChainHeartbeat: null,
      resultCid: null,
      jobKey: body.key ?? null,
      taskId: body.taskId ?? null,
      holdKeep: body.hold?.keep ?? null,
    };
    if (body.resume && !body.key) throw sessionRefusal("bad-request", "a resume checkpoint needs the job key");
    if (store.getLease(row.leaseId)) store.updateLease(row.leaseId, { ...row });
    else store.insertLease(row);
    return row;
  };

  /** A start that failed before its job ran: its GPUs are freed and its row marked failed. */
  const startFailed = (leaseId: bigint, reason: "inputs-failed" | "resume-failed" | "image-failed"): void => {
    gpus.release(leaseHolder(leaseId));
    store.updateLease(leaseId, { state: "failed", reason, endedAt: Date.now() });
  };

  /** A start the hand-back overtook: its GPUs are freed, its lease handed back, and the refusal to send returned. */
  const startHandedBack = (leaseId: bigint): RefusalError<SessionRefusalReason> => {
    gpus.release(leaseHolder(leaseId));
    store.updateLease(leaseId, { state: "handed-back", ...HANDED_BACK, endedAt: Date.now() });
    return sessionRefusal("draining", HAND_BACK_MESSAGE);
  };

  /** Fetches the job's inputs by CID into its work dir, from the tenant or any peer that has them. */
  const fetchJobInputs = async (
    row: LeaseRow,
    spec: JobSpec,
    workDir: WorkDir,
    tenantAddresses: Multiaddr[],
  ): Promise<void> => {
    try {
      await fetchInputs(components.ipfs, spec, workDir.path, {
        providers: tenantAddresses,
        maxBytes: config.maxInputBytes,
        signal: AbortSignal.any([AbortSignal.timeout(config.resumeFetchTimeoutMs), handingBack.signal]),
      });
    } catch (error) {
      if (handingBack.signal.aborted) throw startHandedBack(row.leaseId);
      startFailed(row.leaseId, "inputs-failed");
      throw sessionRefusal("inputs-failed", `cannot fetch the job's inputs: ${shortMessageOf(error)}`);
    }
  };

  /** Fetches, verifies and decrypts the checkpoint to resume from into `resume/`: a bad one is never resumed from. */
  const restoreResume = async (
    row: LeaseRow,
    resume: NonNullable<TenantMessage<"start">["resume"]>,
    workDir: WorkDir,
    tenantAddresses: Multiaddr[],
    claimed?: ClaimedCheckpoint,
  ): Promise<void> => {
    const target = path.join(workDir.path, "resume");
    try {
      // A holder's lease of this node that unpacked it ahead (a warm standby) saves the decryption and unpacking.
      const started = performance.now();
      const taking = claimed ?? (await unpacked.claim(resume.cid, resume.sha256));
      let taken = false;
      if (taking) {
        try {
          taken = await taking.moveTo(target);
        } finally {
          await taking.discard();
        }
      }
      if (taken) {
        await components.ipfs.pin(CID.parse(resume.cid));
        store.addLeasePin(row.leaseId, resume.cid);
        log.info("checkpoint taken unpacked", {
          leaseId: row.leaseId,
          cid: resume.cid,
          ms: Math.round(performance.now() - started),
        });
        return;
      }
      await restoreCheckpoint(components.ipfs, Buffer.from(row.jobKey!, "base64"), CID.parse(resume.cid), target, {
        expectedSha256: resume.sha256,
        maxBytes: MAX_CHECKPOINT_BYTES,
        // All at once, a stripe each, the job's holders first (the root comes from the first): the
        // tenant may keep no copy, and its uplink is often the slowest.
        providers: [...(resume.providers ?? []), ...tenantAddresses],
        signal: AbortSignal.any([AbortSignal.timeout(config.resumeFetchTimeoutMs), handingBack.signal]),
        pin: true,
        log,
      });
      store.addLeasePin(row.leaseId, resume.cid);
    } catch (error) {
      if (handingBack.signal.aborted) throw startHandedBack(row.leaseId);
      startFailed(row.leaseId, "resume-failed");
      throw sessionRefusal("resume-failed", `cannot resume from ${resume.cid}: ${shortMessageOf(error)}`);
    }
  };

  /**
   * Reads the tenant's further messages until the session ends: checkpoint acknowledgements, and on a
   * batch lease its next tasks.
   */
  const readAcks = async (
    stream: Stream,
    messages: AsyncIterable<Uint8Array>,
    connection: Connection,
    leaseId: bigint,
  ): Promise<void> => {
    const remote = connection.remotePeer.toString();
    for await (const bytes of messages) {
      const message = await openMessage(bytes, {
        maxBytes: maxMessageBytes.lease,
        types: ["checkpoint-ack", "task", "hold"],
        from: remote,
      });
      if (message.type === "hold") {
        const body = parseBody(tenantMessageSchemas.hold, message);
        const holds = body.leaseId === leaseId ? runtimes.get(leaseId)?.holds : undefined;
        if (!holds)
          throw sessionRefusal("bad-request", `lease ${body.leaseId} is not a holder's lease of this session`);
        holds.hold(body);
        continue;
      }
      if (message.type === "task") {
        // Not awaited: a task queued behind the one in hand waits for its turn while acks are read on.
        void startTask(connection, parseBody(tenantMessageSchemas.task, message), leaseId).catch((error: unknown) =>
          refuse(stream, remote, error, leaseId),
        );
        continue;
      }
      const ack = parseBody(tenantMessageSchemas["checkpoint-ack"], message);
      // The tenant holds it: what came before it can go from this node's disk. Only for the lease
      // this session was authorized for: no one else's acknowledgement prunes a lease.
      if (ack.leaseId === leaseId) runtimes.get(leaseId)?.checkpoints?.acknowledged(ack.cid);
    }
  };

  /** Why a session failed, as its tenant is told: a refusal's own reason, else bad-request or internal. */
  const refusalFor = (error: unknown, remote: string, leaseId: bigint | undefined) => {
    if (error instanceof RefusalError) {
      return { reason: (error as RefusalError<SessionRefusalReason>).reason, message: error.message };
    }
    if (error instanceof ProtocolError) return { reason: "bad-request" as const, message: error.shortMessage };
    log.warn("session failed", { peer: remote, leaseId, error });
    return { reason: "internal" as const, message: "the node could not serve this session" };
  };

  /** Tells the tenant why its session is refused (signed, logged, counted), and ends it. */
  const refuse = async (stream: Stream, remote: string, error: unknown, leaseId: bigint | undefined): Promise<void> => {
    const { reason, message } = refusalFor(error, remote, leaseId);
    log.info("session refused", { peer: remote, reason, message, leaseId });
    metrics.sessionsRefused.inc({ reason });
    const body = { reason, message, ...(leaseId === undefined ? {} : { leaseId }) };
    await send(stream, await sealMessage(peerKey, me, "refused", body));
    await stream.close().catch(() => undefined);
  };

  /**
   * One lease session: the opening message is read and its tenant authorized (proof, chain, not
   * draining); then the tenant re-attaches to the lease's job, or the job is started; then its
   * acknowledgements are read until the session ends. Anything that fails refuses the session.
   */
  const handleSession = async (stream: Stream, connection: Connection): Promise<void> => {
    const remote = connection.remotePeer.toString();
    const messages = readMessages(stream, maxMessageBytes.lease);
    let leaseId: bigint | undefined;
    try {
      const opening = await readOpening(messages, remote);
      if (!opening) return;
      leaseId = opening.body.leaseId;
      const tenant = await authorize(opening.body, remote);
      if (opening.type === "attach") await reattach(stream, remote, leaseId, opening.body.afterSeq);
      else if (runtimes.has(leaseId) && !(await reusedLeaseId(opening.body)))
        await reattach(stream, remote, leaseId, 0);
      else await track(startSession(stream, connection, opening.body, tenant));
      await readAcks(stream, messages, connection, leaseId);
    } catch (error) {
      await refuse(stream, remote, error, leaseId);
    }
  };

  /**
   * Whether a start is for a lease that took the id of one this node runs, whose opening a reorg
   * dropped (its quote is another): that one is stopped first, as the chain duties would once they
   * see it gone. A start with the same quote is its tenant's again (it lost the first answer).
   */
  const reusedLeaseId = async (body: TenantMessage<"start">): Promise<boolean> => {
    const known = runtimes.get(body.leaseId)?.nonce;
    if (known === undefined) return false;
    const nonce = body.opening ? body.opening.quote.nonce : (await leaseOpening(body.leaseId)).nonce;
    if (nonce === known) return false;
    await fence(body.leaseId, "its lease id was taken by another opening: its own was dropped in a reorg");
    return true;
  };

  /** Keeps `start` among the starts under way until it settles. */
  const track = async (start: Promise<void>): Promise<void> => {
    starting.add(start);
    try {
      await start;
    } finally {
      starting.delete(start);
    }
  };

  /**
   * Stops the lease's job because its signed opening failed on chain: no lease, no pay. Its tenant
   * is told (`lease-not-active`), so that it hands the job on at once.
   */
  const openingFailed = async (leaseId: bigint, reason: string): Promise<void> => {
    const runtime = runtimes.get(leaseId);
    if (runtime) {
      const refusal = await sealMessage(peerKey, me, "refused", {
        reason: "lease-not-active",
        message: reason,
        leaseId,
      });
      await Promise.all([...runtime.sessions].map((stream) => send(stream, refusal)));
    }
    await fence(leaseId, reason);
  };

  const fence = async (leaseId: bigint, reason: string): Promise<void> => {
    const row = store.getLease(leaseId);
    if (!row || row.state === "fenced" || row.state === "finished") return;
    store.updateLease(leaseId, { state: "fenced", reason, endedAt: Date.now() });
    log.warn("lease ended on chain; job stopped", { leaseId, reason });
    metrics.leasesFenced.inc();
    await stopRuntime(leaseId, "killed");
  };

  /**
   * Lets go of the checkpoints that the jobs of ended leases pinned: the one each resumed from, and
   * those it published and kept (the newest safe one and any after it). Their tenants keep them, and
   * their holders: a lease that ended is resumed from nowhere but there. At a restart, also those of
   * leases that ended while the node was down.
   */
  const releaseEndedPins = async (): Promise<void> => {
    for (const leaseId of store.leasesWithPins()) {
      const state = store.getLease(leaseId)?.state;
      if (state !== undefined && LIVE_STATES.includes(state)) continue;
      const cids = await releaseLeasePins({ store, ipfs: components.ipfs }, leaseId);
      if (cids.length > 0) log.info("checkpoints released", { leaseId, cids });
    }
  };

  /** Lets go of the outputs published more than `outputRetentionS` ago. */
  const releaseOldOutputs = async (): Promise<void> => {
    const released = await releaseExpiredOutputs({ store, ipfs: components.ipfs }, config.outputRetentionS * 1000);
    for (const { leaseId, cid } of released) log.info("output released", { leaseId, cid });
  };
  let outputsTimer: NodeJS.Timeout | undefined;

  const stopRuntime = async (leaseId: bigint, reason: "killed" | "aborted"): Promise<void> => {
    const runtime = runtimes.get(leaseId);
    if (!runtime) {
      // A job that exited before the node restarted has no runtime, but its GPUs were adopted
      // (recover): they stay held until its lease ends, and go now.
      gpus.release(leaseHolder(leaseId));
      await releaseEndedPins();
      return;
    }
    clearInterval(runtime.heartbeatTimer);
    if (runtime.job && !runtime.exit) await runtime.job.kill(reason);
    // Its tasks' sandbox binds the task dir: gone before the work dir is removed.
    await runtime.sandbox?.discard();
    runtime.sandbox = undefined;
    // Its exit handled: the result sent (or not, for a lease that ended without it); a batch lease's
    // outputs published, read no more.
    await runtime.ended;
    await runtime.results;
    // A job's work dir went with its exit; a batch lease's stays for its next task until now.
    removeWorkDir(leaseId);
    await runtime.checkpoints?.stop();
    // A holder's lease that ended holds nothing more; nor does a job's.
    await runtime.holds?.release();
    await releaseEndedPins();
    for (const stream of runtime.sessions) await stream.close().catch(() => undefined);
    runtimes.delete(leaseId);
    // A task queued on the lease is refused now that the lease is gone.
    runtime.taskDone();
    gpus.release(leaseHolder(leaseId));
    init.onCapacityChange();
  };

  return {
    async start() {
      // Looked at every half retention (at most every 10 minutes): an output goes at most that late.
      const everyMs = Math.min(config.outputRetentionS * 500, OUTPUT_SWEEP_MAX_MS);
      outputsTimer = setInterval(
        () => void releaseOldOutputs().catch((error: unknown) => log.warn("outputs not released", { error })),
        everyMs,
      );
      outputsTimer.unref();
      await host.handle(protocols.lease, (stream, connection) => void handleSession(stream, connection), {
        maxInboundStreams: 256,
      });
    },
    async stop() {
      clearInterval(outputsTimer);
      await host.unhandle(protocols.lease);
    },
    async recover() {
      await unpacked.open();
      for (const row of store.leases(["preparing"])) {
        if (row.pid !== null) continue;
        // It died while fetching the job's inputs: the tenant re-leases elsewhere when it finds no job here.
        gpus.release(leaseHolder(row.leaseId));
        store.updateLease(row.leaseId, {
          state: "failed",
          reason: "node restarted before the job started",
          endedAt: Date.now(),
        });
      }
      // The work dirs of leases that ended (a node killed by SIGKILL removed none): only the jobs
      // relaunched below need theirs.
      const relaunched = new Set(store.leases(["preparing", "running"]).map((row) => row.leaseId));
      await workDirs.prune((leaseId) => !relaunched.has(leaseId) && store.getLease(leaseId) !== undefined);
      for (const row of store.leases(["preparing", "running"])) {
        // The job died with the previous node process (bubblewrap's --die-with-parent): run it again
        // in the same work dir, where it finds whatever it saved, and tell the tenant what happened.
        gpus.adopt(leaseHolder(row.leaseId), row.gpus);
        const runtime = runtimeFor(row.leaseId);
        // Numbered past whatever this node sent before it restarted, which it does not remember: a
        // tenant re-attaches past the last message it saw, and takes any numbered below as seen.
        runtime.seq = restartedSeq();
        const spec = parseJobSpec(row.spec, `stored spec of lease ${row.leaseId}`);
        // A holder's lease runs no job: it holds on, its pins in the store, for its tenant's next hold.
        if (row.holdKeep !== null) {
          runtime.state = "running";
          runtime.holds = holdQueueFor(runtime, row, spec);
          continue;
        }
        // A batch lease between tasks: nothing to relaunch; it waits, heartbeating, for its tenant's next task.
        if (row.taskId !== null && row.state === "running" && row.pid === null) continue;
        runtime.task = row.taskId ?? undefined;
        await emit(runtime, "log", {
          at: Date.now(),
          stream: "node",
          line: "the provider node restarted; the job was relaunched",
        });
        log.warn("relaunching job after restart", { leaseId: row.leaseId, previousPid: row.pid });
        // The image is in the cache still (it was held while the job ran): no fetch needed, and
        // it is checked against the lease's image again, as at every start.
        if (spec.image !== undefined) {
          try {
            runtime.leaseImage = (await leaseOpening(row.leaseId)).image;
            runtime.image = await acquireImage(row, spec, runtime.leaseImage, []);
          } catch (error) {
            log.error("job not relaunched: its image is gone or not the lease's", { leaseId: row.leaseId, error });
            await workDirs.remove(row.leaseId);
            continue;
          }
        }
        let workDir: WorkDir;
        try {
          workDir = await workDirs.reopen(row.leaseId, diskQuotaBytes(jobDiskGiB(spec)));
          // A batch lease's task goes on in its task dir.
          if (row.workDir.startsWith(`${workDir.root}${path.sep}`)) workDir = { ...workDir, path: row.workDir };
        } catch (error) {
          log.error("job not relaunched: its work dir cannot be mounted again", { leaseId: row.leaseId, error });
          runtime.image?.release();
          continue;
        }
        await launch(runtime, row, spec, workDir, true);
      }
      for (const row of store.leases(["exited"])) gpus.adopt(leaseHolder(row.leaseId), row.gpus);
      await releaseEndedPins();
      await releaseOldOutputs();
    },
    releaseEndedPins,
    fence,
    release: (leaseId) => stopRuntime(leaseId, "killed"),
    async handBack() {
      handingBack.abort();
      await Promise.allSettled([...starting]);
      // A job that already exited keeps its result: the chain duties finish its lease with it. A batch
      // lease has no result of its own: it is handed back, idle or not.
      const rows = store
        .leases(["preparing", "running"])
        .filter((row) => row.taskId !== null || !runtimes.get(row.leaseId)?.exit);
      await Promise.all(
        rows.map(async ({ leaseId }) => {
          // Recorded first: the job's exit, which the stop below brings, then sends no result.
          store.updateLease(leaseId, { state: "handed-back", ...HANDED_BACK, pid: null, endedAt: Date.now() });
          metrics.leasesHandedBack.inc();
          log.info("lease handed back to its tenant", { leaseId });
          const runtime = runtimes.get(leaseId);
          if (runtime) {
            const body = { reason: "draining" as const, message: HAND_BACK_MESSAGE, leaseId };
            const refusal = await sealMessage(peerKey, me, "refused", body);
            await Promise.all([...runtime.sessions].map((stream) => send(stream, refusal)));
          }
          await stopRuntime(leaseId, "aborted");
        }),
      );
    },
    async killAll(reason) {
      log.info("stopping all jobs", { reason });
      await Promise.all([...runtimes.keys()].map((id) => stopRuntime(id, "aborted")));
      await Promise.all(removals);
    },
  };
}
