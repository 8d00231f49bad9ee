import { contracts, writeContract } from "../chain/client.ts";
import type { SettlementClient } from "../tenant/lease-settlement.ts";

export interface WithdrawCreditReturnType {
  /** Payment tokens the lease manager had credited (refunds from providers' and keepers' calls). */
  refunds: bigint;
  /** Staking tokens the registry had credited (slash compensation from keepers' slashes). */
  compensation: bigint;
}

/**
 * Withdraws what the contracts set aside for the client's account. A refund (or a slash's
 * compensation) is paid at once only in the tenant's own calls; one that a provider's `finish` or
 * a keeper's slash produces is credited instead, so that a tenant's address can never block
 * them, and waits here. Sends a transaction only for a contract that holds a credit; reads and
 * withdraws in the account's transaction queue, so that two calls at once never both try.
 *
 * @example
 * const { refunds, compensation } = await withdrawCredit(client);
 */
export async function withdrawCredit(client: SettlementClient): Promise<WithdrawCreditReturnType> {
  const { chain } = client;
  const { leaseManager, registry } = contracts(chain.deployment);
  const me = chain.walletClient!.account.address;
  return client.transact(async () => {
    const [refunds, compensation] = await Promise.all([
      chain.publicClient.readContract({ ...leaseManager, functionName: "creditOf", args: [me] }),
      chain.publicClient.readContract({ ...registry, functionName: "creditOf", args: [me] }),
    ]);
    if (refunds > 0n) await writeContract(chain, { ...leaseManager, functionName: "withdrawCredit", args: [] });
    if (compensation > 0n) await writeContract(chain, { ...registry, functionName: "withdrawCredit", args: [] });
    return { refunds, compensation };
  });
}
