import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { keccak256, parseEther, toHex, zeroHash } from "viem";

import { contracts, leaseStatus, writeContract } from "../../sdk/chain/client.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { openLeaseSession, requestQuote, type LeaseSession, type ProviderEvent } from "../../sdk/wire/clients.ts";
import type { Bid, BidResponse, TenantMessage } from "../../sdk/wire/messages.ts";
import type { Market, ProviderHandle, Tenant } from "./market.ts";

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

/**
 * `tenant`'s bid to `provider` for job `jobName` with `requirements`, at up to 0.001 tokens a second,
 * as a tenant outside the SDK sends it.
 */
export function bidTo(
  tenant: Tenant,
  deployment: Deployment,
  provider: Pick<ProviderHandle, "peerId" | "address">,
  { jobName, requirements, durationS }: { jobName: string; requirements: Bid["requirements"]; durationS: number },
  timeoutMs = 30_000,
): ReturnType<typeof requestQuote> {
  const { leaseManager } = contracts(deployment);
  return requestQuote(
    tenant.host,
    peerIdFromString(provider.peerId),
    tenant.key,
    {
      chainId: deployment.chainId,
      leaseManager: leaseManager.address,
      jobId: keccak256(toHex(jobName)),
      tenant: tenant.account.address,
      requirements,
      image: zeroHash,
      maxPricePerSecond: parseEther("0.001"),
      durationS,
    },
    { address: multiaddr(provider.address!), signal: AbortSignal.timeout(timeoutMs) },
  );
}

/** Asks `provider` for a quote ({@link bidTo}) and opens a lease on it (see {@link openQuotedLease}). */
export async function quoteAndOpenLease(
  tenant: Tenant,
  deployment: Deployment,
  provider: Pick<ProviderHandle, "peerId" | "address">,
  bid: { jobName: string; requirements: Bid["requirements"]; durationS: number },
): Promise<bigint> {
  const response = await bidTo(tenant, deployment, provider, bid);
  return openQuotedLease(tenant, deployment, response, bid.durationS);
}

/** Opens a lease session with `provider` by its first message, `start` or `attach`, as a tenant outside the SDK does. */
export function openSession(
  tenant: Tenant,
  provider: Pick<ProviderHandle, "peerId" | "address">,
  first: { type: "start"; body: TenantMessage<"start"> } | { type: "attach"; body: TenantMessage<"attach"> },
): Promise<LeaseSession> {
  return openLeaseSession(tenant.host, peerIdFromString(provider.peerId), tenant.key, first, {
    address: multiaddr(provider.address!),
    signal: AbortSignal.timeout(30_000),
  });
}

/** Reads a lease session until `done` accepts a message (returned with all before it), or 60 s pass. */
export async function readUntil(session: LeaseSession, done: (e: ProviderEvent) => boolean): Promise<ProviderEvent[]> {
  const seen: ProviderEvent[] = [];
  const deadline = AbortSignal.timeout(60_000);
  for (;;) {
    const next = await Promise.race([
      session.messages.next(),
      new Promise<never>((_, reject) =>
        deadline.addEventListener(
          "abort",
          () => reject(new Error(`no such message; saw ${JSON.stringify(seen.map((e) => e.type))}`)),
          { once: true },
        ),
      ),
    ]);
    if (next.done) throw new Error(`session ended; saw ${JSON.stringify(seen.map((e) => e.type))}`);
    seen.push(next.value);
    if (done(next.value)) return seen;
  }
}

/** A lease's status on chain, by name. */
export async function chainStatusOf(market: Pick<Market, "admin" | "deployment">, leaseId: bigint): Promise<string> {
  const { leaseManager } = contracts(market.deployment);
  const lease = await market.admin.publicClient.readContract({
    ...leaseManager,
    functionName: "getLease",
    args: [leaseId],
  });
  return leaseStatus[lease.status] ?? "unknown";
}
