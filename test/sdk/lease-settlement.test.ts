import { createPublicClient, createWalletClient, http, keccak256, parseEther, toHex, zeroHash, type Hex } from "viem";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { deployBaton } from "../../deploy/deploy.ts";
import { devAccount, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { contracts, createChainClient, leaseStatus, writeContract, type ChainClient } from "../../sdk/chain/client.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { leaseIdFromReceipt } from "../../sdk/chain/permit.ts";
import { signQuote } from "../../sdk/chain/quote.ts";
import { silentLogger } from "../../sdk/logger.ts";
import { deadlineMarginS, watchChainDeadline } from "../../sdk/tenant/chain-deadline.ts";
import { endingCall, endLease, slashWhenDue, type SettlementClient } from "../../sdk/tenant/lease-settlement.ts";
import { until } from "../helpers/processes.ts";

// A provider with no node: it never heartbeats, so every lease it opens is a dead provider's lease.
// Nothing else sends transactions, so the chain mines only when these tests send one, and its latest
// block lags the clock between them: the condition that made `close` fail a hand-off.

const deployer = devAccount(0);
const provider = devAccount(1);
const tenant = devAccount(2);

let chain: LocalChain;
let deployment: Deployment;
let tenantChain: ChainClient;
let providerChain: ChainClient;
let client: SettlementClient;
let nonce = 0n;

beforeAll(async () => {
  chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  const transport = http(chain.rpcUrl);
  deployment = await deployBaton({
    walletClient: createWalletClient({ chain: hardhat, account: deployer, transport }),
    publicClient: createPublicClient({ chain: hardhat, transport }),
  });
  const deployerChain = createChainClient({
    rpcUrl: chain.rpcUrl,
    deployment,
    account: deployer,
    pollingIntervalMs: 20,
  });
  tenantChain = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account: tenant, pollingIntervalMs: 20 });
  providerChain = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account: provider, pollingIntervalMs: 20 });
  const { stakingToken, paymentToken, registry, leaseManager } = contracts(deployment);
  await writeContract(deployerChain, {
    ...stakingToken,
    functionName: "mint",
    args: [provider.address, parseEther("1000")],
  });
  await writeContract(deployerChain, {
    ...paymentToken,
    functionName: "mint",
    args: [tenant.address, parseEther("100")],
  });
  await writeContract(providerChain, {
    ...stakingToken,
    functionName: "approve",
    args: [registry.address, parseEther("1000")],
  });
  await writeContract(providerChain, {
    ...registry,
    functionName: "register",
    args: ["12D3KooWSettlementTest", "{}", parseEther("500")],
  });
  await writeContract(tenantChain, {
    ...paymentToken,
    functionName: "approve",
    args: [leaseManager.address, parseEther("100")],
  });
  client = { chain: tenantChain, transact: (send) => send() };
});

afterAll(async () => {
  await chain?.stop();
});

/** Opens a lease of the provider's that times out `timeoutS` after opening, funded for `fundedS` (10,000 s by default). */
async function openTestLease(timeoutS: number, fundedS = 10_000): Promise<bigint> {
  const { leaseManager } = contracts(deployment);
  const block = await tenantChain.publicClient.getBlock();
  const quote = {
    provider: provider.address,
    tenant: tenant.address,
    jobId: keccak256(toHex(`job-${nonce}`)),
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
  const signature: Hex = await signQuote(provider, hardhat.id, leaseManager.address, quote);
  const receipt = await writeContract(tenantChain, {
    ...leaseManager,
    functionName: "openLease",
    args: [quote, signature, quote.pricePerSecond * BigInt(fundedS), 0n],
  });
  return leaseIdFromReceipt(receipt, leaseManager.address);
}

async function viewOf(leaseId: bigint) {
  const { leaseManager } = contracts(deployment);
  return tenantChain.publicClient.readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] });
}

/** Waits until the next block's time is past the lease's deadline; nothing is mined meanwhile. */
async function pastDeadline(leaseId: bigint): Promise<void> {
  const { deadline } = await viewOf(leaseId);
  await until(
    async () => (await tenantChain.publicClient.getBlock({ blockTag: "pending" })).timestamp > deadline,
    30_000,
    "deadline passed",
  );
}

describe("endingCall", () => {
  it("slashes past a deadline that falls before the lease's end, settles past the end, else closes", () => {
    expect(endingCall({ deadline: 100n, endsAt: 200n }, 100n)).toBe("close");
    expect(endingCall({ deadline: 100n, endsAt: 200n }, 101n)).toBe("slashMissedHeartbeat");
    expect(endingCall({ deadline: 250n, endsAt: 200n }, 199n)).toBe("close");
    expect(endingCall({ deadline: 250n, endsAt: 200n }, 200n)).toBe("settleExpired");
    expect(endingCall({ deadline: 200n, endsAt: 200n }, 300n)).toBe("settleExpired");
  });
});

describe("endLease on a chain whose latest block lags the clock", () => {
  it("slashes a lease that turned slashable since the latest block, instead of failing a close", async () => {
    const leaseId = await openTestLease(4);
    await pastDeadline(leaseId);
    // The view still answers for the last block, mined before the deadline.
    const stale = await viewOf(leaseId);
    expect(stale.slashable).toBe(false);

    const ended = await endLease(client, { leaseId });

    expect(ended.call).toBe("slashMissedHeartbeat");
    if (ended.call !== "slashMissedHeartbeat") return;
    expect(ended.slash.compensation).toBeGreaterThan(0n);
    expect(leaseStatus[(await viewOf(leaseId)).status]).toBe("Slashed");
  });

  it("closes a lease whose deadline is still ahead", async () => {
    const leaseId = await openTestLease(600);
    expect((await endLease(client, { leaseId })).call).toBe("close");
    expect(leaseStatus[(await viewOf(leaseId)).status]).toBe("Closing");
  });

  it("leaves a lease that already ended alone", async () => {
    const leaseId = await openTestLease(600);
    await endLease(client, { leaseId });
    expect(await endLease(client, { leaseId })).toEqual({ call: undefined, status: "Closing" });
  });
});

describe("slashWhenDue", () => {
  it("waits for chain time to pass the deadline of a closed lease its provider never acknowledged, then slashes it", async () => {
    const leaseId = await openTestLease(4);
    expect((await endLease(client, { leaseId })).call).toBe("close");

    const slash = await slashWhenDue(client, { leaseId, log: silentLogger, signal: AbortSignal.timeout(60_000) });

    expect(slash?.compensation).toBeGreaterThan(0n);
    expect(leaseStatus[(await viewOf(leaseId)).status]).toBe("Slashed");
    const { deadline } = await viewOf(leaseId);
    const block = await tenantChain.publicClient.getTransactionReceipt({ hash: slash!.tx });
    const { timestamp } = await tenantChain.publicClient.getBlock({ blockNumber: block.blockNumber });
    expect(timestamp).toBeGreaterThan(deadline);
  });

  it("ends unslashed when the provider acknowledges the close in time", async () => {
    const leaseId = await openTestLease(600);
    await endLease(client, { leaseId });
    const { leaseManager } = contracts(deployment);
    await writeContract(providerChain, { ...leaseManager, functionName: "heartbeat", args: [[leaseId], [""]] });

    expect(await slashWhenDue(client, { leaseId, log: silentLogger })).toBeUndefined();
    expect(leaseStatus[(await viewOf(leaseId)).status]).toBe("Closed");
  });

  it("ends and then slashes a lease left active, once it is due", async () => {
    const leaseId = await openTestLease(4);
    await pastDeadline(leaseId);

    const slash = await slashWhenDue(client, { leaseId, log: silentLogger, signal: AbortSignal.timeout(60_000) });

    expect(slash).toBeDefined();
    expect(leaseStatus[(await viewOf(leaseId)).status]).toBe("Slashed");
  });
});

describe("watchChainDeadline", () => {
  // The clients exist once the file's `beforeAll` ran.
  const watcher = () => ({ chain: tenantChain, account: tenant, log: silentLogger });
  const heartbeat = async (leaseId: bigint): Promise<void> => {
    const { leaseManager } = contracts(deployment);
    await writeContract(providerChain, { ...leaseManager, functionName: "heartbeat", args: [[leaseId], [""]] });
  };

  it("stays quiet while the provider heartbeats, and speaks up a margin before the lease turns slashable", async () => {
    const leaseId = await openTestLease(5);
    let said: string | undefined;
    const watch = watchChainDeadline(watcher(), { leaseId, signal: AbortSignal.timeout(60_000) }).then(
      (reason) => (said = reason ?? "nothing"),
    );
    // Heartbeats 1 s apart for 6 s: past the first deadline, each moving the next (4 s of slack
    // each for a loaded machine).
    const first = await viewOf(leaseId);
    for (let i = 0; i < 6; i++) {
      await heartbeat(leaseId);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
    expect(said).toBeUndefined();
    const { lastHeartbeat, deadline } = await viewOf(leaseId);
    expect(deadline).toBeGreaterThan(first.deadline);

    const reason = await watch;
    // 5 s of timeout, a 1 s margin: told 4 s after the last heartbeat, 1 s before the deadline.
    expect(reason).toMatch(/^no heartbeat on chain for [45] s: its lease turns slashable in [01] s$/);
    expect(deadlineMarginS(5n)).toBe(1n);
    expect(deadlineMarginS(120n)).toBe(12n);
    expect((await viewOf(leaseId)).lastHeartbeat).toBe(lastHeartbeat);
  });

  it("says a lease already past its deadline is slashable", async () => {
    const leaseId = await openTestLease(4);
    await pastDeadline(leaseId);
    const reason = await watchChainDeadline(watcher(), { leaseId, signal: AbortSignal.timeout(60_000) });
    expect(reason).toMatch(/^its lease is slashable: no heartbeat on chain for \d+ s \(timeout 4 s\)$/);
  });

  it("keeps watching a lease set to run out before its deadline (unslashable until a top-up)", async () => {
    const leaseId = await openTestLease(600, 3);
    const view = await viewOf(leaseId);
    expect(view.deadline).toBeGreaterThanOrEqual(view.endsAt);
    const stop = new AbortController();
    let ended = false;
    const watch = watchChainDeadline(watcher(), { leaseId, signal: stop.signal }).finally(() => (ended = true));
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(ended).toBe(false);
    stop.abort();
    expect(await watch).toBeUndefined();
  });

  it("ends without a word for a lease no longer active, and when its signal aborts", async () => {
    const closed = await openTestLease(600);
    await endLease(client, { leaseId: closed });
    expect(
      await watchChainDeadline(watcher(), { leaseId: closed, signal: AbortSignal.timeout(60_000) }),
    ).toBeUndefined();

    const open = await openTestLease(600);
    const stop = new AbortController();
    const watch = watchChainDeadline(watcher(), { leaseId: open, signal: stop.signal });
    stop.abort();
    expect(await watch).toBeUndefined();
  });
});
