import { spawn, execFile, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { chown, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";

import pg from "pg";

import { freePort } from "./processes.ts";

const run = promisify(execFile);

/** Where Debian installs each major version's server programs (not on PATH). */
const DEBIAN_ROOT = "/usr/lib/postgresql";
/** How long a new cluster may take to accept connections on a loaded two-core machine. */
const READY_TIMEOUT_MS = 60_000;
/** An immediate shutdown takes milliseconds; past this the postmaster is killed outright. */
const STOP_TIMEOUT_MS = 10_000;

export interface ThrowawayPostgres {
  /** The superuser's URL of its `postgres` database (no password: trust auth on loopback). */
  url: string;
  /** Its temp dir: the data dir and the unix socket live under it. */
  dir: string;
  /** Creates an empty database named `name`; resolves to its URL. */
  createDatabase(name: string): Promise<string>;
  /** Stops the server (immediate shutdown, by its PID) and removes its dir. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * The directory holding `initdb` and `postgres`: the newest of Debian's /usr/lib/postgresql/<v>/bin,
 * else the first on PATH.
 *
 * @throws when there is none, naming the Debian package to install.
 */
export async function postgresBinDir(): Promise<string> {
  const versions = existsSync(DEBIAN_ROOT)
    ? (await readdir(DEBIAN_ROOT)).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
    : [];
  const candidates = [
    ...versions.map((v) => path.join(DEBIAN_ROOT, v, "bin")),
    ...(process.env.PATH ?? "").split(path.delimiter).filter(Boolean),
  ];
  const found = candidates.find(
    (dir) => existsSync(path.join(dir, "initdb")) && existsSync(path.join(dir, "postgres")),
  );
  if (found === undefined) {
    throw new Error(
      `no Postgres server (initdb, postgres) under ${DEBIAN_ROOT}/*/bin or on PATH: the explorer's Postgres tests ` +
        "start a real one; install Debian's `postgresql` package (apt-get install postgresql; .ci/run does)",
    );
  }
  return found;
}

/**
 * Who the server runs as: Postgres refuses to run as root, so as root it runs as the `postgres`
 * system user (Debian's package creates it); as anyone else, as that user.
 */
async function serverUser(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const entry = (await readFile("/etc/passwd", "utf8")).split("\n").find((line) => line.startsWith("postgres:"));
  if (entry === undefined) {
    throw new Error(
      "running as root, and no `postgres` user to run Postgres as (it refuses root): install Debian's `postgresql` package, which creates it",
    );
  }
  const [, , uid, gid] = entry.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}

/**
 * A Postgres server of its own for a test: a new cluster in a temp dir, listening on 127.0.0.1 on a
 * free port and on a unix socket in that dir, with trust auth (nothing else can reach it). Its
 * settings are Postgres' defaults (fsync on), so that a benchmark on it measures a real server.
 * Call `stop()` in teardown: it runs until stopped.
 */
export async function startPostgres(): Promise<ThrowawayPostgres> {
  const bin = await postgresBinDir();
  const user = await serverUser();
  const dir = await mkdtemp(path.join(os.tmpdir(), "baton-postgres-"));
  const data = path.join(dir, "data");
  const port = await freePort();
  let server: ChildProcess | undefined;
  let stopped: Promise<void> | undefined;

  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (server !== undefined && server.exitCode === null && server.signalCode === null) {
        const exited = once(server, "exit");
        // SIGQUIT: `pg_ctl stop -m immediate`; the postmaster takes its backends down with it.
        server.kill("SIGQUIT");
        const timer = setTimeout(() => server?.kill("SIGKILL"), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    })());

  try {
    if (user !== undefined) await chown(dir, user.uid, user.gid);
    // Postgres' programs chdir to where they are started: the temp dir is one the user may enter.
    const as = { ...user, cwd: dir, env: { ...process.env, LC_ALL: "C" } };
    await run(
      path.join(bin, "initdb"),
      ["-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
      as,
    ).catch((error: unknown) => {
      throw new Error(`initdb failed: ${(error as { stderr?: string }).stderr?.trim() ?? String(error)}`, {
        cause: error,
      });
    });
    server = spawn(
      path.join(bin, "postgres"),
      ["-D", data, "-p", String(port), "-c", "listen_addresses=127.0.0.1", "-c", `unix_socket_directories=${dir}`],
      { ...as, stdio: ["ignore", "ignore", "pipe"] },
    );
    await ready(server);
  } catch (error) {
    await stop();
    throw error;
  }

  const base = new URL(`postgres://postgres@127.0.0.1:${port}/postgres`);
  return {
    url: base.toString(),
    dir,
    async createDatabase(name) {
      const client = new pg.Client({ connectionString: base.toString() });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
      } finally {
        await client.end();
      }
      const url = new URL(base);
      url.pathname = `/${name}`;
      return url.toString();
    },
    stop,
  };
}

/** Resolves once the server logs that it accepts connections; rejects with its log if it exits first. */
async function ready(server: ChildProcess): Promise<void> {
  const log: string[] = [];
  const lines = createInterface({ input: server.stderr! });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`Postgres did not accept connections within ${READY_TIMEOUT_MS} ms:\n${log.join("\n")}`)),
      READY_TIMEOUT_MS,
    );
    lines.on("line", (line) => {
      log.push(line);
      if (line.includes("database system is ready to accept connections")) {
        clearTimeout(timer);
        resolve();
      }
    });
    server.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`Postgres exited (${code ?? signal}) before accepting connections:\n${log.join("\n")}`));
    });
  });
  // Its log is not needed past start: drain it so that the pipe never fills and blocks the server.
  lines.removeAllListeners("line");
  lines.on("line", () => {});
}
