import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { createPublicClient, http, parseEther } from "viem";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { devAccount, LOCAL_CHAINS, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { parseDeployment } from "../../sdk/chain/deployments.ts";
import { isAlive, root, spawnScript, until } from "../helpers/processes.ts";

const run = promisify(execFile);
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-cli-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("npm run demo", () => {
  // On both EVMs a devnet runs, one after the other.
  it.each(LOCAL_CHAINS)(
    "on %s: runs the market, kills the serving provider mid-job, hands off, verifies the result, slashes, and leaves no process behind",
    async (chain) => {
      const { stdout } = await run(
        process.execPath,
        [
          "--disable-warning=ExperimentalWarning",
          "scripts/demo.ts",
          "--chain",
          chain,
          "--json",
          "--steps",
          "600",
          "--checkpoint-every",
          "100",
          "--fail-after-checkpoints",
          "2",
        ],
        { cwd: root, timeout: 240_000, maxBuffer: 64 * 1024 * 1024 },
      );
      const last = stdout.trim().split("\n").at(-1)!;
      const { summary } = JSON.parse(last) as {
        summary: {
          chain: string;
          outcome: string;
          handOffs: number;
          detectMs: number;
          killToRunningMs: number;
          workLostSteps: number;
          slashedCollateral: string;
          compensationToTenant: string;
          checks: { check: string; ok: boolean; detail: string }[];
        };
      };
      expect(summary.chain).toBe(chain);
      expect(summary.checks.filter((c) => !c.ok)).toEqual([]);
      expect(summary.checks.map((c) => c.check)).toEqual([
        "job completed",
        "a hand-off happened",
        "the dead lease was slashed",
        "result equals an uninterrupted run",
        "every lease ended on chain",
        "no live, honest provider slashed",
        "no process left behind",
      ]);
      expect(summary.handOffs).toBe(1);
      expect(summary.detectMs).toBeGreaterThanOrEqual(0);
      expect(summary.killToRunningMs).toBeGreaterThan(summary.detectMs);
      expect(summary.workLostSteps).toBeGreaterThan(0);
      expect(BigInt(summary.compensationToTenant)).toBeGreaterThan(0n);
      // Every event line before the summary is JSON too, for machines.
      for (const line of stdout.trim().split("\n").slice(0, -1)) {
        if (line.startsWith("{")) expect(() => JSON.parse(line)).not.toThrow();
      }
    },
  );
});

describe("baton devnet", () => {
  /** `baton …` against the devnet, to completion. */
  async function baton(args: string[], env: Record<string, string> = {}) {
    const run = spawnScript("cli/baton.ts", args, env);
    const { code } = await run.closed;
    return { code, stdout: run.stdout.join("\n"), output: run.lines.join("\n") };
  }

  // One run prints for people, on Hardhat; the other prints the network as JSON, on Anvil, whose
  // binary runs under a server of ours that must take it along when the devnet is killed outright.
  const runs = [
    { how: "SIGINT", chain: "hardhat" },
    { how: "SIGKILL", chain: "anvil" },
  ] as const;
  for (const { how, chain } of runs) {
    const json = how === "SIGKILL";
    it(`starts a network on ${chain}${json ? " (--json)" : ""} and, on ${how}, leaves no chain or provider behind`, async () => {
      const devnetDir = path.join(dir, `devnet-${how}`);
      const devnet = spawnScript("cli/baton.ts", [
        "devnet",
        "--providers",
        "2",
        "--chain",
        chain,
        "--dir",
        devnetDir,
        ...(json ? ["--json"] : []),
      ]);
      try {
        let pids: number[];
        if (json) {
          await devnet.waitFor(/^}$/, 120_000);
          const printed = JSON.parse(devnet.stdout.join("\n")) as {
            chain: string;
            networkFile: string;
            keystorePassword: string;
            providers: { name: string; pid: number; dataDir: string }[];
          };
          expect(printed.chain).toBe(chain);
          expect(printed.networkFile).toBe(path.relative(root, path.join(devnetDir, "network.json")));
          expect(printed.keystorePassword).toBe("devnet");
          expect(printed.providers.map((p) => p.name)).toEqual(["provider-1", "provider-2"]);
          pids = printed.providers.map((p) => p.pid);
        } else {
          await devnet.waitFor(/Ctrl-C stops everything/, 120_000);
          pids = devnet.lines.flatMap((line) => {
            const match = /provider-\d+\s+0x[0-9a-fA-F]{40}\s+pid (\d+)/.exec(line);
            return match ? [Number(match[1])] : [];
          });
          expect(devnet.lines).toContain('provider keystores: <provider dir>/key.json, password "devnet"');
          expect(devnet.lines.find((line) => line.startsWith("devnet up:"))).toContain("(Hardhat/EDR, chain id 31337");
        }
        await usableWithTheProviderCommands(devnetDir);
        expect(pids).toHaveLength(2);
        const network = JSON.parse(await readFile(path.join(devnetDir, "network.json"), "utf8"));
        expect(network.bootstrap).toHaveLength(2);
        const chainPort = Number(new URL(network.rpcUrl).port);
        devnet.child.kill(how);
        await devnet.exited;
        await until(() => pids.every((pid) => !isAlive(pid)), 20_000, "providers stopped");
        // The chain is gone too: nothing answers on its port.
        await until(
          () =>
            fetch(`http://127.0.0.1:${chainPort}`, { method: "POST", body: "{}" }).then(
              () => false,
              () => true,
            ),
          20_000,
          "chain stopped",
        );
      } finally {
        await devnet.stop();
      }
    });
  }

  /**
   * A devnet provider opens with the documented password; `devnet fund` pays from the network file,
   * ETH too (a plain transfer from dev account 0: no chain's own `*_setBalance`).
   */
  async function usableWithTheProviderCommands(devnetDir: string): Promise<void> {
    const network = path.join(devnetDir, "network.json");
    const status = await baton(["provider", "status", "--data-dir", path.join(devnetDir, "provider-1"), "--json"], {
      BATON_KEYSTORE_PASSWORD: "devnet",
    });
    expect(status.code, status.output).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({
      address: devAccount(1).address,
      provider: { registered: true, stake: parseEther("500").toString() },
    });
    const someone = devAccount(15).address;
    const funded = await baton(["devnet", "fund", someone, "--network", network, "--eth", "1", "--json"]);
    expect(funded.code, funded.output).toBe(0);
    expect(JSON.parse(funded.stdout)).toMatchObject({
      address: someone,
      paymentTokens: parseEther("1000").toString(),
      eth: parseEther("1").toString(),
    });
    const { rpcUrl } = JSON.parse(await readFile(network, "utf8")) as { rpcUrl: string };
    const balance = createPublicClient({ chain: hardhat, transport: http(rpcUrl) }).getBalance({ address: someone });
    expect(await balance).toBe(parseEther("10001"));
  }
});

describe("npm run deploy", () => {
  let chain: LocalChain;
  beforeAll(async () => {
    chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  });
  afterAll(async () => {
    await chain?.stop();
  });

  it("deploys to an RPC URL and writes deployments/<chainId>.json", async () => {
    const out = path.join(dir, "deploy");
    const { stdout } = await run(
      process.execPath,
      ["deploy/main.ts", "--rpc-url", chain.rpcUrl, "--out", out, "--min-stake", "5"],
      {
        cwd: root,
        timeout: 60_000,
      },
    );
    expect(stdout).toContain("deployed to chain 31337");
    const deployment = parseDeployment(JSON.parse(await readFile(path.join(out, "31337.json"), "utf8")));
    expect(deployment.parameters.minStake).toBe(5n);
    expect(deployment.parameters.devTokens).toBe(true);
  });

  it("prints the deployment as JSON with --json, its progress on stderr", async () => {
    const out = path.join(dir, "deploy-json");
    const { stdout, stderr } = await run(
      process.execPath,
      ["deploy/main.ts", "--rpc-url", chain.rpcUrl, "--out", out, "--json"],
      { cwd: root, timeout: 60_000 },
    );
    const printed = JSON.parse(stdout) as { file: string; chainId: number; contracts: Record<string, string> };
    expect(printed.file).toBe(path.join(out, "31337.json"));
    expect(printed.chainId).toBe(31337);
    expect(parseDeployment(JSON.parse(await readFile(printed.file, "utf8"))).contracts).toEqual(printed.contracts);
    expect(stderr).toContain("LeaseManager");
  });

  it("says clearly when no node answers", async () => {
    const failed = run(process.execPath, ["deploy/main.ts", "--rpc-url", "http://127.0.0.1:9", "--out", dir], {
      cwd: root,
      timeout: 60_000,
    });
    await expect(failed).rejects.toMatchObject({
      stderr: expect.stringContaining("no JSON-RPC node answers at http://127.0.0.1:9"),
    });
  });

  it("refuses an unknown option or a bad value before touching the chain: one line, exit code 2", async () => {
    const cases: [string[], string][] = [
      [["--treasury", "0x1234"], "error: --treasury is not an address: 0x1234\n"],
      [["--bogus"], "error: unknown option '--bogus'; see `npm run deploy -- --help`\n"],
      [
        ["--unbonding-period", "10"],
        "error: unbondingPeriod (10 s) must exceed maxHeartbeatTimeout (3600 s), or unbonding stake could escape a slash\n",
      ],
      [
        ["--block-time", "12"],
        "error: minHeartbeatTimeout (4 s) is too short for a chain with 12 s blocks: quotes could set timeouts that honest providers cannot keep; it must be at least 26 s (two gaps of a 1 s heartbeat period plus a block)\n",
      ],
      [["--block-time", "soon"], "error: --block-time must be a number of seconds from 0 to 60, not soon\n"],
    ];
    for (const [args, stderr] of cases) {
      const failed = run(process.execPath, ["deploy/main.ts", "--rpc-url", chain.rpcUrl, ...args], {
        cwd: root,
        timeout: 60_000,
      });
      await expect(failed, args.join(" ")).rejects.toMatchObject({ code: 2, stderr, stdout: "" });
    }
  });
});
