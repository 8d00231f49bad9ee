import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { parseDeployment } from "../../sdk/chain/deployments.ts";
import { isAlive, spawnScript, until } from "../helpers/processes.ts";

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, "../..");
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-cli-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("npm run demo", () => {
  it("runs the market, kills the serving provider mid-job, hands off, verifies the result, slashes, and leaves no process behind", async () => {
    const { stdout } = await run(
      process.execPath,
      [
        "--disable-warning=ExperimentalWarning",
        "scripts/demo.ts",
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
    expect(summary.checks.filter((c) => !c.ok)).toEqual([]);
    expect(summary.checks.map((c) => c.check)).toEqual([
      "job completed",
      "a hand-off happened",
      "the dead lease was slashed",
      "result equals an uninterrupted run",
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
  });
});

describe("baton devnet", () => {
  for (const how of ["SIGINT", "SIGKILL"] as const) {
    it(`starts a network and, on ${how}, leaves no chain or provider behind`, async () => {
      const devnetDir = path.join(dir, `devnet-${how}`);
      const devnet = spawnScript("cli/baton.ts", ["devnet", "--providers", "2", "--dir", devnetDir]);
      try {
        await devnet.waitFor(/Ctrl-C stops everything/, 120_000);
        const pids = devnet.lines.flatMap((line) => {
          const match = /provider-\d+\s+0x[0-9a-fA-F]{40}\s+pid (\d+)/.exec(line);
          return match ? [Number(match[1])] : [];
        });
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

  it("says clearly when no node answers", async () => {
    const failed = run(process.execPath, ["deploy/main.ts", "--rpc-url", "http://127.0.0.1:9", "--out", dir], {
      cwd: root,
      timeout: 60_000,
    });
    await expect(failed).rejects.toMatchObject({
      stderr: expect.stringContaining("no JSON-RPC node answers at http://127.0.0.1:9"),
    });
  });

  it("refuses a bad parameter before touching the chain", async () => {
    const failed = run(process.execPath, ["deploy/main.ts", "--rpc-url", chain.rpcUrl, "--treasury", "0x1234"], {
      cwd: root,
      timeout: 60_000,
    });
    await expect(failed).rejects.toMatchObject({ stderr: expect.stringContaining("--treasury is not an address") });
  });
});
