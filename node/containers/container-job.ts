import { execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import path from "node:path";

import type { Logger } from "../../sdk/logger.ts";
import { gpuDeviceBinds } from "../sandbox/bwrap-args.ts";
import { OUTPUT_DRAIN_MS, SANDBOX_HOSTNAME, SANDBOX_START_TIMEOUT_MS, SANDBOX_WORK_DIR } from "../sandbox/constants.ts";
import { resolveExecutable } from "../sandbox/detect.ts";
import { InvalidJobOptionsError, SandboxSetupError } from "../sandbox/errors.ts";
import { JobOutput } from "../sandbox/job-output.ts";
import { ChildEnd, signalName, within } from "../sandbox/job-process.ts";
import {
  checkCommand,
  jobEnv,
  prepareWorkDir,
  resolveJobBasics,
  type ExitReason,
  type JobBasicsOptions,
  type JobExit,
  type JobProcess,
  type KillReason,
  type ResolvedJobBasics,
} from "../sandbox/runner.ts";
import type { Podman } from "./podman.ts";

/** The label naming the node a container belongs to: a restarted node finds its own by it. */
export const NODE_LABEL = "io.baton.node";
/** The label naming the lease a container runs. */
export const LEASE_LABEL = "io.baton.lease";

/** The container of a lease: one name per lease, so a lease never has two. */
export const containerName = (leaseId: string): string => `baton-lease-${leaseId}`;

/**
 * Processes per container (the pids cgroup): a fork bomb stops here, far above what a training
 * job or a server with a worker pool starts.
 */
export const CONTAINER_PIDS_LIMIT = 4096;

/** Upper bound of the open-files limit given to a job; the node's own hard limit caps it further. */
const MAX_JOB_NOFILE = 65_536;

/**
 * Upper bound of RLIMIT_NPROC in a job. The kernel counts it per uid across the host, so it bounds
 * all jobs of the job user together; runc was seen refusing values far below the host's hard limit
 * (65,536 of 96,362) with EPERM, while 16,384 held.
 */
const MAX_JOB_NPROC = 16_384;

/** What Podman's init (catatonit) prints, exiting 1, when the job's command is missing or not executable. */
const CATATONIT_NOT_FOUND = /catatonit.*failed to exec pid1: No such file or directory/;
const CATATONIT_NOT_EXECUTABLE = /catatonit.*failed to exec pid1: Permission denied/;

/** How often the start of a container is looked for (its pid file). */
const START_POLL_MS = 5;

/**
 * CPU weight of a job's container, half the default 1024: the node's heartbeats win the CPU over a
 * busy job (process jobs get the same from nice 10).
 */
const JOB_CPU_SHARES = 512;

export interface ContainerJobOptions extends JobBasicsOptions {
  podman: Podman;
  /** Podman's id of the image (held in the node's image cache). */
  image: string;
  /** Replaces the image's entrypoint and command; the image's own run when absent. */
  command?: string[];
  /** The working directory instead of the image's. */
  workdir?: string;
  /** The value of {@link NODE_LABEL}: which node's container this is. */
  node: string;
}

/** Hard limits of this process (`/proc/self/limits`), which a container's limits may not exceed. */
function hardLimit(name: "Max open files" | "Max processes", fallback: number): number {
  const line = readFileSync("/proc/self/limits", "utf8")
    .split("\n")
    .find((l) => l.startsWith(name));
  const hard = line?.slice(name.length).trim().split(/\s+/)[1];
  return hard === undefined || hard === "unlimited" ? fallback : Number(hard);
}

/** Whether the host has a CDI spec for NVIDIA GPUs (nvidia-ctk cdi generate writes one). */
function hasNvidiaCdi(): boolean {
  for (const dir of ["/etc/cdi", "/var/run/cdi"]) {
    try {
      for (const file of readdirSync(dir)) {
        if (/\.(ya?ml|json)$/.test(file) && readFileSync(path.join(dir, file), "utf8").includes("nvidia.com/gpu")) {
          return true;
        }
      }
    } catch {
      // No such dir: no CDI spec there.
    }
  }
  return false;
}

/** Where the driver's user-space libraries are mounted in a container that gets GPUs without CDI. */
export const CONTAINER_DRIVER_DIR = "/usr/local/nvidia/lib64";

/**
 * The host's NVIDIA driver libraries (libcuda, libnvidia-*), as `ldconfig -p` lists them: what
 * nvidia-container-toolkit mounts into a container. CUDA images look in /usr/local/nvidia/lib64.
 */
function driverLibraries(ldconfigOutput: string): string[] {
  const found = new Map<string, string>();
  for (const line of ldconfigOutput.split("\n")) {
    const match = /^\s*(lib(?:cuda|nvidia-[\w-]+|nvcuvid|nvoptix)\.so[.\d]*) \(libc6,x86-64\) => (\S+)$/.exec(line);
    if (match && !found.has(match[1]!)) found.set(match[1]!, match[2]!);
  }
  return [...found.values()];
}

/**
 * Podman options that give a container exactly the lease's GPUs: by CDI (`nvidia.com/gpu=<uuid>`)
 * where the host has a spec, else the GPUs' device nodes and the driver's libraries, read-only.
 */
export function gpuOptions(
  gpus: readonly number[],
  gpuUuids: readonly string[] | undefined,
  { cdi = hasNvidiaCdi(), ldconfig = "" }: { cdi?: boolean; ldconfig?: string } = {},
): string[] {
  if (gpus.length === 0) return [];
  if (cdi) return gpus.flatMap((gpu, i) => ["--device", `nvidia.com/gpu=${gpuUuids?.[i] ?? gpu}`]);
  return [
    ...gpuDeviceBinds(gpus).flatMap((device) => ["--device", `${device.hostPath}:${device.sandboxPath}`]),
    ...driverLibraries(ldconfig).flatMap((lib) => [
      "--volume",
      `${lib}:${CONTAINER_DRIVER_DIR}/${path.basename(lib)}:ro`,
    ]),
  ];
}

/** Podman's init for containers (catatonit): pid 1 that passes SIGTERM on and reaps orphans. */
async function findInit(): Promise<string | undefined> {
  return (await resolveExecutable("/usr/libexec/podman/catatonit")) ?? (await resolveExecutable("catatonit"));
}

/** `podman create` options of a job: the same guarantees as a process job's sandbox. */
function createArgs(
  options: ContainerJobOptions,
  basics: ResolvedJobBasics,
  {
    env,
    init,
    ldconfig,
    pidFile,
  }: { env: Record<string, string>; init: string | undefined; ldconfig: string; pidFile: string },
): string[] {
  const { user, memoryBytes, cpus, workDir } = basics;
  const nofile = Math.min(hardLimit("Max open files", MAX_JOB_NOFILE), MAX_JOB_NOFILE);
  const nproc = Math.min(hardLimit("Max processes", MAX_JOB_NPROC), MAX_JOB_NPROC);
  const cpuCores = Math.min(options.limits?.cpuCores ?? cpus.length, cpus.length);
  return [
    "--name",
    containerName(basics.leaseId),
    // A container of an earlier attempt at this lease (a start that failed half-way) goes.
    "--replace",
    // Removed by `podman start --attach` as it exits: no Podman call of ours after the job.
    "--rm",
    "--pidfile",
    pidFile,
    "--label",
    `${NODE_LABEL}=${options.node}`,
    "--label",
    `${LEASE_LABEL}=${basics.leaseId}`,
    "--pull",
    "never",
    // The node keeps the job's log itself (bounded, rotated), from the attached output.
    "--log-driver",
    "none",
    "--user",
    `${user.uid}:${user.gid}`,
    "--cap-drop",
    "all",
    "--security-opt",
    "no-new-privileges",
    // Only the work dir (and its tmp/ as /tmp) is writable: no tmpfs of Podman's on /tmp, /run.
    "--read-only",
    "--read-only-tmpfs=false",
    "--volume",
    `${workDir}:${SANDBOX_WORK_DIR}:rw`,
    "--volume",
    `${path.join(workDir, "tmp")}:/tmp:rw`,
    "--network",
    basics.network ? "bridge" : "none",
    "--hostname",
    SANDBOX_HOSTNAME,
    // Memory is the cgroup's: every process and /dev/shm together, no swap on top.
    "--memory",
    String(memoryBytes),
    "--memory-swap",
    String(memoryBytes),
    "--shm-size",
    String(memoryBytes),
    "--cpus",
    String(cpuCores),
    "--cpuset-cpus",
    cpus.join(","),
    "--cpu-shares",
    String(JOB_CPU_SHARES),
    "--pids-limit",
    String(CONTAINER_PIDS_LIMIT),
    // The runtime refuses to start when the defaults exceed the host's hard limits: set them.
    "--ulimit",
    `nofile=${nofile}:${nofile}`,
    "--ulimit",
    `nproc=${nproc}:${nproc}`,
    "--ulimit",
    "core=0:0",
    "--stop-timeout",
    String(Math.ceil(basics.killGraceMs / 1000)),
    ...(init ? ["--init", "--init-path", init] : []),
    ...Object.entries(env).flatMap(([name, value]) => ["--env", `${name}=${value}`]),
    ...(options.workdir ? ["--workdir", options.workdir] : []),
    ...gpuOptions(basics.gpus, basics.gpuUuids, { ldconfig }),
    ...(options.command ? ["--entrypoint", JSON.stringify([options.command[0]])] : []),
    options.image,
    ...(options.command?.slice(1) ?? []),
  ];
}

/**
 * Removes every container of this node's (a node killed with SIGKILL leaves its containers running
 * under Podman's conmon): called before the node relaunches its leases' jobs.
 */
export async function removeNodeContainers(podman: Podman, node: string, log: Logger): Promise<number> {
  const { stdout } = await podman.run([
    "ps",
    "--all",
    "--filter",
    `label=${NODE_LABEL}=${node}`,
    "--format",
    "{{.ID}}",
  ]);
  const ids = stdout
    .split("\n")
    .map((id) => id.trim())
    .filter(Boolean);
  if (ids.length > 0) {
    await podman.run(["rm", "--force", "--time", "0", ...ids]);
    log.warn("removed containers a previous run of the node left", { count: ids.length });
  }
  return ids.length;
}

/**
 * Starts an image job in a Podman container and resolves once it is started (`podman start
 * --attach` runs; its output is the job's). What the job gets is what a process job gets
 * (`startJob`), from the image instead of the host:
 * - **Files**: the image's, read-only; the work dir read-write at /work (and its tmp/ at /tmp).
 * - **Env**: the image's, then the spec's, then `BATON_*` and the rest the runner sets (PATH stays
 *   the image's).
 * - **User**: nobody (65534) when the node is root; no capabilities; no new privileges.
 * - **Network**: none unless the job asks (then Podman's bridge).
 * - **Limits**: enforced by cgroups: memory (every process and /dev/shm, no swap: over it the
 *   kernel kills the job, reported as reason "memory"), CPU (cpuset and quota), processes (pids),
 *   wall time (a timer stops the container).
 * - **GPUs**: only the lease's (see {@link gpuOptions}).
 *
 * @throws {SandboxSetupError} Podman could not create the container.
 * @throws {InvalidJobOptionsError} invalid options.
 */
export async function startContainerJob(options: ContainerJobOptions): Promise<JobProcess> {
  options.signal?.throwIfAborted();
  const basics = resolveJobBasics(options);
  if (options.command !== undefined) checkCommand(options.command);
  if (options.workdir !== undefined && (!path.posix.isAbsolute(options.workdir) || options.workdir.includes("\0"))) {
    throw new InvalidJobOptionsError(`workdir must be an absolute path, got "${options.workdir}"`);
  }
  await prepareWorkDir(basics.workDir, basics.user, basics.switchUser);
  const { podman } = options;
  const name = containerName(basics.leaseId);
  // Beside the work dir, out of the job's reach, like its log: Podman writes it when the job starts.
  const pidFile = path.join(path.dirname(basics.workDir), `${basics.leaseId}.container.pid`);
  await rm(pidFile, { force: true });
  const userName = basics.user.uid === 65534 ? "nobody" : "baton";
  const env = jobEnv({ ...basics, sandbox: "podman" }, { workDir: SANDBOX_WORK_DIR, path: "" }, userName);
  // The image's PATH, not the host's: the job's programs are where the image put them.
  delete env.PATH;
  const ldconfig =
    basics.gpus.length > 0 ? execFileSync("ldconfig", ["-p"], { encoding: "utf8", timeout: 10_000 }) : "";
  try {
    await podman.run(["create", ...createArgs(options, basics, { env, init: await findInit(), ldconfig, pidFile })], {
      signal: options.signal,
    });
  } catch (cause) {
    throw new SandboxSetupError("podman could not create the job's container", {
      cause,
      details: (cause as { stderr?: string }).stderr?.trim(),
    });
  }
  const output = new JobOutput(basics);
  const startedAt = Date.now();
  const child = podman.spawn(["start", "--attach", name]);
  output.read(child);
  const end = new ChildEnd(child);
  const execFailure = await awaitStarted(podman, { name, pidFile }, end, output, basics.signal);
  return new ContainerJob(child, basics, { podman, name, output, end, env, startedAt, execFailure });
}

/**
 * Waits until the container has started: Podman writes its process id to `pidFile` then (polled
 * on disk, every few ms: a `podman wait` or `inspect` would cost a Podman process, 0.1–0.3 s, each).
 * When `podman start` ends first and says the runtime could not start the container, a command the
 * image lacks or cannot run returns its shell exit code (127, 126); anything else, or no start
 * within the limit, removes the container and throws with what Podman said.
 */
async function awaitStarted(
  podman: Podman,
  { name, pidFile }: { name: string; pidFile: string },
  end: ChildEnd,
  output: JobOutput,
  signal: AbortSignal | undefined,
): Promise<number | undefined> {
  const deadline = Date.now() + SANDBOX_START_TIMEOUT_MS;
  try {
    while (!existsSync(pidFile) && end.exitedAt === undefined) {
      signal?.throwIfAborted();
      if (Date.now() > deadline) {
        throw new SandboxSetupError(`the job's container did not start within ${SANDBOX_START_TIMEOUT_MS} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, START_POLL_MS));
    }
    if (existsSync(pidFile)) return undefined;
    const { code } = await end.exit;
    await within(end.closed, OUTPUT_DRAIN_MS);
    const said = output.setupErrors();
    // `podman start` says 125 when the runtime could not start the container at all.
    if (code !== 125 || !/unable to start container/i.test(said)) return undefined;
    // The job's own mistake, not the provider's: its command is not in the image, or cannot be
    // run. It ends as a process job's does in a shell, 127 or 126, with Podman's words in its log.
    if (/executable file not found|command that was not found|no such file or directory/i.test(said)) return 127;
    if (/permission denied/i.test(said)) return 126;
    throw new SandboxSetupError("the job's container failed to start", { details: said || "podman printed nothing" });
  } catch (error) {
    await podman.run(["rm", "--force", "--ignore", "--time", "0", name]).catch(() => {});
    await end.exit;
    throw error;
  }
}

/** An image job that runs: stopped by `kill()`, its wall time or its signal; over once its container exited and is removed. */
class ContainerJob implements JobProcess {
  readonly leaseId: string;
  readonly pid: number;
  readonly sandbox = "podman" as const;
  readonly logPath: string;
  readonly env: Readonly<Record<string, string>>;
  readonly exited: Promise<JobExit>;
  readonly #child: ChildProcess;
  readonly #basics: ResolvedJobBasics;
  readonly #podman: Podman;
  readonly #name: string;
  readonly #output: JobOutput;
  readonly #end: ChildEnd;
  readonly #startedAt: number;
  readonly #wallTimer: NodeJS.Timeout;
  readonly #onAbort = (): void => void this.kill("aborted");
  readonly #execFailure: number | undefined;
  #killReason: KillReason | undefined;

  constructor(
    child: ChildProcess,
    basics: ResolvedJobBasics,
    parts: {
      podman: Podman;
      name: string;
      output: JobOutput;
      end: ChildEnd;
      env: Record<string, string>;
      startedAt: number;
      /** The exit code of a command that could not be run at all (see `awaitStarted`). */
      execFailure: number | undefined;
    },
  ) {
    this.leaseId = basics.leaseId;
    this.pid = child.pid ?? 0;
    this.logPath = basics.logPath;
    this.env = parts.env;
    this.#child = child;
    this.#basics = basics;
    this.#podman = parts.podman;
    this.#name = parts.name;
    this.#output = parts.output;
    this.#end = parts.end;
    this.#startedAt = parts.startedAt;
    this.#execFailure = parts.execFailure;
    this.#output.run();
    this.#wallTimer = setTimeout(() => void this.kill("wall-time"), basics.wallTimeMs);
    this.exited = this.#reportExit();
    basics.signal?.addEventListener("abort", this.#onAbort, { once: true });
    if (basics.signal?.aborted) this.#onAbort();
  }

  /** Stops the container: SIGTERM to its processes (through its init), SIGKILL after the grace. */
  kill(reason: KillReason = "killed"): Promise<JobExit> {
    if (this.#end.exitedAt === undefined && this.#killReason === undefined) {
      this.#killReason = reason;
      const graceS = String(Math.ceil(this.#basics.killGraceMs / 1000));
      this.#podman
        .run(["stop", "--time", graceS, this.#name], { timeoutMs: this.#basics.killGraceMs + 30_000 })
        .catch(() => this.#podman.run(["kill", this.#name]))
        .catch((error: unknown) => this.#basics.logger.warn("container not stopped", { leaseId: this.leaseId, error }));
    }
    return this.exited;
  }

  async #reportExit(): Promise<JobExit> {
    const attached = await this.#end.exit;
    clearTimeout(this.#wallTimer);
    this.#basics.signal?.removeEventListener("abort", this.#onAbort);
    await within(this.#end.closed, OUTPUT_DRAIN_MS);
    this.#output.finish(this.#child);
    // `podman start --attach` exits with the container's own exit code, once it has removed the
    // container (`--rm`). Only a `podman start` that died itself leaves the container behind.
    if (attached.signal !== null) {
      await this.#podman
        .run(["rm", "--force", "--ignore", "--time", "0", this.#name])
        .catch((error: unknown) => this.#basics.logger.warn("container not removed", { leaseId: this.leaseId, error }));
    }
    let code: number | null = this.#execFailure ?? attached.code;
    // Podman's init could not run the job's command: 127 or 126, as a shell (and a process job) says.
    if (code === 1 && this.#output.saysOnStderr(CATATONIT_NOT_FOUND)) code = 127;
    else if (code === 1 && this.#output.saysOnStderr(CATATONIT_NOT_EXECUTABLE)) code = 126;
    let signal: NodeJS.Signals | null = null;
    if (code !== null && code > 128 && signalName(code - 128) !== null) {
      signal = signalName(code - 128);
      code = null;
    }
    let reason: ExitReason = this.#killReason ?? "exited";
    // A SIGKILL nobody here sent, in a container with a memory limit, is the kernel's OOM killer
    // (Podman's own OOMKilled flag is not set on cgroup v1 hosts, so it is not asked).
    if (reason === "exited" && (signal === "SIGKILL" || (code !== 0 && this.#output.saysOutOfMemory()))) {
      reason = "memory";
    }
    return { code, signal, reason, durationMs: (this.#end.exitedAt ?? Date.now()) - this.#startedAt };
  }
}
