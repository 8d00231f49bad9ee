import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import type { Address } from "viem";

import { contracts, type ChainClient } from "../chain/client.ts";
import { peerBinding, verifyPeerProof } from "../chain/peer-proof.ts";
import { ProtocolError } from "../errors.ts";
import { openMessage, parseBody, sealMessage } from "../wire/envelope.ts";
import { offerSchema, type Offer } from "../wire/messages.ts";
import { maxMessageBytes, topics } from "../wire/protocols.ts";
import type { BatonHost } from "./host.ts";
import type { PrivateKey } from "@libp2p/interface";

/** Price per second of a lease with `gpus` GPUs under `offer`. */
export function offerPrice(offer: Pick<Offer, "price">, gpus: number): bigint {
  return offer.price.basePerSecond + offer.price.perGpuPerSecond * BigInt(gpus);
}

/** Publishes a signed offer on the offers topic. */
export async function publishOffer(host: BatonHost, key: PrivateKey, offer: Offer): Promise<void> {
  const bytes = await sealMessage(key, host.peerId.toString(), "offer", offer);
  await host.services.pubsub.publish(topics.offers, bytes);
}

/** How long a provider's registry binding is trusted before it is read again. */
const BINDING_TTL_MS = 30_000;

/**
 * Checks offers against the chain: the provider at the offer's address must be eligible (stake at
 * least `minStake`), claim this peer id, and prove it with a signature by the peer key in its
 * metadata (see `chain/peer-proof.ts`: the registry lets anyone claim any peer id, so the claim
 * alone proves nothing). Answers are cached for a short while, so a flood of offers costs one RPC
 * call per provider per half minute.
 */
export function createBindingChecker(chain: ChainClient): (peerId: string, provider: Address) => Promise<boolean> {
  const cache = new Map<string, { ok: boolean; at: number }>();
  const { registry } = contracts(chain.deployment);
  return async (peerId, provider) => {
    const key = `${peerId}:${provider}`;
    const cached = cache.get(key);
    if (cached && Date.now() - cached.at < BINDING_TTL_MS) return cached.ok;
    const view = await chain.publicClient.readContract({ ...registry, functionName: "getProvider", args: [provider] });
    const ok =
      view.eligible &&
      view.peerId === peerId &&
      (await verifyPeerProof(peerId, view.metadata, peerBinding(chain.deployment, provider)));
    if (cache.size > 10_000) cache.clear();
    cache.set(key, { ok, at: Date.now() });
    return ok;
  };
}

export interface WatchOffersParameters {
  host: BatonHost;
  chain: ChainClient;
  onOffer: (offer: Offer) => void;
  /** Offers dropped for a reason (bad signature, unbound peer, other chain…). */
  onError?: (error: Error) => void;
}

/**
 * Subscribes to the offers topic and reports each verified offer: signed by the peer it names,
 * for this chain and lease manager, not expired, newer than the last one from that peer, and from a
 * peer the registry binds to the offer's address with enough stake. Everything else is dropped.
 * The addresses a verified offer lists become the ones the host dials its provider at: the offer
 * may have come relayed, from a provider this host has no address for, or a stale one.
 *
 * @returns a function that stops watching.
 * @example
 * const unwatch = watchOffers({ host, chain, onOffer: (o) => console.log(o.peerId, o.gpusFree) });
 */
export function watchOffers({ host, chain, onOffer, onError }: WatchOffersParameters): () => void {
  const checkBinding = createBindingChecker(chain);
  const lastSeq = new Map<string, number>();
  /** The addresses last written to the peer store, per peer: most offers repeat them. */
  const lastAddresses = new Map<string, string>();
  const { leaseManager } = chain.deployment.contracts;
  const onMessage = (event: CustomEvent<{ topic: string; data: Uint8Array }>): void => {
    if (event.detail.topic !== topics.offers) return;
    void (async () => {
      const opened = await openMessage(event.detail.data, { maxBytes: maxMessageBytes.offer, types: ["offer"] });
      const offer = parseBody(offerSchema, opened);
      if (offer.peerId !== opened.from) throw new ProtocolError("offer signed by another peer than it names");
      if (offer.chainId !== chain.deployment.chainId || offer.leaseManager !== leaseManager) {
        throw new ProtocolError("offer for another deployment", { details: `${offer.chainId}/${offer.leaseManager}` });
      }
      if (offer.expiresAt < Date.now()) return;
      if ((lastSeq.get(offer.peerId) ?? -1) >= offer.seq) return;
      if (!(await checkBinding(offer.peerId, offer.provider))) {
        throw new ProtocolError("offer from a peer its address does not prove to own, or under the minimum stake", {
          details: `${offer.peerId} / ${offer.provider}`,
        });
      }
      // Checked again: a newer offer of the same peer may have passed while this one waited.
      if ((lastSeq.get(offer.peerId) ?? -1) >= offer.seq) return;
      lastSeq.set(offer.peerId, offer.seq);
      await rememberAddresses(offer);
      onOffer(offer);
    })().catch((error: unknown) => onError?.(error as Error));
  };
  /**
   * Replaces the peer store's addresses of the offer's peer with those it lists: its own, signed
   * word of where it listens now.
   */
  const rememberAddresses = async (offer: Offer): Promise<void> => {
    const key = offer.addresses.join(" ");
    if (offer.addresses.length === 0 || lastAddresses.get(offer.peerId) === key) return;
    await host.peerStore.patch(peerIdFromString(offer.peerId), {
      multiaddrs: offer.addresses.map((address) => multiaddr(address)),
    });
    lastAddresses.set(offer.peerId, key);
  };
  host.services.pubsub.subscribe(topics.offers);
  host.services.pubsub.addEventListener("message", onMessage as never);
  return () => host.services.pubsub.removeEventListener("message", onMessage as never);
}
