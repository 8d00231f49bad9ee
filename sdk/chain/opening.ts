import { hashTypedData, recoverTypedDataAddress, type Address, type Hex, type LocalAccount } from "viem";

import { hashQuote, quoteDomain, quoteTypes, type Quote } from "./quote.ts";

/**
 * A tenant's signed lease opening (`Lease.Opening` in `contracts/types/Lease.sol`): the tenant
 * accepts a provider's quote with a deposit, a predecessor and a deadline, and the provider submits
 * it with `LeaseManager.openLeaseFor`, paying the gas, after starting the job on it. A hand-off then
 * waits for no block: the provider starts at once, and the lease's id is known before it is mined
 * ({@link leaseIdOf}). A test checks that the contract's `hashOpening` and {@link hashOpening} agree.
 */
export const openingTypes = {
  Opening: [
    { name: "quote", type: "Quote" },
    { name: "deposit", type: "uint256" },
    { name: "predecessor", type: "uint256" },
    { name: "deadline", type: "uint64" },
  ],
  ...quoteTypes,
} as const;

/** What the tenant signs: `LeaseManager.openLeaseFor`'s first argument. */
export interface Opening {
  quote: Quote;
  deposit: bigint;
  /** The lease of the job this one continues, or 0n; if still active, the opening ends it. */
  predecessor: bigint;
  /** Last chain time (seconds) at which the opening may be mined: it bounds the provider's risk. */
  deadline: bigint;
}

/** The bit every `openLeaseFor` lease id has set (`openLease`'s ids count up from 1). */
export const OPENED_FOR_ID_BIT = 1n << 63n;

/**
 * The id the lease opened on `quote` by `openLeaseFor` gets, equal to `LeaseManager.leaseIdOf(quote)`:
 * the first 8 bytes of the quote's EIP-712 digest with the top bit set.
 */
export function leaseIdOf(chainId: number, leaseManager: Address, quote: Quote): bigint {
  return BigInt(hashQuote(chainId, leaseManager, quote).slice(0, 18)) | OPENED_FOR_ID_BIT;
}

/** The digest a tenant signs, equal to `LeaseManager.hashOpening(opening)`. */
export function hashOpening(chainId: number, leaseManager: Address, opening: Opening): Hex {
  return hashTypedData({
    domain: quoteDomain(chainId, leaseManager),
    types: openingTypes,
    primaryType: "Opening",
    message: opening,
  });
}

/**
 * Signs a lease opening with the tenant's key.
 *
 * @example
 * const signature = await signOpening(account, 31337, deployment.contracts.leaseManager, opening);
 */
export function signOpening(
  account: LocalAccount,
  chainId: number,
  leaseManager: Address,
  opening: Opening,
): Promise<Hex> {
  return account.signTypedData({
    domain: quoteDomain(chainId, leaseManager),
    types: openingTypes,
    primaryType: "Opening",
    message: opening,
  });
}

/** The address that signed `opening` (an ECDSA signature; a contract tenant's ERC-1271 one is not checked here). */
export function openingSigner(
  chainId: number,
  leaseManager: Address,
  opening: Opening,
  signature: Hex,
): Promise<Address> {
  return recoverTypedDataAddress({
    domain: quoteDomain(chainId, leaseManager),
    types: openingTypes,
    primaryType: "Opening",
    message: opening,
    signature,
  });
}

/** The address that signed `quote` (its provider, for a quote it issued). */
export function quoteSigner(chainId: number, leaseManager: Address, quote: Quote, signature: Hex): Promise<Address> {
  return recoverTypedDataAddress({
    domain: quoteDomain(chainId, leaseManager),
    types: quoteTypes,
    primaryType: "Quote",
    message: quote,
    signature,
  });
}
