/**
 * `npm run bench:gas`: gas per LeaseManager operation on a local Hardhat (EDR) chain, beside
 * Sablier's published figures, written to bench/results/gas.json.
 *
 * Figures are execution gas: the receipt's gasUsed minus the 21,000 intrinsic cost of any
 * transaction (calldata stays included), which is how Sablier's references are counted.
 */
import {
  createPublicClient,
  createTestClient,
  createWalletClient,
  http,
  keccak256,
  parseEther,
  sha256,
  toHex,
  zeroHash,
  type Hex,
  type TransactionReceipt,
} from "viem";
import { hardhat } from "viem/chains";

import { deployBaton } from "../deploy/deploy.ts";
import { devAccount, startLocalChain } from "../deploy/local-chain.ts";
import { leaseIdFromReceipt, signPermit } from "../sdk/chain/permit.ts";
import { signOpening } from "../sdk/chain/opening.ts";
import { signQuote, type Quote } from "../sdk/chain/quote.ts";
import { devTokenAbi, leaseManagerAbi, providerRegistryAbi } from "../sdk/generated/abis.ts";
import { median, printTable, writeResults, type Figure } from "./report.ts";

const INTRINSIC = 21_000n;
const deployer = devAccount(0);
const provider = devAccount(1);
const tenant = devAccount(2);
const keeper = devAccount(3);
/** Submits tenants' signed openings (`openLeaseFor`): the provider a job is handed to. */
const successor = devAccount(4);

const chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
try {
  const publicClient = createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl), pollingInterval: 20 });
  const testClient = createTestClient({ chain: hardhat, mode: "hardhat", transport: http(chain.rpcUrl) });
  const wallet = (account: typeof deployer) =>
    createWalletClient({ chain: hardhat, account, transport: http(chain.rpcUrl) });
  const deployment = await deployBaton({ walletClient: wallet(deployer), publicClient });
  const { leaseManager, providerRegistry, stakingToken, paymentToken } = deployment.contracts;

  const send = async (hash: Promise<Hex>): Promise<TransactionReceipt> => {
    const receipt = await publicClient.waitForTransactionReceipt({ hash: await hash });
    if (receipt.status !== "success") throw new Error(`transaction ${receipt.transactionHash} reverted`);
    return receipt;
  };
  const gas = (receipt: TransactionReceipt): number => Number(receipt.gasUsed - INTRINSIC);

  await send(
    wallet(deployer).writeContract({
      address: stakingToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [provider.address, parseEther("10000")],
    }),
  );
  await send(
    wallet(deployer).writeContract({
      address: paymentToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [tenant.address, parseEther("10000")],
    }),
  );
  await send(
    wallet(provider).writeContract({
      address: stakingToken,
      abi: devTokenAbi,
      functionName: "approve",
      args: [providerRegistry, parseEther("10000")],
    }),
  );
  const registerGas = gas(
    await send(
      wallet(provider).writeContract({
        address: providerRegistry,
        abi: providerRegistryAbi,
        functionName: "register",
        args: ["12D3KooWGasBench", "{}", parseEther("5000")],
      }),
    ),
  );
  // A second provider, to take hand-offs by signed openings.
  await send(
    wallet(deployer).writeContract({
      address: stakingToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [successor.address, parseEther("10000")],
    }),
  );
  await send(
    wallet(successor).writeContract({
      address: stakingToken,
      abi: devTokenAbi,
      functionName: "approve",
      args: [providerRegistry, parseEther("10000")],
    }),
  );
  await send(
    wallet(successor).writeContract({
      address: providerRegistry,
      abi: providerRegistryAbi,
      functionName: "register",
      args: ["12D3KooWGasBenchSuccessor", "{}", parseEther("5000")],
    }),
  );
  const approveGas = gas(
    await send(
      wallet(tenant).writeContract({
        address: paymentToken,
        abi: devTokenAbi,
        functionName: "approve",
        args: [leaseManager, parseEther("10000")],
      }),
    ),
  );

  let nonce = 0n;
  /** A process job's quote names no image (zero); an image job's, its manifest digest. */
  const quote = async (jobId: string, image: Hex = zeroHash): Promise<{ quote: Quote; signature: Hex }> => {
    const block = await publicClient.getBlock();
    const q: Quote = {
      provider: provider.address,
      tenant: tenant.address,
      jobId: keccak256(toHex(jobId)),
      resources: keccak256(toHex("gpu:1xH100")),
      image,
      pricePerSecond: parseEther("0.0001"),
      collateral: parseEther("10"),
      heartbeatPeriod: 30n,
      heartbeatTimeout: 600n,
      maxDuration: 86_400n,
      expiry: block.timestamp + 600n,
      nonce: nonce++,
    };
    return { quote: q, signature: await signQuote(provider, hardhat.id, leaseManager, q) };
  };
  // Open 70 leases with an allowance; the first also pays for a fresh nonce bitmap word.
  const openGas: number[] = [];
  const leases: bigint[] = [];
  for (let i = 0; i < 70; i++) {
    const { quote: q, signature } = await quote(`job-${i}`);
    const receipt = await send(
      wallet(tenant).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "openLease",
        args: [q, signature, parseEther("1"), 0n],
      }),
    );
    openGas.push(gas(receipt));
    leases.push(leaseIdFromReceipt(receipt, leaseManager));
  }

  // An image job's quote carries a digest, whose non-zero calldata bytes cost more than zeros.
  const imageOpenGas: number[] = [];
  for (let i = 0; i < 5; i++) {
    const { quote: q, signature } = await quote(`image-job-${i}`, sha256(toHex(`manifest-${i}`)));
    imageOpenGas.push(
      gas(
        await send(
          wallet(tenant).writeContract({
            address: leaseManager,
            abi: leaseManagerAbi,
            functionName: "openLease",
            args: [q, signature, parseEther("1"), 0n],
          }),
        ),
      ),
    );
  }

  const permitGas: number[] = [];
  for (let i = 0; i < 5; i++) {
    const { quote: q, signature } = await quote(`permit-job-${i}`);
    const deposit = parseEther("1");
    const block = await publicClient.getBlock();
    const permit = await signPermit({ publicClient }, tenant, {
      token: paymentToken,
      spender: leaseManager,
      value: deposit,
      deadline: block.timestamp + 600n,
    });
    const receipt = await send(
      wallet(tenant).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "openLeaseWithPermit",
        args: [q, signature, deposit, 0n, permit],
      }),
    );
    permitGas.push(gas(receipt));
  }

  // The permits above replaced the standing allowance; restore it for the top-up below.
  await send(
    wallet(tenant).writeContract({
      address: paymentToken,
      abi: devTokenAbi,
      functionName: "approve",
      args: [leaseManager, parseEther("10000")],
    }),
  );

  const heartbeat = async (ids: bigint[], cids: string[] = []): Promise<number> => {
    await testClient.increaseTime({ seconds: 30 });
    return gas(
      await send(
        wallet(provider).writeContract({
          address: leaseManager,
          abi: leaseManagerAbi,
          functionName: "heartbeat",
          args: [ids, cids],
        }),
      ),
    );
  };
  const cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
  const hb1 = await heartbeat(leases.slice(0, 1));
  const hb16 = await heartbeat(leases.slice(0, 16));
  const hb64 = await heartbeat(leases.slice(0, 64));
  const hb16Cids = await heartbeat(leases.slice(0, 16), Array(16).fill(cid));

  // First-ever figures pay one-time costs (a zero storage slot or token balance becoming non-zero);
  // the steady figures, the medians of later repetitions, are what a running provider pays.
  const claim = async (ids: bigint[]): Promise<number> =>
    gas(
      await send(
        wallet(provider).writeContract({
          address: leaseManager,
          abi: leaseManagerAbi,
          functionName: "claim",
          args: [ids],
        }),
      ),
    );
  const claimFirst = await claim(leases.slice(0, 1));
  const claim1: number[] = [];
  const claim16: number[] = [];
  for (let i = 0; i < 5; i++) {
    await heartbeat(leases.slice(0, 16));
    claim1.push(await claim(leases.slice(0, 1)));
    claim16.push(await claim(leases.slice(1, 17)));
  }
  const topUp = gas(
    await send(
      wallet(tenant).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "topUp",
        args: [leases[1]!, parseEther("1")],
      }),
    ),
  );
  const close = gas(
    await send(
      wallet(tenant).writeContract({
        address: leaseManager,
        abi: leaseManagerAbi,
        functionName: "close",
        args: [leases[20]!],
      }),
    ),
  );
  const closeAck = await heartbeat([leases[20]!]);
  let successorNonce = 0n;
  /**
   * The successor submits the tenant's signed opening of a lease of `job` continuing `predecessor`
   * (0n: none), as a hand-off does: an active predecessor is ended in the same transaction.
   */
  const openFor = async (job: string, predecessor: bigint): Promise<number> => {
    const block = await publicClient.getBlock();
    const { quote: q } = await quote(job);
    const signed = { ...q, provider: successor.address, nonce: successorNonce++ };
    const opening = { quote: signed, deposit: parseEther("1"), predecessor, deadline: block.timestamp + 60n };
    const signature = await signOpening(tenant, hardhat.id, leaseManager, opening);
    return gas(
      await send(
        wallet(successor).writeContract({
          address: leaseManager,
          abi: leaseManagerAbi,
          functionName: "openLeaseFor",
          args: [opening, signature],
        }),
      ),
    );
  };
  const openForFirst = await openFor("signed-0", 0n);
  const openForPlain: number[] = [];
  for (let i = 1; i <= 5; i++) openForPlain.push(await openFor(`signed-${i}`, 0n));
  // Hand-offs from live leases (heartbeats in time): each is closed by the opening.
  const openForClosing: number[] = [];
  for (let i = 40; i < 45; i++) openForClosing.push(await openFor(`job-${i}`, leases[i]!));

  const finishes: number[] = [];
  for (const leaseId of leases.slice(21, 27)) {
    finishes.push(
      gas(
        await send(
          wallet(provider).writeContract({
            address: leaseManager,
            abi: leaseManagerAbi,
            functionName: "finish",
            args: [leaseId, cid],
          }),
        ),
      ),
    );
  }
  await testClient.increaseTime({ seconds: 700 });
  await testClient.mine({ blocks: 1 });
  const slashes: number[] = [];
  for (const leaseId of leases.slice(30, 36)) {
    slashes.push(
      gas(
        await send(
          wallet(keeper).writeContract({
            address: leaseManager,
            abi: leaseManagerAbi,
            functionName: "slashMissedHeartbeat",
            args: [leaseId],
          }),
        ),
      ),
    );
  }

  // Hand-offs from leases past their deadline: each is slashed by the opening.
  const openForSlashing: number[] = [];
  for (let i = 50; i < 55; i++) openForSlashing.push(await openFor(`job-${i}`, leases[i]!));

  const sablier = (value: number, label: string) => ({ value, label: `Sablier ${label}` });
  const figures: Figure[] = [
    { name: "register with stake (once)", value: registerGas, unit: "gas" },
    { name: "approve (payment token, once)", value: approveGas, unit: "gas" },
    {
      name: "openLease, first (new nonce word)",
      value: openGas[0]!,
      unit: "gas",
      reference: sablier(164_000, "createWithDurations max"),
    },
    {
      name: "openLease (median of 69)",
      value: median(openGas.slice(1)),
      unit: "gas",
      reference: sablier(117_000, "createWithDurations min"),
      target: { value: 150_000, atMost: true },
    },
    {
      name: "openLease, image job (median of 5)",
      value: median(imageOpenGas),
      unit: "gas",
      note: "the quote names an image by its manifest digest (the process job's above names none)",
    },
    {
      name: "openLeaseWithPermit (median of 5)",
      value: median(permitGas),
      unit: "gas",
      reference: sablier(164_000, "createWithDurations max"),
      target: { value: 150_000, atMost: true },
      note: "the permit itself (signature check, nonce, allowance) is included",
    },
    {
      name: "openLeaseFor, first (new nonce word)",
      value: openForFirst,
      unit: "gas",
      note: "the provider submits the tenant's signed opening (a hand-off that waits for no block)",
    },
    { name: "openLeaseFor (median of 5)", value: median(openForPlain), unit: "gas", note: "no predecessor" },
    {
      name: "openLeaseFor closing its predecessor (median of 5)",
      value: median(openForClosing),
      unit: "gas",
      note: "replaces the tenant's close and openLease: one transaction, paid by the provider",
    },
    {
      name: "openLeaseFor slashing its predecessor (median of 5)",
      value: median(openForSlashing),
      unit: "gas",
      note: "replaces the tenant's slashMissedHeartbeat and openLease; the caller's share goes to the submitter",
    },
    { name: "heartbeat, 1 lease", value: hb1, unit: "gas" },
    { name: "heartbeat, 16 leases (total)", value: hb16, unit: "gas" },
    {
      name: "heartbeat, 16 leases (per lease)",
      value: Math.round(hb16 / 16),
      unit: "gas",
      target: { value: 8_000, atMost: true },
    },
    { name: "heartbeat, 64 leases (per lease)", value: Math.round(hb64 / 64), unit: "gas" },
    {
      name: "heartbeat, 16 leases + CIDs (per lease)",
      value: Math.round(hb16Cids / 16),
      unit: "gas",
      note: "a 59-character CIDv1 committed per lease",
    },
    { name: "claim, 1 lease, first ever", value: claimFirst, unit: "gas" },
    {
      name: "claim, 1 lease (median of 5)",
      value: median(claim1),
      unit: "gas",
      reference: sablier(49_000, "Flow withdrawMax"),
      target: { value: 60_000, atMost: true },
    },
    { name: "claim, 16 leases (median of 5)", value: median(claim16), unit: "gas" },
    {
      name: "claim, 16 leases (per lease)",
      value: Math.round(median(claim16) / 16),
      unit: "gas",
      reference: sablier(30_000, "Lockup withdraw max"),
    },
    { name: "topUp", value: topUp, unit: "gas" },
    { name: "close (tenant)", value: close, unit: "gas" },
    { name: "heartbeat acknowledging a close", value: closeAck, unit: "gas" },
    {
      name: "finish, first ever",
      value: finishes[0]!,
      unit: "gas",
      note: "pays for the tenant's first credited refund and the provider's first completed-lease count",
    },
    { name: "finish (median of 5 later)", value: median(finishes.slice(1)), unit: "gas" },
    {
      name: "slashMissedHeartbeat, first ever",
      value: slashes[0]!,
      unit: "gas",
      note: "pays for the keeper's, the tenant's and the treasury's first staking-token balances",
    },
    {
      name: "slashMissedHeartbeat (median of 5 later)",
      value: median(slashes.slice(1)),
      unit: "gas",
      target: { value: 120_000, atMost: true },
    },
  ];
  printTable("Gas per operation (execution gas = gasUsed − 21,000)", figures);
  const file = await writeResults("gas", { counting: "gasUsed - 21000 intrinsic; calldata included", figures });
  console.log(`\nwrote ${file}`);
} finally {
  await chain.stop();
}
