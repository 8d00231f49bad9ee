import { contracts, writeContract } from "../../sdk/chain/client.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import type { BidResponse } from "../../sdk/wire/messages.ts";
import type { Tenant } from "./market.ts";

/**
 * Opens a lease on chain from a provider's quote, as a tenant outside the SDK does: approves a
 * deposit of `durationS` seconds at the quoted price, opens the lease, and returns its id (read from
 * the `LeaseOpened` log). Throws when the provider refused instead of quoting.
 */
export async function openQuotedLease(
  tenant: Pick<Tenant, "chain">,
  deployment: Deployment,
  response: BidResponse,
  durationS: number,
): Promise<bigint> {
  if (response.kind !== "quote") throw new Error(`refused: ${response.reason}: ${response.message}`);
  const { leaseManager, paymentToken } = contracts(deployment);
  const deposit = response.quote.pricePerSecond * BigInt(durationS);
  await writeContract(tenant.chain, {
    ...paymentToken,
    functionName: "approve",
    args: [leaseManager.address, deposit],
  });
  const receipt = await writeContract(tenant.chain, {
    ...leaseManager,
    functionName: "openLease",
    args: [response.quote, response.signature, deposit, 0n],
  });
  return BigInt(receipt.logs.find((l) => l.address.toLowerCase() === leaseManager.address.toLowerCase())!.topics[1]!);
}
