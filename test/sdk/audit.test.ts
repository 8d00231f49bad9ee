import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import {
  createPublicClient,
  createTestClient,
  createWalletClient,
  http,
  keccak256,
  parseEther,
  toHex,
  zeroHash,
  type Address,
  type Hex,
  type PublicClient,
  type TransactionReceipt,
} from "viem";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { deployBaton, writeDeployment } from "../../deploy/deploy.ts";
import { devAccount, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { BURN_ADDRESS } from "../../sdk/chain/audit-events.ts";
import { auditJob } from "../../sdk/actions/auditJob.ts";
import { auditLease } from "../../sdk/actions/auditLease.ts";
import { auditProvider } from "../../sdk/actions/auditProvider.ts";
import { createChainClient, type ChainClient } from "../../sdk/chain/client.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { signQuote, type Quote } from "../../sdk/chain/quote.ts";
import { UserError } from "../../sdk/errors.ts";
import { imageDigestToBytes32 } from "../../sdk/images/digest.ts";
import { devTokenAbi, leaseManagerAbi, providerRegistryAbi } from "../../sdk/generated/abis.ts";
import { root, spawnScript, stopAll } from "../helpers/processes.ts";

const deployer = devAccount(0);
const providerA = devAccount(1);
const providerB = devAccount(2);
const tenant = devAccount(3);
const keeper = devAccount(4);
const providerC = devAccount(5);
type Account = typeof deployer;

const PRICE = parseEther("0.001");
const COLLATERAL = parseEther("50");
const STAKE = parseEther("500");
const CID_A1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
const CID_A2 = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
const CID_B1 = "bafybeie5gq4jxvzmsym6hjlwxej4rwdoxt7wadqvmmwbqi7r27fclha2va";
const CID_B2 = "bafybeibml5uieyxa5tufngvg7fgwbkwvlsuntwbxgtskoqynbt7wlchmfm";
const RESULT_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";

let chain: LocalChain;
let dir: string;
let deploymentFile: string;
let deployment: Deployment;
let publicClient: PublicClient;
let client: { chain: ChainClient };

const wallet = (account: Account) => createWalletClient({ chain: hardhat, account, transport: http(chain.rpcUrl) });

async function send(hash: Promise<Hex>): Promise<TransactionReceipt> {
  const receipt = await publicClient.waitForTransactionReceipt({ hash: await hash });
  expect(receipt.status).toBe("success");
  return receipt;
}

const blockTime = async (receipt: TransactionReceipt): Promise<bigint> =>
  (await publicClient.getBlock({ blockNumber: receipt.blockNumber })).timestamp;

const balanceOf = (token: Address, who: Address) =>
  publicClient.readContract({ address: token, abi: devTokenAbi, functionName: "balanceOf", args: [who] });

async function advance(seconds: number): Promise<void> {
  const test = createTestClient({ chain: hardhat, mode: "hardhat", transport: http(chain.rpcUrl) });
  await test.increaseTime({ seconds });
  await test.mine({ blocks: 1 });
}

const manager = (account: Account) => ({ wallet: wallet(account), address: deployment.contracts.leaseManager });

async function openLease(
  provider: Account,
  jobId: Hex,
  nonce: bigint,
  deposit: bigint,
  predecessor: bigint,
  as: Account = tenant,
  image: Hex = zeroHash,
): Promise<{ leaseId: bigint; receipt: TransactionReceipt }> {
  const { quote, signature } = await signedQuote(provider, jobId, nonce, as, image);
  const { wallet: w, address } = manager(as);
  const receipt = await send(
    w.writeContract({
      address,
      abi: leaseManagerAbi,
      functionName: "openLease",
      args: [quote, signature, deposit, predecessor],
    }),
  );
  const leaseId = await publicClient.readContract({ address, abi: leaseManagerAbi, functionName: "leaseCount" });
  return { leaseId, receipt };
}

async function signedQuote(
  provider: Account,
  jobId: Hex,
  nonce: bigint,
  as: Account,
  image: Hex = zeroHash,
): Promise<{ quote: Quote; signature: Hex }> {
  const block = await publicClient.getBlock();
  const quote: Quote = {
    provider: provider.address,
    tenant: as.address,
    jobId,
    resources: keccak256(toHex("gpu:1xfake")),
    image,
    pricePerSecond: PRICE,
    collateral: COLLATERAL,
    heartbeatPeriod: 10n,
    heartbeatTimeout: 60n,
    maxDuration: 3600n,
    expiry: block.timestamp + 300n,
    nonce,
  };
  return { quote, signature: await signQuote(provider, hardhat.id, deployment.contracts.leaseManager, quote) };
}

async function heartbeat(provider: Account, leaseId: bigint, cid?: string): Promise<TransactionReceipt> {
  const { wallet: w, address } = manager(provider);
  return send(
    w.writeContract({
      address,
      abi: leaseManagerAbi,
      functionName: "heartbeat",
      args: [[leaseId], cid === undefined ? [] : [cid]],
    }),
  );
}

async function closeLease(leaseId: bigint): Promise<TransactionReceipt> {
  const { wallet: w, address } = manager(tenant);
  return send(w.writeContract({ address, abi: leaseManagerAbi, functionName: "close", args: [leaseId] }));
}

async function claim(provider: Account, leaseIds: bigint[]): Promise<TransactionReceipt> {
  const { wallet: w, address } = manager(provider);
  return send(w.writeContract({ address, abi: leaseManagerAbi, functionName: "claim", args: [leaseIds] }));
}

/**
 * Runs `baton …` to completion and returns its exit code, its stdout (the audit itself), and its
 * output with stderr but without the progress lines a scan prints there when it takes over a
 * second (as it may on a loaded machine).
 */
async function baton(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; output: string }> {
  const run = spawnScript("cli/baton.ts", args, env);
  const { code } = await run.closed;
  const output = run.lines.filter((line) => !line.startsWith("reading events: ")).join("\n");
  return { code, stdout: run.stdout.join("\n"), output };
}

/** What the main scenario did, as measured on chain outside the audit. */
interface Facts {
  lease1: bigint;
  lease2: bigint;
  opened1: TransactionReceipt;
  opened2: TransactionReceipt;
  lastBeat1: bigint;
  closedAt1: bigint;
  closeRefund1: bigint;
  finishedAt2: bigint;
  /** Token balance changes over the whole scenario. */
  delta: Record<
    "tenantPay" | "tenantStake" | "providerAPay" | "providerBPay" | "keeperStake" | "burnedStake" | "registryStake",
    bigint
  >;
}

const JOB_ID = keccak256(toHex("job-audit"));
let facts: Facts;

beforeAll(async () => {
  chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-audit-"));
  publicClient = createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl), pollingInterval: 50 });
  deployment = await deployBaton({ walletClient: wallet(deployer), publicClient });
  deploymentFile = await writeDeployment(path.join(dir, "deployments"), deployment);
  client = { chain: createChainClient({ rpcUrl: chain.rpcUrl, deployment, pollingIntervalMs: 50 }) };

  const { stakingToken, paymentToken, providerRegistry, leaseManager } = deployment.contracts;
  for (const [i, provider] of [providerA, providerB, providerC].entries()) {
    await send(
      wallet(deployer).writeContract({
        address: stakingToken,
        abi: devTokenAbi,
        functionName: "mint",
        args: [provider.address, STAKE],
      }),
    );
    await send(
      wallet(provider).writeContract({
        address: stakingToken,
        abi: devTokenAbi,
        functionName: "approve",
        args: [providerRegistry, STAKE],
      }),
    );
    await send(
      wallet(provider).writeContract({
        address: providerRegistry,
        abi: providerRegistryAbi,
        functionName: "register",
        args: [`12D3KooWAuditProvider${i}`, "{}", STAKE],
      }),
    );
  }
  await send(
    wallet(deployer).writeContract({
      address: paymentToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [tenant.address, parseEther("100")],
    }),
  );
  await send(
    wallet(tenant).writeContract({
      address: paymentToken,
      abi: devTokenAbi,
      functionName: "approve",
      args: [leaseManager, parseEther("100")],
    }),
  );

  const registryCredit = (who: Address) =>
    publicClient.readContract({
      address: providerRegistry,
      abi: providerRegistryAbi,
      functionName: "creditOf",
      args: [who],
    });
  const balances = async () => ({
    tenantPay: await balanceOf(paymentToken, tenant.address),
    tenantStake: await balanceOf(stakingToken, tenant.address),
    providerAPay: await balanceOf(paymentToken, providerA.address),
    providerBPay: await balanceOf(paymentToken, providerB.address),
    keeperStake: await balanceOf(stakingToken, keeper.address),
    // The treasury's share of a keeper's slash is credited in the registry (burned there, as no
    // one can withdraw the burn address's credit).
    burnedStake: (await balanceOf(stakingToken, BURN_ADDRESS)) + (await registryCredit(BURN_ADDRESS)),
    registryStake: (await balanceOf(stakingToken, providerRegistry)) - (await registryCredit(BURN_ADDRESS)),
  });
  const before = await balances();

  // Lease 1 on provider A: heartbeats with two checkpoints, a top-up, a claim, then the tenant
  // hands the job on (close) and A never acknowledges, so it is slashed once its timeout passes.
  const first = await openLease(providerA, JOB_ID, 1n, parseEther("1"), 0n);
  const lease1 = first.leaseId;
  await advance(20);
  await heartbeat(providerA, lease1, CID_A1);
  await send(
    wallet(tenant).writeContract({
      address: leaseManager,
      abi: leaseManagerAbi,
      functionName: "topUp",
      args: [lease1, parseEther("0.5")],
    }),
  );
  await advance(20);
  await heartbeat(providerA, lease1, CID_A2);
  await claim(providerA, [lease1]);
  await advance(10);
  const lastBeat1 = await blockTime(await heartbeat(providerA, lease1));
  await advance(5);
  const closedAt1 = await blockTime(await closeLease(lease1));
  const closeRefund1 = (await balanceOf(paymentToken, tenant.address)) - (before.tenantPay - parseEther("1.5"));

  // Lease 2 on provider B continues the job, heartbeats past lease 1's deadline, and finishes.
  const second = await openLease(providerB, JOB_ID, 1n, parseEther("1"), lease1);
  const lease2 = second.leaseId;
  await advance(30);
  await heartbeat(providerB, lease2, CID_B1);
  await advance(40);
  await heartbeat(providerB, lease2, CID_B2);
  await send(
    wallet(keeper).writeContract({
      address: leaseManager,
      abi: leaseManagerAbi,
      functionName: "slashMissedHeartbeat",
      args: [lease1],
    }),
  );
  await advance(10);
  const finished = await send(
    wallet(providerB).writeContract({
      address: leaseManager,
      abi: leaseManagerAbi,
      functionName: "finish",
      args: [lease2, RESULT_CID],
    }),
  );
  const finishedAt2 = await blockTime(finished);
  await claim(providerA, []);
  await claim(providerB, []);
  // The keeper's slash and the provider's finish credited the tenant: it takes its credit out.
  for (const address of [leaseManager, providerRegistry]) {
    await send(
      wallet(tenant).writeContract({ address, abi: leaseManagerAbi, functionName: "withdrawCredit", args: [] }),
    );
  }

  const after = await balances();
  facts = {
    lease1,
    lease2,
    opened1: first.receipt,
    opened2: second.receipt,
    lastBeat1,
    closedAt1,
    closeRefund1,
    finishedAt2,
    delta: {
      tenantPay: after.tenantPay - before.tenantPay,
      tenantStake: after.tenantStake - before.tenantStake,
      providerAPay: after.providerAPay - before.providerAPay,
      providerBPay: after.providerBPay - before.providerBPay,
      keeperStake: after.keeperStake - before.keeperStake,
      burnedStake: after.burnedStake - before.burnedStake,
      registryStake: after.registryStake - before.registryStake,
    },
  };
});

afterAll(async () => {
  await stopAll();
  await chain?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("auditJob", () => {
  it("orders the job's leases into a lineage across providers, with totals equal to the token movements", async () => {
    const job = await auditJob(client, { jobId: JOB_ID });
    expect(job.lineage.map((l) => l.leaseId)).toEqual([facts.lease1, facts.lease2]);
    expect(job.lineage.map((l) => l.provider)).toEqual([providerA.address, providerB.address]);
    expect(job.lineage.map((l) => l.history.map((c) => c.status))).toEqual([
      ["active", "closing", "slashed"],
      ["active", "completed"],
    ]);
    expect(job.others).toEqual([]);
    expect(job.handOffs).toBe(1);
    expect(job.tenant).toBe(tenant.address);
    expect(job.otherTenants).toEqual([]);

    expect(job.totals.paidToProviders).toBe(facts.delta.providerAPay + facts.delta.providerBPay);
    expect(job.totals.refundedToTenant - job.totals.deposited).toBe(facts.delta.tenantPay);
    expect(job.totals.deposited).toBe(parseEther("2.5"));
    expect(job.totals.escrowed).toBe(0n);
    expect(job.totals.slashedCollateral).toBe(COLLATERAL);
    expect(job.totals.slashedCollateral).toBe(-facts.delta.registryStake);
    expect(job.totals.compensationToTenant).toBe(facts.delta.tenantStake);
    expect(job.totals.callerRewards).toBe(facts.delta.keeperStake);
    expect(job.totals.toTreasury).toBe(facts.delta.burnedStake);
    expect(job.totals.compensationToTenant).toBeGreaterThan(0n);
    expect(job.totals.secondsPaid * PRICE).toBe(job.totals.paidToProviders);

    expect(job.checkpoints.map((c) => [c.cid, c.leaseId])).toEqual([
      [CID_A1, facts.lease1],
      [CID_A2, facts.lease1],
      [CID_B1, facts.lease2],
      [CID_B2, facts.lease2],
    ]);
    expect(job.resultCid).toBe(RESULT_CID);
    expect(job.startedAt.timestamp).toBe(await blockTime(facts.opened1));
    expect(job.endedAt).toBe(facts.finishedAt2);
    expect(job.wallSeconds).toBe(facts.finishedAt2 - (await blockTime(facts.opened1)));
  });

  it("refuses a job id no lease carries, and a malformed one", async () => {
    await expect(auditJob(client, { jobId: keccak256(toHex("no-such-job")) })).rejects.toThrow(/no lease carries job/);
    await expect(auditJob(client, { jobId: "0x1234" })).rejects.toBeInstanceOf(UserError);
  });

  it("stops at once when aborted", async () => {
    await expect(auditJob(client, { jobId: JOB_ID, signal: AbortSignal.abort() })).rejects.toThrow(/abort/i);
  });
});

describe("auditLease", () => {
  it("rebuilds the slashed first lease: terms, top-up, heartbeats, checkpoints, payments and the slash", async () => {
    const lease = await auditLease(client, { leaseId: facts.lease1 });
    const openedAt = await blockTime(facts.opened1);
    expect(lease).toMatchObject({
      leaseId: facts.lease1,
      jobId: JOB_ID,
      tenant: tenant.address,
      provider: providerA.address,
      predecessor: 0n,
      image: undefined,
      pricePerSecond: PRICE,
      deposit: parseEther("1"),
      deposited: parseEther("1.5"),
      collateral: COLLATERAL,
      heartbeatPeriod: 10n,
      heartbeatTimeout: 60n,
      status: "slashed",
      heartbeats: 3,
      lastHeartbeat: facts.lastBeat1,
      endedAt: facts.closedAt1,
      secondsPaid: facts.lastBeat1 - openedAt,
      paidToProvider: facts.delta.providerAPay,
      refundedToTenant: facts.closeRefund1,
      escrowed: 0n,
      resultCid: undefined,
      pending: undefined,
    });
    expect(lease.opened).toMatchObject({
      timestamp: openedAt,
      blockNumber: facts.opened1.blockNumber,
      txHash: facts.opened1.transactionHash,
    });
    expect(lease.paidToProvider).toBe(lease.secondsPaid * PRICE);
    expect(lease.topUps.map((u) => u.amount)).toEqual([parseEther("0.5")]);
    expect(lease.checkpoints.map((c) => c.cid)).toEqual([CID_A1, CID_A2]);
    expect(lease.checkpoints[0]!.at.timestamp).toBeGreaterThan(openedAt);
    expect(lease.slash).toMatchObject({
      caller: keeper.address,
      collateral: COLLATERAL,
      compensation: facts.delta.tenantStake,
      reward: facts.delta.keeperStake,
      treasuryAmount: facts.delta.burnedStake,
      burned: true,
      refund: 0n,
    });
  });

  it("rebuilds the completed second lease with its predecessor and result", async () => {
    const lease = await auditLease(client, { leaseId: facts.lease2 });
    const openedAt = await blockTime(facts.opened2);
    expect(lease).toMatchObject({
      provider: providerB.address,
      predecessor: facts.lease1,
      status: "completed",
      heartbeats: 2,
      endedAt: facts.finishedAt2,
      secondsPaid: facts.finishedAt2 - openedAt,
      paidToProvider: facts.delta.providerBPay,
      refundedToTenant: parseEther("1") - facts.delta.providerBPay,
      resultCid: RESULT_CID,
      slash: undefined,
    });
    expect(lease.checkpoints.map((c) => c.cid)).toEqual([CID_B1, CID_B2]);
  });

  it("refuses a lease that was never opened", async () => {
    await expect(auditLease(client, { leaseId: 999n })).rejects.toThrow(/no lease 999/);
    await expect(auditLease(client, { leaseId: 0n })).rejects.toBeInstanceOf(UserError);
  });
});

describe("auditProvider", () => {
  it("counts provider A's slashed lease, its earnings and its lost stake", async () => {
    const record = await auditProvider(client, { provider: providerA.address });
    expect(record.leases.map((l) => l.leaseId)).toEqual([facts.lease1]);
    expect(record.outcomes).toEqual({ active: 0, closing: 0, completed: 0, closed: 0, expired: 0, slashed: 1 });
    expect(record.counters).toMatchObject({ leasesOpened: 1n, leasesCompleted: 0n, leasesSlashed: 1n });
    expect(record.counters.secondsServed).toBe(record.leases[0]!.secondsPaid);
    expect(record.earnings.settled).toBe(facts.delta.providerAPay);
    expect(record.earnings.claimed).toBe(facts.delta.providerAPay);
    expect(record.earnings.claims).toHaveLength(2);
    expect(record.earnings.claimableNow).toBe(0n);
    expect(record.stake.current).toBe(STAKE - COLLATERAL);
    expect(record.stake.fromEvents).toBe(record.stake.current);
    expect(record.stake.locked).toBe(0n);
    expect(record.stake.lockedFromEvents).toBe(0n);
    expect(record.stake.changes.map((c) => [c.kind, c.amount, c.leaseId])).toEqual([
      ["staked", STAKE, undefined],
      ["slashed", COLLATERAL, facts.lease1],
    ]);
    expect(record.slashes.map((s) => [s.leaseId, s.caller])).toEqual([[facts.lease1, keeper.address]]);
    expect(record.peerId).toBe("12D3KooWAuditProvider0");
    expect(record.profile.map((p) => p.peerId)).toEqual(["12D3KooWAuditProvider0"]);
  });

  it("counts provider B's completed lease", async () => {
    const record = await auditProvider(client, { provider: providerB.address });
    expect(record.outcomes).toEqual({ active: 0, closing: 0, completed: 1, closed: 0, expired: 0, slashed: 0 });
    expect(record.counters).toMatchObject({ leasesOpened: 1n, leasesCompleted: 1n, leasesSlashed: 0n });
    expect(record.earnings.claimed).toBe(facts.delta.providerBPay);
    expect(record.stake.current).toBe(STAKE);
    // Locked by its LeaseOpened (the collateral), released by the registry's CollateralReleased.
    expect(record.stake.locked).toBe(0n);
    expect(record.stake.lockedFromEvents).toBe(0n);
    expect(record.slashes).toEqual([]);
  });

  it("refuses an address that never registered", async () => {
    await expect(auditProvider(client, { provider: tenant.address })).rejects.toThrow(/not a registered provider/);
  });
});

describe("baton audit (CLI)", () => {
  const chainArgs = () => ["--rpc-url", chain.rpcUrl, "--deployment", deploymentFile];

  it("prints the same job as auditJob with --json, bigints as decimal strings", async () => {
    const job = await auditJob(client, { jobId: JOB_ID });
    const { code, stdout, output } = await baton(["audit", "job", JOB_ID, "--json", ...chainArgs()]);
    expect(code, output).toBe(0);
    const printed = JSON.parse(stdout) as {
      lineage: { leaseId: string; provider: string; paidToProvider: string }[];
      handOffs: number;
      totals: Record<string, string>;
      checkpoints: { cid: string }[];
      resultCid: string;
      wallSeconds: string;
    };
    expect(printed.lineage.map((l) => [l.leaseId, l.provider, l.paidToProvider])).toEqual(
      job.lineage.map((l) => [String(l.leaseId), l.provider, String(l.paidToProvider)]),
    );
    expect(printed.handOffs).toBe(1);
    expect(printed.totals).toEqual(
      Object.fromEntries(Object.entries(job.totals).map(([key, value]) => [key, String(value)])),
    );
    expect(printed.totals.paidToProviders).toBe(String(facts.delta.providerAPay + facts.delta.providerBPay));
    expect(printed.checkpoints.map((c) => c.cid)).toEqual([CID_A1, CID_A2, CID_B1, CID_B2]);
    expect(printed.resultCid).toBe(RESULT_CID);
    expect(printed.wallSeconds).toBe(String(job.wallSeconds));
  });

  it("prints the lineage as a table for people", async () => {
    const { code, output } = await baton(["audit", "job", JOB_ID, ...chainArgs()]);
    expect(code, output).toBe(0);
    expect(output).toMatch(/2 lease\(s\), 1 hand-off\(s\)/);
    expect(output).toMatch(new RegExp(`^${facts.lease1}\\s+${providerA.address}\\s.*closing→slashed`, "m"));
    expect(output).toMatch(new RegExp(`^${facts.lease2}\\s+${providerB.address}\\s.*completed`, "m"));
    expect(output).toContain(RESULT_CID);
  });

  it("prints a lease and a provider", async () => {
    const lease = await baton(["audit", "lease", String(facts.lease1), ...chainArgs()]);
    expect(lease.code, lease.output).toBe(0);
    expect(lease.output).toMatch(/slashed by\s+/);
    expect(lease.output).toContain(CID_A2);
    const provider = await baton(["audit", "provider", providerB.address, "--json", ...chainArgs()]);
    expect(provider.code, provider.output).toBe(0);
    expect(JSON.parse(provider.stdout)).toMatchObject({
      outcomes: { completed: 1 },
      counters: { leasesCompleted: "1" },
    });
  });

  it("finds deployments/<chainId>.json by the chain id the RPC serves when --deployment is left out", async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [
        "--disable-warning=ExperimentalWarning",
        path.join(root, "cli", "baton.ts"),
        "audit",
        "lease",
        String(facts.lease2),
        "--rpc-url",
        chain.rpcUrl,
        "--json",
      ],
      { cwd: dir },
    );
    expect(JSON.parse(stdout)).toMatchObject({ leaseId: String(facts.lease2), resultCid: RESULT_CID });
  });

  it("reads the chain and the deployment from a network file: --network or BATON_NETWORK", async () => {
    const networkFile = path.join(dir, "network.json");
    await writeFile(
      networkFile,
      JSON.stringify({ rpcUrl: chain.rpcUrl, deployment: path.relative(dir, deploymentFile), bootstrap: [] }),
    );
    const [flag, env] = await Promise.all([
      baton(["audit", "job", JOB_ID, "--network", networkFile, "--json"]),
      baton(["audit", "lease", String(facts.lease2), "--json"], { BATON_NETWORK: networkFile }),
    ]);
    expect(flag.code, flag.output).toBe(0);
    expect(JSON.parse(flag.stdout)).toMatchObject({ jobId: JOB_ID, handOffs: 1 });
    expect(env.code, env.output).toBe(0);
    expect(JSON.parse(env.stdout)).toMatchObject({ leaseId: String(facts.lease2), resultCid: RESULT_CID });
  });

  it("turns bad input into one line and exit code 2, what the chain refuses into one line and 1", async () => {
    const cases: [string[], RegExp, number][] = [
      [["audit", "lease", "abc"], /^error: not a lease id: abc/, 2],
      [["audit", "lease", "999", ...chainArgs()], /^error: no lease 999/, 1],
      [["audit", "lease", "0"], /^error: not a lease id: 0/, 2],
      [["audit", "job", "0x1234"], /^error: not a job id: 0x1234/, 2],
      [["audit", "job", keccak256(toHex("nothing")), ...chainArgs()], /^error: no lease carries job/, 1],
      [["audit", "provider", "0x1234"], /^error: not an address: 0x1234/, 2],
      [["audit", "provider", tenant.address, ...chainArgs()], /^error: .* is not a registered provider/, 1],
      [["audit", "lease"], /^error: missing required argument 'leaseId'; see `baton audit lease --help`/, 2],
      [["audit", "lease", "1", "--bogus"], /^error: unknown option '--bogus'/, 2],
      [["audit", "lease", "1", "--rpc-url", "http://127.0.0.1:1"], /^error: no JSON-RPC node answers/, 1],
      [["audit", "nonsense"], /^error: unknown command 'nonsense'; see `baton audit --help`/, 2],
    ];
    const results = await Promise.all(cases.map(([args]) => baton(args)));
    for (const [i, [args, message, exitCode]] of cases.entries()) {
      const { code, output } = results[i]!;
      expect(output, args.join(" ")).toMatch(message);
      expect(output.split("\n"), args.join(" ")).toHaveLength(1);
      expect(code, args.join(" ")).toBe(exitCode);
    }
  });
});

describe("a job id another tenant also uses", () => {
  it("audits only the tenant's own leases, and the chain lets no lease continue one twice", async () => {
    const jobId = keccak256(toHex("job-hijacked"));
    const origin = await openLease(providerC, jobId, 1n, parseEther("0.2"), 0n);
    await advance(5);
    await closeLease(origin.leaseId);
    const next = await openLease(providerC, jobId, 2n, parseEther("0.2"), origin.leaseId);
    // A second lease continuing the same one would fork the job: the lease manager refuses it.
    const { quote, signature } = await signedQuote(providerC, jobId, 3n, tenant);
    await expect(
      publicClient.simulateContract({
        account: tenant,
        address: deployment.contracts.leaseManager,
        abi: leaseManagerAbi,
        functionName: "openLease",
        args: [quote, signature, parseEther("0.2"), origin.leaseId],
      }),
    ).rejects.toThrow(/LeaseManager_PredecessorContinued/);

    // Someone else opens leases under the same job id (anyone may choose any id).
    await send(
      wallet(deployer).writeContract({
        address: deployment.contracts.paymentToken,
        abi: devTokenAbi,
        functionName: "mint",
        args: [keeper.address, parseEther("1")],
      }),
    );
    await send(
      wallet(keeper).writeContract({
        address: deployment.contracts.paymentToken,
        abi: devTokenAbi,
        functionName: "approve",
        args: [deployment.contracts.leaseManager, parseEther("1")],
      }),
    );
    const hostile = await openLease(providerC, jobId, 3n, parseEther("0.2"), 0n, keeper);

    await expect(auditJob(client, { jobId })).rejects.toThrow(/used by 2 tenants/);
    const job = await auditJob(client, { jobId, tenant: tenant.address });
    expect(job.tenant).toBe(tenant.address);
    expect(job.otherTenants).toEqual([keeper.address]);
    expect(job.lineage.map((l) => l.leaseId)).toEqual([origin.leaseId, next.leaseId]);
    expect(job.others).toEqual([]);
    expect(job.totals.deposited).toBe(parseEther("0.4"));
    const theirs = await auditJob(client, { jobId, tenant: keeper.address });
    expect(theirs.lineage.map((l) => l.leaseId)).toEqual([hostile.leaseId]);

    // A closed lease's provider has a whole timeout from the close to acknowledge; then it is slashable.
    await advance(61);
    const closing = await auditLease(client, { leaseId: origin.leaseId });
    expect(closing.status).toBe("closing");
    expect(closing.pending).toBe("slashable");
  });
});

describe("an expired lease", () => {
  it("ends when its deposit ran out, not when someone settled it", async () => {
    const jobId = keccak256(toHex("job-expiry"));
    const { leaseId, receipt } = await openLease(providerC, jobId, 4n, PRICE * 10n, 0n);
    const openedAt = await blockTime(receipt);
    await advance(5);
    await heartbeat(providerC, leaseId);
    await advance(30);
    expect((await auditLease(client, { leaseId })).pending).toBe("expired");
    await send(
      wallet(keeper).writeContract({
        address: deployment.contracts.leaseManager,
        abi: leaseManagerAbi,
        functionName: "settleExpired",
        args: [leaseId],
      }),
    );

    const lease = await auditLease(client, { leaseId });
    expect(lease).toMatchObject({
      status: "expired",
      endsAt: openedAt + 10n,
      endedAt: openedAt + 10n,
      secondsPaid: 10n,
      paidToProvider: PRICE * 10n,
      refundedToTenant: 0n,
      escrowed: 0n,
      pending: undefined,
    });
    expect(lease.history.at(-1)!.at.timestamp).toBeGreaterThan(openedAt + 30n);
    const record = await auditProvider(client, { provider: providerC.address });
    expect(record.outcomes.expired).toBe(1);
  });
});

describe("an image job", () => {
  const chainArgs = () => ["--rpc-url", chain.rpcUrl, "--deployment", deploymentFile];
  /** Manifest digests, as `sha256:…` and as quotes carry them. */
  const train = `sha256:${createHash("sha256").update("train manifest").digest("hex")}` as const;
  const other = `sha256:${createHash("sha256").update("another manifest").digest("hex")}` as const;

  it("shows each lease's image digest from the chain alone: auditJob, auditLease and baton audit (text and --json)", async () => {
    const jobId = keccak256(toHex("job-image"));
    const first = await openLease(providerC, jobId, 5n, parseEther("0.2"), 0n, tenant, imageDigestToBytes32(train));
    await closeLease(first.leaseId);
    const second = await openLease(
      providerC,
      jobId,
      6n,
      parseEther("0.2"),
      first.leaseId,
      tenant,
      imageDigestToBytes32(train),
    );

    const job = await auditJob(client, { jobId });
    expect(job.lineage.map((lease) => [lease.leaseId, lease.image])).toEqual([
      [first.leaseId, train],
      [second.leaseId, train],
    ]);
    expect((await auditLease(client, { leaseId: second.leaseId })).image).toBe(train);

    const json = await baton(["audit", "job", jobId, "--json", ...chainArgs()]);
    expect(json.code, json.output).toBe(0);
    const printed = JSON.parse(json.stdout) as { lineage: { image?: string }[] };
    expect(printed.lineage.map((lease) => lease.image)).toEqual([train, train]);
    const text = await baton(["audit", "job", jobId, ...chainArgs()]);
    expect(text.code, text.output).toBe(0);
    expect(text.output).toMatch(new RegExp(`^image\\s+${train} \\(every lease\\)$`, "m"));
    const lease = await baton(["audit", "lease", String(second.leaseId), ...chainArgs()]);
    expect(lease.output).toMatch(new RegExp(`^image\\s+${train}$`, "m"));

    // A process job's leases name no image: null in the JSON, said so in the text.
    const processJob = await baton(["audit", "job", JOB_ID, "--json", ...chainArgs()]);
    const processPrinted = JSON.parse(processJob.stdout) as { lineage: { image?: string | null }[] };
    expect(processPrinted.lineage.map((lease) => lease.image)).toEqual([null, null]);
    const processText = await baton(["audit", "job", JOB_ID, ...chainArgs()]);
    expect(processText.output).toMatch(/^image\s+none \(a process job\) \(every lease\)$/m);
  });

  it("shows lease by lease the images of a job whose leases ran different ones (the chain allows it; the SDK never does)", async () => {
    const jobId = keccak256(toHex("job-two-images"));
    const first = await openLease(providerC, jobId, 7n, parseEther("0.2"), 0n, tenant, imageDigestToBytes32(train));
    await closeLease(first.leaseId);
    const second = await openLease(
      providerC,
      jobId,
      8n,
      parseEther("0.2"),
      first.leaseId,
      tenant,
      imageDigestToBytes32(other),
    );
    const text = await baton(["audit", "job", jobId, ...chainArgs()]);
    expect(text.code, text.output).toBe(0);
    expect(text.output).toMatch(/^image\s+2 different ones \(below\)$/m);
    expect(text.output).toMatch(new RegExp(`^${first.leaseId}\\s+${train}$`, "m"));
    expect(text.output).toMatch(new RegExp(`^${second.leaseId}\\s+${other}$`, "m"));
  });
});
