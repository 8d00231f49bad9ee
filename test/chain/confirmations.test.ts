import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import {
  createPublicClient,
  createTestClient,
  createWalletClient,
  encodeFunctionData,
  http,
  keccak256,
  parseEther,
  toHex,
  zeroHash,
  type Hex,
} from "viem";
import type { HDAccount } from "viem/accounts";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { deployBaton, writeDeployment } from "../../deploy/deploy.ts";
import { devAccount, LOCAL_CHAINS, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { auditJob } from "../../sdk/actions/auditJob.ts";
import { auditLease } from "../../sdk/actions/auditLease.ts";
import { auditProvider } from "../../sdk/actions/auditProvider.ts";
import { contracts, createChainClient, leaseStatus, writeContract, type ChainClient } from "../../sdk/chain/client.ts";
import {
  checkConfirmations,
  confirmedBlock,
  confirmedBlockNumber,
  waitForConfirmations,
} from "../../sdk/chain/confirmations.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { leaseIdFromReceipt } from "../../sdk/chain/permit.ts";
import { signQuote } from "../../sdk/chain/quote.ts";
import { UserError } from "../../sdk/errors.ts";
import { silentLogger } from "../../sdk/logger.ts";
import { followOpening } from "../../sdk/tenant/lease-confirmation.ts";
import { endLease, slashWhenDue } from "../../sdk/tenant/lease-settlement.ts";
import { spawnScript, stopAll, until } from "../helpers/processes.ts";
import { startRpcProxy, type RpcProxy } from "../helpers/rpc-proxy.ts";

// Confirmations against a real chain that reorgs. The chain mines a block per transaction, and empty
// blocks when a test says so (`mine`); a reorg is evm_snapshot before a transaction and evm_revert
// after it, which drops the blocks since the snapshot with every transaction in them (EDR keeps none
// in its mempool), as a reorg does whose new branch left them out. Readers go through an RPC proxy,
// whose log of requests shows when a reader has looked at a new head.

const deployer = devAccount(0);
const provider = devAccount(1);
const tenantA = devAccount(2);
const tenantB = devAccount(3);

let chain: LocalChain;
let proxy: RpcProxy;
let deployment: Deployment;
let deploymentFile: string;
let dir: string;
let nonce = 0n;

const transport = () => http(chain.rpcUrl);
const publicClient = () => createPublicClient({ chain: hardhat, transport: transport(), pollingInterval: 20 });
const testClient = () => createTestClient({ chain: hardhat, mode: chain.kind, transport: transport() });
/** A client of `account`'s through the proxy, trusting blocks `confirmations` deep. */
const clientOf = (account: HDAccount | undefined, confirmations: number): ChainClient =>
  createChainClient({
    rpcUrl: proxy.url,
    deployment,
    ...(account ? { account } : {}),
    pollingIntervalMs: 20,
    confirmations,
  });

/** The arguments of an `openLease` by `tenant` with a fresh quote of the provider's (timing out `timeoutS` after opening). */
async function openingArgs(tenant: HDAccount, timeoutS = 600) {
  const { leaseManager } = contracts(deployment);
  const block = await publicClient().getBlock();
  const quote = {
    provider: provider.address,
    tenant: tenant.address,
    jobId: keccak256(toHex(`confirmations-job-${nonce}`)),
    resources: keccak256(toHex("gpu:1xfake")),
    image: zeroHash,
    pricePerSecond: parseEther("0.0001"),
    collateral: parseEther("10"),
    heartbeatPeriod: 1n,
    heartbeatTimeout: BigInt(timeoutS),
    maxDuration: 3600n,
    expiry: block.timestamp + 600n,
    nonce: nonce++,
  };
  const signature = await signQuote(provider, hardhat.id, leaseManager.address, quote);
  return [quote, signature, parseEther("1"), 0n] as const;
}

/** `tenant`'s opening of a lease, signed: it can be sent again after a reorg dropped it, as a node would re-send it. */
async function signedOpening(tenant: HDAccount, tip?: bigint): Promise<Hex> {
  const wallet = createWalletClient({ chain: hardhat, account: tenant, transport: transport() });
  const request = await wallet.prepareTransactionRequest({
    to: deployment.contracts.leaseManager,
    data: encodeFunctionData({
      abi: contracts(deployment).leaseManager.abi,
      functionName: "openLease",
      args: await openingArgs(tenant),
    }),
    gas: 1_000_000n,
    ...(tip === undefined ? {} : { maxPriorityFeePerGas: tip, maxFeePerGas: parseEther("0.000001") }),
  });
  return wallet.signTransaction(request);
}

/** Sends a signed transaction and waits for its receipt (a block of its own while automining). */
async function mined(serializedTransaction: Hex) {
  const hash = await publicClient().sendRawTransaction({ serializedTransaction });
  return publicClient().waitForTransactionReceipt({ hash });
}

async function openLease(tenant: HDAccount, timeoutS?: number): Promise<{ leaseId: bigint; hash: Hex; block: bigint }> {
  const own = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account: tenant, pollingIntervalMs: 20 });
  const { leaseManager } = contracts(deployment);
  const receipt = await writeContract(own, {
    ...leaseManager,
    functionName: "openLease",
    args: await openingArgs(tenant, timeoutS),
  });
  return {
    leaseId: leaseIdFromReceipt(receipt, leaseManager.address),
    hash: receipt.transactionHash,
    block: receipt.blockNumber,
  };
}

const mine = (blocks = 1) => testClient().mine({ blocks });

/**
 * Resolves once a reader polling through the proxy has looked at the chain since `mark` (a request
 * index) with `method`, and then began its next look (a read of the head): what it saw, it acted on.
 */
/** A read of the chain's head: the latest block (waitForConfirmations), or its number (the other readers). */
const startsALook = (r: { method: string; params: unknown[] }): boolean =>
  r.method === "eth_blockNumber" || (r.method === "eth_getBlockByNumber" && r.params[0] === "latest");

async function lookedAgain(mark: number, method: string): Promise<void> {
  await until(
    () => {
      const since = proxy.requests.slice(mark);
      const at = since.findIndex((r) => r.method === method);
      return at >= 0 && since.slice(at + 1).some(startsALook);
    },
    30_000,
    `a look with ${method}`,
  );
}

/**
 * Mines a block every 100 ms until `done` settles, as a live chain goes on after a reorg: a reader
 * concludes that a transaction vanished once it is missing at two heads.
 */
async function whileMining<T>(done: Promise<T>): Promise<T> {
  const ticking = setInterval(() => void mine().catch(() => undefined), 100);
  try {
    return await done;
  } finally {
    clearInterval(ticking);
  }
}

/** A promise's outcome so far, without waiting for it. */
function settledState<T>(promise: Promise<T>): () => boolean {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  return () => settled;
}

// Both EVMs a devnet runs: each reorgs by evm_snapshot and evm_revert.
describe.each(LOCAL_CHAINS)("on a local %s chain", (kind) => {
  beforeAll(async () => {
    chain = await startLocalChain({ chain: kind, signal: AbortSignal.timeout(60_000) });
    proxy = await startRpcProxy(chain.rpcUrl);
    deployment = await deployBaton({
      walletClient: createWalletClient({ chain: hardhat, account: deployer, transport: transport() }),
      publicClient: publicClient(),
    });
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-confirmations-"));
    deploymentFile = await writeDeployment(path.join(dir, "deployments"), deployment);
    const admin = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account: deployer, pollingIntervalMs: 20 });
    const providerChain = createChainClient({
      rpcUrl: chain.rpcUrl,
      deployment,
      account: provider,
      pollingIntervalMs: 20,
    });
    const { stakingToken, paymentToken, registry, leaseManager } = contracts(deployment);
    await writeContract(admin, { ...stakingToken, functionName: "mint", args: [provider.address, parseEther("1000")] });
    await writeContract(providerChain, {
      ...stakingToken,
      functionName: "approve",
      args: [registry.address, parseEther("1000")],
    });
    await writeContract(providerChain, {
      ...registry,
      functionName: "register",
      args: ["12D3KooWConfirmations", "{}", parseEther("500")],
    });
    for (const tenant of [tenantA, tenantB]) {
      await writeContract(admin, { ...paymentToken, functionName: "mint", args: [tenant.address, parseEther("100")] });
      const own = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account: tenant, pollingIntervalMs: 20 });
      await writeContract(own, {
        ...paymentToken,
        functionName: "approve",
        args: [leaseManager.address, parseEther("100")],
      });
    }
  }, 120_000);

  afterAll(async () => {
    await stopAll();
    await proxy?.stop();
    await chain?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  describe("the confirmation depth", () => {
    it("is a whole number of blocks: the trusted block is the head that many blocks back, never below 0", () => {
      expect(confirmedBlockNumber(100n, 0)).toBe(100n);
      expect(confirmedBlockNumber(100n, 12)).toBe(88n);
      expect(confirmedBlockNumber(5n, 12)).toBe(0n);
      expect(checkConfirmations(12)).toBe(12);
      for (const bad of [-1, 1.5, 10_001, Number.NaN]) expect(() => checkConfirmations(bad)).toThrow(UserError);
      expect(() => clientOf(undefined, -1)).toThrow(
        "confirmations must be a whole number of blocks from 0 to 10000, not -1",
      );
    });

    it("confirmedBlock is the latest block at 0, and the block that many below the head otherwise", async () => {
      const head = await publicClient().getBlock();
      expect((await confirmedBlock(clientOf(undefined, 0))).hash).toBe(head.hash);
      const deep = await confirmedBlock(clientOf(undefined, 3));
      expect(deep.number).toBe(head.number - 3n);
      expect(deep.hash).toBe((await publicClient().getBlock({ blockNumber: head.number - 3n })).hash);
    });
  });

  describe("waitForConfirmations", () => {
    it("resolves once N blocks lie on the transaction's block, and not one block before", async () => {
      const { hash, block } = await openLease(tenantA);
      const waiting = waitForConfirmations(clientOf(undefined, 3), { hash });
      const settled = settledState(waiting);
      for (let i = 1; i <= 2; i++) {
        const mark = proxy.requests.length;
        await mine();
        // The waiter fetched the receipt at the new head (it does only when the head moved) and went on waiting.
        await lookedAgain(mark, "eth_getTransactionReceipt");
        expect(settled()).toBe(false);
      }
      await mine();
      const fate = await waiting;
      expect(fate.state).toBe("confirmed");
      expect(fate.state === "confirmed" && fate.receipt.blockNumber).toBe(block);
    });

    it("at 0 confirmations, resolves at once with a mined transaction's receipt", async () => {
      const { hash } = await openLease(tenantA);
      const fate = await waitForConfirmations(clientOf(undefined, 0), { hash });
      expect(fate).toMatchObject({ state: "confirmed", receipt: { transactionHash: hash } });
    });

    it("says `vanished` when a reorg drops the transaction, and the lease it opened is gone from every reader", async () => {
      const test = testClient();
      const snapshot = await test.snapshot();
      const { leaseId, hash } = await openLease(tenantA);
      const deep = clientOf(tenantA, 2);
      const waiting = waitForConfirmations(deep, { hash });
      const opening = followOpening(deep, { leaseId, openingTx: hash, tenant: tenantA.address });
      const byLog = followOpening(deep, { leaseId, tenant: tenantA.address });
      // Seen on chain by the newest block first, as a job runner sees its lease opened.
      expect((await auditLease({ chain: clientOf(undefined, 0) }, { leaseId })).status).toBe("active");

      await test.revert({ id: snapshot });
      const [waited, followed, found] = await whileMining(Promise.all([waiting, opening, byLog]));

      expect(waited).toMatchObject({ state: "vanished", reason: expect.stringContaining("a reorg dropped it") });
      expect(followed).toMatchObject({ state: "vanished", reason: expect.stringContaining("its opening vanished") });
      expect(found).toMatchObject({ state: "vanished" });
      await expect(auditLease({ chain: clientOf(undefined, 0) }, { leaseId })).rejects.toThrow(`no lease ${leaseId}`);
      // Settlement leaves a phantom alone: nothing to close.
      expect(await endLease({ chain: deep, transact: (send) => send() }, { leaseId })).toEqual({
        call: undefined,
        status: "None",
      });
    });

    it("waits for a transaction a reorg put back in the mempool, and counts its depth from the block that mines it again", async () => {
      const test = testClient();
      const raw = await signedOpening(tenantA);
      const snapshot = await test.snapshot();
      const first = await mined(raw);
      const opening = followOpening(clientOf(undefined, 2), {
        leaseId: leaseIdFromReceipt(first, deployment.contracts.leaseManager),
        openingTx: first.transactionHash,
        tenant: tenantA.address,
      });
      const settled = settledState(opening);
      await test.setAutomine(false);
      // The follower sees no new head until the transaction is back in a mempool: on a loaded
      // machine it could otherwise look at two heads without it, and rightly call it vanished.
      proxy.fail("eth_getBlockByNumber", "blackhole", 1_000);
      try {
        await test.revert({ id: snapshot });
        // The new branch has a block without it first; then it is back in a mempool (a node that
        // saw the reorg keeps it there): pending, and waited for.
        await mine();
        await publicClient().sendRawTransaction({ serializedTransaction: raw });
        const mark = proxy.requests.length;
        proxy.heal();
        await lookedAgain(mark, "eth_getTransactionByHash");
        expect(settled()).toBe(false);
        await mine();
        const again = await publicClient().getTransactionReceipt({ hash: first.transactionHash });
        expect(again.blockNumber).toBe(first.blockNumber + 1n);
        await mine();
        const beforeLast = proxy.requests.length;
        await lookedAgain(beforeLast, "eth_getTransactionReceipt");
        expect(settled()).toBe(false);
        await mine();
        expect(await opening).toEqual({ state: "confirmed", blockNumber: again.blockNumber });
      } finally {
        proxy.heal();
        await test.setAutomine(true);
      }
    });
  });

  describe("followOpening", () => {
    it("says `moved` when a reorg mines the opening again behind another tenant's, under another lease id", async () => {
      const test = testClient();
      const raw = await signedOpening(tenantA);
      const snapshot = await test.snapshot();
      const first = await mined(raw);
      const leaseId = leaseIdFromReceipt(first, deployment.contracts.leaseManager);
      const deep = clientOf(tenantA, 1);
      const opening = followOpening(deep, { leaseId, openingTx: first.transactionHash, tenant: tenantA.address });

      const openingB = await signedOpening(tenantB, parseEther("0.0000001"));
      await test.setAutomine(false);
      try {
        await test.revert({ id: snapshot });
        // The new branch's first block: tenant B's opening first (a higher tip: it takes the id), then A's again.
        await publicClient().sendRawTransaction({ serializedTransaction: openingB });
        await publicClient().sendRawTransaction({ serializedTransaction: raw });
        await mine(2);
      } finally {
        await test.setAutomine(true);
      }
      const again = await publicClient().getTransactionReceipt({ hash: first.transactionHash });
      const other = await publicClient().getTransactionReceipt({ hash: keccak256(openingB) });
      expect(other.blockNumber).toBe(again.blockNumber);
      expect(leaseIdFromReceipt(other, deployment.contracts.leaseManager)).toBe(leaseId);

      expect(await opening).toEqual({
        state: "moved",
        leaseId: leaseId + 1n,
        reason: `a reorg mined its opening again, as lease ${leaseId + 1n}`,
      });
      expect(leaseIdFromReceipt(again, deployment.contracts.leaseManager)).toBe(leaseId + 1n);
      // Found by its event instead of its transaction, the id is B's now: not A's lease.
      expect(await followOpening(deep, { leaseId, tenant: tenantA.address })).toMatchObject({ state: "vanished" });
      // A never ends B's lease on the strength of an id it once had.
      expect(await endLease({ chain: deep, transact: (send) => send() }, { leaseId })).toEqual({
        call: undefined,
        status: "None",
      });
      const { leaseManager } = contracts(deployment);
      const view = await publicClient().readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] });
      expect(leaseStatus[view.status]).toBe("Active");
    });
  });

  describe("audits at a confirmation depth", () => {
    it("show no event younger than N blocks: a lease appears, and its close shows, N blocks after they were mined", async () => {
      const { leaseId, block } = await openLease(tenantA);
      const { jobId } = (await publicClient().readContract({
        ...contracts(deployment).leaseManager,
        functionName: "getLease",
        args: [leaseId],
      })) as { jobId: Hex };
      const at = (confirmations: number) => ({ chain: clientOf(undefined, confirmations) });
      const young = auditLease(at(3), { leaseId });
      await expect(young).rejects.toThrow(UserError);
      await expect(young).rejects.toThrow(
        `no lease ${leaseId} in this deployment (as of block ${block - 3n}, 3 block(s) below the head: younger events are not shown)`,
      );
      await mine(2);
      await expect(auditLease(at(3), { leaseId })).rejects.toThrow(UserError);
      // A call's own depth wins over its client's.
      expect((await auditLease(at(3), { leaseId, confirmations: 2 })).status).toBe("active");
      await mine();
      const lease = await auditLease(at(3), { leaseId });
      expect(lease.asOf).toMatchObject({ blockNumber: block, confirmations: 3 });
      expect(lease.status).toBe("active");

      const tenantChain = createChainClient({
        rpcUrl: chain.rpcUrl,
        deployment,
        account: tenantA,
        pollingIntervalMs: 20,
      });
      expect((await endLease({ chain: tenantChain, transact: (send) => send() }, { leaseId })).call).toBe("close");
      expect((await auditLease(at(0), { leaseId })).status).toBe("closing");
      expect((await auditLease(at(3), { leaseId })).history.map((h) => h.status)).toEqual(["active"]);
      expect((await auditJob(at(3), { jobId })).lineage.map((l) => l.status)).toEqual(["active"]);
      const young3 = (await auditProvider(at(3), { provider: provider.address })).leases.map((l) => l.leaseId);
      expect(young3).toContain(leaseId);
      await mine(3);
      expect((await auditLease(at(3), { leaseId })).status).toBe("closing");

      // The CLI: --confirmations, and the depth shown with the block.
      const cli = async (...args: string[]) => {
        const run = spawnScript("cli/baton.ts", [
          "audit",
          "lease",
          String(leaseId),
          "--rpc-url",
          chain.rpcUrl,
          "--deployment",
          deploymentFile,
          ...args,
        ]);
        const { code } = await run.closed;
        return { code, stdout: run.stdout.join("\n"), stderr: run.stderr.join("\n") };
      };
      const head = await publicClient().getBlockNumber();
      const json = await cli("--confirmations", "2", "--json");
      expect(json.code).toBe(0);
      expect(JSON.parse(json.stdout)).toMatchObject({ asOf: { blockNumber: String(head - 2n), confirmations: 2 } });
      const text = await cli("--confirmations", "2");
      expect(text.stdout).toMatch(new RegExp(`block ${head - 2n}, .* \\(2 confirmations: younger blocks not read\\)`));
      // So deep that the lease is younger: not there, and the message says why.
      const deeper = await cli("--confirmations", String(head - block + 1n));
      expect(deeper.code).toBe(1);
      expect(deeper.stderr).toMatch(new RegExp(`^error: no lease ${leaseId} .*younger events are not shown`));
    });
  });

  describe("slashWhenDue at a confirmation depth", () => {
    it("counts a slash once N blocks deep: a slash a reorg takes back is made again", async () => {
      const { leaseId } = await openLease(tenantA, 4);
      const test = testClient();
      // Chain time past the lease's deadline.
      await test.increaseTime({ seconds: 10 });
      await mine();
      const snapshot = await test.snapshot();
      const tenant = { chain: clientOf(tenantA, 2), transact: <T>(send: () => Promise<T>) => send() };
      const mark = proxy.requests.length;
      const slashing = slashWhenDue(tenant, { leaseId, log: silentLogger, signal: AbortSignal.timeout(60_000) });
      const settled = settledState(slashing);
      const { leaseManager } = contracts(deployment);
      const status = async () =>
        leaseStatus[
          (await publicClient().readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] })).status
        ];
      await until(async () => (await status()) === "Slashed", 30_000, "the first slash");
      await lookedAgain(mark, "eth_getTransactionReceipt");
      expect(settled()).toBe(false);

      await test.revert({ id: snapshot });
      expect(await status()).toBe("Active");
      // The chain goes on: the first slash is missing at two heads, and is made again.
      const slash = await whileMining(slashing);
      expect(await status()).toBe("Slashed");

      const sent = proxy.requests.slice(mark).filter((r) => r.method === "eth_sendRawTransaction");
      expect(sent).toHaveLength(2);
      const receipt = await publicClient().getTransactionReceipt({ hash: slash!.tx });
      expect(receipt.status).toBe("success");
      expect(slash!.compensation).toBeGreaterThan(0n);
    });
  });
});
