import { createPublicClient, createTestClient, createWalletClient, http, parseEther, parseTransaction } from "viem";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { deployBaton } from "../../deploy/deploy.ts";
import {
  devAccount,
  LOCAL_CHAINS,
  startLocalChain,
  type LocalChain,
  type LocalChainKind,
} from "../../deploy/local-chain.ts";
import { createChainClient, writeContract } from "../../sdk/chain/client.ts";
import { withGasHeadroom } from "../../sdk/chain/send.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { devTokenAbi } from "../../sdk/generated/abis.ts";
import { until } from "../helpers/processes.ts";
import { startRpcProxy, type RpcProxy } from "../helpers/rpc-proxy.ts";

// Transactions on chains that do not mine every one at once: a send lost on the way, and fees that
// rise past what a transaction offered. Each keeps its nonce until one version is mined. On both EVMs
// a devnet runs: Anvil refuses a transaction whose fee cap is below the base fee, where EDR (as geth)
// holds it until fees come down.
const sender = devAccount(7);

let chain: LocalChain;
let proxy: RpcProxy;
let deployment: Deployment;

const testClient = () => createTestClient({ chain: hardhat, mode: chain.kind, transport: http(chain.rpcUrl) });
const publicClient = () => createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl) });

async function setUp(kind: LocalChainKind): Promise<void> {
  chain = await startLocalChain({ chain: kind, signal: AbortSignal.timeout(60_000) });
  deployment = await deployBaton({
    walletClient: createWalletClient({ chain: hardhat, account: devAccount(0), transport: http(chain.rpcUrl) }),
    publicClient: publicClient(),
  });
  proxy = await startRpcProxy(chain.rpcUrl);
}

async function tearDown(): Promise<void> {
  await proxy?.stop();
  await chain?.stop();
}

/** A mint through the proxy (of 1 token unless told), by a client that resends after `replaceAfterMs`. */
const mint = ({
  amount = parseEther("1"),
  ...options
}: {
  replaceAfterMs: number;
  maxFeePerGas?: bigint;
  amount?: bigint;
}) =>
  writeContract(
    createChainClient({ rpcUrl: proxy.url, deployment, account: sender, pollingIntervalMs: 50, ...options }),
    {
      address: deployment.contracts.paymentToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [sender.address, amount],
    },
  );

/** The transactions sent through the proxy since `from`, decoded. */
const sends = (from: number) =>
  proxy.requests
    .slice(from)
    .filter((r) => r.method === "eth_sendRawTransaction")
    .map((r) => parseTransaction(r.params[0] as `0x${string}`));

/**
 * Every 200 ms, mines a block as `next` says: with that base fee, with the chain's own (`{}`), or
 * none yet (`undefined`); until stopped.
 */
function mineAt(next: () => { baseFee?: bigint } | undefined): () => Promise<void> {
  let running = true;
  const loop = (async () => {
    while (running) {
      const block = next();
      if (block?.baseFee !== undefined) await testClient().setNextBlockBaseFeePerGas({ baseFeePerGas: block.baseFee });
      if (block) await testClient().mine({ blocks: 1 });
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
  return async () => {
    running = false;
    await loop;
  };
}

describe("withGasHeadroom", () => {
  it("adds 20% to an estimate, and never less than 30,000 gas", () => {
    expect(withGasHeadroom(50_000n)).toBe(80_000n);
    expect(withGasHeadroom(150_000n)).toBe(180_000n);
    expect(withGasHeadroom(1_000_000n)).toBe(1_200_000n);
  });
});

describe.each(LOCAL_CHAINS)("writeContract on %s, when the chain does not take every transaction at once", (kind) => {
  beforeAll(() => setUp(kind), 120_000);
  afterAll(tearDown);

  it("sends again a transaction whose send was lost on the way", async () => {
    const from = proxy.requests.length;
    proxy.fail("eth_sendRawTransaction", "drop");
    const receipt = await mint({ replaceAfterMs: 1_000 });
    expect(receipt.status).toBe("success");
    const sent = sends(from);
    expect(sent).toHaveLength(2);
    expect(sent[1]!.nonce).toBe(sent[0]!.nonce);
  });

  it("reads the nonce again when the node calls it taken: the read came from a node behind the chain", async () => {
    // Another mint just before, so the transaction signed on the stale nonce is not the one mined.
    await mint({ replaceAfterMs: 30_000, amount: 2n });
    const from = proxy.requests.length;
    // viem reads the nonce with eth_fillTransaction where the node has it (Anvil), else eth_getTransactionCount.
    proxy.fail("eth_fillTransaction", "behind");
    proxy.fail("eth_getTransactionCount", "behind");
    const receipt = await mint({ replaceAfterMs: 30_000 }).finally(() => proxy.heal());
    expect(receipt.status).toBe("success");
    const sent = sends(from);
    expect(sent).toHaveLength(2);
    expect(sent[1]!.nonce).toBe(sent[0]!.nonce! + 1);
  });

  it("gives a transaction 20% more gas than the node estimates (30,000 at least), and pays only for what it used", async () => {
    // Estimated on the state the mint is then sent on (automine: nothing else lands between).
    const estimate = await publicClient().estimateContractGas({
      address: deployment.contracts.paymentToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [sender.address, parseEther("1")],
      account: sender,
    });
    const from = proxy.requests.length;
    const receipt = await mint({ replaceAfterMs: 30_000 });
    const [tx] = sends(from);
    expect(tx!.gas).toBe(withGasHeadroom(estimate));
    expect(tx!.gas! - estimate).toBeGreaterThanOrEqual(30_000n);
    expect(receipt.gasUsed).toBeLessThan(tx!.gas!);
  });

  it("replaces a transaction that fees outgrew, with 12.5% more each time, until one is mined", async () => {
    const { maxFeePerGas: offered } = await publicClient().estimateFeesPerGas();
    const high = offered * 3n;
    await testClient().setAutomine(false);
    const from = proxy.requests.length;
    // No block until the transaction is out; then every block costs three times what it offered.
    const stop = mineAt(() => (sends(from).length > 0 ? { baseFee: high } : undefined));
    try {
      const receipt = await mint({ replaceAfterMs: 300, maxFeePerGas: high * 2n });
      expect(receipt.status).toBe("success");
      const sent = sends(from);
      expect(sent.length).toBeGreaterThan(2);
      expect(new Set(sent.map((tx) => tx.nonce)).size).toBe(1);
      for (const [i, tx] of sent.entries()) {
        if (i > 0) expect(tx.maxFeePerGas! * 1000n).toBeGreaterThanOrEqual(sent[i - 1]!.maxFeePerGas! * 1125n);
      }
      const mined = await publicClient().getTransaction({ hash: receipt.transactionHash });
      expect(mined.maxFeePerGas!).toBeGreaterThanOrEqual(high);
      expect(mined.maxFeePerGas!).toBeLessThanOrEqual(high * 2n);
    } finally {
      await stop();
      await testClient().setAutomine(true);
    }
  });

  it("never offers more than its cap: the transaction waits until fees come down", async () => {
    const { maxFeePerGas: offered } = await publicClient().estimateFeesPerGas();
    const cap = offered * 2n;
    let spike = true;
    await testClient().setAutomine(false);
    const from = proxy.requests.length;
    const stop = mineAt(() => (sends(from).length === 0 ? undefined : spike ? { baseFee: cap * 2n } : {}));
    try {
      const minted = mint({ replaceAfterMs: 300, maxFeePerGas: cap });
      // Sent at the cap and sent again while the spike lasts: never above it.
      await until(
        () => sends(from).filter((tx) => tx.maxFeePerGas === cap).length >= 3,
        30_000,
        "three sends at the cap",
      );
      expect(await Promise.race([minted.then(() => "mined"), Promise.resolve("pending")])).toBe("pending");
      spike = false;
      const receipt = await minted;
      expect(receipt.status).toBe("success");
      expect(sends(from).every((tx) => tx.maxFeePerGas! <= cap)).toBe(true);
    } finally {
      await stop();
      await testClient().setAutomine(true);
    }
  });
});
