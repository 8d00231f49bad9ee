import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import {
  createPublicClient,
  createTestClient,
  createWalletClient,
  http,
  parseEther,
  ResponseBodyTooLargeError,
  type Hex,
} from "viem";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { deployBaton, writeDeployment } from "../../deploy/deploy.ts";
import { devAccount, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { auditProvider } from "../../sdk/actions/auditProvider.ts";
import { createChainClient } from "../../sdk/chain/client.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { ChainError } from "../../sdk/errors.ts";
import { findLastLog, isLogRangeError, scanLogs, type BlockRange, type LogScanProgress } from "../../sdk/chain/logs.ts";
import { devTokenAbi, providerRegistryAbi } from "../../sdk/generated/abis.ts";
import { spawnScript, stopAll } from "../helpers/processes.ts";
import { startRpcProxy, type RpcProxy } from "../helpers/rpc-proxy.ts";

// Public RPC nodes refuse eth_getLogs over wide ranges: scans go in pages, halve what the node
// refuses, retry a failed page where they stopped, and report progress.
const deployer = devAccount(0);
const provider = devAccount(1);
const CAP = 1_000n;
const GAP = 2_400;

let chain: LocalChain;
let proxy: RpcProxy;
let dir: string;
let deployment: Deployment;
let deploymentFile: string;
let mintBlocks: bigint[];
let head: bigint;

const publicClient = () => createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl), pollingInterval: 50 });
const wallet = (account = deployer) => createWalletClient({ chain: hardhat, account, transport: http(chain.rpcUrl) });

async function send(hash: Promise<Hex>): Promise<bigint> {
  const receipt = await publicClient().waitForTransactionReceipt({ hash: await hash });
  expect(receipt.status).toBe("success");
  return receipt.blockNumber;
}

beforeAll(async () => {
  chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-logs-"));
  deployment = await deployBaton({ walletClient: wallet(), publicClient: publicClient() });
  deploymentFile = await writeDeployment(path.join(dir, "deployments"), deployment);
  const { stakingToken, providerRegistry } = deployment.contracts;
  const testClient = createTestClient({ chain: hardhat, mode: "hardhat", transport: http(chain.rpcUrl) });
  // Four mints (and a registration) with 2,400 empty blocks between them: a scan in pages of 1,000
  // meets pages with events and pages without.
  mintBlocks = [];
  for (let i = 0; i < 4; i++) {
    mintBlocks.push(
      await send(
        wallet().writeContract({
          address: stakingToken,
          abi: devTokenAbi,
          functionName: "mint",
          args: [provider.address, parseEther("500")],
        }),
      ),
    );
    await testClient.mine({ blocks: GAP });
  }
  await send(
    wallet(provider).writeContract({
      address: stakingToken,
      abi: devTokenAbi,
      functionName: "approve",
      args: [providerRegistry, parseEther("500")],
    }),
  );
  await send(
    wallet(provider).writeContract({
      address: providerRegistry,
      abi: providerRegistryAbi,
      functionName: "register",
      args: ["12D3KooWLogsProvider", "{}", parseEther("500")],
    }),
  );
  await testClient.mine({ blocks: GAP });
  head = await publicClient().getBlockNumber();
  proxy = await startRpcProxy(chain.rpcUrl, { maxLogRange: CAP });
}, 120_000);

afterAll(async () => {
  await stopAll();
  await proxy?.stop();
  await chain?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Mint events of the staking token, read through `url` over a range. */
const readMints = (url: string) => {
  const client = createPublicClient({ chain: hardhat, transport: http(url, { retryCount: 0 }) });
  return (range: BlockRange) =>
    client.getContractEvents({
      address: deployment.contracts.stakingToken,
      abi: devTokenAbi,
      eventName: "Transfer",
      args: { to: provider.address },
      ...range,
    });
};

const logRanges = () =>
  proxy.requests
    .filter((request) => request.method === "eth_getLogs")
    .map((request) => {
      const filter = request.params[0] as { fromBlock: string; toBlock: string };
      return { fromBlock: BigInt(filter.fromBlock), toBlock: BigInt(filter.toBlock) };
    });

describe("scanLogs", () => {
  it("halves the pages a node refuses as too wide, and finds every event, in order, with progress", async () => {
    const direct = await readMints(chain.rpcUrl)({ fromBlock: deployment.deployBlock, toBlock: head });
    expect(direct.map((log) => log.blockNumber)).toEqual(mintBlocks);
    await expect(readMints(proxy.url)({ fromBlock: deployment.deployBlock, toBlock: head })).rejects.toSatisfy(
      isLogRangeError,
    );

    proxy.requests.length = 0;
    const progress: LogScanProgress[] = [];
    const found = await scanLogs(readMints(proxy.url), {
      what: "mints",
      fromBlock: deployment.deployBlock,
      toBlock: head,
      onProgress: (p) => progress.push(p),
    });
    expect(found.map((log) => log.transactionHash)).toEqual(direct.map((log) => log.transactionHash));
    // 10,000 refused, then 5,000, 2,500 and 1,250; 625 from then on.
    const ranges = logRanges();
    expect(ranges.slice(0, 5).map((r) => r.toBlock - r.fromBlock + 1n)).toEqual([
      10_000n,
      5_000n,
      2_500n,
      1_250n,
      625n,
    ]);
    expect(ranges.slice(4).every((r) => r.toBlock - r.fromBlock + 1n <= CAP)).toBe(true);
    const total = head - deployment.deployBlock + 1n;
    expect(progress.map((p) => p.scanned)).toEqual(
      [...progress.map((p) => p.scanned)].sort((a, b) => (a < b ? -1 : 1)),
    );
    expect(progress.at(-1)).toMatchObject({ what: "mints", scanned: total, total });
  });

  it("counts an answer over viem's response size limit as a page too large (a local chain caps neither range nor results)", () => {
    const tooLarge = new ResponseBodyTooLargeError({ maxSize: 10_485_760, size: 14_601_229 });
    expect(isLogRangeError(tooLarge)).toBe(true);
    expect(isLogRangeError(new ChainError("reading events failed", { cause: tooLarge }))).toBe(true);
  });

  it("retries a page the node failed and goes on from there, not from the start", async () => {
    proxy.requests.length = 0;
    let pages = 0;
    const found = await scanLogs(
      async (range) => {
        // The fourth page's first try meets an overloaded node.
        if (++pages === 4) proxy.fail("eth_getLogs", "error");
        return readMints(proxy.url)(range);
      },
      { what: "mints", fromBlock: deployment.deployBlock, toBlock: head, maxRange: CAP },
    );
    expect(found.map((log) => log.blockNumber)).toEqual(mintBlocks);
    const ranges = logRanges().map((r) => `${r.fromBlock}-${r.toBlock}`);
    // The failed page is asked twice, in a row; no other page twice.
    expect(ranges[3]).toBe(ranges[4]);
    expect(new Set(ranges).size).toBe(ranges.length - 1);
  });

  it("findLastLog reads from the newest block back and stops at the first page with the event", async () => {
    proxy.requests.length = 0;
    const last = await findLastLog(readMints(proxy.url), {
      what: "the last mint",
      fromBlock: deployment.deployBlock,
      toBlock: head,
      maxRange: CAP,
    });
    expect(last?.blockNumber).toBe(mintBlocks.at(-1));
    // The last mint is 2 × 2,400 + 2 blocks below the head: the fifth page of 1,000 holds it.
    expect(logRanges()).toHaveLength(5);
    expect(
      await findLastLog(readMints(proxy.url), {
        what: "a mint after the last",
        fromBlock: mintBlocks.at(-1)! + 1n,
        toBlock: head,
      }),
    ).toBeUndefined();
  });
});

describe("audits through an RPC that caps log ranges", () => {
  it("auditProvider in pages equals auditProvider in one range", async () => {
    const direct = await auditProvider(
      { chain: createChainClient({ rpcUrl: chain.rpcUrl, deployment, maxLogRange: 1_000_000n }) },
      { provider: provider.address },
    );
    const progress: LogScanProgress[] = [];
    const paged = await auditProvider(
      { chain: createChainClient({ rpcUrl: proxy.url, deployment, maxLogRange: CAP }) },
      { provider: provider.address, onProgress: (p) => progress.push(p) },
    );
    expect(paged).toEqual(direct);
    expect(paged.peerId).toBe("12D3KooWLogsProvider");
    expect(progress.length).toBeGreaterThan(10);
  });

  it("baton audit provider pages by itself, takes --max-log-range, shows progress on a long scan, refuses a bad range, fails over between --rpc-urls", async () => {
    const audit = async (...extra: string[]) => {
      const run = spawnScript("cli/baton.ts", [
        "audit",
        "provider",
        provider.address,
        "--rpc-url",
        proxy.url,
        "--deployment",
        deploymentFile,
        "--json",
        ...extra,
      ]);
      const { code } = await run.closed;
      return { code, stdout: run.stdout.join("\n"), stderr: run.stderr.join("\n") };
    };
    // The default asks for 10,000 blocks; the node refuses, and the pages shrink until it answers.
    const halved = await audit();
    expect(halved.code).toBe(0);
    expect(JSON.parse(halved.stdout)).toMatchObject({ provider: provider.address, peerId: "12D3KooWLogsProvider" });

    // Pages of 50 blocks: hundreds of requests per event, seconds in all.
    const paged = await audit("--max-log-range", "50");
    expect(paged.code).toBe(0);
    expect(JSON.parse(paged.stdout)).toMatchObject({ provider: provider.address, peerId: "12D3KooWLogsProvider" });
    expect(paged.stderr).toMatch(/reading events: \d+ of \d+ blocks/);

    const bad = await audit("--max-log-range", "0");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--max-log-range must be from 1/);

    // Repeated, --rpc-url lists endpoints in order of preference, all of them used: a dead one
    // first costs a failover, a dead one last is never needed.
    const runs = [
      ["http://127.0.0.1:1", chain.rpcUrl],
      [chain.rpcUrl, "http://127.0.0.1:1"],
    ].map((urls) =>
      spawnScript("cli/baton.ts", [
        "audit",
        "provider",
        provider.address,
        ...urls.flatMap((url) => ["--rpc-url", url]),
        "--deployment",
        deploymentFile,
        "--json",
      ]),
    );
    for (const run of runs) {
      expect((await run.closed).code, run.stderr.join("\n")).toBe(0);
      expect(JSON.parse(run.stdout.join("\n"))).toMatchObject({ provider: provider.address });
    }
  });
});
