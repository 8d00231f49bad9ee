import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  statSync,
} from "node:fs";
import { chmod, lchown, lstat, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";

import { createLogger, type Logger } from "../../sdk/logger.ts";
import {
  bwrapArgs,
  ETC_FILES,
  ETC_NETWORK_FILES,
  gpuDeviceBinds,
  systemEntries,
  type SandboxBind,
  type SandboxDataFile,
} from "./bwrap-args.ts";
import {
  DEFAULT_CPU_CORES,
  DEFAULT_MEMORY_BYTES,
  DEFAULT_WALL_TIME_MS,
  JOB_NICENESS,
  KILL_GRACE_MS,
  LINE_MAX_BYTES,
  LOG_MAX_BYTES,
  NOBODY_GID,
  NOBODY_UID,
  OUTPUT_DRAIN_MS,
  SANDBOX_BIN_DIR,
  SANDBOX_HOSTNAME,
  SANDBOX_PATH,
  SANDBOX_WORK_DIR,
} from "./constants.ts";
import { compareVersions, detectSandbox, resolveExecutable, type DetectedSandbox } from "./detect.ts";
import {
  BubblewrapMissingError,
  InvalidJobOptionsError,
  SandboxSetupError,
  SandboxToolMissingError,
} from "./errors.ts";
import { JobOutput } from "./job-output.ts";
import { awaitSandboxStart, ChildEnd, killTree, RunningJob, within, type TaskStatus } from "./job-process.ts";
import { LineSplitter } from "./output.ts";
import type { ProcessEntry } from "./process-tree.ts";

/**
 * `bwrap`: the job runs in a bubblewrap sandbox. `unsafe-none`: it runs as a plain process (same
 * env, limits, user and process group, but it sees and can read everything its uid can); only for
 * development and for one's own jobs.
 */
export type SandboxKind = "bwrap" | "unsafe-none";

/** Why a job ended. */
export type ExitReason =
  /** It ended by itself (any exit code or signal the runner did not send). */
  | "exited"
  /** `kill()` was called. */
  | "killed"
  /** It ran past `limits.wallTimeMs`. */
  | "wall-time"
  /** It failed while allocating beyond `limits.memoryBytes` (best effort: see `startJob`). */
  | "memory"
  /** It went over its work dir's disk quota (see `node/work-dirs.ts`). */
  | "disk"
  /** The `signal` passed to `startJob` was aborted. */
  | "aborted";

/** The reasons a caller may give to `kill()`. */
export type KillReason = "killed" | "wall-time" | "disk" | "aborted";

export interface JobExit {
  /** Exit code, or null when the job died of a signal. */
  code: number | null;
  /** The signal that ended the job, e.g. "SIGKILL", or null. */
  signal: NodeJS.Signals | null;
  reason: ExitReason;
  /** What the tenant is told beside the reason, where it needs saying: the quota a `disk` exit went over. */
  detail?: string;
  /** From the start of the sandbox to the job's exit. */
  durationMs: number;
}

export interface JobLimits {
  /** Private writable memory (heap, anonymous mappings) of each process, in bytes. */
  memoryBytes?: number;
  /** CPU cores the job may run on; fractions round up. A cap, not a reservation. */
  cpuCores?: number;
  /** Exactly which cores (overrides the runner's choice); a node scheduling many jobs spreads them. */
  cpuSet?: number[];
  /** The job is stopped (reason "wall-time") after this long. */
  wallTimeMs?: number;
}

export interface StartJobOptions {
  /** Names the log file; letters, digits, `.`, `_` and `-`. */
  leaseId: string;
  /** argv; `command[0]` is looked up on the sandbox's PATH. */
  command: string[];
  /** Extra environment of the job. Names `^[A-Z_][A-Z0-9_]*$`; names the runner sets are refused. */
  env?: Record<string, string>;
  /**
   * Host path of the job's work dir, created if missing: the only place the job can write. The
   * runner makes `checkpoints/`, `resume/`, `output/` and `tmp/` in it. Its parent dirs must be
   * searchable (`x`) by the job's user.
   */
  workDir: string;
  /** Host indices of the job's GPUs (nvidia-smi's `index`); none by default. */
  gpus?: number[];
  /** The same GPUs' UUIDs (`GPU-…`), in the same order; when given they name the GPUs in `CUDA_VISIBLE_DEVICES`. */
  gpuUuids?: string[];
  /** Whether the job may use the host's network; false gives it only its own loopback. */
  network?: boolean;
  limits?: JobLimits;
  /** Host files bound read-only into the sandbox, e.g. {@link nodeRuntimeBind}. */
  runtimeBinds?: SandboxBind[];
  sandbox: SandboxKind;
  /** Who the job runs as. Default: nobody (65534) when the node is root, else the node's own user. Never root. */
  user?: { uid: number; gid: number };
  /** Default: `<workDir>/../<leaseId>.log`, outside the job's reach. */
  logPath?: string;
  /** Bound of the log on disk, both files together. */
  logMaxBytes?: number;
  lineMaxBytes?: number;
  killGraceMs?: number;
  /** bubblewrap binary: a path, or a name looked up on PATH. */
  bwrapPath?: string;
  logger?: Logger;
  signal?: AbortSignal;
  /** Each line the job prints, without its newline, capped at `lineMaxBytes`. */
  onLine?: (stream: "stdout" | "stderr", line: string) => void;
}

/** What every job runner takes: all of {@link StartJobOptions} but how the job is run. */
export type JobBasicsOptions = Omit<StartJobOptions, "command" | "sandbox" | "runtimeBinds" | "bwrapPath">;

/** A sandbox set up before its job is known: all of {@link StartJobOptions} but the job's command and env. */
export type PrepareSandboxOptions = Omit<StartJobOptions, "command" | "env"> & {
  /**
   * Runs one job after another (`bwrap` only), each in the same work dir: a batch lease's tasks, so
   * that a task costs no spawn, no bubblewrap set-up and no namespaces made and torn down (see
   * {@link PreparedSandbox.run}).
   */
  reusable?: boolean;
};

export interface JobProcess {
  readonly leaseId: string;
  /**
   * Host pid of the process-group leader: bubblewrap's outer process in `bwrap` mode (the job is
   * below it, in its own pid namespace), the job itself in `unsafe-none` mode, the attached
   * `podman start` for an image job.
   */
  readonly pid: number;
  /** How the job runs: a sandbox kind, or `podman` for an image job. */
  readonly sandbox: SandboxKind | "podman";
  readonly logPath: string;
  /** Env names and values the job was started with (for the node's records; may hold tenant secrets). */
  readonly env: Readonly<Record<string, string>>;
  /** Resolves once no process of the job runs any more and its output is in the log. Never rejects. */
  readonly exited: Promise<JobExit>;
  /**
   * Stops the job: SIGTERM to every process of the job, SIGKILL to all of them after the grace
   * period. The first reason given wins. Resolves like `exited`.
   */
  kill(reason?: KillReason): Promise<JobExit>;
}

/** The Unix socket a server job listens on, in its work dir (`$BATON_HTTP_SOCKET`). */
export const HTTP_SOCKET_NAME = "http.sock";

/** Sub-directories the runner creates in the work dir, and the env variables naming them. */
export const WORK_SUBDIRS = {
  checkpoints: "BATON_CHECKPOINT_DIR",
  resume: "BATON_RESUME_DIR",
  output: "BATON_OUTPUT_DIR",
} as const;

/** Every dir the runner makes in a job's work dir (`prepareWorkDir`): those above, and `tmp/` (the sandbox's /tmp). */
export const JOB_DIRS: readonly string[] = [...Object.keys(WORK_SUBDIRS), "tmp"];

/** Env names the runner sets itself; a job may not override them. Any `BATON_*` is refused too. */
export const RESERVED_ENV = new Set([
  "PATH",
  "HOME",
  "TMPDIR",
  "USER",
  "LOGNAME",
  "CUDA_VISIBLE_DEVICES",
  "NVIDIA_VISIBLE_DEVICES",
  "CUDA_DEVICE_ORDER",
]);

const ENV_NAME = /^[A-Z_][A-Z0-9_]*$/;
const LEASE_ID = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;

/** The minimum memory limit: below it bubblewrap itself cannot set up the sandbox. */
const MIN_MEMORY_BYTES = 32 * 1024 * 1024;

/** The fd the start shim reads its script from: after bubblewrap's options and data files (4-7), or after fd 3. */
const BWRAP_GO_FD = 8;
const UNSANDBOXED_GO_FD = 4;

/**
 * The sandbox's first process: says "started" on fd 3 (so the runner can tell a sandbox that
 * failed to set up from a job that failed), closes the runner's fds, reads on `goFd` the script the
 * runner writes once it has the job's command ({@link PreparedSandbox.run}), and runs it. The
 * sandbox can so be set up while the job's inputs, or the job itself, are not there yet. The fd is
 * a socket (Node's stdio pipes are), which `sh` can `read` but not open as `/dev/fd/N`.
 */
function startShim(goFd: number, otherFds: number[]): string {
  const close = [3, ...otherFds].map((fd) => `${fd}>&-`).join(" ");
  return `printf R >&3 && exec ${close} && s= && while IFS= read -r l; do s="$s$l\n"; done <&${goFd}; exec ${goFd}<&- && eval "$s"`;
}

/**
 * The first process of a reusable sandbox: says "started" on fd 3 like {@link startShim}, then runs
 * job after job. Each comes on `goFd` as its script's line count, a marker, and the script, and runs
 * in a subshell without the shim's fds. Once it exits, what it left running is SIGKILLed (`kill -1`:
 * every process of the sandbox's pid namespace but its pid 1 and the shim), /dev/shm and its SysV IPC
 * objects are removed, the
 * marker is printed on stdout and stderr (the job's output ends there), and the job's exit status
 * goes on fd 3, followed by " last" when the sandbox ends there. A job that is stopped from outside
 * takes the sandbox with it.
 */
function taskLoopShim(goFd: number, otherFds: number[]): string {
  const close = otherFds.map((fd) => `${fd}>&-`).join(" ");
  return [
    // The shim's own stderr goes nowhere (it would say "Terminated" of a job killed by a signal); the job's is fd 9's.
    `printf R >&3 && exec ${close} 9>&2 2>/dev/null && while IFS= read -r n <&${goFd} && IFS= read -r m <&${goFd}; do`,
    `s= && i=0 && while [ "$i" -lt "$n" ] && IFS= read -r l <&${goFd}; do s="$s$l\n" && i=$((i + 1)); done`,
    `(exec 2>&9 9>&- 3>&- ${goFd}<&- && eval "$s"); c=$?`,
    "kill -9 -1",
    'for f in /dev/shm/* /dev/shm/.[!.]*; do [ -e "$f" ] && rm -rf -- "$f"; done',
    // SysV IPC objects outlive their processes (the sandbox has its own IPC namespace): removed if there are any.
    "for q in shm msg sem; do { read -r h && read -r o; } </proc/sysvipc/$q && { ipcrm -a; break; }; done",
    // A job that removed or replaced its work dir's tmp/ left /tmp bound to a dir nobody empties: its sandbox ends.
    `[ /tmp -ef ${SANDBOX_WORK_DIR}/tmp ] && e= || e=" last"`,
    `printf '\\n%s\\n' "$m" && printf '\\n%s\\n' "$m" >&9 && printf '%s%s\\n' "$c" "$e" >&3 && [ -z "$e" ] || exit 0`,
    "done",
  ].join("\n");
}

/** A word for `sh`, whatever it holds (no NUL: checked before). */
export function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * What the start shim runs: exports the job's env and execs its command (looked up on the job's
 * PATH: a missing one exits 127, as in any shell). Each line ends with a newline, which the shim's
 * `read` needs.
 */
function goScript(command: readonly string[], env: Record<string, string>): string {
  const exports = Object.entries(env).map(([name, value]) => `export ${name}=${shellQuote(value)}\n`);
  return `${exports.join("")}exec ${command.map(shellQuote).join(" ")}\n`;
}

/** Whether `file` can be read and run by any user: world-executable file, world-searchable parents. */
function reachableByAnyone(file: string): boolean {
  if ((statSync(file).mode & 0o005) !== 0o005) return false;
  for (let dir = path.dirname(file); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if ((statSync(dir).mode & 0o001) === 0) return false;
  }
  return true;
}

let nodeBinary: { real: string; reachable: boolean } | undefined;

/**
 * Binds this process's Node binary at /opt/baton/bin/node, so that a JS job can run `node`. The
 * job's user (nobody) must be able to reach the binary, which it cannot inside a private checkout
 * (a 0700 directory); then a copy is made once, world-readable, under the system's temp dir.
 */
export function nodeRuntimeBind(): SandboxBind {
  const sandboxPath = `${SANDBOX_BIN_DIR}/node`;
  // Looked up once per process, not per job: a batch lease starts one every few tens of ms.
  if (!nodeBinary) {
    const real = realpathSync(process.execPath);
    nodeBinary = { real, reachable: reachableByAnyone(real) };
  }
  const { real, reachable } = nodeBinary;
  if (reachable) return { hostPath: real, sandboxPath };
  const dir = path.join(tmpdir(), `baton-runtime-${process.getuid?.() ?? 0}`);
  const copy = path.join(dir, `node-${process.version}`);
  if (!existsSync(copy)) {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const partial = `${copy}.${process.pid}.partial`;
    copyFileSync(real, partial);
    chmodSync(partial, 0o755);
    renameSync(partial, copy);
  }
  return { hostPath: copy, sandboxPath };
}

/**
 * Checks a job's extra environment: names `^[A-Z_][A-Z0-9_]*$`, none the runner sets itself
 * ({@link RESERVED_ENV}, `BATON_*`), no NUL in values.
 *
 * @throws {InvalidJobOptionsError}
 */
export function validateJobEnv(env: Record<string, string>): void {
  for (const [name, value] of Object.entries(env)) {
    if (!ENV_NAME.test(name)) {
      throw new InvalidJobOptionsError(`invalid env name "${name}"`, {
        details: "names are upper-case letters, digits and _",
      });
    }
    if (name.startsWith("BATON_") || RESERVED_ENV.has(name)) {
      throw new InvalidJobOptionsError(`env ${name} is set by the node and cannot be overridden`);
    }
    if (typeof value !== "string" || value.includes("\0")) {
      throw new InvalidJobOptionsError(`env ${name} must be a string without NUL bytes`);
    }
  }
}

/**
 * `CUDA_VISIBLE_DEVICES` for a job. With UUIDs, those (right whatever the device numbering).
 * Without, in `bwrap` mode the sandbox holds only the job's `/dev/nvidia<i>` nodes, and the CUDA
 * driver numbers the GPUs it can open from 0 (as in a container given some GPUs' device nodes, or
 * a Slurm job with constrained devices): a job leased host GPUs 0 and 2 sees them as 0 and 1. In
 * `unsafe-none` mode every GPU is visible, so the host indices are used. No GPUs: "" (none).
 */
export function cudaVisibleDevices(
  sandbox: SandboxKind | "podman",
  gpus: readonly number[],
  gpuUuids?: readonly string[],
): string {
  if (gpuUuids !== undefined && gpuUuids.length > 0) return gpuUuids.join(",");
  if (sandbox !== "unsafe-none") return gpus.map((_, ordinal) => ordinal).join(",");
  return gpus.join(",");
}

/** The CPUs this process may run on (`Cpus_allowed_list`). */
export function allowedCpus(): number[] {
  const status = readFileSync("/proc/self/status", "utf8");
  const list = /^Cpus_allowed_list:\s*(.+)$/m.exec(status)?.[1]?.trim() ?? "0";
  return list.split(",").flatMap((part) => {
    const [from, to] = part.split("-").map(Number);
    if (to === undefined) return [from!];
    return Array.from({ length: to - from! + 1 }, (_, i) => from! + i);
  });
}

/**
 * The cores a job with `cores` cores is pinned to: the highest-numbered ones this process may use,
 * leaving the low cores (where interrupts and the node itself tend to run) for the node. Jobs are
 * not given distinct cores: pass `cpuSet` for that.
 */
export function chooseCpus(cores: number, allowed: number[] = allowedCpus()): number[] {
  const count = Math.min(Math.max(1, Math.ceil(cores)), allowed.length);
  return allowed.slice(allowed.length - count);
}

function checkPlainString(value: string, what: string): void {
  if (typeof value !== "string" || value.includes("\0")) {
    throw new InvalidJobOptionsError(`${what} must be a string without NUL bytes`);
  }
}

/** A job's options, checked and with defaults filled in. */
export type ResolvedJobOptions = ReturnType<typeof resolveOptions>;

/** What every runner checks of a job's options, with defaults filled in. */
export type ResolvedJobBasics = ReturnType<typeof resolveJobBasics>;

/** Checks an argv: non-empty, strings without NUL. */
export function checkCommand(command: readonly string[]): void {
  if (!Array.isArray(command) || command.length === 0 || command[0] === "") {
    throw new InvalidJobOptionsError("command must be a non-empty argv array");
  }
  command.forEach((arg, i) => checkPlainString(arg, `command[${i}]`));
}

/** Validates a sandbox's options and fills in defaults; throws before anything is created. */
function resolveOptions(options: PrepareSandboxOptions) {
  const { sandbox } = options;
  if (sandbox !== "bwrap" && sandbox !== "unsafe-none") {
    throw new InvalidJobOptionsError(`sandbox must be "bwrap" or "unsafe-none", got "${String(sandbox)}"`);
  }
  const basics = resolveJobBasics(options);
  const runtimeBinds = (options.runtimeBinds ?? []).map((bind) => {
    checkPlainString(bind.hostPath, "runtimeBinds.hostPath");
    checkPlainString(bind.sandboxPath, "runtimeBinds.sandboxPath");
    const target = path.posix.normalize(bind.sandboxPath);
    const reserved = ["/", "/proc", "/dev", "/etc", "/usr", "/tmp", "/var", SANDBOX_WORK_DIR];
    if (
      !path.posix.isAbsolute(bind.sandboxPath) ||
      target !== bind.sandboxPath ||
      reserved.some((dir) => target === dir || (dir !== "/" && target.startsWith(`${dir}/`)))
    ) {
      throw new InvalidJobOptionsError(`runtime bind target "${bind.sandboxPath}" is not allowed`, {
        details: "use a normalised absolute path outside /, /proc, /dev, /etc, /usr, /tmp, /var and /work",
      });
    }
    let hostPath: string;
    try {
      hostPath = realpathSync(bind.hostPath);
    } catch (cause) {
      throw new InvalidJobOptionsError(`runtime bind source "${bind.hostPath}" does not exist`, { cause });
    }
    return { hostPath, sandboxPath: target };
  });

  return {
    ...basics,
    sandbox,
    runtimeBinds,
    bwrapPath: options.bwrapPath ?? "bwrap",
  };
}

/**
 * Validates what every runner takes (lease id, env, GPUs, limits, user, work dir) and fills in
 * defaults; throws before anything is created.
 */
export function resolveJobBasics(options: JobBasicsOptions) {
  const { leaseId, workDir } = options;
  if (!LEASE_ID.test(leaseId)) throw new InvalidJobOptionsError(`invalid lease id "${leaseId}"`);
  checkPlainString(workDir, "workDir");
  if (!path.isAbsolute(workDir) || path.resolve(workDir) === "/") {
    throw new InvalidJobOptionsError(`workDir must be an absolute path other than /, got "${workDir}"`);
  }
  const env = options.env ?? {};
  validateJobEnv(env);

  const gpus = options.gpus ?? [];
  if (!gpus.every((gpu) => Number.isInteger(gpu) && gpu >= 0 && gpu < 1024) || new Set(gpus).size !== gpus.length) {
    throw new InvalidJobOptionsError(`gpus must be distinct GPU indices, got ${JSON.stringify(gpus)}`);
  }
  if (options.gpuUuids !== undefined) {
    if (options.gpuUuids.length !== gpus.length || !options.gpuUuids.every((uuid) => /^[A-Za-z0-9-]+$/.test(uuid))) {
      throw new InvalidJobOptionsError("gpuUuids must name each of gpus, in order");
    }
  }

  const limits = options.limits ?? {};
  const memoryBytes = limits.memoryBytes ?? DEFAULT_MEMORY_BYTES;
  const cpuCores = limits.cpuCores ?? DEFAULT_CPU_CORES;
  const wallTimeMs = limits.wallTimeMs ?? DEFAULT_WALL_TIME_MS;
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes < MIN_MEMORY_BYTES) {
    throw new InvalidJobOptionsError(`limits.memoryBytes must be an integer of at least ${MIN_MEMORY_BYTES}`);
  }
  if (!(cpuCores > 0) || !Number.isFinite(cpuCores))
    throw new InvalidJobOptionsError("limits.cpuCores must be positive");
  if (!(wallTimeMs > 0) || !Number.isFinite(wallTimeMs))
    throw new InvalidJobOptionsError("limits.wallTimeMs must be positive");
  const cpus = limits.cpuSet ?? chooseCpus(cpuCores);
  if (cpus.length === 0 || !cpus.every((cpu) => Number.isInteger(cpu) && cpu >= 0)) {
    throw new InvalidJobOptionsError("limits.cpuSet must list CPU numbers");
  }

  const isRoot = process.getuid?.() === 0;
  const self = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const user = options.user ?? (isRoot ? { uid: NOBODY_UID, gid: NOBODY_GID } : self);
  if (!Number.isInteger(user.uid) || !Number.isInteger(user.gid) || user.uid < 0 || user.gid < 0) {
    throw new InvalidJobOptionsError("user.uid and user.gid must be non-negative integers");
  }
  if (user.uid === 0 || user.gid === 0) throw new InvalidJobOptionsError("jobs never run as root (uid or gid 0)");
  if (!isRoot && (user.uid !== self.uid || user.gid !== self.gid)) {
    throw new InvalidJobOptionsError(`only a node running as root can run jobs as another user (uid ${user.uid})`);
  }

  const resolvedWorkDir = path.resolve(workDir);
  return {
    leaseId,
    env,
    gpus,
    gpuUuids: options.gpuUuids,
    network: options.network ?? false,
    memoryBytes,
    cpus,
    wallTimeMs,
    user,
    switchUser: isRoot,
    workDir: resolvedWorkDir,
    logPath: options.logPath ?? path.join(path.dirname(resolvedWorkDir), `${leaseId}.log`),
    logMaxBytes: options.logMaxBytes ?? LOG_MAX_BYTES,
    lineMaxBytes: options.lineMaxBytes ?? LINE_MAX_BYTES,
    killGraceMs: options.killGraceMs ?? KILL_GRACE_MS,
    logger: options.logger ?? createLogger("node.sandbox"),
    signal: options.signal,
    onLine: options.onLine,
  };
}

/**
 * Creates the work dir and its sub-dirs, owned by the job's user and closed to everyone else. An
 * entry of a previous run that is not a plain directory (a symlink the job left to trick a later
 * chown) is refused, and nothing is followed: only these five dirs are chowned, never their contents.
 */
export async function prepareWorkDir(
  workDir: string,
  user: { uid: number; gid: number },
  chown: boolean,
): Promise<void> {
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  for (const dir of [workDir, ...JOB_DIRS.map((sub) => path.join(workDir, sub))]) {
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    const stat = await lstat(dir);
    if (!stat.isDirectory()) throw new InvalidJobOptionsError(`${dir} exists and is not a directory`);
    if (chown) await lchown(dir, user.uid, user.gid);
    await chmod(dir, 0o700);
  }
}

/** The job's environment: its own variables, then the ones the runner sets (which win). */
export function jobEnv(
  resolved: Pick<ResolvedJobBasics, "env" | "leaseId" | "gpus" | "gpuUuids"> & { sandbox: SandboxKind | "podman" },
  where: { workDir: string; path: string },
  userName: string,
): Record<string, string> {
  const { workDir } = where;
  return {
    ...resolved.env,
    PATH: where.path,
    HOME: workDir,
    TMPDIR: path.join(workDir, "tmp"),
    USER: userName,
    LOGNAME: userName,
    BATON_LEASE_ID: resolved.leaseId,
    BATON_WORK_DIR: workDir,
    BATON_CHECKPOINT_DIR: path.join(workDir, "checkpoints"),
    BATON_RESUME_DIR: path.join(workDir, "resume"),
    BATON_OUTPUT_DIR: path.join(workDir, "output"),
    // A server job listens here (HTTP over a Unix socket in its work dir): the node proxies its
    // tenant's requests to it, and the job needs no network at all.
    BATON_HTTP_SOCKET: path.join(workDir, HTTP_SOCKET_NAME),
    CUDA_VISIBLE_DEVICES: cudaVisibleDevices(resolved.sandbox, resolved.gpus, resolved.gpuUuids),
    // NVIDIA's container tooling reads this one; "void" is its word for "no GPU".
    NVIDIA_VISIBLE_DEVICES: resolved.gpus.length === 0 ? "void" : resolved.gpus.join(","),
    // CUDA's default order is "fastest first"; PCI order is nvidia-smi's, which the node leases by.
    CUDA_DEVICE_ORDER: "PCI_BUS_ID",
  };
}

/**
 * /etc/passwd, /etc/group and /etc/hosts of the sandbox: root, nobody and the job's user (home
 * /work), nothing of the host's accounts. Programs that look their user up (Python's
 * `getpass.getuser()`, `whoami`, ssh) then work.
 */
function identityFiles(user: { uid: number; gid: number }, userName: string): SandboxDataFile[] {
  const home = SANDBOX_WORK_DIR;
  const passwd = ["root:x:0:0:root:/root:/usr/sbin/nologin"];
  if (user.uid === NOBODY_UID) {
    passwd.push(`nobody:x:${NOBODY_UID}:${user.gid}:Baton job:${home}:/bin/sh`);
  } else {
    passwd.push(`${userName}:x:${user.uid}:${user.gid}:Baton job:${home}:/bin/sh`);
    passwd.push(`nobody:x:${NOBODY_UID}:${NOBODY_GID}:nobody:/nonexistent:/usr/sbin/nologin`);
  }
  const group = ["root:x:0:", `nogroup:x:${NOBODY_GID}:`];
  if (user.gid !== NOBODY_GID) group.push(`${userName}:x:${user.gid}:`);
  return [
    { sandboxPath: "/etc/passwd", content: passwd.join("\n") + "\n" },
    { sandboxPath: "/etc/group", content: group.join("\n") + "\n" },
    {
      sandboxPath: "/etc/hosts",
      content: `127.0.0.1\tlocalhost ${SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n`,
    },
  ];
}

const bwrapCache = new Map<string, Promise<DetectedSandbox>>();

/** `detectSandbox` once per bwrap path: its version decides which options can be used. */
function detectOnce(bwrapPath: string): Promise<DetectedSandbox> {
  let found = bwrapCache.get(bwrapPath);
  if (!found) {
    found = detectSandbox({ bwrapPath });
    bwrapCache.set(bwrapPath, found);
    // Only a found bwrap is remembered: one installed while the node runs is picked up.
    void found.then(
      (result) => result.kind === "none" && bwrapCache.delete(bwrapPath),
      () => bwrapCache.delete(bwrapPath),
    );
  }
  return found;
}

/** Tools found, by name: found once (a lookup on PATH is a stat per dir, for each job). A missing one is looked up again. */
const toolCache = new Map<string, string>();

async function requireTool(name: string): Promise<string> {
  const cached = toolCache.get(name);
  if (cached !== undefined) return cached;
  const found = await resolveExecutable(name);
  if (found === undefined) {
    throw new SandboxToolMissingError(`${name} is not installed`, {
      details: `the job runner needs ${name} (util-linux or coreutils) on PATH`,
    });
  }
  toolCache.set(name, found);
  return found;
}

/**
 * Starts a job in a sandbox and resolves once it runs (the sandbox is set up and the command is
 * being executed). The job then runs until it exits, `kill()` is called, its wall time passes, or
 * `signal` aborts; `exited` says which.
 *
 * What the job gets:
 * - **Files.** `bwrap`: the host's /usr, /bin, /lib… and a few /etc files read-only, a fresh /proc,
 *   a minimal /dev with only its own GPUs' nodes, `runtimeBinds` read-only, and its work dir,
 *   read-write, at /work (its cwd and HOME; `tmp/` is also at /tmp). Nothing else of the host:
 *   not /root, /home, the node's data, other jobs' dirs. `unsafe-none`: the host as its uid sees it.
 * - **Env.** Only `env` plus what the runner sets: PATH, HOME, TMPDIR, USER, LOGNAME,
 *   BATON_LEASE_ID, BATON_WORK_DIR, BATON_CHECKPOINT_DIR, BATON_RESUME_DIR, BATON_OUTPUT_DIR, BATON_HTTP_SOCKET,
 *   CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER.
 * - **User.** nobody (65534) when the node is root; never root. No capabilities; in `bwrap` mode
 *   it cannot create further user namespaces (bwrap ≥ 0.8).
 * - **Network.** `bwrap` without `network`: its own namespace with only loopback.
 *
 * Limits, and how far each one holds:
 * - **Memory** is RLIMIT_DATA (`prlimit --data`), per process: private writable memory (heap,
 *   anonymous mmap). Not RLIMIT_AS: that counts reserved address space, and V8 (about 1 GiB just
 *   to start) and the CUDA driver (which maps GPU memory into the address space) reserve far more
 *   than they use. It does not cover files in /dev/shm, and a job of many processes gets the
 *   limit per process; a cgroup (`memory.max`) would cover both, and is the next step. An
 *   allocation past the limit fails with ENOMEM; the runtime decides what happens then, so the
 *   reason "memory" is a best guess: a non-zero exit whose last stderr lines carry a known
 *   out-of-memory message (glibc, Python, C++, V8, GNU tools). A job that crashes without one (a C
 *   program that ignores malloc's NULL and segfaults) reports "exited" with its code or signal.
 * - **CPU** is a cap, not a reservation: the job is pinned (`taskset`) to `ceil(cpuCores)` cores,
 *   the highest-numbered ones unless `cpuSet` says otherwise, which other jobs and the node may
 *   share; and it runs at nice 10 so the node's heartbeats win. The affinity is advisory: a job
 *   can widen it again with sched_setaffinity; only a cgroup (`cpu.max`) would hold it.
 * - **Wall time**: a timer kills the job (reason "wall-time").
 * - **Processes**: a job is over when its main process exits; what it left running is killed
 *   then, and `exited` resolves only once none of it runs. In `bwrap` mode all its processes
 *   live in its pid namespace, which the kernel empties when the sandbox's pid 1 exits, right
 *   after the main process; and the sandbox dies with the node (`--die-with-parent`). In
 *   `unsafe-none` mode the process group and the process tree are signalled, but a process that
 *   left both (a double-forked daemon) survives. The sandbox's pid 1 is left for the host's init
 *   to reap: run the node under an init that reaps orphans (systemd, or `docker run --init`), not
 *   as pid 1 of a container, or one zombie per job accumulates.
 *
 * Exit status: bwrap reports a job killed by signal N as exit code 128+N; the runner turns that
 * back into `signal`, so a job that itself exits with 130 reads as SIGINT, as in a shell.
 *
 * @throws {BubblewrapMissingError} `bwrap` mode without bubblewrap.
 * @throws {SandboxSetupError} the sandbox could not be set up (e.g. user namespaces forbidden).
 * @throws {SandboxToolMissingError} taskset, nice, prlimit or sh is missing.
 * @throws {InvalidJobOptionsError} invalid options.
 *
 * @example
 * const job = await startJob({
 *   leaseId: "42", command: ["python3", "train.py"], workDir: "/var/lib/baton/leases/42/work",
 *   gpus: [0], sandbox: "bwrap", limits: { memoryBytes: 16 * 2 ** 30, cpuCores: 4, wallTimeMs: 3_600_000 },
 *   onLine: (stream, line) => session.send({ stream, line }),
 * });
 * const { code, reason } = await job.exited;
 */
export async function startJob(options: StartJobOptions): Promise<JobProcess> {
  checkCommand(options.command);
  validateJobEnv(options.env ?? {});
  const sandbox = await prepareSandbox(options);
  return sandbox.run({ command: options.command, env: options.env ?? {} });
}

/**
 * A sandbox set up as {@link startJob} sets one up, whose job is given later
 * ({@link PreparedSandbox.run}); a reusable one takes job after job (a batch lease's tasks). While
 * it waits it holds its work dir (bound at /work, so it cannot be unmounted) and runs nothing but the
 * start shim.
 *
 * @throws as {@link startJob}, but for the command and env.
 */
export async function prepareSandbox(options: PrepareSandboxOptions): Promise<PreparedSandbox> {
  options.signal?.throwIfAborted();
  const resolved = resolveOptions(options);
  const reusable = options.reusable === true;
  // Without a pid namespace, the shim's `kill -1` would reach every process of the job's user.
  if (reusable && resolved.sandbox !== "bwrap") {
    throw new InvalidJobOptionsError("only a bwrap sandbox runs one job after another");
  }
  const tools = await findTools(resolved);
  await prepareWorkDir(resolved.workDir, resolved.user, resolved.switchUser);
  const command = sandboxCommand(resolved, tools, reusable);
  const output = new JobOutput(resolved);
  const child = spawnSandbox(tools.taskset, command, resolved);
  output.read(child);
  const end = new ChildEnd(child);
  const sandboxInits = await awaitSandboxStart(child, resolved, output, end);
  return new PreparedSandbox(child, resolved, {
    output,
    end,
    sandboxInits,
    goFd: command.goFd,
    runnerEnv: command.env,
    reusable,
  });
}

/** What a prepared sandbox's job takes over: its output, its end, its pid 1, the fd its script goes to, and the env the runner set. */
interface PreparedParts {
  output: JobOutput;
  end: ChildEnd;
  sandboxInits: ProcessEntry[];
  goFd: number;
  runnerEnv: Record<string, string>;
  /** Runs job after job ({@link PrepareSandboxOptions.reusable}). */
  reusable: boolean;
}

/** A sandbox set up and waiting for its job (see {@link prepareSandbox}). */
export class PreparedSandbox {
  /** Host pid of the process-group leader, as {@link JobProcess.pid}. */
  readonly pid: number;
  readonly #child: ChildProcess;
  readonly #resolved: ResolvedJobOptions;
  readonly #parts: PreparedParts;
  /** A job runs in it, or ran (one that is not reusable takes one job), or it was discarded. */
  #taken = false;
  /** Its end once it is being ended unused, or after a job whose output did not all come. */
  #gone: Promise<void> | undefined;
  /** Takes the exit status the running job's shim reports on fd 3 (reusable only). */
  #onStatus: ((status: TaskStatus | undefined) => void) | undefined;

  constructor(child: ChildProcess, resolved: ResolvedJobOptions, parts: PreparedParts) {
    this.pid = child.pid!;
    this.#child = child;
    this.#resolved = resolved;
    this.#parts = parts;
    // Ignore EPIPE: the sandbox may die before it reads its script.
    (child.stdio[parts.goFd] as NodeJS.WritableStream & { on(event: "error", cb: () => void): void }).on(
      "error",
      () => {},
    );
    if (parts.reusable) {
      const statuses = new LineSplitter(64, (line) =>
        this.#status({ code: Number.parseInt(line, 10), last: line.endsWith(" last") }),
      );
      (child.stdio[3] as Readable).on("data", (chunk: Buffer) => statuses.push(chunk));
      // Ended without a word on its job (killed): no status comes. Its output is all read first, as
      // one that ends with its job's status ("last") may exit before that status is read.
      void parts.end.exit.then(() => within(parts.end.closed, OUTPUT_DRAIN_MS)).then(() => this.#status(undefined));
    }
  }

  /** Gives the running job its status (undefined: the sandbox ended without one). */
  #status(status: TaskStatus | undefined): void {
    const onStatus = this.#onStatus;
    this.#onStatus = undefined;
    onStatus?.(status);
  }

  /** Whether it can take a job now: none runs in it, it was not discarded, and it did not die meanwhile. */
  get ready(): boolean {
    return !this.#taken && this.#parts.end.exitedAt === undefined;
  }

  /**
   * Runs the job: `env` is the job's own, as {@link StartJobOptions.env}; `wallTimeMs` overrides the
   * sandbox's limit; the job's duration counts from now. A reusable sandbox is ready for the next job
   * once this one exited by itself and its output all came; a job that is killed, for its wall time
   * or otherwise, takes the sandbox with it.
   *
   * @throws {InvalidJobOptionsError} a bad command or env; the sandbox stays ready.
   * @throws {SandboxSetupError} a job runs in it, or it was taken, discarded, or died meanwhile.
   */
  run({
    command,
    env,
    wallTimeMs,
  }: {
    command: string[];
    env: Record<string, string>;
    wallTimeMs?: number;
  }): JobProcess {
    checkCommand(command);
    validateJobEnv(env);
    if (wallTimeMs !== undefined && !(wallTimeMs > 0 && Number.isFinite(wallTimeMs))) {
      throw new InvalidJobOptionsError("wallTimeMs must be positive");
    }
    if (!this.ready) throw new SandboxSetupError("the prepared sandbox is gone");
    this.#taken = true;
    const { output, end, sandboxInits, goFd, runnerEnv, reusable } = this.#parts;
    const resolved = { ...this.#resolved, env, ...(wallTimeMs === undefined ? {} : { wallTimeMs }) };
    const go = this.#child.stdio[goFd] as NodeJS.WritableStream;
    const script = goScript(command, env);
    // The job's own env under the runner's, as `jobEnv` makes it (the job's names never clash: validated).
    const parts = { output, end, sandboxInits, env: { ...env, ...runnerEnv }, startedAt: Date.now() };
    if (!reusable) {
      go.end(script);
      return new RunningJob(this.#child, resolved, parts);
    }
    // A marker no job can guess: a job that printed it would only cut its own output short.
    const marker = `baton-job-end-${randomBytes(16).toString("hex")}`;
    const status = new Promise<TaskStatus | undefined>((resolve) => (this.#onStatus = resolve));
    go.write(`${script.split("\n").length - 1}\n${marker}\n${script}`);
    return new RunningJob(this.#child, resolved, {
      ...parts,
      task: {
        marker,
        status,
        over: (clean) => {
          if (clean && end.exitedAt === undefined) this.#taken = false;
          else this.#gone = this.#end();
        },
      },
    });
  }

  /**
   * Gives the job's user its work dir's dirs again, as a start does after the inputs and the resume
   * checkpoint are in: a restored checkpoint is renamed into place of the `resume/` the set-up made,
   * and a reusable sandbox's work dir was emptied since its last job.
   */
  async ownWorkDir(): Promise<void> {
    await prepareWorkDir(this.#resolved.workDir, this.#resolved.user, this.#resolved.switchUser);
  }

  /**
   * Ends it unused (or, reusable, between two jobs), its output streams closed; resolves once nothing
   * of it runs. A sandbox whose job runs is left to that job.
   */
  async discard(): Promise<void> {
    if (this.#taken && this.#gone === undefined) return;
    this.#taken = true;
    this.#gone ??= this.#end();
    await this.#gone;
  }

  async #end(): Promise<void> {
    const { output, end } = this.#parts;
    if (end.exitedAt === undefined) killTree(this.pid);
    await end.exit;
    output.finish(this.#child);
  }
}

/** The host tools a job starts with; in `bwrap` mode, bubblewrap and the options its version has. */
interface SandboxTools {
  bwrap: { path: string; disableUserns: boolean; sizedTmpfs: boolean } | undefined;
  taskset: string;
  nice: string;
  prlimit: string;
  sh: string;
}

async function findTools({ sandbox, bwrapPath }: ResolvedJobOptions): Promise<SandboxTools> {
  let bwrap: SandboxTools["bwrap"];
  if (sandbox === "bwrap") {
    const detected = await detectOnce(bwrapPath);
    if (detected.kind === "none") throw new BubblewrapMissingError(bwrapPath);
    bwrap = {
      path: detected.path,
      disableUserns: compareVersions(detected.version, "0.8.0") >= 0,
      sizedTmpfs: compareVersions(detected.version, "0.6.0") >= 0,
    };
  }
  const taskset = await requireTool("taskset");
  const nice = await requireTool("nice");
  const prlimit = await requireTool("prlimit");
  const sh = await requireTool("/bin/sh");
  return { bwrap, taskset, nice, prlimit, sh };
}

/**
 * How the job is started: its environment, the argv of `taskset` (pinned cores, then `nice`, then
 * `prlimit`, then bubblewrap or `sh` running the start shim), and what bubblewrap reads on its fds.
 */
interface SandboxCommand {
  env: Record<string, string>;
  argv: string[];
  feeds: { fd: number; data: string }[];
  /** The fd the start shim reads its script from: the last of the child's stdio. */
  goFd: number;
}

function sandboxCommand(resolved: ResolvedJobOptions, tools: SandboxTools, reusable: boolean): SandboxCommand {
  const userName = resolved.user.uid === NOBODY_UID ? "nobody" : "baton";
  const { env, chain, feeds, goFd } = tools.bwrap
    ? bwrapCommand(resolved, tools.bwrap, userName, reusable)
    : unsandboxedCommand(resolved, tools.sh, userName);
  const argv = [
    "-c",
    resolved.cpus.join(","),
    tools.nice,
    "-n",
    String(JOB_NICENESS),
    tools.prlimit,
    `--data=${resolved.memoryBytes}`,
    "--core=0",
    "--",
    ...chain,
  ];
  return { env, argv, feeds, goFd };
}

/** The job under bubblewrap: every sandbox flag comes from `bwrapArgs`, read by bubblewrap on fd 4. */
function bwrapCommand(
  resolved: ResolvedJobOptions,
  bwrap: NonNullable<SandboxTools["bwrap"]>,
  userName: string,
  reusable: boolean,
): Omit<SandboxCommand, "argv"> & { chain: string[] } {
  // The devices of GPUs the node leased but this machine does not have (fake GPUs) are skipped.
  const devices = gpuDeviceBinds(resolved.gpus);
  const missing = resolved.gpus.filter((gpu) => !devices.some((device) => device.sandboxPath === `/dev/nvidia${gpu}`));
  if (missing.length > 0) {
    resolved.logger.warn("GPU device nodes missing; the job will not see these GPUs", {
      leaseId: resolved.leaseId,
      gpus: missing,
    });
  }
  const env = jobEnv(resolved, { workDir: SANDBOX_WORK_DIR, path: SANDBOX_PATH }, userName);
  const shim = reusable ? taskLoopShim : startShim;
  const dataFiles = identityFiles(resolved.user, userName).map((file, i) => ({ fd: 5 + i, file }));
  const args = bwrapArgs({
    workDir: resolved.workDir,
    network: resolved.network,
    env,
    system: systemEntries(),
    etcFiles: resolved.network ? [...ETC_FILES, ...ETC_NETWORK_FILES] : ETC_FILES,
    devices,
    runtimeBinds: resolved.runtimeBinds,
    dataFiles,
    disableUserns: bwrap.disableUserns,
    // /dev/shm may hold as much as the job's memory limit (shared memory is memory it uses).
    ...(bwrap.sizedTmpfs ? { shmBytes: resolved.memoryBytes } : {}),
  });
  return {
    env,
    chain: [bwrap.path, "--args", "4", "--", "/bin/sh", "-c", shim(BWRAP_GO_FD, [4, 5, 6, 7]), "baton-job"],
    goFd: BWRAP_GO_FD,
    feeds: [
      { fd: 4, data: args.map((arg) => `${arg}\0`).join("") },
      ...dataFiles.map(({ fd, file }) => ({ fd, data: file.content })),
    ],
  };
}

/** The job as a plain process (`unsafe-none`): the same env, limits and user, no isolation. */
function unsandboxedCommand(
  resolved: ResolvedJobOptions,
  sh: string,
  userName: string,
): Omit<SandboxCommand, "argv"> & { chain: string[] } {
  resolved.logger.warn(
    "UNSAFE: running a job WITHOUT A SANDBOX (sandbox: unsafe-none). It can read every file its user can, " +
      "see every GPU and use the network. Never do this with a tenant's job; install bubblewrap instead.",
    { leaseId: resolved.leaseId },
  );
  const env = jobEnv(resolved, { workDir: resolved.workDir, path: unsandboxedPath(resolved) }, userName);
  return { env, chain: [sh, "-c", startShim(UNSANDBOXED_GO_FD, []), "baton-job"], feeds: [], goFd: UNSANDBOXED_GO_FD };
}

/** An unsandboxed job's PATH: runtime binds cannot be mounted, so their host dirs go first instead. */
function unsandboxedPath(resolved: ResolvedJobOptions): string {
  const binDirs = resolved.runtimeBinds
    .filter((bind) => path.posix.dirname(bind.sandboxPath) === SANDBOX_BIN_DIR)
    .map((bind) => path.dirname(bind.hostPath));
  return [...new Set(binDirs), ...SANDBOX_PATH.split(":").slice(1)].join(":");
}

/**
 * Spawns `taskset` with the job's command as the leader of a new process group, and feeds
 * bubblewrap its options and data files.
 */
function spawnSandbox(
  taskset: string,
  { env, argv, feeds, goFd }: SandboxCommand,
  resolved: ResolvedJobOptions,
): ChildProcess {
  const bwrap = resolved.sandbox === "bwrap";
  let child: ChildProcess;
  try {
    child = spawn(taskset, argv, {
      cwd: bwrap ? "/" : resolved.workDir,
      env: bwrap ? { PATH: "/usr/bin:/bin" } : env,
      // A new session, hence a new process group led by the child: the group is what gets signalled.
      detached: true,
      // 0-2, the start marker (3), bubblewrap's options and data files (4-7), the start shim's script.
      stdio: ["ignore", ...Array<"pipe">(goFd).fill("pipe")],
      ...(resolved.switchUser ? { uid: resolved.user.uid, gid: resolved.user.gid } : {}),
    });
  } catch (cause) {
    throw new SandboxSetupError("could not spawn the job", { cause });
  }
  // Ignore EPIPE: bubblewrap may die before it reads them.
  for (const { fd, data } of feeds) {
    const stream = child.stdio[fd] as NodeJS.WritableStream & { on(event: "error", cb: () => void): void };
    stream.on("error", () => {});
    stream.end(data);
  }
  return child;
}
