import type { Hex, TransactionReceipt } from "viem";

import type { BatonClient } from "../client.ts";
import { contracts, writeContract } from "../chain/client.ts";
import { leaseIdFromReceipt, signPermit } from "../chain/permit.ts";
import type { Quote } from "../chain/quote.ts";
import { UserError } from "../errors.ts";

export interface OpenLeaseParameters {
  quote: Quote;
  signature: Hex;
  /** Payment tokens to escrow: the lease is funded for `deposit / pricePerSecond` seconds. */
  deposit: bigint;
  /** The lease of the same job this one continues (a hand-off), or 0n. */
  predecessor?: bigint;
  /**
   * How the deposit is approved: `permit` signs an ERC-2612 permit and opens in one transaction;
   * `approve` sends an approval first. Default `permit`.
   */
  approval?: "permit" | "approve";
  /**
   * Allowance to leave to the lease manager once the deposit is pulled (the permit or approval is for
   * the deposit plus this), for later signed openings (`signOpening`) to pull without an approval.
   * Default 0n.
   */
  keepAllowance?: bigint;
  signal?: AbortSignal;
}

export interface OpenLeaseReturnType {
  leaseId: bigint;
  receipt: TransactionReceipt;
}

/**
 * Opens a lease on chain with a provider's quote, escrowing `deposit`.
 *
 * @throws {UserError} when the tenant cannot pay the deposit; {ChainError} when the chain refuses.
 * @example
 * const { leaseId } = await openLease(client, { quote: chosen.quote, signature: chosen.signature, deposit });
 */
export async function openLease(
  client: BatonClient,
  { quote, signature, deposit, predecessor = 0n, approval = "permit", keepAllowance = 0n, signal }: OpenLeaseParameters,
): Promise<OpenLeaseReturnType> {
  const { leaseManager, paymentToken } = contracts(client.chain.deployment);
  const balance = await client.chain.publicClient.readContract({
    ...paymentToken,
    functionName: "balanceOf",
    args: [client.account.address],
  });
  if (balance < deposit) {
    throw new UserError(`the tenant holds ${balance} payment tokens; the deposit is ${deposit}`);
  }
  signal?.throwIfAborted();
  const receipt = await client.transact(async () => {
    if (approval === "approve") {
      await writeContract(client.chain, {
        ...paymentToken,
        functionName: "approve",
        args: [leaseManager.address, deposit + keepAllowance],
        ...(signal ? { signal } : {}),
      });
      return writeContract(client.chain, {
        ...leaseManager,
        functionName: "openLease",
        args: [quote, signature, deposit, predecessor],
        ...(signal ? { signal } : {}),
      });
    }
    const block = await client.chain.publicClient.getBlock();
    const permit = await signPermit(client.chain, client.account, {
      token: paymentToken.address,
      spender: leaseManager.address,
      value: deposit + keepAllowance,
      deadline: block.timestamp + 600n,
    });
    return writeContract(client.chain, {
      ...leaseManager,
      functionName: "openLeaseWithPermit",
      args: [quote, signature, deposit, predecessor, permit],
      ...(signal ? { signal } : {}),
    });
  });
  return { leaseId: leaseIdFromReceipt(receipt, leaseManager.address), receipt };
}
