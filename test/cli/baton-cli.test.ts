import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { handOffCount } from "../../sdk/hand-offs.ts";
import { jobRecordSchema, type JobRecord } from "../../sdk/tenant/job-store.ts";
import { root, spawnScript, stopAll } from "../helpers/processes.ts";

// The `baton` command itself, with no chain and no network: help, exit codes, typo suggestions,
// one-line errors, and what it does offline (job records). Commands that need a chain are tested
// where one already runs (provider-cli, audit, run-job-cli, demo-and-deploy-cli).

let dir: string;

/** Runs `baton …` to completion: its exit code and what it wrote to each stream. */
async function baton(args: string[], options: { env?: Record<string, string>; cwd?: string } = {}) {
  const run = spawnScript("cli/baton.ts", args, options.env ?? {}, options.cwd ? { cwd: options.cwd } : {});
  const { code } = await run.closed;
  return { code, stdout: run.stdout.join("\n"), stderr: run.stderr.join("\n"), errLines: run.stderr };
}

/** A failure the way every usual mistake should look: nothing on stdout, one `error:` line, no stack. */
function expectOneLine(result: Awaited<ReturnType<typeof baton>>, code: number, message: RegExp): void {
  const context = `${result.stdout}\n${result.stderr}`;
  expect(result.code, context).toBe(code);
  expect(result.errLines, context).toHaveLength(1);
  expect(result.errLines[0], context).toMatch(/^error: /);
  expect(result.errLines[0], context).toMatch(message);
  expect(result.stdout, context).toBe("");
}

const PROVIDERS = [
  "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
  "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
  "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
];
const FAILED_JOB = `0x${"a".repeat(64)}`;
const COMPLETED_JOB = `0x${"b".repeat(64)}`;

/**
 * A job record as the SDK writes it. The failed job ran on three leases and then hit its retry limit
 * of 2: three providers failed it (the record's `handOffs`, for the limit), but it moved on only twice.
 */
function record(jobId: string, state: "failed" | "completed", providers: string[]): JobRecord {
  const now = Date.now();
  return jobRecordSchema.parse({
    version: 1,
    jobId,
    spec: { name: "train", command: ["node", "train.mjs"], maxDurationS: 300 },
    key: "a-secret-key",
    createdAt: now - 60_000,
    state,
    options: { retryLimit: 2, keepCheckpoints: 3, exclude: [] },
    leases: providers.map((provider, i) => ({
      leaseId: String(i + 1),
      provider,
      peerId: `12D3KooWPeer${i}`,
      addresses: [],
      pricePerSecond: "1000000000000",
      deposit: "300000000000000",
      openedAt: now - 50_000 + i * 10_000,
      lastSeq: 0,
      state: state === "completed" && i === providers.length - 1 ? "completed" : "failed",
      endedAt: now - 45_000 + i * 10_000,
    })),
    safe: [],
    deposited: String(300000000000000n * BigInt(providers.length)),
    handOffs: state === "failed" ? providers.length : providers.length - 1,
    ...(state === "failed" ? { error: "3 providers failed this job; its retry limit is 2" } : {}),
    ...(state === "completed" ? { result: { exitCode: 0, reason: "exited", leaseId: String(providers.length) } } : {}),
  });
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-cli-"));
  const jobs = path.join(dir, "tenant", "jobs");
  await mkdir(jobs, { recursive: true });
  for (const r of [
    record(FAILED_JOB, "failed", PROVIDERS),
    record(COMPLETED_JOB, "completed", PROVIDERS.slice(0, 2)),
  ]) {
    await writeFile(path.join(jobs, `${r.jobId}.json`), JSON.stringify(r));
  }
  // Names for displays, as a devnet's network file gives them; its chain is nowhere.
  await writeFile(
    path.join(dir, "network.json"),
    JSON.stringify({
      rpcUrl: "http://127.0.0.1:9",
      deployment: "deployments/31337.json",
      bootstrap: [],
      names: Object.fromEntries(PROVIDERS.map((p, i) => [p, `provider-${i + 1}`])),
    }),
  );
});

afterAll(async () => {
  await stopAll();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("help", () => {
  it("lists every group on stdout, and `--version` prints package.json's version", async () => {
    const [help, bare, version] = await Promise.all([baton(["--help"]), baton([]), baton(["--version"])]);
    for (const result of [help, bare]) {
      expect(result.code).toBe(0);
      expect(result.stderr).toBe("");
      for (const group of ["devnet", "provider", "job", "image", "serve", "audit", "key", "help"]) {
        expect(result.stdout).toMatch(new RegExp(`^  ${group}\\b`, "m"));
      }
      expect(result.stdout).toContain("Exit codes: 0 ok, 1 failure, 2 usage error");
    }
    const { version: expected } = JSON.parse(await readFile(path.join(root, "package.json"), "utf8"));
    expect(version).toMatchObject({ code: 0, stdout: expected, stderr: "" });
  });

  it("gives every command its own help with examples, the same through `baton help`", async () => {
    const commands = [
      ["devnet", "start"],
      ["devnet", "fund"],
      ["provider", "init"],
      ["provider", "register"],
      ["provider", "start"],
      ["provider", "status"],
      ["provider", "unstake"],
      ["provider", "withdraw"],
      ["job", "run"],
      ["job", "watch"],
      ["job", "cancel"],
      ["job", "list"],
      ["image", "add"],
      ["serve"],
      ["audit", "job"],
      ["audit", "lease"],
      ["audit", "provider"],
      ["key", "new"],
    ];
    const results = await Promise.all(commands.map((command) => baton([...command, "--help"])));
    for (const [i, command] of commands.entries()) {
      const { code, stdout, stderr } = results[i]!;
      expect(code, command.join(" ")).toBe(0);
      expect(stderr, command.join(" ")).toBe("");
      expect(stdout, command.join(" ")).toContain(`Usage: baton ${command.join(" ")}`);
      expect(stdout, command.join(" ")).toMatch(/Examples:\n {2}\$ /);
    }
    const viaHelp = await baton(["help", "job", "run"]);
    expect(viaHelp.code).toBe(0);
    expect(viaHelp.stdout).toBe(results[commands.findIndex((c) => c.join(" ") === "job run")]!.stdout);
    expect(results[8]!.stdout).toContain("--network <file>");
    expect(results[8]!.stdout).toContain("(env: BATON_NETWORK)");
  });
});

describe("exit codes and one-line errors", () => {
  it("suggests the command or option meant by a typo, with exit code 2", async () => {
    const [command, subcommand, option] = await Promise.all([
      baton(["jbo", "list"]),
      baton(["job", "lst"]),
      baton(["job", "list", "--jsn"]),
    ]);
    expectOneLine(command, 2, /unknown command 'jbo' \(Did you mean job\?\); see `baton --help`/);
    expectOneLine(subcommand, 2, /unknown command 'lst' \(Did you mean list\?\); see `baton job --help`/);
    expectOneLine(option, 2, /unknown option '--jsn' \(Did you mean --json\?\); see `baton job list --help`/);
  });

  it("says what is missing or malformed in one line, with exit code 2", async () => {
    const cases: [string[], RegExp][] = [
      [["devnet", "fund"], /missing required argument 'address'; see `baton devnet fund --help`/],
      [["job", "run", "spec.yaml"], /required option '--max-price <tokens>' not specified/],
      [
        ["job", "run", "spec.yaml", "--max-price", "cheap"],
        /--max-price must be an amount of tokens like 0.5, not cheap/,
      ],
      [["devnet", "--providers", "99"], /--providers must be from 1 to 32, not 99/],
      [["devnet", "--chain", "geth"], /--chain must be hardhat or anvil, not geth/],
      [["devnet", "--behind-nat", "1", "--dir", path.join(dir, "devnet-refused")], /--behind-nat needs --netns/],
      [
        ["devnet", "--netns", "--providers", "2", "--behind-nat", "2", "--dir", path.join(dir, "devnet-refused")],
        /--behind-nat must be below --providers \(2\): provider-1 relays for them/,
      ],
      [
        ["devnet", "--chain", "anvil", "--block-time", "0.5", "--dir", path.join(dir, "devnet-refused")],
        /Anvil mines at intervals of whole seconds, not 0.5 s: a block time of a fraction of a second needs the hardhat chain/,
      ],
      [["job", "watch", "0x1234"], /not a job id: 0x1234/],
      [["audit", "lease", "0"], /not a lease id: 0/],
      [["audit", "provider", "0x1234"], /not an address: 0x1234/],
      [["help", "nonsense"], /unknown command: baton nonsense/],
    ];
    const results = await Promise.all(cases.map(([args]) => baton(args)));
    for (const [i, [, message]] of cases.entries()) expectOneLine(results[i]!, 2, message);
  });

  it("fails with exit code 1 and one plain line, or the stack with --debug or BATON_DEBUG=1", async () => {
    const unknownJob = `0x${"c".repeat(64)}`;
    const args = ["job", "watch", unknownJob, "--data-dir", path.join(dir, "tenant")];
    const [plain, debug, debugEnv, noNetworkFile, noNetwork, noPassword, badIndex] = await Promise.all([
      baton(args),
      baton([...args, "--debug"]),
      baton(args, { env: { BATON_DEBUG: "1" } }),
      baton(["audit", "lease", "1", "--network", path.join(dir, "nowhere.json")]),
      // No --network and no devnet in the working directory.
      baton(["audit", "lease", "1"], { cwd: dir }),
      baton(["key", "new", "--out", path.join(dir, "no-password.json")], { env: { BATON_KEYSTORE_PASSWORD: "" } }),
      // A bad index is said first, before the network is looked for (or the chain connected to).
      baton(["audit", "lease", "1", "--indexer", "postgres://[bad", "--network", path.join(dir, "nowhere.json")]),
    ]);
    expectOneLine(plain, 1, new RegExp(`no job ${unknownJob} in .*tenant`));
    for (const result of [debug, debugEnv]) {
      expect(result.code).toBe(1);
      expect(result.errLines[0]).toMatch(/^error: no job /);
      expect(result.stderr).toMatch(/UserError: no job .*\n\s+at /);
    }
    expectOneLine(noNetworkFile, 1, /no network file at .*nowhere\.json/);
    expectOneLine(noNetwork, 1, /no network: start one with `baton devnet`.*--network FILE \(or BATON_NETWORK\)/);
    expectOneLine(noPassword, 1, /the password for .*no-password\.json is empty/);
    expectOneLine(badIndex, 1, /the database URL does not parse/);
  });
});

describe("job records, offline", () => {
  const tenant = () => path.join(dir, "tenant");

  it("`job list` shows the data dir's jobs with no key and no chain, hand-offs as the audit counts them", async () => {
    const network = path.join(dir, "network.json");
    const [text, json] = await Promise.all([
      baton(["job", "list", "--data-dir", tenant(), "--network", network]),
      baton(["job", "list", "--data-dir", tenant(), "--json"]),
    ]);
    expect(text.code, text.stderr).toBe(0);
    // Three leases, two hand-offs (not the three failures the record counts for its retry limit).
    expect(text.stdout).toMatch(new RegExp(`^${FAILED_JOB}\\s+train\\s+failed\\s+3\\s+2\\s+provider-3$`, "m"));
    expect(text.stdout).toMatch(new RegExp(`^${COMPLETED_JOB}\\s+train\\s+completed\\s+2\\s+1\\s+provider-2$`, "m"));
    expect(handOffCount(record(FAILED_JOB, "failed", PROVIDERS).leases)).toBe(2);
    expect(json.code, json.stderr).toBe(0);
    const listed = JSON.parse(json.stdout) as Record<string, unknown>[];
    expect(listed.map((r) => [r.jobId, r.state])).toEqual([
      [FAILED_JOB, "failed"],
      [COMPLETED_JOB, "completed"],
    ]);
    // The jobs' checkpoint keys stay in the data dir.
    expect(json.stdout).not.toContain("a-secret-key");
    const empty = await baton(["job", "list", "--data-dir", path.join(dir, "no-tenant")]);
    expect(empty).toMatchObject({ code: 0, stderr: "" });
    expect(empty.stdout).toMatch(/^no jobs in .*no-tenant/);
  });

  it("`job watch` of a failed job prints its recorded reason, offline, and exits 1", async () => {
    const [watch, json, completed] = await Promise.all([
      baton(["job", "watch", FAILED_JOB, "--data-dir", tenant(), "--network", path.join(dir, "network.json")]),
      baton(["job", "watch", FAILED_JOB, "--data-dir", tenant(), "--json"]),
      baton(["job", "watch", COMPLETED_JOB, "--data-dir", tenant()]),
    ]);
    expect(watch.code).toBe(1);
    expect(watch.stdout).toContain(`job ${FAILED_JOB}: failed: 3 providers failed this job; its retry limit is 2`);
    expect(watch.stdout).toMatch(/^3\s+provider-3\s+failed/m);
    expect(watch.stdout).toMatch(/^2 hand-off\(s\)/m);
    expect(watch.errLines).toEqual([
      `error: job ${FAILED_JOB} failed: 3 providers failed this job; its retry limit is 2`,
    ]);
    expect(JSON.parse(json.stdout)).toMatchObject({ jobId: FAILED_JOB, state: "failed" });
    expect(completed.code, completed.stderr).toBe(0);
    expect(completed.stdout).toMatch(/^1 hand-off\(s\)/m);
  });
});

describe("a promise rejected with no handler", () => {
  it("is logged as a bug, and the process carries on", async () => {
    const script = [
      `import { surviveUnhandledRejections } from ${JSON.stringify(path.join(root, "cli/output.ts"))};`,
      `import { createLogger } from ${JSON.stringify(path.join(root, "sdk/logger.ts"))};`,
      `surviveUnhandledRejections(createLogger("process"));`,
      `Promise.reject(new Error("Want was aborted"));`,
      `setTimeout(() => console.log("still running"), 200);`,
    ].join("\n");
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script]);
    expect(stdout.trim()).toBe("still running");
    const line = JSON.parse(stderr.trim().split("\n").at(-1)!) as { level: string; msg: string; error?: unknown };
    expect(line).toMatchObject({ level: "error", msg: expect.stringMatching(/unhandled promise rejection/) });
    expect(JSON.stringify(line)).toMatch(/Want was aborted/);
  });
});
