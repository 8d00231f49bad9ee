import { recoverMessageAddress, type Address, type LocalAccount } from "viem";

import { ProtocolError } from "../errors.ts";
import { tenantAuthText } from "./messages.ts";

/** How old a tenant's session proof may be: long enough for clock skew, short enough to stop replays. */
export const TENANT_AUTH_MAX_AGE_MS = 5 * 60_000;

export interface TenantAuth {
  address: Address;
  at: number;
  signature: `0x${string}`;
}

/**
 * Proves that the libp2p peer `peerId` speaks for `account` on lease `leaseId`.
 *
 * @example
 * const auth = await signTenantAuth(account, 7n, host.peerId.toString());
 */
export async function signTenantAuth(
  account: LocalAccount,
  leaseId: bigint,
  peerId: string,
  at = Date.now(),
): Promise<TenantAuth> {
  const signature = await account.signMessage({ message: tenantAuthText(leaseId, peerId, at) });
  return { address: account.address, at, signature };
}

/**
 * Checks a tenant's proof for a session from `peerId` about `leaseId`, and returns the address it
 * proves. The caller then compares it with the lease's tenant on chain.
 *
 * @throws {ProtocolError} when the proof is stale, from the future, or not signed by its address.
 */
export async function verifyTenantAuth(
  auth: TenantAuth,
  leaseId: bigint,
  peerId: string,
  now = Date.now(),
): Promise<Address> {
  if (Math.abs(now - auth.at) > TENANT_AUTH_MAX_AGE_MS) {
    throw new ProtocolError("tenant proof is stale or from the future", { details: `at ${auth.at}, now ${now}` });
  }
  const recovered = await recoverMessageAddress({
    message: tenantAuthText(leaseId, peerId, auth.at),
    signature: auth.signature,
  }).catch((cause: unknown) => {
    throw new ProtocolError("tenant proof signature is malformed", { cause });
  });
  if (recovered !== auth.address) {
    throw new ProtocolError("tenant proof is not signed by the address it names", {
      details: `${recovered} != ${auth.address}`,
    });
  }
  return recovered;
}
