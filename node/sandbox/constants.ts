/**
 * Defaults of the job sandbox. Each says why it is what it is; callers override them per job.
 */

/**
 * Time between SIGTERM and SIGKILL when a job is stopped. Jobs commit checkpoints atomically (write
 * elsewhere, rename into place), so a job never needs to finish a checkpoint to stay consistent:
 * the grace only lets it flush a small one or close files. Docker's `docker stop` uses the same
 * 10 s; a longer grace would keep a cancelled or fenced lease's GPUs busy for nothing.
 */
export const KILL_GRACE_MS = 10_000;

/**
 * Bound of one job's log on disk, both files together: the live `<lease>.log` is rotated to
 * `<lease>.log.1` when it reaches half of this, and the old `.1` is dropped. 32 MiB keeps hours of
 * ordinary training progress (the tail is what anyone reads) while a job that prints in a tight
 * loop cannot fill the provider's disk: a node running 64 jobs holds at most 2 GiB of logs.
 */
export const LOG_MAX_BYTES = 32 * 1024 * 1024;

/**
 * Longest line kept, in bytes; the rest of a longer line is dropped and counted. 16 KiB holds any
 * stack-trace line or JSON progress record, yet a job that writes megabytes without a newline
 * (a progress bar redrawn with `\r`, a binary dump) costs the node at most this much memory per
 * stream, and no consumer of `onLine` ever sees a line it cannot forward over the network.
 */
export const LINE_MAX_BYTES = 16 * 1024;

/**
 * Memory limit when a job does not state one. It matches the job spec's default (`memoryMiB`
 * 1024): small enough that a job which forgot to ask cannot squeeze a shared host, large enough
 * for a Python or Node interpreter with a small model. It is enforced as RLIMIT_DATA (see
 * `runner.ts` for why not RLIMIT_AS).
 */
export const DEFAULT_MEMORY_BYTES = 1024 * 1024 * 1024;

/** CPU cores when a job does not state them; the job spec's default (`cpus`: 1). */
export const DEFAULT_CPU_CORES = 1;

/**
 * Wall-time limit when a job does not state one: the job spec's default `maxDurationS` (1 hour).
 * A lease is bounded on chain anyway; this makes sure a job whose lease the node forgot still ends.
 */
export const DEFAULT_WALL_TIME_MS = 60 * 60 * 1000;

/**
 * Niceness of every job. The node's own work (heartbeats, libp2p, checkpoint uploads) must win
 * the CPU over jobs, or a busy job makes the provider miss a heartbeat and get slashed. 10 leaves
 * the job at full speed on an otherwise idle core, and a job cannot lower it (that needs
 * CAP_SYS_NICE, which the sandbox never has).
 */
export const JOB_NICENESS = 10;

/**
 * How long bubblewrap may take to set up the sandbox (namespaces, mounts) before the start counts
 * as failed. Setup takes tens of milliseconds; 30 s only trips on a wedged host.
 */
export const SANDBOX_START_TIMEOUT_MS = 30_000;

/**
 * After the job's main process exits, how long to wait for its stdout/stderr to close before
 * giving up on them. Output still buffered in the pipes is read in this window; a process that
 * escaped the group and holds the pipes open (possible only without a pid namespace) cannot
 * delay the exit report longer than this.
 */
export const OUTPUT_DRAIN_MS = 2_000;

/**
 * After the job's main process exits, how long the runner waits for the rest of it (processes it
 * left running, the sandbox's pid 1) to be gone before reporting the exit anyway, with a warning.
 * Killing a process that holds a CUDA context can take a few seconds while the driver frees GPU
 * memory; 10 s covers that without letting a wedged driver hold the lease's exit forever.
 */
export const SANDBOX_TEARDOWN_MS = 10_000;

/**
 * uid and gid the job runs as when the node runs as root: the conventional `nobody`/`nogroup`,
 * which owns no files on a normal system. Two jobs running at once share it; they cannot see each
 * other's files all the same, because each sandbox binds only its own work dir.
 */
export const NOBODY_UID = 65534;
export const NOBODY_GID = 65534;

/** Where the job's work dir appears inside the sandbox, and its working directory. */
export const SANDBOX_WORK_DIR = "/work";

/** Where runtime binaries (e.g. the Node binary) are bound inside the sandbox; first on PATH. */
export const SANDBOX_BIN_DIR = "/opt/baton/bin";

/** PATH inside the sandbox: the runtime binaries first, then the host's read-only system dirs. */
export const SANDBOX_PATH = `${SANDBOX_BIN_DIR}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin`;

/** Hostname inside the sandbox (it has its own UTS namespace, so the host's name is not shown). */
export const SANDBOX_HOSTNAME = "baton-job";
