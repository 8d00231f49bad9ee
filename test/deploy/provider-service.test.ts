import { execFile, spawnSync } from "node:child_process";
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { DRAIN_OUTPUT_LINGER_MS, DRAIN_TIMEOUT_MS, HAND_BACK_TIMEOUT_MS } from "../../node/constants.ts";
import { blockingDir } from "../../node/jobs-dir.ts";
import { KILL_GRACE_MS } from "../../node/sandbox/constants.ts";

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, "../..");
const UNIT = path.join(root, "deploy/baton-provider.service");

/** Whether `command` is on the PATH; when it is not, says so in the test output (a skip must say why). */
function installed(command: string, why: string): boolean {
  const found = spawnSync("sh", ["-c", `command -v ${command}`]).status === 0;
  if (!found) console.warn(`${command} is not installed: skipping ${why}`);
  return found;
}

// The job's user runs this checkout's Node and modules, as the unit's user runs /opt/baton: a
// checkout it cannot reach (a clone in a 0700 home or temp dir) cannot stand in for that.
const blocked = await blockingDir(root, { uid: 65534, gid: 65534 });
if (blocked)
  console.warn(
    `nobody cannot reach this checkout (${blocked.dir} is mode ${blocked.mode.toString(8)}): skipping the sandbox under the unit's user`,
  );

/** The unit's `[Service]` settings: each key with its values, in order (a key may be given twice). */
async function serviceSettings(): Promise<Map<string, string[]>> {
  const settings = new Map<string, string[]>();
  let section = "";
  for (const raw of (await readFile(UNIT, "utf8")).split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    if (line.startsWith("[")) {
      section = line;
      continue;
    }
    const at = line.indexOf("=");
    if (section !== "[Service]" || at < 0) continue;
    const key = line.slice(0, at);
    settings.set(key, [...(settings.get(key) ?? []), line.slice(at + 1)]);
  }
  return settings;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-service-"));
  // The node's user must pass through to its data dir below.
  await chmod(dir, 0o711);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("deploy/baton-provider.service", () => {
  it.skipIf(!installed("systemd-analyze", "the unit's check by systemd-analyze verify"))(
    "passes systemd-analyze verify (run from this checkout rather than /opt/baton)",
    async () => {
      const unit = path.join(dir, "baton-provider.service");
      await writeFile(unit, (await readFile(UNIT, "utf8")).replaceAll("/opt/baton", root));
      const { stdout, stderr } = await run("systemd-analyze", ["verify", unit]);
      expect(stdout + stderr).toBe("");
    },
  );

  it("signals the node alone with SIGTERM, and gives its drain more time than it can take", async () => {
    const settings = await serviceSettings();
    expect(settings.get("KillSignal")).toEqual(["SIGTERM"]);
    expect(settings.get("KillMode")).toEqual(["mixed"]);
    const stopMs = Number(settings.get("TimeoutStopSec")![0]) * 1000;
    // Jobs that all end in the grace, then their outputs served; or a hand-back: the jobs stopped,
    // then each tenant's close (or the node's own finish) waited for, twice the hand-back timeout at most.
    expect(stopMs).toBeGreaterThan(DRAIN_TIMEOUT_MS + DRAIN_OUTPUT_LINGER_MS);
    expect(stopMs).toBeGreaterThan(DRAIN_TIMEOUT_MS + KILL_GRACE_MS + 2 * HAND_BACK_TIMEOUT_MS);
    expect(settings.get("Restart")).toEqual(["on-failure"]);
    expect(settings.get("User")).toEqual(["baton"]);
    expect(settings.get("ExecStart")![0]).toMatch(
      /\/cli\/baton\.ts provider start --data-dir \/var\/lib\/baton\/provider$/,
    );
  });

  it("leaves out the hardening that would break bubblewrap's sandbox, the GPUs or V8", async () => {
    const settings = await serviceSettings();
    // Each mounts over part of /proc (a fresh /proc is then refused in the sandbox's namespaces),
    // takes the namespaces or system calls the sandbox needs, hides device nodes, or forbids JIT code.
    for (const setting of [
      "ProtectKernelTunables",
      "ProtectKernelLogs",
      "ProtectHostname",
      "ProtectProc",
      "ProcSubset",
      "RestrictNamespaces",
      "PrivateUsers",
      "SystemCallFilter",
      "PrivateDevices",
      "DevicePolicy",
      "DeviceAllow",
      "ProtectClock",
      "MemoryDenyWriteExecute",
    ]) {
      expect(settings.has(setting), setting).toBe(false);
    }
    expect(settings.get("NoNewPrivileges")).toEqual(["yes"]);
    expect(settings.get("CapabilityBoundingSet")).toEqual([""]);
  });

  const asRoot = process.getuid?.() === 0;
  if (!asRoot) console.warn("not root: skipping the sandbox under the unit's user and privileges");
  it.skipIf(
    !asRoot ||
      blocked !== undefined ||
      !installed("setpriv", "the sandbox under the unit's privileges") ||
      !installed("bwrap", "the sandbox under the unit's privileges"),
  )(
    "runs a job in bubblewrap as an unprivileged user with NoNewPrivileges and no capabilities, as the unit does",
    async () => {
      // The node's data dir, owned by its user (`nobody` stands in for `baton`).
      const dataDir = path.join(dir, "data");
      await mkdir(path.join(dataDir, "work"), { recursive: true });
      for (const d of [dataDir, path.join(dataDir, "work")]) await chown(d, 65534, 65534);
      const script = `
        import { nodeRuntimeBind, startJob } from ${JSON.stringify(path.join(root, "node/sandbox/runner.ts"))};
        import { silentLogger } from ${JSON.stringify(path.join(root, "sdk/logger.ts"))};
        const job = await startJob({
          leaseId: "unit",
          workDir: ${JSON.stringify(path.join(dataDir, "work"))},
          sandbox: "bwrap",
          runtimeBinds: [nodeRuntimeBind()],
          logger: silentLogger,
          command: ["sh", "-c", "echo uid $(id -u); grep NoNewPrivs /proc/self/status"],
          onLine: (_stream, line) => console.log(line),
        });
        const exit = await job.exited;
        process.exit(exit.code ?? 1);
      `;
      const { stdout } = await run(
        "setpriv",
        [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          "--no-new-privs",
          "--bounding-set",
          "-all",
          "--",
          process.execPath,
          "--disable-warning=ExperimentalWarning",
          "--input-type=module",
          "-e",
          script,
        ],
        { cwd: root, timeout: 60_000 },
      );
      // The job ran (bubblewrap mounted its /proc, set up its namespaces), as the node's user, without privileges.
      expect(stdout.trim().split("\n").slice(0, 2)).toEqual(["uid 65534", "NoNewPrivs:\t1"]);
    },
  );
});

// The image itself is built and run by test/deploy/containerfile.test.ts (`npm run test:deploy`: minutes).
describe("deploy/Containerfile", () => {
  it("leaves out of its build context everything git ignores (.containerignore)", async () => {
    const patterns = async (file: string): Promise<string[]> =>
      (await readFile(path.join(root, file), "utf8"))
        .split("\n")
        .map((line) => line.trim())
        .filter((line) => line !== "" && !line.startsWith("#"));
    const ignored = new Set(await patterns(".containerignore"));
    for (const pattern of await patterns(".gitignore")) {
      // `**/name` here is `name` at any depth, as .gitignore reads it; a bare `name` does for what only
      // ever sits at the root (node_modules, dist).
      const name = pattern.replace(/\/$/, "");
      expect(ignored.has(name) || ignored.has(`**/${name}`), pattern).toBe(true);
    }
  });
});
