import { spawn, type ChildProcess } from "node:child_process";
import { cp, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";

/**
 * Runs the example jobs of `examples/` as plain child processes, the way a provider would without
 * its sandbox: the BATON_* dirs in the env, progress on stdout. Each job is bounded in time, and
 * everything a test started is killed and removed by {@link cleanUp} (call it in afterEach).
 */

const cleanups: (() => Promise<unknown>)[] = [];

/** Kills the jobs and removes the dirs of the test that just ran, last registered first; runs even after a failure. */
export async function cleanUp(): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
}

/** Runs `cleanup` after the current test, before the cleanups registered earlier. */
export function deferCleanUp(cleanup: () => Promise<unknown>): void {
  cleanups.push(cleanup);
}

/** The dirs a provider gives one run of a job. */
export interface ProviderDirs {
  checkpointDir: string;
  resumeDir: string;
  outputDir: string;
}

/** A temp dir removed after the test. */
export async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `baton-${prefix}-`));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Fresh, empty checkpoint, resume and output dirs, as a new provider has them. */
export async function providerDirs(base: string, name: string): Promise<ProviderDirs> {
  const dirs = {
    checkpointDir: path.join(base, name, "checkpoints"),
    resumeDir: path.join(base, name, "resume"),
    outputDir: path.join(base, name, "output"),
  };
  for (const dir of Object.values(dirs)) await mkdir(dir, { recursive: true });
  return dirs;
}

/** A provider's dirs with `checkpoint` (a `step-*` dir) copied in as the resume dir, as the node lays it out. */
export async function providerResumingFrom(base: string, name: string, checkpoint: string): Promise<ProviderDirs> {
  const dirs = await providerDirs(base, name);
  await cp(checkpoint, dirs.resumeDir, { recursive: true });
  return dirs;
}

/** The completed checkpoints (`step-NNNNNN`) in a checkpoint dir, oldest first. */
export async function completedCheckpoints(checkpointDir: string): Promise<{ name: string; step: number }[]> {
  const entries = await readdir(checkpointDir, { withFileTypes: true });
  return entries
    .flatMap((entry) => {
      const match = /^step-(\d{6,})$/.exec(entry.name);
      return match && entry.isDirectory() ? [{ name: entry.name, step: Number(match[1]) }] : [];
    })
    .sort((a, b) => a.step - b.step);
}

export interface ExampleJob {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  /** Resolves with the first stdout line `match` accepts; rejects if the job exits first or after `timeoutMs`. */
  waitForLine(match: (line: string) => boolean, what: string, timeoutMs?: number): Promise<string>;
  /** Resolves when the job has exited (never rejects). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL, as when a provider's machine dies; resolves once the job is gone. */
  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The last lines of output, for failure messages. */
  tail(): string;
}

/** The step of a `BATON_PROGRESS` line, or undefined for any other line. */
export function progressStep(line: string): number | undefined {
  if (!line.startsWith("BATON_PROGRESS ")) return undefined;
  const step: unknown = (JSON.parse(line.slice("BATON_PROGRESS ".length)) as { step?: unknown }).step;
  return typeof step === "number" ? step : undefined;
}

/**
 * Starts `argv` with only PATH, the provider's BATON_* dirs and `env` in its environment. It is
 * SIGKILLed if it runs longer than `timeoutMs`.
 */
export function startExampleJob(
  argv: string[],
  dirs: ProviderDirs,
  env: Record<string, string>,
  timeoutMs = 60_000,
): ExampleJob {
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: path.dirname(dirs.checkpointDir),
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      BATON_LEASE_ID: "test-lease",
      BATON_CHECKPOINT_DIR: dirs.checkpointDir,
      BATON_RESUME_DIR: dirs.resumeDir,
      BATON_OUTPUT_DIR: dirs.outputDir,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters = new Set<{ match: (line: string) => boolean; resolve: (line: string) => void }>();
  createInterface({ input: child.stdout! }).on("line", (line) => {
    stdout.push(line);
    for (const waiter of waiters) {
      if (waiter.match(line)) {
        waiters.delete(waiter);
        waiter.resolve(line);
      }
    }
  });
  createInterface({ input: child.stderr! }).on("line", (line) => stderr.push(line));
  // 'close' comes after the output streams ended, so every line has been read by then.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("close", (code, signal) => resolve({ code, signal })),
  );
  const deadline = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  void exited.then(() => clearTimeout(deadline));
  const tail = (): string =>
    [...stdout.slice(-15).map((l) => `stdout: ${l}`), ...stderr.slice(-15).map((l) => `stderr: ${l}`)].join("\n");
  const kill = async (): Promise<{ code: number | null; signal: NodeJS.Signals | null }> => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    return exited;
  };
  cleanups.push(kill);
  return {
    child,
    stdout,
    stderr,
    exited,
    kill,
    tail,
    waitForLine(match, what, waitMs = timeoutMs) {
      const seen = stdout.find(match);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const waiter = {
          match,
          resolve: (line: string) => {
            clearTimeout(timer);
            resolve(line);
          },
        };
        waiters.add(waiter);
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`timed out waiting for ${what}; last lines:\n${tail()}`));
        }, waitMs);
        void exited.then(() => {
          if (!waiters.delete(waiter)) return;
          clearTimeout(timer);
          reject(new Error(`the job exited while waiting for ${what}; last lines:\n${tail()}`));
        });
      });
    },
  };
}

/** Runs a job to its end and returns its result.json, failing with its output if it did not exit 0. */
export async function runToEnd(job: ExampleJob, dirs: ProviderDirs): Promise<string> {
  const { code, signal } = await job.exited;
  if (code !== 0) throw new Error(`the job ended with ${code ?? signal}; last lines:\n${job.tail()}`);
  return readFile(path.join(dirs.outputDir, "result.json"), "utf8");
}
