import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import {
  formatUnits,
  HDNodeWallet,
  id,
  JsonRpcProvider,
  parseEther,
  ZeroHash,
  type ContractTransactionResponse,
} from "ethers";
import { createPublicClient, createWalletClient, http } from "viem";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { deployBaton, writeDeployment } from "../../deploy/deploy.ts";
import { DEV_MNEMONIC, devAccount, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { auditLease } from "../../sdk/actions/auditLease.ts";
import { createChainClient, type ChainClient } from "../../sdk/chain/client.ts";
import {
  DevToken__factory,
  LeaseManager__factory,
  ProviderRegistry__factory,
  type LeaseManager,
} from "../../sdk/generated/ethers/index.ts";
import { spawnScript, stopAll } from "../helpers/processes.ts";

// examples/ethers/audit-lease.ts, run as its own process against a local chain whose leases were
// opened, heartbeaten, finished and slashed through the same TypeChain bindings, prints what the
// SDK's auditLease says of each lease.

const STAKE = parseEther("500");
const COLLATERAL = parseEther("50");
const RESULT_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
/** The payment token deploy.ts makes on a local chain. */
const PAYMENT_SYMBOL = "BPAY";

let chain: LocalChain;
let dir: string;
let deploymentFile: string;
let client: { chain: ChainClient };
let leases: { completed: bigint; slashed: bigint; active: bigint };

const mined = async (sent: Promise<ContractTransactionResponse>): Promise<void> => {
  const receipt = await (await sent).wait();
  expect(receipt?.status).toBe(1);
};

beforeAll(async () => {
  chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-ethers-audit-"));
  const deployment = await deployBaton({
    walletClient: createWalletClient({ chain: hardhat, account: devAccount(0), transport: http(chain.rpcUrl) }),
    publicClient: createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl), pollingInterval: 50 }),
  });
  deploymentFile = await writeDeployment(path.join(dir, "deployments"), deployment);
  client = { chain: createChainClient({ rpcUrl: chain.rpcUrl, deployment, pollingIntervalMs: 50 }) };

  // No cache: ethers otherwise answers a repeated call (a sender's nonce) from its last 250 ms.
  const rpc = new JsonRpcProvider(chain.rpcUrl, undefined, {
    staticNetwork: true,
    pollingInterval: 50,
    cacheTimeout: -1,
  });
  try {
    const wallet = (index: number) =>
      HDNodeWallet.fromPhrase(DEV_MNEMONIC, undefined, `m/44'/60'/0'/0/${index}`).connect(rpc);
    const [deployer, providerA, providerB, tenant, keeper] = [0, 1, 2, 3, 4].map(wallet) as [
      HDNodeWallet,
      HDNodeWallet,
      HDNodeWallet,
      HDNodeWallet,
      HDNodeWallet,
    ];
    const { stakingToken, paymentToken, providerRegistry, leaseManager } = deployment.contracts;
    const stake = DevToken__factory.connect(stakingToken, rpc);
    const pay = DevToken__factory.connect(paymentToken, rpc);
    const registry = ProviderRegistry__factory.connect(providerRegistry, rpc);
    const manager = LeaseManager__factory.connect(leaseManager, rpc);
    const as = (who: HDNodeWallet): LeaseManager => manager.connect(who);
    const advance = async (seconds: number): Promise<void> => {
      await rpc.send("evm_increaseTime", [seconds]);
      await rpc.send("evm_mine", []);
    };

    for (const [i, provider] of [providerA, providerB].entries()) {
      await mined(stake.connect(deployer).mint(provider.address, STAKE));
      await mined(stake.connect(provider).approve(providerRegistry, STAKE));
      await mined(registry.connect(provider).register(`12D3KooWEthersProvider${i}`, "{}", STAKE));
    }
    await mined(pay.connect(deployer).mint(tenant.address, parseEther("10")));
    await mined(pay.connect(tenant).approve(leaseManager, parseEther("10")));

    // The provider signs the quote's EIP-712 digest, which the lease manager computes itself.
    const open = async (provider: HDNodeWallet, nonce: bigint): Promise<bigint> => {
      const { timestamp } = (await rpc.getBlock("latest"))!;
      const quote = {
        provider: provider.address,
        tenant: tenant.address,
        jobId: id(`job-ethers-${provider.address}-${nonce}`),
        resources: id("gpu:1xfake"),
        image: ZeroHash,
        pricePerSecond: parseEther("0.001"),
        collateral: COLLATERAL,
        heartbeatPeriod: 10n,
        heartbeatTimeout: 60n,
        maxDuration: 3600n,
        expiry: BigInt(timestamp) + 300n,
        nonce,
      };
      const signature = provider.signingKey.sign(await manager.hashQuote(quote)).serialized;
      await mined(as(tenant).openLease(quote, signature, parseEther("1"), 0n));
      return manager.leaseCount();
    };

    // On provider A: two heartbeats, one with a checkpoint, and a finish.
    const completed = await open(providerA, 1n);
    await advance(20);
    await mined(as(providerA).heartbeat([completed], ["bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"]));
    await advance(20);
    await mined(as(providerA).heartbeat([completed], []));
    await mined(as(providerA).finish(completed, RESULT_CID));
    // On provider B: one heartbeat, then silence past its timeout, and a keeper's slash.
    const slashed = await open(providerB, 1n);
    await advance(10);
    await mined(as(providerB).heartbeat([slashed], []));
    await advance(61);
    await mined(as(keeper).slashMissedHeartbeat(slashed));
    // On provider A again: still running.
    const active = await open(providerA, 2n);
    await advance(15);
    await mined(as(providerA).heartbeat([active], []));
    leases = { completed, slashed, active };
  } finally {
    rpc.destroy();
  }
});

afterAll(async () => {
  await stopAll();
  await chain?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Runs the example to completion. */
async function auditWithEthers(leaseId: bigint): Promise<{ code: number | null; stdout: string; output: string }> {
  const run = spawnScript("examples/ethers/audit-lease.ts", [
    "--rpc-url",
    chain.rpcUrl,
    "--deployment",
    deploymentFile,
    "--lease",
    String(leaseId),
  ]);
  const { code } = await run.closed;
  return { code, stdout: run.stdout.join("\n"), output: run.lines.join("\n") };
}

/** The example's summary, written from what the SDK's audit says. */
async function summaryFromSdk(leaseId: bigint): Promise<{ status: string; summary: string }> {
  const audit = await auditLease(client, { leaseId });
  const tokens = (amount: bigint): string => `${formatUnits(amount, 18)} ${PAYMENT_SYMBOL}`;
  const lines = [
    `lease ${leaseId} of job ${audit.jobId}, as of block ${audit.asOf.blockNumber}`,
    `status      ${audit.status}`,
    `provider    ${audit.provider}`,
    `tenant      ${audit.tenant}`,
    `opened      block ${audit.opened.blockNumber}`,
    `heartbeats  ${audit.heartbeats}`,
    `paid        ${tokens(audit.paidToProvider)} to the provider`,
    `refunded    ${tokens(audit.refundedToTenant)} to the tenant`,
    ...(audit.resultCid === undefined ? [] : [`result      ${audit.resultCid}`]),
    ...(audit.slash === undefined ? [] : [`slashed by  ${audit.slash.caller}`]),
  ];
  return { status: audit.status, summary: lines.join("\n") };
}

describe("examples/ethers/audit-lease.ts", () => {
  for (const status of ["completed", "slashed", "active"] as const) {
    it(`prints what auditLease says of a ${status} lease`, async () => {
      const sdk = await summaryFromSdk(leases[status]);
      expect(sdk.status).toBe(status);
      const ethers = await auditWithEthers(leases[status]);
      expect(ethers.code, ethers.output).toBe(0);
      expect(ethers.stdout).toBe(sdk.summary);
    });
  }

  it("refuses a lease that was never opened", async () => {
    const never = leases.active + 1n;
    await expect(auditLease(client, { leaseId: never })).rejects.toThrow(`no lease ${never}`);
    const ethers = await auditWithEthers(never);
    expect(ethers.code).not.toBe(0);
    expect(ethers.output).toMatch(`no lease ${never} in this deployment`);
  });
});
