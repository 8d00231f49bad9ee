import { hashTypedData, type Address, type Hex, type LocalAccount, type TypedDataDomain } from "viem";

/**
 * The EIP-712 type of a quote, identical to `QUOTE_TYPEHASH` in `contracts/LeaseManager.sol`; a
 * test checks that the contract's `hashQuote` and {@link hashQuote} agree.
 */
export const quoteTypes = {
  Quote: [
    { name: "provider", type: "address" },
    { name: "tenant", type: "address" },
    { name: "jobId", type: "bytes32" },
    { name: "resources", type: "bytes32" },
    { name: "image", type: "bytes32" },
    { name: "pricePerSecond", type: "uint256" },
    { name: "collateral", type: "uint256" },
    { name: "heartbeatPeriod", type: "uint64" },
    { name: "heartbeatTimeout", type: "uint64" },
    { name: "maxDuration", type: "uint64" },
    { name: "expiry", type: "uint64" },
    { name: "nonce", type: "uint256" },
  ],
} as const;

/** A provider's offer for one lease, as `LeaseManager.openLease` takes it. */
export interface Quote {
  provider: Address;
  tenant: Address;
  jobId: Hex;
  resources: Hex;
  /**
   * The SHA-256 digest of the manifest of the image the lease runs, as bytes32
   * (`imageDigestToBytes32`); zero for a process job. The provider signs it: it runs no other image
   * for the lease.
   */
  image: Hex;
  pricePerSecond: bigint;
  collateral: bigint;
  heartbeatPeriod: bigint;
  heartbeatTimeout: bigint;
  maxDuration: bigint;
  expiry: bigint;
  nonce: bigint;
}

/** The EIP-712 domain of one LeaseManager deployment: quotes are bound to its chain and address. */
export function quoteDomain(chainId: number, leaseManager: Address): TypedDataDomain {
  return { name: "Baton LeaseManager", version: "1", chainId, verifyingContract: leaseManager };
}

/** The digest a provider signs, equal to `LeaseManager.hashQuote(quote)`. */
export function hashQuote(chainId: number, leaseManager: Address, quote: Quote): Hex {
  return hashTypedData({
    domain: quoteDomain(chainId, leaseManager),
    types: quoteTypes,
    primaryType: "Quote",
    message: quote,
  });
}

/**
 * Signs a quote with the provider's key.
 *
 * @example
 * const signature = await signQuote(account, 31337, deployment.contracts.leaseManager, quote);
 */
export async function signQuote(
  account: LocalAccount,
  chainId: number,
  leaseManager: Address,
  quote: Quote,
): Promise<Hex> {
  return account.signTypedData({
    domain: quoteDomain(chainId, leaseManager),
    types: quoteTypes,
    primaryType: "Quote",
    message: quote,
  });
}
