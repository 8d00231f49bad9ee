import { execFile } from "node:child_process";
import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

import { SandboxSetupError } from "./errors.ts";

const run = promisify(execFile);

/** What `detectSandbox` found. */
export type DetectedSandbox =
  | {
      kind: "bwrap";
      /** e.g. "0.8.0" */
      version: string;
      /** Absolute path of the bwrap binary. */
      path: string;
    }
  | { kind: "none" };

export interface DetectSandboxOptions {
  /** A path or a bare name looked up on PATH; `bwrap` by default. */
  bwrapPath?: string;
  signal?: AbortSignal;
}

/** The directories searched for host tools: this process's PATH, then the usual system dirs. */
function searchPath(): string[] {
  const dirs = (process.env.PATH ?? "").split(path.delimiter).filter((dir) => path.isAbsolute(dir));
  return [...new Set([...dirs, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])];
}

async function isExecutableFile(file: string): Promise<boolean> {
  try {
    if (!(await stat(file)).isFile()) return false;
    await access(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Resolves a program to an absolute path: a name with a slash is taken as given, a bare name is
 * looked up on PATH (and the standard system dirs). Undefined when no executable file is there.
 */
export async function resolveExecutable(program: string): Promise<string | undefined> {
  if (program.includes("/")) {
    const absolute = path.resolve(program);
    return (await isExecutableFile(absolute)) ? absolute : undefined;
  }
  for (const dir of searchPath()) {
    const candidate = path.join(dir, program);
    if (await isExecutableFile(candidate)) return candidate;
  }
  return undefined;
}

/**
 * Finds bubblewrap and its version by running `bwrap --version`. `{ kind: "none" }` when it is not
 * installed (or `bwrapPath` names no executable); an error only when it is there but fails to run.
 *
 * This says bubblewrap exists, not that it can create namespaces here (a kernel or AppArmor policy
 * can forbid unprivileged user namespaces): `startJob` reports that as a `SandboxSetupError`.
 *
 * @example
 * const sandbox = await detectSandbox();
 * if (sandbox.kind === "none") log.warn("bubblewrap missing: install it with apt-get install bubblewrap");
 */
export async function detectSandbox({
  bwrapPath = "bwrap",
  signal,
}: DetectSandboxOptions = {}): Promise<DetectedSandbox> {
  signal?.throwIfAborted();
  const resolved = await resolveExecutable(bwrapPath);
  if (resolved === undefined) return { kind: "none" };
  const { stdout } = await run(resolved, ["--version"], { signal, timeout: 10_000 });
  const match = /(\d+\.\d+(?:\.\d+)?)/.exec(stdout);
  if (!match) throw new SandboxSetupError(`unexpected output from ${resolved} --version: ${stdout.trim()}`);
  return { kind: "bwrap", version: match[1]!, path: resolved };
}

/** Compares dotted versions numerically: negative when `a` < `b`. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const diff = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (diff !== 0) return diff;
  }
  return 0;
}
