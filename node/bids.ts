import type { PeerId } from "@libp2p/interface";
import { keccak256, toHex, zeroHash } from "viem";

import { signQuote, type Quote } from "../sdk/chain/quote.ts";
import { ProtocolError, RefusalError } from "../sdk/errors.ts";
import { DEFAULT_JOB_DISK_GIB, diskQuotaBytes, formatDiskQuota } from "../sdk/job-spec.ts";
import { offerPrice } from "../sdk/p2p/offers.ts";
import { openMessage, parseBody, sealMessage } from "../sdk/wire/envelope.ts";
import { serve } from "../sdk/wire/framing.ts";
import {
  bidSchema,
  quoteReleaseSchema,
  type Bid,
  type BidResponse,
  type BidRefusalReason,
} from "../sdk/wire/messages.ts";
import { maxMessageBytes, protocols } from "../sdk/wire/protocols.ts";
import { chainNow, type NodeComponents } from "./components.ts";
import { takesHolds } from "./config.ts";
import { diskTooFull } from "./disk.ts";

/** The GPU reservation of a quote, named by its nonce, until the lease takes it over. */
export const quoteHolder = (nonce: bigint): string => `quote:${nonce}`;

/** A canonical description of what a quote reserves; its hash goes into the quote. */
export function resourcesHash(models: string[]): `0x${string}` {
  return keccak256(toHex(JSON.stringify({ gpus: models.length, models })));
}

/** A refusal of a bid: only bid reasons are thrown while a bid is answered. */
const bidRefusal = (reason: BidRefusalReason, message: string): RefusalError<BidRefusalReason> =>
  new RefusalError(reason, message);

export interface Bids {
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Answers bids on `/baton/bid/1.0.0` with a signed EIP-712 quote that `LeaseManager.openLease`
 * accepts (fresh nonce, short expiry, GPUs reserved until it expires, the bid's image) or a
 * reasoned refusal. Every refusal is one log line; a peer that floods gets `rate-limited` and costs
 * nothing else. On `/baton/quote-release/1.0.0` the peer that bid for a quote may give it back,
 * freeing its GPUs before it expires.
 */
export function bids(components: NodeComponents, onCapacityChange: () => void): Bids {
  const { host, config, store, gpus, account, chain, log, metrics, peerKey } = components;
  const recent = new Map<string, number[]>();
  /** The peer that bid for each quote not yet expired: only it may release the quote. */
  const bidders = new Map<bigint, { peer: string; expiresAt: number }>();

  /** How far over the limit a peer is in the current window: 0 within it, 1 for the first bid over. */
  const overLimit = (peer: PeerId): number => {
    const now = Date.now();
    const key = peer.toString();
    const times = (recent.get(key) ?? []).filter((t) => now - t < config.bidRateLimit.windowMs);
    times.push(now);
    recent.set(key, times);
    if (recent.size > 10_000) recent.clear();
    return Math.max(0, times.length - config.bidRateLimit.count);
  };

  const quoteFor = async (bid: Bid, bidder: string): Promise<BidResponse> => {
    if (components.draining.value) throw bidRefusal("draining", "the node is shutting down");
    const { chainId, contracts } = chain.deployment;
    if (bid.chainId !== chainId || bid.leaseManager !== contracts.leaseManager) {
      throw bidRefusal("bad-request", `this node serves chain ${chainId}, lease manager ${contracts.leaseManager}`);
    }
    const { requirements } = bid;
    if (bid.image !== zeroHash && !components.containers) {
      throw bidRefusal("requirements-not-met", "this node runs no image jobs (no Podman)");
    }
    if (requirements.hold) {
      if (!takesHolds(config)) throw bidRefusal("requirements-not-met", "this node takes no holders' leases");
      if (requirements.gpus > 0) throw bidRefusal("bad-request", "a holder's lease asks for no GPUs");
    } else if (requirements.gpus === 0 && !config.cpuJobs)
      throw bidRefusal("requirements-not-met", "this node takes GPU jobs only");
    if (!gpus.canEverSatisfy(requirements)) {
      throw bidRefusal(
        "requirements-not-met",
        `this node has no ${requirements.gpus} GPU(s) matching the requirements`,
      );
    }
    if (bid.durationS > config.maxDurationS) {
      throw bidRefusal("requirements-not-met", `longest lease here is ${config.maxDurationS} s`);
    }
    if (bid.durationS <= config.chainHeartbeatTimeoutS) {
      throw bidRefusal(
        "requirements-not-met",
        `duration must exceed the heartbeat timeout (${config.chainHeartbeatTimeoutS} s)`,
      );
    }
    const price = offerPrice(config, requirements.gpus);
    if (bid.maxPricePerSecond < price) throw bidRefusal("price-below-floor", `price here is ${price} per second`);
    // A bid that names no quota (from before quotas) is for a spec that names none either.
    const diskGiB = requirements.diskGiB ?? DEFAULT_JOB_DISK_GIB;
    if (diskGiB > config.maxJobDiskGiB) {
      throw bidRefusal(
        "requirements-not-met",
        `the job asks for a ${formatDiskQuota(diskQuotaBytes(diskGiB))} disk quota; this node gives a job at most ${config.maxJobDiskGiB} GiB`,
      );
    }
    // Holders' leases and the others count apart: a GPU node that holds a job's checkpoints can
    // still take the job itself (a warm standby), however few leases it runs.
    const holding = store.leases().filter((row) => row.holdKeep !== null).length;
    if (requirements.hold && holding >= config.maxHolds) {
      throw bidRefusal("no-capacity", "the node holds for its maximum of holders' leases");
    }
    if (!requirements.hold && store.leases().length - holding >= config.maxLeases)
      throw bidRefusal("no-capacity", "the node runs its maximum of leases");
    const disk = diskTooFull(components, diskQuotaBytes(diskGiB));
    if (disk !== undefined) throw bidRefusal("no-capacity", disk);

    const nonce = store.nextNonce();
    const expiry = chainNow(components) + config.quoteTtlS;
    const reserved = gpus.reserve(quoteHolder(nonce), requirements, Date.now() + config.quoteTtlS * 1000);
    if (!reserved) throw bidRefusal("no-capacity", "no matching GPU is free");
    const now = Date.now();
    for (const [held, { expiresAt }] of bidders) if (expiresAt <= now) bidders.delete(held);
    bidders.set(nonce, { peer: bidder, expiresAt: now + config.quoteTtlS * 1000 });
    const models = reserved.map((index) => gpus.all.find((g) => g.index === index)!.model);
    const quote: Quote = {
      provider: account.address,
      tenant: bid.tenant,
      jobId: bid.jobId,
      resources: resourcesHash(models),
      // The image the tenant's job runs, by its manifest digest: the node runs no other for the
      // lease, checking the spec and the pulled image against it before the job starts.
      image: bid.image,
      pricePerSecond: price,
      collateral: config.collateralPerLease,
      heartbeatPeriod: BigInt(config.chainHeartbeatPeriodS),
      heartbeatTimeout: BigInt(config.chainHeartbeatTimeoutS),
      maxDuration: BigInt(bid.durationS),
      expiry: BigInt(expiry),
      nonce,
    };
    store.saveQuote({
      nonce,
      jobId: bid.jobId,
      tenant: bid.tenant,
      gpus: reserved,
      expiresAt: (expiry + 60) * 1000,
      hold: requirements.hold === true,
    });
    onCapacityChange();
    const signature = await signQuote(account, chainId, contracts.leaseManager, quote);
    return { kind: "quote", quote, signature, gpus: reserved };
  };

  const handle = async (message: Uint8Array, remotePeer: PeerId): Promise<Uint8Array> => {
    const took = metrics.bidSeconds.startTimer();
    let response: BidResponse;
    const over = overLimit(remotePeer);
    try {
      if (over > 0) throw bidRefusal("rate-limited", "too many bids; slow down");
      const opened = await openMessage(message, {
        maxBytes: maxMessageBytes.bid,
        types: ["bid"],
        from: remotePeer.toString(),
      });
      response = await quoteFor(parseBody(bidSchema, opened), remotePeer.toString());
      metrics.bids.inc({ outcome: "quoted" });
      log.info("quoted", {
        peer: remotePeer.toString(),
        nonce: response.kind === "quote" ? response.quote.nonce : null,
      });
    } catch (error) {
      const reason: BidRefusalReason =
        error instanceof RefusalError
          ? (error as RefusalError<BidRefusalReason>).reason
          : error instanceof ProtocolError
            ? "bad-request"
            : "internal";
      const text = error instanceof ProtocolError ? error.shortMessage : (error as Error).message;
      response = { kind: "refusal", reason, message: text.slice(0, 512) };
      metrics.bids.inc({ outcome: reason });
      // A flooding peer gets one log line per window, not one per bid.
      if (reason !== "rate-limited" || over === 1) {
        log.info("bid refused", { peer: remotePeer.toString(), reason, message: text });
      }
    }
    const sealed = await sealMessage(peerKey, host.peerId.toString(), "bid-response", response);
    took({ kind: response.kind });
    return sealed;
  };

  const unreadable = async (error: Error, remotePeer: PeerId): Promise<Uint8Array> => {
    const message = error.name === "InvalidDataLengthError" ? "bid too large" : `unreadable bid (${error.name})`;
    metrics.bids.inc({ outcome: "bad-request" });
    log.info("bid refused", { peer: remotePeer.toString(), reason: "bad-request", message });
    const refusal: BidResponse = { kind: "refusal", reason: "bad-request", message };
    return sealMessage(peerKey, host.peerId.toString(), "bid-response", refusal);
  };

  /** Frees the GPUs of the quotes the release names that its sender bid for; answers which. */
  const release = async (message: Uint8Array, remotePeer: PeerId): Promise<Uint8Array> => {
    const peer = remotePeer.toString();
    let released: bigint[] = [];
    try {
      const opened = await openMessage(message, {
        maxBytes: maxMessageBytes.quoteRelease,
        types: ["quote-release"],
        from: peer,
      });
      const { nonces } = parseBody(quoteReleaseSchema, opened);
      released = nonces.filter((nonce) => {
        if (bidders.get(nonce)?.peer !== peer) return false;
        bidders.delete(nonce);
        // False for a quote a lease has taken over since: its GPUs are the lease's now.
        return gpus.release(quoteHolder(nonce));
      });
    } catch (error) {
      const text = error instanceof ProtocolError ? error.shortMessage : (error as Error).message;
      log.info("quote release refused", { peer, message: text });
    }
    if (released.length > 0) log.info("quotes released", { peer, nonces: released.map(String) });
    return sealMessage(peerKey, host.peerId.toString(), "quote-released", { released });
  };

  return {
    start: async () => {
      await serve(host, protocols.bid, handle, {
        maxBytes: maxMessageBytes.bid,
        timeoutMs: config.bidReadTimeoutMs,
        onUnreadable: unreadable,
      });
      await serve(host, protocols.quoteRelease, release, {
        maxBytes: maxMessageBytes.quoteRelease,
        timeoutMs: config.bidReadTimeoutMs,
      });
    },
    stop: () => host.unhandle([protocols.bid, protocols.quoteRelease]),
  };
}
