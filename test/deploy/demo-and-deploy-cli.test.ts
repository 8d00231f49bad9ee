import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { parseDeployment } from "../../sdk/chain/deployments.ts";

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, "../..");
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-cli-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("npm run demo (interim: chain + contracts)", () => {
  it("starts a chain, deploys, prints the addresses and leaves no chain behind with --exit", async () => {
    const out = path.join(dir, "demo");
    const { stdout } = await run(process.execPath, ["scripts/demo.ts", "--exit", "--port", "0", "--out", out], {
      cwd: root,
      timeout: 90_000,
    });
    const pid = Number(/\(pid (\d+)\)/.exec(stdout)?.[1]);
    expect(pid).toBeGreaterThan(0);
    expect(isAlive(pid)).toBe(false);
    const deployment = parseDeployment(JSON.parse(await readFile(path.join(out, "31337.json"), "utf8")));
    expect(stdout).toContain(deployment.contracts.leaseManager);
    expect(stdout).toContain(deployment.contracts.providerRegistry);
  });
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
