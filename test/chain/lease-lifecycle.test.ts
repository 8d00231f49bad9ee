import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import {
  createPublicClient,
  createTestClient,
  createWalletClient,
  decodeEventLog,
  http,
  keccak256,
  parseEther,
  sha256,
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
import {
  devAccount,
  LOCAL_CHAINS,
  startLocalChain,
  type LocalChain,
  type LocalChainKind,
} from "../../deploy/local-chain.ts";
import { loadDeployment, type Deployment } from "../../sdk/chain/deployments.ts";
import { signPermit } from "../../sdk/chain/permit.ts";
import { hashOpening, leaseIdOf, openingSigner, signOpening, type Opening } from "../../sdk/chain/opening.ts";
import { hashQuote, signQuote, type Quote } from "../../sdk/chain/quote.ts";
import { devTokenAbi, leaseManagerAbi, providerRegistryAbi } from "../../sdk/generated/abis.ts";

const deployer = devAccount(0);
const provider = devAccount(1);
const tenant = devAccount(2);
const keeper = devAccount(3);

let chain: LocalChain;
let dir: string;
let deployment: Deployment;
let publicClient: PublicClient;

const wallet = (account: typeof deployer) =>
  createWalletClient({ chain: hardhat, account, transport: http(chain.rpcUrl) });

async function send(receiptOf: Promise<Hex>): Promise<TransactionReceipt> {
  const receipt = await publicClient.waitForTransactionReceipt({ hash: await receiptOf });
  expect(receipt.status).toBe("success");
  return receipt;
}

function events(receipt: TransactionReceipt) {
  return receipt.logs
    .filter((log) => log.address.toLowerCase() === deployment.contracts.leaseManager.toLowerCase())
    .map((log) => decodeEventLog({ abi: leaseManagerAbi, data: log.data, topics: log.topics }));
}

const balanceOf = (token: Address, who: Address) =>
  publicClient.readContract({ address: token, abi: devTokenAbi, functionName: "balanceOf", args: [who] });

/** An image job's image, as its quote carries it: the SHA-256 of a manifest. */
const image = sha256(toHex("an OCI image manifest"));

async function quoteFor(jobId: Hex, nonce: bigint, quoted: Hex = image): Promise<{ quote: Quote; signature: Hex }> {
  const block = await publicClient.getBlock();
  const quote: Quote = {
    provider: provider.address,
    tenant: tenant.address,
    jobId,
    resources: keccak256(toHex("gpu:1xfake")),
    image: quoted,
    pricePerSecond: parseEther("0.001"),
    collateral: parseEther("50"),
    heartbeatPeriod: 10n,
    heartbeatTimeout: 60n,
    maxDuration: 3600n,
    expiry: block.timestamp + 300n,
    nonce,
  };
  return { quote, signature: await signQuote(provider, hardhat.id, deployment.contracts.leaseManager, quote) };
}

/** A chain of `kind` with the contracts deployed, a registered provider and a funded tenant. */
async function setUp(kind: LocalChainKind): Promise<void> {
  chain = await startLocalChain({ chain: kind, signal: AbortSignal.timeout(60_000) });
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-deploy-"));
  publicClient = createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl), pollingInterval: 50 });
  const written = await deployBaton({ walletClient: wallet(deployer), publicClient });
  await writeDeployment(dir, written);
  deployment = await loadDeployment(dir, hardhat.id);
  expect(deployment).toEqual(written);

  const { stakingToken, paymentToken, providerRegistry, leaseManager } = deployment.contracts;
  await send(
    wallet(deployer).writeContract({
      address: stakingToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [provider.address, parseEther("1000")],
    }),
  );
  await send(
    wallet(deployer).writeContract({
      address: paymentToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [tenant.address, parseEther("100")],
    }),
  );
  await send(
    wallet(provider).writeContract({
      address: stakingToken,
      abi: devTokenAbi,
      functionName: "approve",
      args: [providerRegistry, parseEther("1000")],
    }),
  );
  await send(
    wallet(provider).writeContract({
      address: providerRegistry,
      abi: providerRegistryAbi,
      functionName: "register",
      args: ["12D3KooWTestProvider", '{"region":"loopback"}', parseEther("500")],
    }),
  );
  await send(
    wallet(tenant).writeContract({
      address: paymentToken,
      abi: devTokenAbi,
      functionName: "approve",
      args: [leaseManager, parseEther("10")],
    }),
  );
}

async function tearDown(): Promise<void> {
  await chain?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
}

// The same life on both EVMs a devnet runs, one after the other: Hardhat's EDR and Anvil.
describe.each(LOCAL_CHAINS)("a lease's life on %s, through viem", (kind) => {
  beforeAll(() => setUp(kind));
  afterAll(tearDown);
  const jobId = keccak256(toHex("job-lifecycle"));
  let firstLease: bigint;

  it("records the provider's peer id and stake", async () => {
    const { providerRegistry } = deployment.contracts;
    const view = await publicClient.readContract({
      address: providerRegistry,
      abi: providerRegistryAbi,
      functionName: "getProvider",
      args: [provider.address],
    });
    expect(view.registered).toBe(true);
    expect(view.eligible).toBe(true);
    expect(view.stake).toBe(parseEther("500"));
    expect(view.peerId).toBe("12D3KooWTestProvider");
  });

  it("hashes quotes exactly as the contract does, with an image or none", async () => {
    for (const quoted of [image, zeroHash]) {
      const { quote } = await quoteFor(jobId, 99n, quoted);
      const onChain = await publicClient.readContract({
        address: deployment.contracts.leaseManager,
        abi: leaseManagerAbi,
        functionName: "hashQuote",
        args: [quote],
      });
      expect(onChain).toBe(hashQuote(hardhat.id, deployment.contracts.leaseManager, quote));
    }
  });

  it("hashes signed openings, and gives their leases ids, exactly as the contract does", async () => {
    const { leaseManager } = deployment.contracts;
    const { quote } = await quoteFor(jobId, 98n);
    const opening: Opening = { quote, deposit: parseEther("1"), predecessor: 7n, deadline: quote.expiry - 60n };
    const read = <const name extends "hashOpening" | "leaseIdOf">(functionName: name, args: readonly unknown[]) =>
      publicClient.readContract({ address: leaseManager, abi: leaseManagerAbi, functionName, args } as never);
    expect(await read("hashOpening", [opening])).toBe(hashOpening(hardhat.id, leaseManager, opening));
    expect(await read("leaseIdOf", [quote])).toBe(leaseIdOf(hardhat.id, leaseManager, quote));
    // The tenant's signature recovers to the tenant, as the provider checks before it starts the job.
    const signature = await signOpening(tenant, hardhat.id, leaseManager, opening);
    expect(await openingSigner(hardhat.id, leaseManager, opening, signature)).toBe(tenant.address);
  });

  it("opens, heartbeats with a checkpoint, claims and finishes", async () => {
    const { leaseManager, paymentToken, providerRegistry } = deployment.contracts;
    const { quote, signature } = await quoteFor(jobId, 1n);
    const deposit = parseEther("1");
    const opened = await send(
      wallet(tenant).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "openLease",
        args: [quote, signature, deposit, 0n],
      }),
    );
    const openedEvent = events(opened).find((e) => e.eventName === "LeaseOpened");
    if (openedEvent?.eventName !== "LeaseOpened") throw new Error("no LeaseOpened event");
    firstLease = openedEvent.args.leaseId;
    expect(openedEvent.args.jobId).toBe(jobId);
    expect(openedEvent.args.provider).toBe(provider.address);
    expect(openedEvent.args.tenant).toBe(tenant.address);
    expect(openedEvent.args.terms).toMatchObject({ image, resources: quote.resources, nonce: 1n });
    expect(await balanceOf(paymentToken, leaseManager)).toBe(deposit);

    const test = createTestClient({ chain: hardhat, mode: chain.kind, transport: http(chain.rpcUrl) });
    await test.increaseTime({ seconds: 20 });
    const cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
    const beat = await send(
      wallet(provider).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "heartbeat",
        args: [[firstLease], [cid]],
      }),
    );
    const beatEvents = events(beat);
    expect(beatEvents.map((e) => e.eventName)).toEqual(["HeartbeatRecorded", "CheckpointCommitted"]);
    const committed = beatEvents[1];
    if (committed?.eventName !== "CheckpointCommitted") throw new Error("no CheckpointCommitted event");
    expect(committed.args.cid).toBe(cid);

    const lease = await publicClient.readContract({
      address: leaseManager,
      abi: leaseManagerAbi,
      functionName: "getLease",
      args: [firstLease],
    });
    const covered = BigInt(lease.lastHeartbeat - lease.settledUntil);
    expect(covered).toBeGreaterThanOrEqual(20n);
    expect(lease.earned).toBe(covered * quote.pricePerSecond);

    const before = await balanceOf(paymentToken, provider.address);
    await send(
      wallet(provider).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "claim",
        args: [[firstLease]],
      }),
    );
    expect((await balanceOf(paymentToken, provider.address)) - before).toBe(lease.earned);

    // Seconds pass before the finish, as they do for a real provider. In the claim's own second the
    // finish settles nothing, and its gas estimate leaves out refilling the provider's emptied
    // claimable balance: mined a second later (a loaded machine), it ran out of gas.
    await test.increaseTime({ seconds: 5 });
    await test.mine({ blocks: 1 });
    const tenantBefore = await balanceOf(paymentToken, tenant.address);
    const finished = await send(
      wallet(provider).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "finish",
        args: [firstLease, "bafkresult"],
      }),
    );
    const completed = events(finished).find((e) => e.eventName === "LeaseCompleted");
    if (completed?.eventName !== "LeaseCompleted") throw new Error("no LeaseCompleted event");
    expect(completed.args.resultCid).toBe("bafkresult");
    // The provider's call credits the refund (a tenant that refuses tokens could otherwise block it).
    expect(await balanceOf(paymentToken, tenant.address)).toBe(tenantBefore);
    expect(
      await publicClient.readContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "creditOf",
        args: [tenant.address],
      }),
    ).toBe(completed.args.refund);

    const view = await publicClient.readContract({
      address: providerRegistry,
      abi: providerRegistryAbi,
      functionName: "getProvider",
      args: [provider.address],
    });
    expect(view.leasesCompleted).toBe(1n);
    expect(view.locked).toBe(0n);
    expect(view.secondsServed).toBeGreaterThanOrEqual(20n);
  });

  it("opens a successor with an ERC-2612 permit, and slashes it after a missed heartbeat", async () => {
    const { leaseManager, paymentToken, stakingToken, providerRegistry } = deployment.contracts;
    const { quote, signature } = await quoteFor(jobId, 2n);
    const deposit = parseEther("2");
    const block = await publicClient.getBlock();
    const permit = await signPermit({ publicClient }, tenant, {
      token: paymentToken,
      spender: leaseManager,
      value: deposit,
      deadline: block.timestamp + 600n,
    });
    const opened = await send(
      wallet(tenant).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "openLeaseWithPermit",
        args: [quote, signature, deposit, firstLease, permit],
      }),
    );
    const openedEvent = events(opened).find((e) => e.eventName === "LeaseOpened");
    if (openedEvent?.eventName !== "LeaseOpened") throw new Error("no LeaseOpened event");
    expect(openedEvent.args.predecessor).toBe(firstLease);
    const leaseId = openedEvent.args.leaseId;

    // Not yet: the heartbeat timeout has not passed.
    await expect(
      publicClient.simulateContract({
        account: keeper,
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "slashMissedHeartbeat",
        args: [leaseId],
      }),
    ).rejects.toThrow(/LeaseManager_HeartbeatNotMissed/);

    const test = createTestClient({ chain: hardhat, mode: chain.kind, transport: http(chain.rpcUrl) });
    await test.increaseTime({ seconds: 61 });
    await test.mine({ blocks: 1 });
    const tenantPayBefore = await balanceOf(paymentToken, tenant.address);
    const creditOf = (address: Address, abi: typeof leaseManagerAbi | typeof providerRegistryAbi) =>
      publicClient.readContract({ address, abi, functionName: "creditOf", args: [tenant.address] });
    const creditBefore = await creditOf(leaseManager, leaseManagerAbi);
    const slashed = await send(
      wallet(keeper).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "slashMissedHeartbeat",
        args: [leaseId],
      }),
    );
    const slashEvent = events(slashed).find((e) => e.eventName === "LeaseSlashed");
    if (slashEvent?.eventName !== "LeaseSlashed") throw new Error("no LeaseSlashed event");
    expect(slashEvent.args.compensation).toBe((quote.collateral * 5_000n) / 10_000n);
    expect(slashEvent.args.reward).toBe((quote.collateral * 1_000n) / 10_000n);
    // The keeper is paid at once; the tenant's compensation and refund are credited to it.
    expect(await balanceOf(stakingToken, keeper.address)).toBe(slashEvent.args.reward);
    expect(await balanceOf(stakingToken, tenant.address)).toBe(0n);
    expect(await balanceOf(paymentToken, tenant.address)).toBe(tenantPayBefore);
    expect(await creditOf(providerRegistry, providerRegistryAbi)).toBe(slashEvent.args.compensation);
    expect((await creditOf(leaseManager, leaseManagerAbi)) - creditBefore).toBe(slashEvent.args.refund);
    for (const address of [leaseManager, providerRegistry]) {
      await send(
        wallet(tenant).writeContract({ address, abi: leaseManagerAbi, functionName: "withdrawCredit", args: [] }),
      );
    }
    expect(await balanceOf(stakingToken, tenant.address)).toBe(slashEvent.args.compensation);
    expect(await balanceOf(paymentToken, tenant.address)).toBe(tenantPayBefore + creditBefore + slashEvent.args.refund);

    // Money is conserved: what the tenant was given is now with the tenant, the provider or the escrow.
    const total =
      (await balanceOf(paymentToken, tenant.address)) +
      (await balanceOf(paymentToken, provider.address)) +
      (await balanceOf(paymentToken, leaseManager));
    expect(total).toBe(parseEther("100"));
    const claimable = await publicClient.readContract({
      address: leaseManager,
      abi: leaseManagerAbi,
      functionName: "claimable",
      args: [provider.address],
    });
    expect(await balanceOf(paymentToken, leaseManager)).toBe(claimable);
  });
});
