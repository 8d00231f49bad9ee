import type { ChildProcess } from "node:child_process";
import { constants as osConstants } from "node:os";
import type { Readable } from "node:stream";

import type { Logger } from "../../sdk/logger.ts";
import { pollUntil } from "../../sdk/utils/retry.ts";
import { OUTPUT_DRAIN_MS, SANDBOX_START_TIMEOUT_MS, SANDBOX_TEARDOWN_MS } from "./constants.ts";
import { SandboxSetupError } from "./errors.ts";
import type { JobOutput } from "./job-output.ts";
import {
  childrenOf,
  descendants,
  groupMembers,
  processTable,
  stillRunning,
  trySignal,
  type ProcessEntry,
} from "./process-tree.ts";
import type { ExitReason, JobExit, JobProcess, KillReason, SandboxKind } from "./runner.ts";

/** How the sandbox's first process ended, and when its output was all read. */
export class ChildEnd {
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves once every stdio stream of the child closed: its output is all read. */
  readonly closed: Promise<void>;
  /** When the child exited; `undefined` while it runs. */
  exitedAt: number | undefined;

  constructor(child: ChildProcess) {
    this.exit = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exitedAt = Date.now();
        resolve({ code, signal });
      });
    });
    this.closed = new Promise((resolve) => child.once("close", () => resolve()));
  }
}

/** What the steps after the start need of the job's resolved options. */
export interface RunningJobOptions {
  leaseId: string;
  sandbox: SandboxKind;
  logPath: string;
  wallTimeMs: number;
  killGraceMs: number;
  logger: Logger;
  signal: AbortSignal | undefined;
}

/**
 * Waits until the job runs: the start shim's marker on fd 3 says the sandbox is set up and the
 * command is being executed. When the sandbox exits first (what it printed is the error's details),
 * does not start in time, cannot be spawned, or `signal` aborts, what was started is killed and
 * reaped, the log closed, and the error thrown.
 *
 * @returns the sandbox's pid 1 (`bwrap`): the job is over only once it is.
 */
export async function awaitSandboxStart(
  child: ChildProcess,
  { sandbox, signal }: Pick<RunningJobOptions, "sandbox" | "signal">,
  output: JobOutput,
  end: ChildEnd,
): Promise<ProcessEntry[]> {
  let started = false;
  try {
    return await new Promise<ProcessEntry[]>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new SandboxSetupError(`the sandbox did not start within ${SANDBOX_START_TIMEOUT_MS} ms`)),
        SANDBOX_START_TIMEOUT_MS,
      );
      const onAbort = (): void => reject(signal!.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      (child.stdio[3] as Readable).once("data", () => {
        started = true;
        const { pid } = child;
        done();
        resolve(sandbox === "bwrap" && pid !== undefined ? childrenOf(pid) : []);
      });
      child.once("error", (cause) => {
        done();
        reject(new SandboxSetupError("could not spawn the job", { cause, details: cause.message }));
      });
      void end.exit.then(async ({ code, signal: exitSignal }) => {
        // 'close' comes after every stdio stream ended, so the start marker, if sent, has been read.
        await within(end.closed, OUTPUT_DRAIN_MS);
        if (started) return;
        done();
        reject(setupFailure(code ?? exitSignal, output.setupErrors()));
      });
    });
  } catch (error) {
    // Leave nothing behind: the sandbox is killed and reaped before the error is thrown.
    if (child.pid !== undefined && end.exitedAt === undefined) killTree(child.pid);
    await within(end.exit, 5_000);
    throw error;
  }
}

/** The sandbox exited before the job ran: what it printed, and a hint where it names a known cause. */
function setupFailure(exit: number | string | null, said: string): SandboxSetupError {
  const hint = /Permission denied/.test(said)
    ? "\n(the work dir and each of its parent dirs must be searchable by the job's user)"
    : /namespace|uid map|setting up/i.test(said)
      ? "\n(unprivileged user namespaces may be disabled: sysctl kernel.unprivileged_userns_clone, " +
        "user.max_user_namespaces, or AppArmor's kernel.apparmor_restrict_unprivileged_userns)"
      : "";
  return new SandboxSetupError(`the sandbox failed to start (exit ${exit})`, {
    details: (said || "nothing printed") + hint,
  });
}

/** What a reusable sandbox's shim says of its job: its exit status (as a shell gives it), and whether the sandbox ends with it. */
export interface TaskStatus {
  code: number;
  last: boolean;
}

/**
 * A job of a reusable sandbox (see `PrepareSandboxOptions.reusable`): its output ends at `marker`,
 * its exit is `status` (undefined when the sandbox ended without saying it), and `over` says whether
 * the sandbox may take the next job (`clean`: the job exited by itself, its output all came, and the
 * sandbox goes on).
 */
export interface SandboxTask {
  marker: string;
  status: Promise<TaskStatus | undefined>;
  over(clean: boolean): void;
}

/**
 * A job that runs: stopped by `kill()`, its wall time or its signal, and over (`exited`) once
 * nothing of it runs any more and its output is in the log.
 */
export class RunningJob implements JobProcess {
  readonly leaseId: string;
  readonly pid: number;
  readonly sandbox: SandboxKind;
  readonly logPath: string;
  readonly env: Readonly<Record<string, string>>;
  readonly exited: Promise<JobExit>;
  readonly #child: ChildProcess;
  readonly #options: RunningJobOptions;
  readonly #output: JobOutput;
  readonly #end: ChildEnd;
  /** The sandbox's pid 1 (`bwrap`). */
  readonly #sandboxInits: ProcessEntry[];
  readonly #startedAt: number;
  readonly #wallTimer: NodeJS.Timeout;
  readonly #onAbort = (): void => void this.kill("aborted");
  readonly #task: SandboxTask | undefined;
  #killReason: KillReason | undefined;
  /** A reusable sandbox's job exited by itself: a kill has nothing left to stop. */
  #over = false;
  #graceTimer: NodeJS.Timeout | undefined;

  constructor(
    child: ChildProcess,
    options: RunningJobOptions,
    parts: {
      output: JobOutput;
      end: ChildEnd;
      sandboxInits: ProcessEntry[];
      env: Record<string, string>;
      startedAt: number;
      task?: SandboxTask;
    },
  ) {
    this.leaseId = options.leaseId;
    this.pid = child.pid!;
    this.sandbox = options.sandbox;
    this.logPath = options.logPath;
    this.env = parts.env;
    this.#child = child;
    this.#options = options;
    this.#output = parts.output;
    this.#end = parts.end;
    this.#sandboxInits = parts.sandboxInits;
    this.#startedAt = parts.startedAt;
    this.#task = parts.task;
    this.#output.run(parts.task?.marker);
    this.#wallTimer = setTimeout(() => void this.kill("wall-time"), options.wallTimeMs);
    this.exited = this.#reportExit();
    options.signal?.addEventListener("abort", this.#onAbort, { once: true });
    if (options.signal?.aborted) this.#onAbort();
  }

  /**
   * Stops the job: SIGTERM to every process of the job, SIGKILL to all of them after the grace
   * period. The first reason given wins. Resolves like `exited`.
   */
  kill(reason: KillReason = "killed"): Promise<JobExit> {
    if (!this.#over && this.#end.exitedAt === undefined && this.#killReason === undefined) {
      this.#killReason = reason;
      this.#terminate();
      this.#graceTimer = setTimeout(() => this.#killAll(), this.#options.killGraceMs);
    }
    return this.exited;
  }

  /** The processes of the job itself, which SIGTERM goes to. */
  #jobProcesses(): number[] {
    const table = processTable();
    const below = descendants(this.pid, table);
    if (this.sandbox === "unsafe-none") return [this.pid, ...below];
    // bwrap: below the outer bwrap is the sandbox's pid 1 (bwrap's reaper), which ignores SIGTERM
    // from outside; the job is below it. SIGTERM to the outer bwrap would kill it, and with it the
    // whole sandbox at once, without any grace.
    const inits = new Set(table.filter((entry) => entry.ppid === this.pid).map((entry) => entry.pid));
    return below.filter((p) => !inits.has(p));
  }

  #terminate(): void {
    if (this.#end.exitedAt !== undefined) return;
    const targets = this.#jobProcesses();
    if (targets.length === 0) return this.#killAll();
    if (this.sandbox === "unsafe-none") trySignal(-this.pid, "SIGTERM");
    for (const p of targets) trySignal(p, "SIGTERM");
  }

  #killAll(): void {
    if (this.#end.exitedAt === undefined) killTree(this.pid);
  }

  async #reportExit(): Promise<JobExit> {
    if (this.#task) {
      const status = await this.#task.status;
      if (status !== undefined && this.#killReason === undefined) return this.#taskExit(this.#task, status);
    }
    const exit = await this.#end.exit;
    this.#stopWatching();
    await this.#awaitTeardown();
    await within(this.#end.closed, OUTPUT_DRAIN_MS);
    this.#output.finish(this.#child);
    return this.#exit(exit, this.#killReason ?? "exited", (this.#end.exitedAt ?? Date.now()) - this.#startedAt);
  }

  /**
   * A reusable sandbox's job exited by itself: nothing of it runs (the shim killed what it left) once
   * its output came; the sandbox goes on, for the next job, if it all came in time.
   */
  async #taskExit(task: SandboxTask, status: TaskStatus): Promise<JobExit> {
    const durationMs = Date.now() - this.#startedAt;
    this.#over = true;
    this.#stopWatching();
    const allCame = await this.#output.taskOutputDone(OUTPUT_DRAIN_MS);
    const exit = this.#exit({ code: status.code, signal: null }, "exited", durationMs);
    this.#output.endJob();
    task.over(allCame && !status.last);
    return exit;
  }

  #stopWatching(): void {
    clearTimeout(this.#wallTimer);
    clearTimeout(this.#graceTimer);
    this.#options.signal?.removeEventListener("abort", this.#onAbort);
  }

  /** The exit as reported: bubblewrap's (or the shim's) 128+N read as signal N; "memory" when stderr says so. */
  #exit(
    { code, signal }: { code: number | null; signal: NodeJS.Signals | null },
    reason: ExitReason,
    durationMs: number,
  ): JobExit {
    if (this.sandbox === "bwrap" && signal === null && code !== null && code > 128 && signalName(code - 128) !== null) {
      signal = signalName(code - 128);
      code = null;
    }
    const outOfMemory = reason === "exited" && code !== 0 && this.#output.saysOutOfMemory();
    return { code, signal, reason: outOfMemory ? "memory" : reason, durationMs };
  }

  /**
   * Waits until nothing of the job runs any more, so that its GPUs and memory are free when the
   * node hands them on. SIGKILL takes effect asynchronously and no event says when a process that
   * is not our child is gone, hence the polling.
   * - unsafe-none: whatever is left of the process group is killed now.
   * - bwrap: the outer bwrap exits as soon as the job's first process has, while the sandbox's pid 1
   *   may still be tearing the namespace down (killing what the job left running). The kernel lets
   *   pid 1 become a zombie only once every other process of the namespace is gone.
   */
  async #awaitTeardown(): Promise<void> {
    const leftovers = (): boolean =>
      this.sandbox === "unsafe-none"
        ? groupMembers(this.pid).length > 0
        : this.#sandboxInits.some((init) => stillRunning(init.pid, init.startTime));
    if (this.sandbox === "unsafe-none" && !trySignal(-this.pid, "SIGKILL")) return;
    await pollUntil(() => !leftovers(), { delayMs: 10, backoff: 1, timeoutMs: SANDBOX_TEARDOWN_MS });
    if (leftovers()) this.#options.logger.warn("processes of the job are still dying", { leaseId: this.leaseId });
  }
}

/** SIGKILL to the job's process group, its leader and every process below it. */
export function killTree(pid: number): void {
  // The group leader first, so that it dies of the SIGKILL rather than exit on seeing its
  // children die; the processes below it are listed before, while they are still its descendants.
  const below = descendants(pid);
  trySignal(-pid, "SIGKILL");
  trySignal(pid, "SIGKILL");
  for (const p of below) trySignal(p, "SIGKILL");
}

/** Waits for `promise` to settle, or `ms`, whichever comes first. */
export async function within(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([promise, new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

export function signalName(number: number): NodeJS.Signals | null {
  for (const [name, value] of Object.entries(osConstants.signals)) if (value === number) return name as NodeJS.Signals;
  return null;
}
