/**
 * `npm run bench:image`: what running a job from a container image costs, beside Podman alone and
 * beside a process job. Writes bench/results/image.json.
 *
 * 1. Pull + start. The example trainer's image, padded (`--pad-mib`, default 150) so that a pull
 *    moves about 200 MB, is built here (scripts/build-images.ts) and pushed to a real registry on
 *    loopback (docker-registry). `--trials N` times (default 3), alternating which goes first:
 *    - Baton: the provider's own code, `ImageCache.acquire()` (pull by digest, then the checks) and
 *      `startContainerJob()` running `node -e 0` until `exited` (its container removed), cold (a
 *      fresh store) and then warm (the image cached);
 *    - Podman alone: `podman pull` + `podman run --rm … node -e 0` on a fresh store of its own with
 *      the same global flags as the node's Podman, cold, then warm (the run only).
 *    Every Podman command Baton runs is timed, to show where its time goes beyond Podman's own.
 * 2. Hand-off with an image. On a devnet (4 providers, 500 ms session heartbeats, loopback), the
 *    example trainer as a process job (examples/train/train.yaml, as bench:failover runs it) and as
 *    an image job (the same trainer in the padded image), SIGKILL the serving provider half a
 *    checkpoint interval after its second safe checkpoint and time kill → `started` on the new
 *    lease (the node's `accepted`: sent before it launches the job) and kill → the trainer's first
 *    line there (the job runs); the job is then cancelled and the provider restarted (and let
 *    settle: it relaunches the job it held, until the chain says that lease ended). First one image job on providers
 *    that hold no image (the new provider pulls: a cold hand-off); then every provider is warmed
 *    (stopped, the image pulled into its store through its own cache, restarted) and `--kills N`
 *    rounds (default 3) alternate a process job and an image job.
 *
 * Target: Baton's pull + start ≤ 1.2 × Podman alone (cold and warm); an image job's median hand-off
 * (image cached on the new provider) ≤ 1.1 × a process job's, to `started` and to the first line. Needs podman, runc, docker-registry
 * and busybox-static. Everything it made (stores, containers, providers, the registry) is removed
 * when it ends, however it ends. `--block-time S` runs the devnet's chain with a block every S
 * seconds (default 0: mined at once).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

import { parseEther } from "viem";

import { blockTimeArg } from "../cli/program.ts";
import { startDevnet, type Devnet, type DevnetProvider } from "../deploy/devnet.ts";
import { startContainerJob } from "../node/containers/container-job.ts";
import { ImageCache } from "../node/containers/images.ts";
import { defaultRunRoot, Podman, storeArgs } from "../node/containers/podman.ts";
import { buildImages, PODMAN_ULIMITS, type BuiltImage } from "../scripts/build-images.ts";
import {
  parseImageReference,
  readJobFile,
  runJob,
  type BatonClient,
  type JobEvent,
  type JobHandle,
  type JobSpecInput,
} from "../sdk/index.ts";
import type { IpfsNode } from "../sdk/ipfs/node.ts";
import { silentLogger } from "../sdk/logger.ts";
import { installed, startRegistry, type Registry } from "../test/helpers/registry.ts";
import { median, printTable, writeResults, type Figure } from "./report.ts";

const { values } = parseArgs({
  options: {
    trials: { type: "string", default: "3" },
    kills: { type: "string", default: "3" },
    "pad-mib": { type: "string", default: "150" },
    "block-time": { type: "string", default: "0" },
  },
});
const blockTimeS = blockTimeArg()(values["block-time"]);
const trials = Number(values.trials);
const kills = Number(values.kills);
const padMiB = Number(values["pad-mib"]);
for (const [name, value] of [
  ["--trials", trials],
  ["--kills", kills],
] as const) {
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive whole number`);
}
if (!Number.isInteger(padMiB) || padMiB < 0) throw new Error("--pad-mib must be a whole number");
const missing = ["podman", "runc", "docker-registry", "busybox"].filter((tool) => !installed(tool));
if (missing.length > 0)
  throw new Error(
    `bench:image needs ${missing.join(", ")} (apt-get install podman runc docker-registry busybox-static)`,
  );

/** The example trainer paced as bench:failover paces it: a checkpoint every 200 steps of ≈ 10 ms. */
const EVERY = 200;
const STEPS = 2_000;
const STEP_DELAY_MS = 10;
const TRAIN_ENV = {
  TRAIN_STEPS: String(STEPS),
  TRAIN_CHECKPOINT_EVERY: String(EVERY),
  TRAIN_STEP_DELAY_MS: String(STEP_DELAY_MS),
};
/** What the container runs in part 1: Node starting and exiting, so the figure is the container's. */
const COMMAND = ["/usr/local/bin/node", "-e", "0"];
/** A job's limits as a devnet node sets them for train.yaml (1 CPU, 256 MiB). */
const LIMITS = { cpuCores: 1, memoryBytes: 256 * 2 ** 20 };
/** Node's defaults (node/config.ts): 50 GiB of cache, 20 GiB per image. */
const CACHE_BYTES = 50 * 2 ** 30;
const MAX_IMAGE_BYTES = 20 * 2 ** 30;
/** Longest one pull, one container run or one wait for a job event may take before the run gives up. */
const STEP_TIMEOUT_MS = 300_000;

const progress = (message: string): void => console.log(`  · ${message}`);
const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

/** Rejects with `what` when `promise` takes longer than `ms`. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms / 1000} s`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Clean-up, in reverse order of what was made; run once, at the end or on SIGINT/SIGTERM.
const cleanups: { what: string; run: () => Promise<unknown> }[] = [];
let cleaning: Promise<void> | undefined;
function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const { what, run } of [...cleanups].reverse()) {
      try {
        await run();
      } catch (error) {
        console.error(`  ! clean-up of ${what} failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  })();
  return cleaning;
}
/** Removes `run` on clean-up unless the returned function is called first (it was done already). */
function track(what: string, run: () => Promise<unknown>): () => void {
  const entry = { what, run };
  cleanups.push(entry);
  return () => {
    const index = cleanups.indexOf(entry);
    if (index >= 0) cleanups.splice(index, 1);
  };
}

// A failure nobody awaits (an unhandled rejection) ends the run too, cleaned up.
process.once("unhandledRejection", (error) => {
  console.error("unhandled rejection:", error);
  void cleanUp().finally(() => process.exit(1));
});
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------------------------
// Part 1: pull + start, Baton vs. Podman alone.

/** Podman's global flags as the node's Podman passes them, runc included. */
function nodeStoreArgs(root: string): string[] {
  return storeArgs({ root, runroot: defaultRunRoot(root), runtime: "runc" });
}

/** Runs `podman` (its registries.conf ours) and returns its stdout; rejects with its stderr. */
function podmanCli(args: string[], registriesConf: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      "podman",
      args,
      {
        env: { ...process.env, CONTAINERS_REGISTRIES_CONF: registriesConf },
        timeout: STEP_TIMEOUT_MS,
        maxBuffer: 16 * 2 ** 20,
      },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`podman ${args.join(" ")}: ${stderr.trim() || error.message}`));
        else resolve(stdout);
      },
    );
  });
}

/** Removes every container of a store (stopping those that run). */
async function removeContainers(root: string, registriesConf: string): Promise<void> {
  if (!existsSync(root)) return;
  await podmanCli([...nodeStoreArgs(root), "rm", "--all", "--force", "--time", "0"], registriesConf);
}

/**
 * Waits until no process names `root` in its command line: a container's conmon runs `podman
 * container cleanup` on the store when the container ends, which would create the store again
 * after it was removed.
 */
async function processesGone(root: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const users: string[] = [];
    for (const pid of await readdir("/proc")) {
      if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
      const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
      if (cmdline.includes(root)) users.push(pid);
    }
    if (users.length === 0) return;
    if (Date.now() > deadline) throw new Error(`processes ${users.join(", ")} still use ${root}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** Removes a store: its containers and images through Podman, then its dirs. */
async function removeStore(root: string, registriesConf: string, more: string[] = []): Promise<void> {
  if (existsSync(root)) {
    await removeContainers(root, registriesConf);
    await podmanCli([...nodeStoreArgs(root), "rmi", "--all", "--force"], registriesConf);
    await processesGone(root);
  }
  for (const dir of [root, defaultRunRoot(root), ...more]) await rm(dir, { recursive: true, force: true });
}

/** One Podman command Baton ran: its subcommand and how long it took. */
interface PodmanCall {
  command: string;
  ms: number;
}

/** A node's Podman and image cache over a fresh store, every `run` timed into `calls`. */
async function batonStore(dir: string, name: string, registriesConf: string) {
  const root = path.join(dir, name);
  const podman = await Podman.open({ root, registriesConf });
  const calls: PodmanCall[] = [];
  const run = podman.run.bind(podman);
  podman.run = async (args, options) => {
    const started = performance.now();
    try {
      return await run(args, options);
    } finally {
      calls.push({ command: args[0] === "image" ? `image ${args[1]}` : args[0]!, ms: performance.now() - started });
    }
  };
  const cacheDir = path.join(dir, `${name}-cache`);
  const cache = await ImageCache.open({
    podman,
    // Only an image given by CID needs IPFS; this one comes from the registry.
    ipfs: undefined as unknown as IpfsNode,
    dir: cacheDir,
    cacheBytes: CACHE_BYTES,
    maxImageBytes: MAX_IMAGE_BYTES,
    pullTimeoutMs: STEP_TIMEOUT_MS,
    log: silentLogger,
    storeUsed: false,
  });
  calls.length = 0;
  const remove = () => removeStore(root, registriesConf, [cacheDir]);
  const untrack = track(root, remove);
  return {
    podman,
    cache,
    calls,
    remove: () => {
      untrack();
      return remove();
    },
  };
}

interface BatonRun {
  /** `ImageCache.acquire()`: the pull and checks when cold, a lookup when warm. */
  acquireMs: number;
  /** `startContainerJob()` until it resolves (the container started). */
  startMs: number;
  /** From started to `exited` (the container ran, its state read, and it removed). */
  exitMs: number;
  totalMs: number;
  calls: PodmanCall[];
}

let leaseCounter = 0;
async function batonRun(store: Awaited<ReturnType<typeof batonStore>>, image: string, dir: string): Promise<BatonRun> {
  store.calls.length = 0;
  const leaseId = String(++leaseCounter);
  const t0 = performance.now();
  const held = await store.cache.acquire(image, {
    digest: parseImageReference(image).digest!,
    providers: [],
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const t1 = performance.now();
  try {
    const job = await startContainerJob({
      podman: store.podman,
      image: held.id,
      node: "bench-image",
      leaseId,
      workDir: path.join(dir, "jobs", leaseId, "work"),
      command: COMMAND,
      limits: LIMITS,
    });
    const t2 = performance.now();
    const exit = await within(job.exited, STEP_TIMEOUT_MS, "the container's exit");
    const t3 = performance.now();
    if (exit.code !== 0) throw new Error(`node -e 0 in the container ended with ${JSON.stringify(exit)}`);
    return { acquireMs: t1 - t0, startMs: t2 - t1, exitMs: t3 - t2, totalMs: t3 - t0, calls: [...store.calls] };
  } finally {
    held.release();
    await cacheSettled();
  }
}

/**
 * Lets the image cache finish writing its index after `release()`. It writes it from a `void
 * #evict()` that cannot be awaited, through one shared temp file: a second write (the next
 * `acquire()`, or removing the store) begun before it ends makes one of the two fail with ENOENT
 * on the rename, unhandled. Outside every measured interval.
 */
const cacheSettled = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 300));

interface PodmanRun {
  /** The image's id, as `podman pull` printed it. */
  id: string;
  pullMs: number;
  runMs: number;
  totalMs: number;
}

/** `podman pull` (cold; `image` is the reference) and `podman run`, or the run alone (`image` is the id). */
async function podmanAlone(root: string, image: string, registriesConf: string, cold: boolean): Promise<PodmanRun> {
  const global = nodeStoreArgs(root);
  const t0 = performance.now();
  const id = cold
    ? (await podmanCli([...global, "pull", "--quiet", image], registriesConf)).trim().split("\n").at(-1)!
    : image;
  const t1 = performance.now();
  await podmanCli([...global, "run", "--rm", ...PODMAN_ULIMITS, "--network", "none", id, ...COMMAND], registriesConf);
  const t2 = performance.now();
  return { id, pullMs: t1 - t0, runMs: t2 - t1, totalMs: t2 - t0 };
}

interface PullStartTrial {
  trial: number;
  first: "baton" | "podman";
  baton: { cold: BatonRun; warm: BatonRun };
  podman: { cold: PodmanRun; warm: PodmanRun };
}

async function pullAndStart(dir: string, train: BuiltImage, registriesConf: string): Promise<PullStartTrial[]> {
  const image = train.pushedRef!;
  const results: PullStartTrial[] = [];
  for (let trial = 1; trial <= trials; trial++) {
    const first = trial % 2 === 1 ? "baton" : "podman";
    let baton: PullStartTrial["baton"] | undefined;
    let podman: PullStartTrial["podman"] | undefined;
    for (const who of first === "baton" ? (["baton", "podman"] as const) : (["podman", "baton"] as const)) {
      if (who === "baton") {
        const store = await batonStore(dir, `baton-${trial}`, registriesConf);
        try {
          const cold = await batonRun(store, image, dir);
          const warm = await batonRun(store, image, dir);
          baton = { cold, warm };
          progress(
            `trial ${trial}/${trials} Baton: cold ${seconds(cold.totalMs)} (acquire ${seconds(cold.acquireMs)}, start ${seconds(cold.startMs)}, to exited ${seconds(cold.exitMs)}), warm ${seconds(warm.totalMs)}`,
          );
        } finally {
          await store.remove();
        }
      } else {
        const root = path.join(dir, `podman-${trial}`);
        const untrack = track(root, () => removeStore(root, registriesConf));
        try {
          const cold = await podmanAlone(root, image, registriesConf, true);
          const warm = await podmanAlone(root, cold.id, registriesConf, false);
          podman = { cold, warm };
          progress(
            `trial ${trial}/${trials} Podman alone: cold ${seconds(cold.totalMs)} (pull ${seconds(cold.pullMs)}, run ${seconds(cold.runMs)}), warm ${seconds(warm.totalMs)}`,
          );
        } finally {
          untrack();
          await removeStore(root, registriesConf);
        }
      }
    }
    results.push({ trial, first, baton: baton!, podman: podman! });
  }
  return results;
}

/** Where Baton's time went, summed per Podman subcommand, as the median over trials. */
function callBreakdown(runs: BatonRun[]): Record<string, { count: number; ms: number }> {
  const commands = new Set(runs.flatMap((r) => r.calls.map((c) => c.command)));
  const out: Record<string, { count: number; ms: number }> = {};
  for (const command of commands) {
    const per = runs.map((r) => r.calls.filter((c) => c.command === command));
    out[command] = {
      count: median(per.map((calls) => calls.length)),
      ms: Math.round(median(per.map((calls) => calls.reduce((sum, c) => sum + c.ms, 0)))),
    };
  }
  return out;
}

const describeCalls = (breakdown: Record<string, { count: number; ms: number }>): string =>
  Object.entries(breakdown)
    .map(([command, { count, ms }]) => `${command} ×${count} ${ms} ms`)
    .join(", ");

// ---------------------------------------------------------------------------------------------
// Part 2: hand-off, process job vs. image job.

interface HandOff {
  kind: "process" | "image";
  round: number;
  /** Whether the new provider held the image before the kill (image jobs only). */
  cached?: boolean;
  victim: string;
  successor: string;
  /** kill → `provider-failed`. */
  detectMs: number;
  /** `provider-failed` → `lease-opened` (offers, bid, the new lease on chain). */
  releaseMs: number;
  /** `lease-opened` → `started` (inputs, checkpoint, image, the job's start). */
  startMs: number;
  /** kill → `started` on the new lease: the node said `accepted`, before it launches the job. */
  runningAgainMs: number;
  /** kill → the job's first line on the new lease ("resuming at step …"): the job runs. */
  firstOutputMs: number;
  /** Submit → the first `started` (image jobs: a pull when the first provider does not hold the image). */
  firstStartMs: number;
}

/** The image keys a provider's cache holds (its index file), or none. */
async function cachedImages(provider: DevnetProvider): Promise<string[]> {
  try {
    return Object.keys(JSON.parse(await readFile(path.join(provider.dataDir, "containers", "images.json"), "utf8")));
  } catch {
    return [];
  }
}

/** Resolves with the first event of `type` matching `predicate`; rejects if the job ends first or it takes too long. */
function nextEvent<T extends JobEvent["type"]>(
  job: JobHandle,
  type: T,
  what: string,
  predicate: (event: Extract<JobEvent, { type: T }>) => boolean = () => true,
): Promise<Extract<JobEvent, { type: T }>> {
  let off = (): void => {};
  return within(
    new Promise<Extract<JobEvent, { type: T }>>((resolve, reject) => {
      off = job.on(type, (event) => {
        if (predicate(event as Extract<JobEvent, { type: T }>)) resolve(event as Extract<JobEvent, { type: T }>);
      });
      job.result().then(() => reject(new Error(`the job ended before ${what}`)), reject);
    }),
    STEP_TIMEOUT_MS,
    what,
  ).finally(() => off());
}

async function handOff(
  devnet: Devnet,
  client: BatonClient,
  kind: HandOff["kind"],
  round: number,
  spec: JobSpecInput,
  files: Record<string, string> | undefined,
  imageKey: string | undefined,
  registriesConf: string,
): Promise<HandOff> {
  const submitted = Date.now();
  const job = await runJob(client, spec, { maxPricePerSecond: parseEther("0.001"), ...(files ? { files } : {}) });
  try {
    const events: JobEvent[] = [];
    job.on("*", (event) => events.push(event));
    const firstStarted = nextEvent(job, "started", "the first start");
    // Awaited below; a job that fails first is reported by the wait for its checkpoints.
    firstStarted.catch(() => {});
    // Half an interval after the second safe checkpoint, as bench:failover kills.
    let safe = 0;
    let safeStep: number | undefined;
    job.on("checkpoint-safe", (event) => {
      if (++safe === 2) safeStep = event.step ?? 0;
    });
    await nextEvent(job, "progress", "the second safe checkpoint", (event) => {
      return safeStep !== undefined && event.step !== undefined && event.step >= safeStep + EVERY / 2;
    });
    const first = await firstStarted;
    const victim = devnet.providers.find((p) => p.account.address === job.status().provider)!;
    const holders = new Map(
      await Promise.all(devnet.providers.map(async (p) => [p.account.address, await cachedImages(p)] as const)),
    );
    const againPromise = nextEvent(job, "started", "the start on a new lease", (e) => e.leaseId !== first.leaseId);
    const outputPromise = nextEvent(
      job,
      "log",
      "the job's first line on the new lease",
      (e) => e.leaseId !== first.leaseId && e.line.startsWith("resuming at step"),
    );
    outputPromise.catch(() => {});
    const killedAt = Date.now();
    victim.process!.child.kill("SIGKILL");
    try {
      const started = await againPromise;
      const output = await outputPromise;
      const after = events.filter((e) => e.at >= killedAt);
      const failed = after.find((e) => e.type === "provider-failed");
      const opened = after.find((e) => e.type === "lease-opened");
      const successor = devnet.providers.find((p) => p.account.address === job.status().provider)!;
      const result: HandOff = {
        kind,
        round,
        ...(imageKey ? { cached: holders.get(successor.account.address)!.includes(imageKey) } : {}),
        victim: victim.name,
        successor: successor.name,
        detectMs: (failed?.at ?? Number.NaN) - killedAt,
        releaseMs: (opened?.at ?? Number.NaN) - (failed?.at ?? Number.NaN),
        startMs: started.at - (opened?.at ?? Number.NaN),
        runningAgainMs: started.at - killedAt,
        firstOutputMs: output.at - killedAt,
        firstStartMs: first.at - submitted,
      };
      progress(
        `${kind} job, round ${round}: ${victim.name} killed, running again on ${successor.name}${imageKey ? (result.cached ? " (image cached)" : " (image NOT cached: pulled)") : ""} after ${seconds(result.runningAgainMs)} (detect ${seconds(result.detectMs)}, re-lease ${seconds(result.releaseMs)}, start ${seconds(result.startMs)}), its first line after ${seconds(result.firstOutputMs)}`,
      );
      return result;
    } finally {
      await job.cancel().catch(() => {});
      await restart(victim, registriesConf);
    }
  } finally {
    await job.cancel().catch(() => {});
  }
}

/**
 * Restarts a provider killed under a job, and waits until it is idle again: it relaunches the job
 * of the lease it held and stops it once the chain says that lease ended (then its container is
 * removed), so that the next round does not share the machine with it.
 */
async function restart(provider: DevnetProvider, registriesConf: string): Promise<void> {
  await provider.start();
  const node = provider.process!;
  await node.waitFor(/provider node started/, 60_000);
  if (node.lines.some((line) => line.includes("relaunching job after restart"))) {
    await node.waitFor(/lease ended on chain; job stopped|job exited/, 60_000).catch(() => {
      progress(`${provider.name} still runs the job it relaunched after 60 s; going on`);
    });
  }
  const root = path.join(provider.dataDir, "containers", "storage");
  const deadline = Date.now() + 30_000;
  while (existsSync(root) && Date.now() < deadline) {
    const left = await podmanCli([...nodeStoreArgs(root), "ps", "--all", "--quiet"], registriesConf);
    if (left.trim() === "") break;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/**
 * Puts `image` into a provider's store through the node's own cache (as a lease of an image job
 * would), the provider stopped meanwhile; restarted, it lists the image in its offers.
 */
async function warmProvider(provider: DevnetProvider, image: string, registriesConf: string): Promise<void> {
  await provider.process?.stop();
  const root = path.join(provider.dataDir, "containers", "storage");
  const podman = await Podman.open({ root, registriesConf });
  const cache = await ImageCache.open({
    podman,
    ipfs: undefined as unknown as IpfsNode,
    dir: path.join(provider.dataDir, "containers"),
    cacheBytes: CACHE_BYTES,
    maxImageBytes: MAX_IMAGE_BYTES,
    pullTimeoutMs: STEP_TIMEOUT_MS,
    log: silentLogger,
    storeUsed: existsSync(root),
  });
  const held = await cache.acquire(image, {
    digest: parseImageReference(image).digest!,
    providers: [],
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  // acquire() writes the index again once it returned, as release() does: one after the other.
  await cacheSettled();
  held.release();
  await cacheSettled();
  await provider.start();
}

// ---------------------------------------------------------------------------------------------

const figures: Figure[] = [];
const dir = await mkdtemp(path.join(os.tmpdir(), "baton-bench-image-"));
// Jobs run as nobody, who must pass through to the providers' work dirs under it.
await chmod(dir, 0o711);
cleanups.push({ what: dir, run: () => rm(dir, { recursive: true, force: true }) });
try {
  progress(`working in ${dir}`);
  progress("starting a registry on loopback");
  const registry: Registry = await startRegistry();
  cleanups.push({ what: "the registry", run: () => registry.stop() });
  const registriesConf = path.join(dir, "registries.conf");
  await writeFile(registriesConf, `[[registry]]\nlocation = "${registry.address}"\ninsecure = true\n`);

  progress(`building the train image padded with ${padMiB} MiB and pushing it to ${registry.address}`);
  const train = (
    await buildImages({
      registry: registry.address,
      padMiB,
      onProgress: (event) => {
        if (event.type === "build:done")
          progress(`${event.image}: built in ${seconds(event.ms)}, ${mb(event.sizeBytes)}`);
        if (event.type === "push:done") progress(`${event.image}: pushed in ${seconds(event.ms)}`);
      },
    })
  ).find((image) => image.name === "train")!;
  progress(`${train.pushedRef}: ${mb(train.sizeBytes)} unpacked, ${mb(train.transferBytes!)} to pull`);

  // Part 1.
  console.log(`\nPull + start, Baton vs. Podman alone (${trials} trials, alternating)`);
  const pullTrials = await pullAndStart(dir, train, registriesConf);
  const m = (values: number[]) => median(values) / 1000;
  const batonCold = m(pullTrials.map((t) => t.baton.cold.totalMs));
  const podmanCold = m(pullTrials.map((t) => t.podman.cold.totalMs));
  const batonWarm = m(pullTrials.map((t) => t.baton.warm.totalMs));
  const podmanWarm = m(pullTrials.map((t) => t.podman.warm.totalMs));
  const coldCalls = callBreakdown(pullTrials.map((t) => t.baton.cold));
  const warmCalls = callBreakdown(pullTrials.map((t) => t.baton.warm));
  figures.push(
    { name: "image unpacked", value: train.sizeBytes / 1e6, unit: "MB", note: `${train.pushedRef}` },
    { name: "image transfer (compressed)", value: train.transferBytes! / 1e6, unit: "MB" },
    {
      name: "cold pull + start (Baton)",
      value: batonCold,
      unit: "s",
      reference: { value: podmanCold, label: "podman pull + run" },
      target: { value: 1.2 * podmanCold, atMost: true },
      note: `median of ${trials}, fresh store each; ImageCache.acquire ${seconds(median(pullTrials.map((t) => t.baton.cold.acquireMs)))} + startContainerJob ${seconds(median(pullTrials.map((t) => t.baton.cold.startMs)))} + to exited ${seconds(median(pullTrials.map((t) => t.baton.cold.exitMs)))}; Podman's commands: ${describeCalls(coldCalls)}`,
    },
    {
      name: "cold pull only (ImageCache.acquire)",
      value: m(pullTrials.map((t) => t.baton.cold.acquireMs)),
      unit: "s",
      reference: { value: m(pullTrials.map((t) => t.podman.cold.pullMs)), label: "podman pull" },
    },
    {
      name: "warm start (Baton)",
      value: batonWarm,
      unit: "s",
      reference: { value: podmanWarm, label: "podman run" },
      target: { value: 1.2 * podmanWarm, atMost: true },
      note: `median of ${trials}, image cached; startContainerJob ${seconds(median(pullTrials.map((t) => t.baton.warm.startMs)))} + to exited ${seconds(median(pullTrials.map((t) => t.baton.warm.exitMs)))}; Podman's commands: ${describeCalls(warmCalls)}`,
    },
  );

  // Part 2.
  console.log(`\nHand-off, process job vs. image job (${kills} kills each)`);
  const devnet = await startDevnet({
    providers: 4,
    blockTimeS,
    dir: path.join(dir, "devnet"),
    config: { heartbeatMs: 500, containers: { registriesConf } },
    onStep: progress,
  });
  cleanups.push({
    what: "the devnet",
    run: async () => {
      // Containers first, while the nodes run and their runroots hold the containers' state (a
      // node removes its runroot when it stops); then the nodes; then the stores.
      const stores = devnet.providers.map((p) => path.join(p.dataDir, "containers", "storage"));
      for (const root of stores) await removeContainers(root, registriesConf).catch(() => {});
      await devnet.stop();
      for (const root of stores) await removeStore(root, registriesConf);
    },
  });
  const client = await devnet.tenantClient();
  cleanups.push({ what: "the tenant client", run: () => client.close() });

  const { spec: processSpec, files } = await readJobFile("examples/train/train.yaml");
  processSpec.env = { ...processSpec.env, ...TRAIN_ENV };
  const imageSpec: JobSpecInput = {
    name: "train-image",
    image: train.pushedRef!,
    env: { ...processSpec.env },
    resources: processSpec.resources,
    checkpointIntervalS: processSpec.checkpointIntervalS,
    maxDurationS: processSpec.maxDurationS,
  };
  const handOffs: HandOff[] = [];
  // A cold hand-off: no provider holds the image yet, so the new one pulls it.
  handOffs.push(await handOff(devnet, client, "image", 0, imageSpec, undefined, train.pushedRef, registriesConf));
  for (const provider of devnet.providers) {
    if ((await cachedImages(provider)).includes(train.pushedRef!)) continue;
    progress(`warming ${provider.name}: stopped, image pulled into its store, restarted`);
    await warmProvider(provider, train.pushedRef!, registriesConf);
  }
  for (let round = 1; round <= kills; round++) {
    handOffs.push(await handOff(devnet, client, "process", round, processSpec, files, undefined, registriesConf));
    handOffs.push(await handOff(devnet, client, "image", round, imageSpec, undefined, train.pushedRef, registriesConf));
  }

  const processRuns = handOffs.filter((h) => h.kind === "process");
  const cachedRuns = handOffs.filter((h) => h.kind === "image" && h.round > 0 && h.cached);
  const coldRun = handOffs.find((h) => h.kind === "image" && !h.cached);
  const phases = (runs: HandOff[]) =>
    `detect ${seconds(median(runs.map((h) => h.detectMs)))}, re-lease ${seconds(median(runs.map((h) => h.releaseMs)))}, lease → started ${seconds(median(runs.map((h) => h.startMs)))}`;
  const processAgain = m(processRuns.map((h) => h.runningAgainMs));
  const processOutput = m(processRuns.map((h) => h.firstOutputMs));
  const processFirst = m(processRuns.map((h) => h.firstStartMs));
  figures.push(
    {
      name: "process job: kill → started p50",
      value: processAgain,
      unit: "s",
      note: `${processRuns.length} SIGKILLs; ${phases(processRuns)}`,
    },
    { name: "process job: kill → first line p50", value: processOutput, unit: "s" },
  );
  if (cachedRuns.length > 0) {
    figures.push(
      {
        name: "image job, cached: kill → started p50",
        value: m(cachedRuns.map((h) => h.runningAgainMs)),
        unit: "s",
        reference: { value: processAgain, label: "process job" },
        target: { value: 1.1 * processAgain, atMost: true },
        note: `${cachedRuns.length} SIGKILLs, the image cached on the new provider; ${phases(cachedRuns)}. \`started\` is the node's \`accepted\`, sent before it launches the job`,
      },
      {
        name: "image job, cached: kill → first line p50",
        value: m(cachedRuns.map((h) => h.firstOutputMs)),
        unit: "s",
        reference: { value: processOutput, label: "process job" },
        target: { value: 1.1 * processOutput, atMost: true },
        note: 'the trainer\'s first line on the new lease ("resuming at step …"): the container (or sandbox) started and Node ran the script',
      },
    );
  }
  if (coldRun) {
    figures.push(
      {
        name: "image job, cold: kill → started",
        value: coldRun.runningAgainMs / 1000,
        unit: "s",
        reference: { value: processAgain, label: "process job" },
        note: `the first hand-off, to a provider without the image: it pulled ${mb(train.transferBytes!)}; ${phases([coldRun])}`,
      },
      {
        name: "image job, cold: kill → first line",
        value: coldRun.firstOutputMs / 1000,
        unit: "s",
        reference: { value: processOutput, label: "process job" },
      },
    );
  }
  const firstCold = handOffs.find((h) => h.kind === "image" && h.round === 0);
  if (firstCold) {
    figures.push({
      name: "image job: submit → started, cold",
      value: firstCold.firstStartMs / 1000,
      unit: "s",
      reference: { value: processFirst, label: "process job" },
      note: "offers, bid, lease, and the first provider's pull",
    });
  }
  if (cachedRuns.length > 0) {
    figures.push({
      name: "image job: submit → started, cached",
      value: m(cachedRuns.map((h) => h.firstStartMs)),
      unit: "s",
      reference: { value: processFirst, label: "process job" },
    });
  }

  printTable("Image jobs (registry, Podman and devnet on loopback)", figures);
  console.log(
    `\nwrote ${await writeResults("image", {
      image: { ref: train.pushedRef, unpackedBytes: train.sizeBytes, transferBytes: train.transferBytes, padMiB },
      figures,
      pullStart: { trials: pullTrials, podmanCalls: { cold: coldCalls, warm: warmCalls } },
      handOffs,
    })}`,
  );
} finally {
  await cleanUp();
}
