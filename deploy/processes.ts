import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";

/** The project root: scripts are resolved against it and run from it. */
export const root = path.resolve(import.meta.dirname, "..");

/** A child process we started, with its output lines kept (for waiting on them, assertions and debugging). */
export interface Spawned {
  child: ChildProcess;
  pid: number;
  lines: string[];
  /** The same lines, by the stream they came on (for checking what goes where). */
  stdout: string[];
  stderr: string[];
  /** Resolves with the first line matching `pattern` (or rejects after `timeoutMs` or on exit). */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Like `exited`, once its output is read to the end too (what a test of a command's output waits for). */
  closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when gone. Safe to call twice. */
  stop(graceMs?: number): Promise<void>;
}

const started = new Set<Spawned>();

/**
 * The Node flags of the `baton` command, passed wherever it is started (package.json's `baton`
 * script, deploy/baton-provider.service, deploy/Containerfile, the published bin's shebang, and
 * here): a young generation of 2 × 4 MB instead of Node's 2 × 16 MB. V8 begins a full GC whenever
 * the old generation has less room left than the young generation could promote at once; a node
 * streaming a checkpoint through 1 MiB buffers keeps its young generation at its largest, so with
 * the default it marked its whole heap about every 100 ms of a restore (about a third of the
 * machine; `npm run bench:failover -- --copies cold`: 13-16 s to restore 1 GiB, 7.5-10.8 s with it).
 */
export const CLI_NODE_FLAGS = ["--max-semi-space-size=4"];

/**
 * Runs a TypeScript entry point of the project under this Node, as its own process, in the project
 * root unless `cwd` says otherwise. `cli/baton.ts` runs from the bundle that `BATON_CLI_BUNDLE` names
 * when set (the tests build one: scripts/bundle-cli.ts).
 */
export function spawnScript(
  script: string,
  args: string[],
  env: Record<string, string> = {},
  options: {
    onLine?: (line: string) => void;
    cwd?: string;
    /** What runs the command instead of itself (`nsenter --net=… …`: a host of its own, see `netns.ts`). */
    wrap?: (argv: string[]) => string[];
  } = {},
): Spawned {
  const bundle = script === "cli/baton.ts" ? process.env.BATON_CLI_BUNDLE : undefined;
  const entry = bundle ?? path.join(root, script);
  const flags = script === "cli/baton.ts" ? CLI_NODE_FLAGS : [];
  const argv = [process.execPath, "--disable-warning=ExperimentalWarning", ...flags, entry, ...args];
  const [command, ...commandArgs] = options.wrap ? options.wrap(argv) : argv;
  const child = spawn(command!, commandArgs, {
    cwd: options.cwd ?? root,
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const lines: string[] = [];
  const waiters = new Set<{ pattern: RegExp; resolve: (line: string) => void }>();
  // The last lines only: a provider logs for as long as it runs.
  const keep = (kept: string[], line: string): void => {
    kept.push(line);
    if (kept.length > 5_000) kept.shift();
  };
  const onLine = (line: string): void => {
    options.onLine?.(line);
    keep(lines, line);
    for (const waiter of waiters) {
      if (waiter.pattern.test(line)) {
        waiters.delete(waiter);
        waiter.resolve(line);
      }
    }
  };
  const stdout: string[] = [];
  const stderr: string[] = [];
  createInterface({ input: child.stdout! }).on("line", (line) => {
    keep(stdout, line);
    onLine(line);
  });
  createInterface({ input: child.stderr! }).on("line", (line) => {
    keep(stderr, line);
    onLine(line);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("close", (code, signal) => resolve({ code, signal })),
  );
  const spawned: Spawned = {
    child,
    pid: child.pid!,
    lines,
    stdout,
    stderr,
    waitFor(pattern, timeoutMs = 60_000) {
      const seen = lines.find((line) => pattern.test(line));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        // Clear the timer once resolved: a pending one keeps a script (a benchmark) alive.
        const waiter = {
          pattern,
          resolve: (line: string) => {
            clearTimeout(timer);
            resolve(line);
          },
        };
        waiters.add(waiter);
        const timer: NodeJS.Timeout = setTimeout(() => {
          waiters.delete(waiter);
          reject(
            new Error(`timed out waiting for ${pattern} from ${script}; last lines:\n${lines.slice(-30).join("\n")}`),
          );
        }, timeoutMs);
        void exited.then(() => {
          if (!waiters.has(waiter)) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          reject(
            new Error(`${script} exited while waiting for ${pattern}; last lines:\n${lines.slice(-30).join("\n")}`),
          );
        });
      });
    },
    exited,
    closed,
    async stop(graceMs = 5_000) {
      started.delete(spawned);
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGCONT");
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
  started.add(spawned);
  return spawned;
}

/** Stops every process this module started and has not stopped yet (tests call it in afterAll). */
export async function stopAll(): Promise<void> {
  await Promise.all([...started].map((s) => s.stop(2_000)));
}

/** Whether a process with this pid exists. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
