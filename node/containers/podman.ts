import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { ProviderFaultError } from "../../sdk/errors.ts";
import { resolveExecutable } from "../sandbox/detect.ts";

/** Podman failed, or ran past its deadline; `stderr` is what it said. */
export class PodmanError extends ProviderFaultError {
  override name = "PodmanError";
  readonly stderr: string;
  readonly exitCode: number | null;

  constructor(
    message: string,
    { stderr, exitCode, cause }: { stderr: string; exitCode: number | null; cause?: unknown },
  ) {
    super(message, { details: stderr.trim() || undefined, cause });
    this.stderr = stderr;
    this.exitCode = exitCode;
  }
}

/** Podman is configured for image jobs but not installed. */
export class PodmanMissingError extends ProviderFaultError {
  override name = "PodmanMissingError";
}

export interface PodmanInit {
  /** A path, or a name looked up on PATH. */
  podmanPath: string;
  /** OCI runtime: runc works on hybrid cgroup hosts where crun refuses. */
  runtime: string;
  /** The node's own image and container store, so that eviction and clean-up touch nothing else. */
  root: string;
  /** Podman refuses a runroot longer than 50 characters; see {@link defaultRunRoot}. */
  runroot: string;
  /** `registries.conf` to use instead of the system's (mirrors, insecure registries). */
  registriesConf?: string;
}

/** Longest runroot Podman accepts (it holds the containers' sockets, whose paths are bounded). */
const MAX_RUNROOT_LENGTH = 50;

/**
 * The runroot of a node's store: short (Podman's limit), one per store, and where the system
 * empties it at boot as a runroot must be (it holds the state of running containers only): /run for
 * root, the user's runtime dir (or the temp dir) otherwise, as rootless Podman does.
 */
export function defaultRunRoot(root: string): string {
  const id = createHash("sha256").update(path.resolve(root)).digest("hex").slice(0, 16);
  if (process.getuid?.() === 0) return `/run/baton/${id}`;
  return path.join(process.env.XDG_RUNTIME_DIR ?? tmpdir(), `baton-${id}`);
}

/** Podman's global options for a node's store (see {@link Podman.argv} for why each). */
export function storeArgs({ root, runroot, runtime }: Pick<PodmanInit, "root" | "runroot" | "runtime">): string[] {
  return [
    "--root",
    root,
    "--runroot",
    runroot,
    "--tmpdir",
    path.join(runroot, "libpod"),
    "--runtime",
    runtime,
    "--storage-opt",
    "overlay.skip_mount_home=true",
  ];
}

/** What a finished Podman command printed. */
export interface PodmanOutput {
  stdout: string;
  stderr: string;
}

/**
 * The Podman command line over the node's own store. Every call passes the store and the runtime
 * explicitly, so the operator's other containers and images are never seen nor touched; registries,
 * auth files and mirrors come from the operator's configuration as for any `podman pull`.
 */
export class Podman {
  readonly path: string;
  readonly init: PodmanInit;

  private constructor(resolved: string, init: PodmanInit) {
    this.path = resolved;
    this.init = init;
  }

  /**
   * Finds Podman for the store at `root`: `podman` on PATH, runc, and the store's
   * {@link defaultRunRoot}, unless given.
   *
   * @throws {PodmanMissingError} when it is not installed.
   */
  static async open(given: Pick<PodmanInit, "root"> & Partial<PodmanInit>): Promise<Podman> {
    const init: PodmanInit = {
      podmanPath: "podman",
      runtime: "runc",
      runroot: defaultRunRoot(given.root),
      ...given,
    };
    if (init.runroot.length > MAX_RUNROOT_LENGTH) {
      throw new ProviderFaultError(
        `the container runroot ${init.runroot} is longer than ${MAX_RUNROOT_LENGTH} characters`,
      );
    }
    const resolved = await resolveExecutable(init.podmanPath);
    if (resolved === undefined) {
      throw new PodmanMissingError(`${init.podmanPath} is not installed`, {
        details: "image jobs need Podman (apt-get install podman runc), or set containers.enabled: false",
      });
    }
    return new Podman(resolved, init);
  }

  /**
   * The global options, then `args`. `--tmpdir`: libpod's state of the store's containers stays
   * with the store, not in /run/libpod beside the operator's own. `overlay.skip_mount_home`:
   * otherwise Podman bind-mounts the store's `overlay/` dir onto itself and leaves that mount
   * behind, and the data dir cannot be removed.
   */
  argv(args: readonly string[]): string[] {
    return [...storeArgs(this.init), ...args];
  }

  get env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      ...(this.init.registriesConf ? { CONTAINERS_REGISTRIES_CONF: this.init.registriesConf } : {}),
    };
  }

  /**
   * Starts Podman with `args`, its output piped. In the runroot: conmon (on cgroup v1) writes an
   * `oom` file into its working directory when a container is OOM-killed, and it inherits ours.
   */
  spawn(args: readonly string[]): ChildProcess {
    // Made at first use, not at open: a node that never runs an image job leaves nothing in /run.
    mkdirSync(this.init.runroot, { recursive: true, mode: 0o700 });
    return spawn(this.path, this.argv(args), {
      cwd: this.init.runroot,
      env: this.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
  }

  /**
   * Runs Podman to the end. It is killed (SIGKILL: Podman cleans up what it left at the next call)
   * when `signal` aborts or `timeoutMs` passes.
   *
   * @throws {PodmanError} on a non-zero exit or a timeout.
   */
  run(
    args: readonly string[],
    { signal, timeoutMs = 120_000 }: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<PodmanOutput> {
    signal?.throwIfAborted();
    return new Promise((resolve, reject) => {
      const child = this.spawn(args);
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      child.stdout!.on("data", (chunk: Buffer) => stdout.push(chunk));
      child.stderr!.on("data", (chunk: Buffer) => stderr.push(chunk));
      let stopped: unknown;
      const stop = (why: unknown): void => {
        stopped ??= why;
        child.kill("SIGKILL");
      };
      const timer = setTimeout(() => stop(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
      const onAbort = (): void => stop(signal!.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      child.once("error", (cause) => stop(cause));
      child.once("close", (code) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        const output = { stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString() };
        if (stopped !== undefined) {
          if (signal?.aborted && stopped === signal.reason) return reject(signal.reason);
          const what = stopped instanceof Error ? stopped.message : String(stopped);
          return reject(
            new PodmanError(`podman ${args[0]} failed: ${what}`, { ...output, exitCode: code, cause: stopped }),
          );
        }
        if (code !== 0) {
          const said = lastLine(output.stderr);
          return reject(
            new PodmanError(`podman ${args[0]} failed${said ? `: ${said}` : ` (exit ${code})`}`, {
              ...output,
              exitCode: code,
            }),
          );
        }
        resolve(output);
      });
    });
  }
}

/** The last non-empty line, without Podman's `Error: ` prefix. */
export function lastLine(text: string): string {
  const lines = text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
  return (lines.at(-1) ?? "").replace(/^Error:\s*/, "");
}
