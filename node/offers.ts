import { CODE_P2P } from "@multiformats/multiaddr";

import { publishOffer } from "../sdk/p2p/offers.ts";
import { MAX_OFFER_ADDRESSES, type Offer } from "../sdk/wire/messages.ts";
import { topics } from "../sdk/wire/protocols.ts";
import type { NodeComponents } from "./components.ts";
import { takesHolds } from "./config.ts";
import { diskTooFull } from "./disk.ts";

export interface OfferPublisher {
  start(): void;
  stop(): void;
  /** Publishes now, e.g. because capacity changed. */
  refresh(): void;
  /** The offer as it would be published now. */
  current(): Offer;
}

/**
 * Advertises the node on the offers topic: periodically, and at once (debounced) whenever its free
 * capacity changes. Sequence numbers are milliseconds, so they keep increasing across restarts.
 * Each offer lists where the node listens now, and the node joins the topic itself so that it
 * relays the offers of others (see `start`).
 */
export function offerPublisher(components: NodeComponents): OfferPublisher {
  const { host, peerKey, config, gpus, chain, account, log, store } = components;
  let timer: NodeJS.Timeout | undefined;
  let pending: NodeJS.Timeout | undefined;
  let lastSeq = 0;

  const current = (): Offer => {
    const seq = Math.max(Date.now(), lastSeq + 1);
    lastSeq = seq;
    const running = store.leases(["preparing", "running"]);
    const holding = running.filter((row) => row.holdKeep !== null).length;
    const closed = components.draining.value || diskTooFull(components) !== undefined;
    const full = closed || running.length - holding >= config.maxLeases;
    return {
      chainId: chain.deployment.chainId,
      leaseManager: chain.deployment.contracts.leaseManager,
      provider: account.address,
      peerId: host.peerId.toString(),
      seq,
      gpus: gpus.all.map(({ index, model, vramMiB, fake }) => ({ index, model, vramMiB, fake })),
      gpusFree: full ? 0 : gpus.free().length,
      cpuJobs: config.cpuJobs && !full,
      holds: takesHolds(config) && !closed && holding < config.maxHolds,
      runtimes: components.containers ? ["process", "podman"] : ["process"],
      images: components.containers?.images.keys() ?? [],
      maxJobDiskGiB: config.maxJobDiskGiB,
      addresses: host
        .getMultiaddrs()
        .slice(0, MAX_OFFER_ADDRESSES)
        .map((address) => address.decapsulateCode(CODE_P2P).toString()),
      price: { basePerSecond: config.price.basePerSecond, perGpuPerSecond: config.price.perGpuPerSecond },
      collateralPerLease: config.collateralPerLease,
      heartbeatMs: config.heartbeatMs,
      chainHeartbeatPeriodS: config.chainHeartbeatPeriodS,
      chainHeartbeatTimeoutS: config.chainHeartbeatTimeoutS,
      maxDurationS: config.maxDurationS,
      expiresAt: Date.now() + config.offerTtlMs,
    };
  };

  const publish = (): void => {
    const offer = current();
    publishOffer(host, peerKey, offer).catch((error: unknown) => log.warn("offer publish failed", { error }));
  };

  return {
    start() {
      // Gossip travels only between peers that joined the topic: a provider that only published
      // would reach the tenants connected to it and no one else, so a tenant would never hear of a
      // provider it has no address for (one that joined later, or restarted on another port).
      host.services.pubsub.subscribe(topics.offers);
      publish();
      timer = setInterval(publish, config.offerRefreshMs);
    },
    stop() {
      clearInterval(timer);
      clearTimeout(pending);
      host.services.pubsub.unsubscribe(topics.offers);
    },
    refresh() {
      clearTimeout(pending);
      pending = setTimeout(publish, 50);
    },
    current,
  };
}
