import { constants } from "node:fs";
import { access, chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";

import { gpuDeviceBinds } from "../../node/sandbox/bwrap-args.ts";
import { detectSandbox } from "../../node/sandbox/detect.ts";
import { BubblewrapMissingError, InvalidJobOptionsError, SandboxSetupError } from "../../node/sandbox/errors.ts";
import { descendants, groupMembers, processTable } from "../../node/sandbox/process-tree.ts";
import {
  chooseCpus,
  nodeRuntimeBind,
  prepareSandbox,
  startJob,
  type JobProcess,
  type SandboxKind,
  type StartJobOptions,
} from "../../node/sandbox/runner.ts";
import { silentLogger } from "../../sdk/logger.ts";

// Real processes in a real bubblewrap sandbox: bubblewrap must be installed (CI installs it).
const isRoot = process.getuid?.() === 0;
const jobUid = isRoot ? 65534 : process.getuid!();
const repoRoot = path.resolve(import.meta.dirname, "../..");

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  // Last registered first: jobs are killed before their dirs are removed. Runs even when a test failed.
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A temp dir the job's user can traverse (not list), removed after the test. */
async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `baton-sandbox-${prefix}-`));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  await chmod(dir, 0o711);
  return dir;
}

interface Started {
  job: JobProcess;
  workDir: string;
  lines: { stream: "stdout" | "stderr"; line: string }[];
  /** Resolves at the first line that matches. */
  waitForLine(match: RegExp): Promise<string>;
}

async function run(options: Partial<StartJobOptions> & Pick<StartJobOptions, "command">): Promise<Started> {
  const base = await tempDir("job");
  const workDir = path.join(base, "work");
  const lines: Started["lines"] = [];
  const waiters: { match: RegExp; resolve: (line: string) => void }[] = [];
  const job = await startJob({
    leaseId: "lease-1",
    workDir,
    sandbox: "bwrap",
    runtimeBinds: [nodeRuntimeBind()],
    logger: silentLogger,
    ...options,
    onLine: (stream, line) => {
      lines.push({ stream, line });
      for (const waiter of [...waiters]) {
        if (waiter.match.test(line)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      }
      options.onLine?.(stream, line);
    },
  });
  cleanups.push(() => job.kill());
  const waitForLine = (match: RegExp): Promise<string> => {
    const seen = lines.find((entry) => match.test(entry.line));
    if (seen) return Promise.resolve(seen.line);
    return new Promise((resolve) => waiters.push({ match, resolve }));
  };
  return { job, workDir, lines, waitForLine };
}

/** `sh -c script` in the sandbox. */
const sh = (script: string): string[] => ["sh", "-c", script];

/** Whether a process still runs (a zombie waiting to be reaped does not). */
async function running(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const status = await readFile(`/proc/${pid}/stat`, "utf8");
    return status.slice(status.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

function parseEnv(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split("\n")
      .filter((line) => line.includes("="))
      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]),
  );
}

describe("detectSandbox", () => {
  it("finds bubblewrap and its version", async () => {
    const found = await detectSandbox();
    expect(found).toMatchObject({ kind: "bwrap", version: expect.stringMatching(/^\d+\.\d+/) });
  });

  it("says none for a bwrap path that does not exist", async () => {
    expect(await detectSandbox({ bwrapPath: "/nonexistent/bwrap" })).toEqual({ kind: "none" });
  });
});

describe("startJob", () => {
  it("gives the job its env, and only that, with BATON_* dirs it can write", { timeout: 20_000 }, async () => {
    const { job, workDir } = await run({
      env: { MODEL_NAME: "tiny", WITH_SPACES: "a b  c" },
      command: sh(
        'env > "$BATON_OUTPUT_DIR/env.txt"; for d in "$BATON_CHECKPOINT_DIR" "$BATON_RESUME_DIR" "$TMPDIR" "$HOME"; do ' +
          'echo x > "$d/probe" || exit 9; done; pwd > "$BATON_OUTPUT_DIR/pwd.txt"',
      ),
    });
    expect(await job.exited).toMatchObject({ code: 0, signal: null, reason: "exited" });

    const env = parseEnv(await readFile(path.join(workDir, "output", "env.txt"), "utf8"));
    expect(env).toMatchObject({
      MODEL_NAME: "tiny",
      WITH_SPACES: "a b  c",
      BATON_LEASE_ID: "lease-1",
      BATON_WORK_DIR: "/work",
      BATON_CHECKPOINT_DIR: "/work/checkpoints",
      BATON_RESUME_DIR: "/work/resume",
      BATON_OUTPUT_DIR: "/work/output",
      HOME: "/work",
      TMPDIR: "/work/tmp",
      CUDA_VISIBLE_DEVICES: "",
      NVIDIA_VISIBLE_DEVICES: "void",
    });
    expect(env.PATH!.split(":")[0]).toBe("/opt/baton/bin");
    // Nothing of the node's own environment leaks in.
    for (const name of Object.keys(process.env)) {
      if (!["PATH", "HOME", "PWD", "SHLVL", "_", "USER", "LOGNAME", "TMPDIR"].includes(name)) {
        expect(env, `host variable ${name} leaked`).not.toHaveProperty(name);
      }
    }
    expect((await readFile(path.join(workDir, "output", "pwd.txt"), "utf8")).trim()).toBe("/work");
    for (const dir of ["checkpoints", "resume", "tmp", "."]) {
      expect(await readFile(path.join(workDir, dir, "probe"), "utf8")).toBe("x\n");
    }
  });

  it("refuses invalid env names and variables the node sets, before starting anything", async () => {
    const base = await tempDir("env");
    const invalid: Record<string, string>[] = [
      { "lower-case": "x" },
      { "1ABC": "x" },
      { BATON_LEASE_ID: "evil" },
      { PATH: "/tmp" },
      { A: "x\0y" },
    ];
    for (const env of invalid) {
      await expect(
        startJob({ leaseId: "x", command: ["true"], env, workDir: path.join(base, "work"), sandbox: "bwrap" }),
      ).rejects.toBeInstanceOf(InvalidJobOptionsError);
    }
    await expect(stat(path.join(base, "work"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("lets the job write only its work dir: not /, /usr, /etc, /opt", { timeout: 20_000 }, async () => {
    const { job, workDir } = await run({
      command: sh(
        'o="$BATON_OUTPUT_DIR/fs.txt"; for f in /x /usr/x /etc/x /etc/passwd /opt/baton/bin/x /work/x; do ' +
          'if (echo hi > "$f") 2>/dev/null; then echo "$f writable" >> "$o"; else echo "$f denied" >> "$o"; fi; done; ' +
          'ls /proc | grep -c "^[0-9]" > "$BATON_OUTPUT_DIR/pids.txt"',
      ),
    });
    expect(await job.exited).toMatchObject({ code: 0, reason: "exited" });
    expect((await readFile(path.join(workDir, "output", "fs.txt"), "utf8")).trim().split("\n")).toEqual([
      "/x denied",
      "/usr/x denied",
      "/etc/x denied",
      "/etc/passwd denied",
      "/opt/baton/bin/x denied",
      "/work/x writable",
    ]);
    expect(await readFile(path.join(workDir, "x"), "utf8")).toBe("hi\n");
    // Its own pid namespace: pid 1 (bwrap's reaper), sh, ls, grep; not the host's hundreds.
    expect(Number(await readFile(path.join(workDir, "output", "pids.txt"), "utf8"))).toBeLessThanOrEqual(5);
  });

  it.each<[SandboxKind, boolean]>([
    ["bwrap", false],
    ["unsafe-none", true],
  ])("%s: host files outside the work dir are readable: %s", { timeout: 20_000 }, async (sandbox, readable) => {
    // A secret the job's user could read on the host (mode 0644 in a traversable dir): only the
    // sandbox stands between the job and it, which the unsafe mode shows.
    const secretDir = await tempDir("secret");
    const secret = path.join(secretDir, "key.txt");
    await writeFile(secret, "top-secret\n", { mode: 0o644 });
    const targets = [secret, path.join(repoRoot, "package.json"), "/root", "/home"];
    const { job, workDir } = await run({
      sandbox,
      command: sh(
        'for f in "$@"; do if cat "$f" >/dev/null 2>&1 || ls "$f" >/dev/null 2>&1; then echo "$f seen"; ' +
          'else echo "$f hidden"; fi; done > "$BATON_OUTPUT_DIR/read.txt"',
      ).concat("probe", ...targets),
    });
    expect(await job.exited).toMatchObject({ code: 0 });
    const seen = (await readFile(path.join(workDir, "output", "read.txt"), "utf8")).trim().split("\n");
    expect(seen).toContain(`${secret} ${readable ? "seen" : "hidden"}`);
    // The checkout may be private (a 0700 clone): then even the unsafe mode cannot read it, by permissions alone.
    const repoOpen = await access(path.join(repoRoot, "package.json"), constants.R_OK)
      .then(() => repoReachableByOthers())
      .catch(() => false);
    expect(seen).toContain(`${path.join(repoRoot, "package.json")} ${readable && repoOpen ? "seen" : "hidden"}`);
    if (sandbox === "bwrap") expect(seen).toEqual(targets.map((t) => `${t} hidden`));
  });

  describe("network", () => {
    let server: Server;
    let connections = 0;

    async function listen(): Promise<number> {
      connections = 0;
      server = createServer((socket) => {
        connections++;
        socket.end("hello\n");
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
      return (server.address() as { port: number }).port;
    }

    const connectJob = (port: number): string[] => [
      "node",
      "-e",
      `const done = (r) => { require("fs").writeFileSync(process.env.BATON_OUTPUT_DIR + "/net.txt", r); process.exit(0); };
       const s = require("net").connect(${port}, "127.0.0.1");
       s.on("data", () => done("ok"));
       s.on("error", (e) => done("error " + e.code));
       setTimeout(() => done("timeout"), 5000);`,
    ];

    it("without network, the job cannot reach a server on the host's loopback", { timeout: 20_000 }, async () => {
      const port = await listen();
      const { job, workDir } = await run({ network: false, command: connectJob(port) });
      expect(await job.exited).toMatchObject({ code: 0 });
      expect(await readFile(path.join(workDir, "output", "net.txt"), "utf8")).toMatch(/^error ECONNREFUSED/);
      expect(connections).toBe(0);
    });

    it("with network, it can", { timeout: 20_000 }, async () => {
      const port = await listen();
      const { job, workDir } = await run({ network: true, command: connectJob(port) });
      expect(await job.exited).toMatchObject({ code: 0 });
      expect(await readFile(path.join(workDir, "output", "net.txt"), "utf8")).toBe("ok");
      expect(connections).toBe(1);
    });
  });

  it("stops a job at its wall time", { timeout: 20_000 }, async () => {
    const { job } = await run({ command: ["sleep", "60"], limits: { wallTimeMs: 500 } });
    const exit = await job.exited;
    expect(exit).toMatchObject({ reason: "wall-time", signal: "SIGTERM", code: null });
    expect(exit.durationMs).toBeGreaterThanOrEqual(450);
    expect(exit.durationMs).toBeLessThan(5_000);
  });

  it("kill() sends SIGTERM first: a job that handles it exits cleanly", { timeout: 20_000 }, async () => {
    const { job, workDir, waitForLine } = await run({
      command: sh(
        "trap 'echo bye > \"$BATON_OUTPUT_DIR/term.txt\"; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
      ),
      killGraceMs: 10_000,
    });
    await waitForLine(/^ready$/);
    const exit = await job.kill();
    expect(exit).toMatchObject({ reason: "killed", code: 0, signal: null });
    expect(exit.durationMs).toBeLessThan(5_000);
    expect(await readFile(path.join(workDir, "output", "term.txt"), "utf8")).toBe("bye\n");
  });

  it.each<SandboxKind>(["bwrap", "unsafe-none"])(
    "%s: kill() kills a job that ignores SIGTERM, and all its processes, after the grace period",
    { timeout: 20_000 },
    async (sandbox) => {
      const { job, waitForLine } = await run({
        sandbox,
        command: sh('trap "" TERM; sleep 1000 & sleep 1000 & echo ready; wait'),
        killGraceMs: 1_000,
      });
      await waitForLine(/^ready$/);
      const processes = [job.pid, ...descendants(job.pid)];
      expect(processes.length).toBeGreaterThanOrEqual(3);
      const started = Date.now();
      const exit = await job.kill();
      const took = Date.now() - started;
      expect(exit).toMatchObject({ reason: "killed", signal: "SIGKILL" });
      expect(took).toBeGreaterThanOrEqual(900);
      expect(took).toBeLessThan(5_000);
      for (const pid of processes) expect(await running(pid), `pid ${pid} survived`).toBe(false);
      // The process group is gone too (unsafe-none: killed members may wait to be reaped by init).
      if (sandbox === "bwrap")
        expect(() => process.kill(-job.pid, 0)).toThrow(expect.objectContaining({ code: "ESRCH" }));
      expect(groupMembers(job.pid)).toEqual([]);
    },
  );

  it.each<SandboxKind>(["bwrap", "unsafe-none"])(
    "%s: processes the job leaves running end with it",
    { timeout: 20_000 },
    async (sandbox) => {
      const { job, workDir, waitForLine } = await run({
        sandbox,
        command: sh('mkfifo "$HOME/go"; sleep 1000 & echo started; read x < "$HOME/go"'),
      });
      await waitForLine(/^started$/);
      const processes = descendants(job.pid);
      // The main process exits once told to; its background sleep would run on.
      await writeFile(path.join(workDir, "go"), "\n");
      expect(await job.exited).toMatchObject({ code: 0, reason: "exited" });
      expect(processes.length).toBeGreaterThanOrEqual(1);
      for (const pid of [job.pid, ...processes]) expect(await running(pid), `pid ${pid} survived`).toBe(false);
    },
  );

  it("aborting the signal stops the job", { timeout: 20_000 }, async () => {
    const controller = new AbortController();
    const { job, waitForLine } = await run({ command: sh("echo ready; exec sleep 60"), signal: controller.signal });
    await waitForLine(/^ready$/);
    controller.abort();
    expect(await job.exited).toMatchObject({ reason: "aborted", signal: "SIGTERM" });
  });

  it("stops a job that allocates far beyond its memory limit", { timeout: 30_000 }, async () => {
    const { job, lines } = await run({
      limits: { memoryBytes: 256 * 1024 * 1024 },
      // 64 × 32 MiB = 2 GiB, eight times the limit.
      command: [
        "node",
        "-e",
        'const a = []; for (let i = 0; i < 64; i++) a.push(Buffer.alloc(32 << 20, 1)); console.log("done")',
      ],
    });
    const exit = await job.exited;
    expect(exit).toMatchObject({ reason: "memory", code: 1 });
    expect(lines.map((l) => l.line)).not.toContain("done");
    expect(lines.some((l) => l.stream === "stderr" && /allocation failed/.test(l.line))).toBe(true);
  });

  it("runs the job as an unprivileged user without capabilities", { timeout: 20_000 }, async () => {
    const { job, workDir } = await run({
      command: sh('{ id -u; id -g; id -G; grep CapEff /proc/self/status; } > "$BATON_OUTPUT_DIR/id.txt"'),
    });
    expect(await job.exited).toMatchObject({ code: 0 });
    const [uid, gid, groups, caps] = (await readFile(path.join(workDir, "output", "id.txt"), "utf8"))
      .trim()
      .split("\n");
    expect(Number(uid)).toBe(jobUid);
    expect(groups!.split(" ")).not.toContain("0");
    expect(gid).not.toBe("0");
    expect(caps).toMatch(/^CapEff:\s+0+$/);
    if (isRoot) expect((await stat(workDir)).uid).toBe(65534);
  });

  it.each<[SandboxKind, string]>([
    ["bwrap", "0,1"],
    ["unsafe-none", "1,3"],
  ])(
    "%s: CUDA_VISIBLE_DEVICES names the leased GPUs as the job sees them (%s)",
    { timeout: 20_000 },
    async (sandbox, expected) => {
      const command = sh('env > "$BATON_OUTPUT_DIR/env.txt"; ls /dev > "$BATON_OUTPUT_DIR/dev.txt"');
      const { job, workDir } = await run({ sandbox, gpus: [1, 3], command });
      expect(await job.exited).toMatchObject({ code: 0 });
      const env = parseEnv(await readFile(path.join(workDir, "output", "env.txt"), "utf8"));
      expect(env).toMatchObject({
        CUDA_VISIBLE_DEVICES: expected,
        NVIDIA_VISIBLE_DEVICES: "1,3",
        CUDA_DEVICE_ORDER: "PCI_BUS_ID",
      });

      const uuids = ["GPU-1111-aaaa", "GPU-3333-cccc"];
      const withUuids = await run({ sandbox, gpus: [1, 3], gpuUuids: uuids, command });
      expect(await withUuids.job.exited).toMatchObject({ code: 0 });
      const envUuids = parseEnv(await readFile(path.join(withUuids.workDir, "output", "env.txt"), "utf8"));
      expect(envUuids.CUDA_VISIBLE_DEVICES).toBe(uuids.join(","));
      if (sandbox === "bwrap") {
        expect(await readFile(path.join(workDir, "output", "dev.txt"), "utf8")).not.toMatch(/nvidia/);
      }
    },
  );

  it("keeps the log under its cap however much the job prints", { timeout: 60_000 }, async () => {
    const logMaxBytes = 256 * 1024;
    let seen = 0;
    const { job, workDir } = await run({
      logMaxBytes,
      command: sh("yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 4000000; echo; echo the-end"),
      onLine: () => seen++,
    });
    expect(await job.exited).toMatchObject({ code: 0 });
    expect(seen).toBeGreaterThan(100_000);
    const live = await stat(job.logPath);
    const rotated = await stat(`${job.logPath}.1`);
    expect(live.size).toBeLessThanOrEqual(logMaxBytes / 2);
    expect(rotated.size).toBeLessThanOrEqual(logMaxBytes / 2);
    expect(rotated.size).toBeGreaterThan(logMaxBytes / 4);
    await expect(stat(`${job.logPath}.2`)).rejects.toMatchObject({ code: "ENOENT" });
    // The newest output is the one kept.
    expect((await readFile(job.logPath, "utf8")).trimEnd()).toMatch(/ stdout the-end$/);
    // Beside the work dir, out of the job's reach.
    expect(job.logPath).toBe(path.join(path.dirname(workDir), "lease-1.log"));
  });

  it("caps very long lines", { timeout: 20_000 }, async () => {
    const { job, lines } = await run({
      lineMaxBytes: 1000,
      command: sh("head -c 5000000 /dev/zero | tr '\\0' a; echo; echo short"),
    });
    expect(await job.exited).toMatchObject({ code: 0 });
    expect(lines).toHaveLength(2);
    expect(lines[0]!.line).toBe(`${"a".repeat(1000)} [… 4999000 bytes dropped]`);
    expect(lines[1]!.line).toBe("short");
  });

  it("reports a command that does not exist as exit 127, not a sandbox failure", { timeout: 20_000 }, async () => {
    const { job, lines } = await run({ command: ["no-such-program-xyz"] });
    expect(await job.exited).toMatchObject({ code: 127, reason: "exited" });
    expect(lines.some((l) => l.stream === "stderr" && /not found/.test(l.line))).toBe(true);
  });

  it("without bubblewrap, says so and how to install it", async () => {
    const base = await tempDir("nobwrap");
    const start = startJob({
      leaseId: "x",
      command: ["true"],
      workDir: path.join(base, "work"),
      sandbox: "bwrap",
      bwrapPath: "/nonexistent/bwrap",
    });
    await expect(start).rejects.toBeInstanceOf(BubblewrapMissingError);
    await expect(start).rejects.toThrow(/apt-get install bubblewrap/);
    await expect(start).rejects.toThrow(/unsafe-none/);
  });

  it.skipIf(!isRoot)("a work dir the job's user cannot reach is a clear setup error", { timeout: 20_000 }, async () => {
    const base = await tempDir("closed");
    await chmod(base, 0o700);
    const start = startJob({
      leaseId: "x",
      command: ["true"],
      workDir: path.join(base, "work"),
      sandbox: "bwrap",
      logger: silentLogger,
    });
    await expect(start).rejects.toBeInstanceOf(SandboxSetupError);
    await expect(start).rejects.toThrow(/searchable by the job's user/);
  });
});

describe.each<SandboxKind>(["bwrap", "unsafe-none"])("prepareSandbox (%s)", (sandbox) => {
  /** A sandbox set up in a fresh work dir, discarded after the test. */
  async function prepare(onLine?: (line: string) => void) {
    const base = await tempDir("prepared");
    const workDir = path.join(base, "work");
    const prepared = await prepareSandbox({
      leaseId: "lease-2",
      workDir,
      sandbox,
      runtimeBinds: [nodeRuntimeBind()],
      logger: silentLogger,
      onLine: (_stream, line) => onLine?.(line),
    });
    cleanups.push(() => prepared.discard());
    return { prepared, workDir, logPath: path.join(base, "lease-2.log") };
  }

  it(
    "runs nothing until given a job, then that job with its env and wall time, its files put in meanwhile",
    { timeout: 20_000 },
    async () => {
      const lines: string[] = [];
      const { prepared, workDir, logPath } = await prepare((line) => lines.push(line));
      expect(prepared.ready).toBe(true);
      // Set up, waiting: no log yet, the shim (a shell) the only process of it.
      await expect(access(logPath)).rejects.toThrow();
      await writeFile(path.join(workDir, "input.txt"), "fetched after the set-up\n");
      const quoted = 'it\'s "quoted"\n$HOME `x` \\ end';
      const job = prepared.run({
        command: ["sh", "-c", 'cat input.txt; printf "%s" "$QUOTED" > "$BATON_OUTPUT_DIR/quoted"; sleep 30', "arg0"],
        env: { QUOTED: quoted },
        wallTimeMs: 500,
      });
      expect(prepared.ready).toBe(false);
      expect(job.env).toMatchObject({ QUOTED: quoted, BATON_LEASE_ID: "lease-2" });
      expect(await job.exited).toMatchObject({ reason: "wall-time" });
      expect(lines).toEqual(["fetched after the set-up"]);
      expect(await readFile(path.join(workDir, "output", "quoted"), "utf8")).toBe(quoted);
      expect(await readFile(logPath, "utf8")).toMatch(/stdout fetched after the set-up\n$/);
    },
  );

  it("refuses a bad command or env and stays ready; cannot be run twice", { timeout: 20_000 }, async () => {
    const { prepared } = await prepare();
    expect(() => prepared.run({ command: [], env: {} })).toThrow(InvalidJobOptionsError);
    expect(() => prepared.run({ command: ["true"], env: { PATH: "/x" } })).toThrow(InvalidJobOptionsError);
    expect(prepared.ready).toBe(true);
    const job = prepared.run({ command: ["sh", "-c", "exit 3"], env: {} });
    expect(() => prepared.run({ command: ["true"], env: {} })).toThrow(SandboxSetupError);
    expect(await job.exited).toMatchObject({ code: 3, reason: "exited" });
  });

  it("discarded, leaves no process and no log; one that died meanwhile is not ready", { timeout: 20_000 }, async () => {
    const { prepared, logPath } = await prepare();
    const { pid } = prepared;
    await prepared.discard();
    expect(prepared.ready).toBe(false);
    expect(processTable().some((entry) => entry.pid === pid && entry.state !== "Z")).toBe(false);
    await expect(access(logPath)).rejects.toThrow();
    expect(() => prepared.run({ command: ["true"], env: {} })).toThrow(SandboxSetupError);

    const other = await prepare();
    process.kill(-other.prepared.pid, "SIGKILL");
    await vi.waitFor(() => expect(other.prepared.ready).toBe(false), { timeout: 5_000 });
    expect(() => other.prepared.run({ command: ["true"], env: {} })).toThrow(SandboxSetupError);
  });
});

describe("prepareSandbox, reusable (bwrap)", () => {
  /** A reusable sandbox in a fresh work dir, discarded after the test; each line it delivers, by stream. */
  async function prepareReusable() {
    const base = await tempDir("reusable");
    const workDir = path.join(base, "work");
    const lines: { stream: "stdout" | "stderr"; line: string }[] = [];
    const prepared = await prepareSandbox({
      leaseId: "lease-3",
      workDir,
      sandbox: "bwrap",
      reusable: true,
      runtimeBinds: [nodeRuntimeBind()],
      logger: silentLogger,
      onLine: (stream, line) => lines.push({ stream, line }),
    });
    cleanups.push(() => prepared.discard());
    return { prepared, workDir, lines, logPath: path.join(base, "lease-3.log") };
  }

  it(
    "runs one job after another in the same sandbox: each with its own env, exit status, output and log; what a job left running is killed, its /dev/shm and SysV IPC removed, before the next",
    { timeout: 30_000 },
    async () => {
      const { prepared, lines, logPath } = await prepareReusable();
      const first = prepared.run({
        command: sh(
          // Output with and without a last newline, an empty line, a daemon that would print later, a file in /dev/shm, a SysV segment.
          'echo "one $N"; echo; printf "no newline"; printf "err" >&2; (sleep 0.3; echo "late") & echo "$$" > /dev/shm/pid; ipcmk -M 4096 > /dev/null; exit 4',
        ),
        env: { N: "1" },
      });
      expect(prepared.ready).toBe(false);
      expect(await first.exited).toMatchObject({ code: 4, signal: null, reason: "exited" });
      expect(prepared.ready).toBe(true);
      // Each stream's lines in order; the two pipes are read as their data comes, in either order.
      const of = (stream: string) => lines.filter((l) => l.stream === stream).map((l) => l.line);
      expect(of("stdout")).toEqual(["one 1", "", "no newline"]);
      expect(of("stderr")).toEqual(["err"]);
      // The log: each line after its time and stream, the streams' lines in their order as above.
      const logged = (await readFile(logPath, "utf8")).split("\n").slice(0, -1);
      const logOf = (stream: string) =>
        logged
          .filter((l) => l.includes(` ${stream} `))
          .map((l) => l.slice(l.indexOf(` ${stream} `) + stream.length + 2));
      expect(logOf("stdout")).toEqual(["one 1", "", "no newline"]);
      expect(logOf("stderr")).toEqual(["err"]);
      const firstPid = first.pid;

      lines.length = 0;
      const second = prepared.run({
        command: sh(
          'sleep 0.6; echo "two ${N:-unset} $(ls -A /dev/shm | wc -l) $(ipcs -m | grep -c 0x)"; kill -TERM $$',
        ),
        env: {},
      });
      expect(second.pid).toBe(firstPid);
      // The first job's env is gone, its daemon never printed, its /dev/shm file is gone; a job that
      // kills itself by signal reads as that signal.
      expect(await second.exited).toMatchObject({ code: null, signal: "SIGTERM", reason: "exited" });
      expect(lines).toEqual([{ stream: "stdout", line: "two unset 0 0" }]);
      expect(await readFile(logPath, "utf8")).not.toContain("late");
      expect(prepared.ready).toBe(true);
    },
  );

  it(
    "a job killed (here by its wall time) takes the sandbox with it, leaving no process",
    { timeout: 20_000 },
    async () => {
      const { prepared } = await prepareReusable();
      const { pid } = prepared;
      expect(await prepared.run({ command: ["true"], env: {} }).exited).toMatchObject({ code: 0, reason: "exited" });
      const job = prepared.run({ command: sh("sleep 30"), env: {}, wallTimeMs: 300 });
      expect(await job.exited).toMatchObject({ reason: "wall-time" });
      expect(prepared.ready).toBe(false);
      expect(() => prepared.run({ command: ["true"], env: {} })).toThrow(SandboxSetupError);
      expect(processTable().some((entry) => entry.pid === pid && entry.state !== "Z")).toBe(false);
      await prepared.discard();
    },
  );

  it(
    "ends after a job that removed its work dir's tmp/ (which /tmp stays bound to), reporting that job's exit",
    { timeout: 20_000 },
    async () => {
      const { prepared } = await prepareReusable();
      const { pid } = prepared;
      const job = prepared.run({ command: sh("rm -rf /work/tmp; echo gone; exit 5"), env: {} });
      expect(await job.exited).toMatchObject({ code: 5, reason: "exited" });
      expect(prepared.ready).toBe(false);
      await prepared.discard();
      expect(processTable().some((entry) => entry.pid === pid && entry.state !== "Z")).toBe(false);
    },
  );

  it("discarded between two jobs, leaves no process", { timeout: 20_000 }, async () => {
    const { prepared } = await prepareReusable();
    const { pid } = prepared;
    await prepared.run({ command: ["true"], env: {} }).exited;
    await prepared.discard();
    expect(prepared.ready).toBe(false);
    expect(processTable().some((entry) => entry.pid === pid && entry.state !== "Z")).toBe(false);
  });

  it("is refused without bubblewrap's pid namespace", async () => {
    const base = await tempDir("reusable-none");
    await expect(
      prepareSandbox({ leaseId: "lease-4", workDir: path.join(base, "work"), sandbox: "unsafe-none", reusable: true }),
    ).rejects.toThrow(InvalidJobOptionsError);
  });
});

describe("gpuDeviceBinds", () => {
  it("binds the leased GPUs' nodes and the control nodes that exist, nothing else", async () => {
    const dev = await tempDir("dev");
    for (const name of [
      "nvidia0",
      "nvidia1",
      "nvidia2",
      "nvidia3",
      "nvidiactl",
      "nvidia-uvm",
      "nvidia-modeset",
      "sda",
    ]) {
      await writeFile(path.join(dev, name), "");
    }
    await mkdir(path.join(dev, "dri"));
    const binds = (gpus: number[]) =>
      gpuDeviceBinds(gpus, dev).map((b) => [b.hostPath.slice(dev.length + 1), b.sandboxPath]);

    expect(binds([2, 0])).toEqual([
      ["nvidia0", "/dev/nvidia0"],
      ["nvidia2", "/dev/nvidia2"],
      ["nvidiactl", "/dev/nvidiactl"],
      ["nvidia-uvm", "/dev/nvidia-uvm"],
      ["nvidia-modeset", "/dev/nvidia-modeset"],
    ]);
    // No GPU: not even the control nodes.
    expect(binds([])).toEqual([]);
    // A leased GPU without a node (a fake GPU): only the control nodes.
    expect(binds([7]).map(([name]) => name)).toEqual(["nvidiactl", "nvidia-uvm", "nvidia-modeset"]);
  });
});

describe("chooseCpus", () => {
  it("takes the highest-numbered allowed cores, rounding fractions up", () => {
    expect(chooseCpus(2, [0, 1, 2, 3])).toEqual([2, 3]);
    expect(chooseCpus(1.5, [0, 1, 2, 3])).toEqual([2, 3]);
    expect(chooseCpus(8, [0, 1])).toEqual([0, 1]);
  });
});

/** Whether every directory above the repo lets other users pass (so the job's user could read it). */
async function repoReachableByOthers(): Promise<boolean> {
  for (let dir = repoRoot; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (((await stat(dir)).mode & 0o001) === 0) return false;
  }
  return true;
}
