import { createPublicClient, createWalletClient, http, parseEther } from "viem";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  checkBlockTime,
  devAccount,
  LOCAL_CHAINS,
  startLocalChain,
  type LocalChain,
} from "../../deploy/local-chain.ts";
import { UserError } from "../../sdk/errors.ts";

// Both EVMs a devnet runs, one after the other: Hardhat's EDR keeps time through
// `allowBlocksWithSameTimestamp` (hardhat.config.ts), Anvil by default.
describe.each(LOCAL_CHAINS)("the clock of a local %s chain", (kind) => {
  let chain: LocalChain;

  beforeAll(async () => {
    chain = await startLocalChain({ chain: kind, signal: AbortSignal.timeout(60_000) });
  });

  afterAll(async () => {
    await chain?.stop();
  });

  const clients = () => {
    const transport = http(chain.rpcUrl);
    return {
      publicClient: createPublicClient({ chain: hardhat, transport, pollingInterval: 20 }),
      wallet: createWalletClient({ chain: hardhat, account: devAccount(0), transport }),
    };
  };
  const to = devAccount(1).address;

  // Every lease deadline is in chain time. A devnet whose blocks each took a new second ran 95 s
  // ahead of the clock after 100 transactions, and honest providers turned slashable at once.
  it("stays within 5 s of the clock through a burst of 100 transactions", async () => {
    const { publicClient, wallet } = clients();
    // The pending block's time is the chain's time: what the next transaction and deadline check see.
    // (The latest block's only says when something was last mined.) Its distance from the clock is
    // measured from the whole time the answer took, which on a loaded machine can be seconds.
    const drift = async (): Promise<number> => {
      const asked = Math.floor(Date.now() / 1000);
      const chainTime = Number((await publicClient.getBlock({ blockTag: "pending" })).timestamp);
      const answered = Math.ceil(Date.now() / 1000);
      return chainTime < asked ? chainTime - asked : Math.max(0, chainTime - answered);
    };

    const before = await drift();
    // Uncached: viem keeps a block number for its polling interval, and Anvil mines 100
    // transactions well within one poll of waiting for receipts (a cached number read 99).
    const start = await publicClient.getBlockNumber({ cacheTime: 0 });
    const blocks = new Set<bigint>();
    for (let i = 0; i < 100; i++) {
      const hash = await wallet.sendTransaction({ to, value: parseEther("0.001") });
      blocks.add((await publicClient.waitForTransactionReceipt({ hash })).blockNumber);
    }
    const after = await drift();

    // A block per transaction: each was mined at once.
    expect(blocks.size).toBe(100);
    expect((await publicClient.getBlockNumber({ cacheTime: 0 })) - start).toBe(100n);
    // Never ahead by more than 5 s: that is what turned honest providers slashable. Behind, EDR at
    // rest trails by 1-3 s and, with its process starved of CPU, by up to ~10 s, as a real chain
    // trails by up to a block time; the SDK decides from the chain's time, so a lag is safe.
    expect(before).toBeLessThanOrEqual(5);
    expect(after).toBeLessThanOrEqual(5);
    expect(after).toBeGreaterThanOrEqual(-15);
  });

  // What `--block-time` does to a devnet's chain once its setup is mined.
  it("mines a block every second once told to, with transactions or without", async () => {
    const { publicClient, wallet } = clients();
    await chain.mineEvery(1);
    const hash = await wallet.sendTransaction({ to, value: parseEther("0.001") });
    const receipt = await publicClient.waitForTransactionReceipt({ hash });
    expect(receipt.status).toBe("success");
    // Blocks keep coming with nothing to mine, which only interval mining does.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const later = await publicClient.getBlock();
    expect(later.number).toBeGreaterThan(receipt.blockNumber + 1n);
    expect(later.transactions).toEqual([]);
  });
});

describe("block times a local chain refuses", () => {
  it("Anvil takes whole seconds only, and says which chain takes a fraction", () => {
    expect(() => checkBlockTime("anvil", 0.5)).toThrow(UserError);
    expect(() => checkBlockTime("anvil", 0.5)).toThrow(
      "Anvil mines at intervals of whole seconds, not 0.5 s: a block time of a fraction of a second needs the hardhat chain",
    );
    for (const seconds of [0, 2, 12]) expect(() => checkBlockTime("anvil", seconds)).not.toThrow();
    expect(() => checkBlockTime("hardhat", 0.25)).not.toThrow();
  });
});
