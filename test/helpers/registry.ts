import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { withRetry } from "../../sdk/utils/retry.ts";
import { freePort, until } from "./processes.ts";

/** Whether a command is on the PATH (`command -v`). */
export function installed(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

export interface Registry {
  /** Where it listens: a reference's registry part (`127.0.0.1:PORT/repo:tag`). */
  address: `127.0.0.1:${number}`;
  /** Its temp dir: config and storage (`data/`). */
  dir: string;
  /** Its output so far, for a failing test's message. */
  log: string[];
  /** Kills it by its PID and removes its dir. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartRegistryOptions {
  /** Serve this storage dir instead of a fresh one (e.g. a second registry over the first one's images). */
  storage?: string;
  /** The config's `auth` section, as YAML lines (e.g. token auth); none by default. */
  auth?: string;
}

/** How long a registry may take to start on a loaded machine. */
const START_TIMEOUT_MS = 15_000;

/**
 * A real OCI registry (Debian's `docker-registry`, the CNCF distribution) on 127.0.0.1, on a free
 * port, storing in a temp dir. It is ours once it logs that it listens on its address: a port taken
 * by someone else between our pick and its bind makes it exit, and it is started again on another.
 *
 * @example
 * const registry = await startRegistry();
 * afterAll(() => registry.stop());
 */
export async function startRegistry(options: StartRegistryOptions = {}): Promise<Registry> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "baton-registry-"));
  try {
    return await withRetry(() => startOnce(dir, options), { attempts: 5, delayMs: 0 });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

async function startOnce(dir: string, { storage, auth }: StartRegistryOptions): Promise<Registry> {
  const port = await freePort();
  const address = `127.0.0.1:${port}` as const;
  const config = path.join(dir, "config.yml");
  await writeFile(
    config,
    [
      "version: 0.1",
      // At info it logs "listening on": how we know the port is ours.
      "log: { level: info, formatter: text }",
      "storage:",
      `  filesystem: { rootdirectory: ${JSON.stringify(storage ?? path.join(dir, "data"))} }`,
      "  delete: { enabled: true }",
      "  maintenance: { uploadpurging: { enabled: false } }",
      "http:",
      `  addr: ${address}`,
      `  secret: ${randomBytes(16).toString("hex")}`,
      ...(auth ? ["auth:", auth] : []),
      "",
    ].join("\n"),
  );
  const child = spawn("docker-registry", ["serve", config], { stdio: ["ignore", "pipe", "pipe"] });
  const log: string[] = [];
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await listening(child, address, log, exited);
    await answers(address);
  } catch (error) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
    throw error;
  }
  return { address, dir, log, stop };
}

/** Resolves once the registry logs that it listens on `address`; rejects if it exits or takes too long. */
function listening(child: ChildProcess, address: string, log: string[], exited: Promise<void>): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`docker-registry did not listen within ${START_TIMEOUT_MS} ms:\n${log.join("")}`)),
      START_TIMEOUT_MS,
    );
    const onData = (chunk: Buffer): void => {
      log.push(chunk.toString());
      if (log.join("").includes(`listening on ${address}`)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`docker-registry exited:\n${log.join("")}`));
    });
  });
}

/** Waits until `GET /v2/` answers (200, or 401 from a registry with auth). */
function answers(address: string): Promise<void> {
  const status = (): Promise<number> =>
    fetch(`http://${address}/v2/`, { signal: AbortSignal.timeout(2_000) }).then(
      (response) => response.status,
      () => 0,
    );
  return until(async () => [200, 401].includes(await status()), START_TIMEOUT_MS, `GET http://${address}/v2/`);
}
