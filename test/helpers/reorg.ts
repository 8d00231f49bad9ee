import {
  createPublicClient,
  createTestClient,
  http,
  serializeTransaction,
  type Hex,
  type Transaction,
  type TransactionSerializable,
} from "viem";
import { hardhat } from "viem/chains";

/** A point a local chain can be reorged back to. */
export interface ChainSnapshot {
  id: Hex;
  /** The chain's head when it was taken: blocks after it are the ones a reorg replaces. */
  blockNumber: bigint;
}

const clients = (rpcUrl: string) => ({
  publicClient: createPublicClient({ chain: hardhat, transport: http(rpcUrl) }),
  testClient: createTestClient({ chain: hardhat, mode: "hardhat", transport: http(rpcUrl) }),
});

/** Takes a snapshot of a local (Hardhat/EDR) chain, for {@link reorg}. Test-only: it uses Hardhat's methods. */
export async function snapshotChain(rpcUrl: string): Promise<ChainSnapshot> {
  const { publicClient, testClient } = clients(rpcUrl);
  const id = await testClient.snapshot();
  return { id, blockNumber: await publicClient.getBlockNumber() };
}

/**
 * A reorg on a local chain: the blocks mined since `snapshot` are replaced by a new branch that
 * holds the same transactions, less those in `drop`. After a reorg, nodes put the transactions of
 * the old branch back in their mempools, and the new branch mines them again, in some other order;
 * a transaction no node kept is gone. Here: evm_revert to the snapshot (EDR forgets those blocks,
 * their transactions and its mempool), then every transaction of those blocks and of the mempool is
 * sent again (signed as it was, so nonces and effects are the senders' own), except `drop`. Mining
 * pauses meanwhile (interval mining resumes, a block every `blockTimeS`), so that no transaction
 * slips between.
 *
 * @returns how many transactions were sent again.
 */
export async function reorg(
  rpcUrl: string,
  snapshot: ChainSnapshot,
  { drop, blockTimeS }: { drop: readonly Hex[]; blockTimeS: number },
): Promise<number> {
  const { publicClient, testClient } = clients(rpcUrl);
  await testClient.setIntervalMining({ interval: 0 });
  try {
    const head = await publicClient.getBlockNumber();
    const old: Transaction[] = [];
    for (let n = snapshot.blockNumber + 1n; n <= head; n++) {
      old.push(...(await publicClient.getBlock({ blockNumber: n, includeTransactions: true })).transactions);
    }
    old.push(...(await publicClient.getBlock({ blockTag: "pending", includeTransactions: true })).transactions);
    await testClient.revert({ id: snapshot.id });
    const dropped = new Set(drop.map((hash) => hash.toLowerCase()));
    const again = old
      .filter((tx) => !dropped.has(tx.hash.toLowerCase()))
      .sort((a, b) => (a.from === b.from ? a.nonce - b.nonce : a.from < b.from ? -1 : 1));
    for (const tx of again) {
      await publicClient.sendRawTransaction({ serializedTransaction: signedBytes(tx) });
    }
    return again.length;
  } finally {
    await testClient.setIntervalMining({ interval: blockTimeS });
  }
}

/** A mined or pending transaction's signed bytes, rebuilt from what the node says of it. */
function signedBytes(tx: Transaction): Hex {
  const common = { chainId: tx.chainId!, nonce: tx.nonce, to: tx.to, value: tx.value, data: tx.input, gas: tx.gas };
  const unsigned: TransactionSerializable =
    tx.type === "eip1559"
      ? {
          ...common,
          type: "eip1559",
          maxFeePerGas: tx.maxFeePerGas,
          maxPriorityFeePerGas: tx.maxPriorityFeePerGas,
          accessList: tx.accessList,
        }
      : { ...common, type: "legacy", gasPrice: tx.gasPrice };
  return serializeTransaction(unsigned, {
    r: tx.r,
    s: tx.s,
    ...(tx.type === "eip1559" ? { yParity: tx.yParity } : { v: tx.v }),
  });
}
