import type { PeerId } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { zeroHash, type Hex } from "viem";

import type { BatonClient } from "../client.ts";
import { chainBlockTime, heartbeatTimingProblem } from "../chain/block-time.ts";
import { contracts } from "../chain/client.ts";
import type { Quote } from "../chain/quote.ts";
import { BaseError, NoProviderError, shortMessageOf } from "../errors.ts";
import { releaseQuotes, requestQuote } from "../wire/clients.ts";
import type { Offer } from "../wire/messages.ts";
import type { FoundOffer, Requirements } from "./findOffers.ts";

export interface BidParameters {
  jobId: Hex;
  /** Candidates, e.g. from `findOffers`; the first `fanout` are asked at once. */
  offers: readonly FoundOffer[];
  requirements: Requirements;
  /**
   * The manifest digest of the job's image as a quote carries it (`imageDigestToBytes32` of
   * `jobImageDigest`); default zero, a process job. A quote that names another image is refused.
   */
  image?: Hex;
  maxPricePerSecond: bigint;
  /** How long the lease is meant to last, in seconds (the quote's max duration covers it). */
  durationS: number;
  /** How many providers to ask in parallel. Default 3. */
  fanout?: number;
  /** Longest wait for each answer. Default 5 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface QuoteChoice {
  offer: Offer;
  quote: Quote;
  signature: Hex;
  /** Round trip of the bid. */
  latencyMs: number;
  /** Leases the provider completed and had slashed, from the registry's counters. */
  reputation: { completed: bigint; slashed: bigint };
  /** Whether its offer lists the job's image: it starts without pulling it. */
  holdsImage: boolean;
  /** Whether it holds the checkpoint the job resumes from (a warm standby: see `findOffers`' `standby`). */
  standby: boolean;
}

export interface BidReturnType {
  chosen: QuoteChoice;
  /** Every quote received, best first; all but `chosen` are given back to their providers (released). */
  quotes: QuoteChoice[];
  /** Providers that refused or did not answer, with why. */
  refusals: { peerId: string; reason: string }[];
}

/**
 * Sends a bid to several matching providers at once and picks a quote (each checked to match the
 * bid, its image included: see `requestQuote`): a warm standby (it holds the checkpoint the job
 * resumes from: no transfer, where a large checkpoint takes minutes), then the lowest price, then
 * one that holds the job's image (a cold pull can take minutes), then the better on-chain record
 * (fewer slashes per completed lease), then the faster answer. A quote whose heartbeat timeout the chain's block time
 * makes unmeetable (see `heartbeatTimingProblem`) counts as a refusal: its provider would turn
 * slashable while serving, and the job would move on for nothing. Every quote but the chosen one is
 * released (`releaseQuotes`), so that its provider's GPUs are free again at once.
 *
 * @throws {NoProviderError} when every provider refused, stayed silent or quoted an unmeetable timeout
 *   ({@link NoProviderError.unreachable} when none was reached at all).
 * @example
 * const { chosen } = await bid(client, { jobId, offers, requirements: { gpus: 1 }, maxPricePerSecond, durationS: 3600 });
 */
export async function bid(
  client: BatonClient,
  {
    jobId,
    offers,
    requirements,
    image = zeroHash,
    maxPricePerSecond,
    durationS,
    fanout = 3,
    timeoutMs = 5_000,
    signal,
  }: BidParameters,
): Promise<BidReturnType> {
  const { leaseManager, registry } = contracts(client.chain.deployment);
  const blockTimeS = await chainBlockTime(client.chain, signal ? { signal } : {});
  const asked = offers.slice(0, fanout);
  const refusals: BidReturnType["refusals"] = [];
  // Asked providers that failed on the way (connection, stream, deadline), not by what they said.
  let unreachable = 0;
  // Quotes this bid will not open: their providers hold GPUs for them until they expire.
  const unused: { peerId: string; nonce: bigint }[] = [];
  const answers = await Promise.all(
    asked.map(async ({ offer, holdsImage, standby }): Promise<QuoteChoice | undefined> => {
      const started = performance.now();
      let answered = false;
      try {
        const response = await requestQuoteRetried(
          client,
          peerIdFromString(offer.peerId),
          {
            chainId: client.chain.deployment.chainId,
            leaseManager: leaseManager.address,
            jobId,
            tenant: client.account.address,
            requirements: {
              gpus: requirements.gpus,
              ...(requirements.gpuModel ? { gpuModel: requirements.gpuModel } : {}),
              ...(requirements.minVramMiB ? { minVramMiB: requirements.minVramMiB } : {}),
              ...(requirements.diskGiB ? { diskGiB: requirements.diskGiB } : {}),
              ...(requirements.hold ? { hold: true as const } : {}),
            },
            image,
            maxPricePerSecond,
            durationS,
          },
          AbortSignal.any([AbortSignal.timeout(timeoutMs), ...(signal ? [signal] : [])]),
        );
        answered = true;
        const latencyMs = performance.now() - started;
        if (response.kind === "refusal") {
          refusals.push({ peerId: offer.peerId, reason: `${response.reason}: ${response.message}` });
          return undefined;
        }
        const timing = heartbeatTimingProblem({
          periodS: Number(response.quote.heartbeatPeriod),
          timeoutS: Number(response.quote.heartbeatTimeout),
          blockTimeS,
        });
        if (timing) {
          unused.push({ peerId: offer.peerId, nonce: response.quote.nonce });
          refusals.push({ peerId: offer.peerId, reason: `quote refused: ${timing}` });
          return undefined;
        }
        const record = await client.chain.publicClient.readContract({
          ...registry,
          functionName: "getProvider",
          args: [response.quote.provider],
        });
        return {
          offer,
          quote: response.quote,
          signature: response.signature as Hex,
          latencyMs,
          reputation: { completed: record.leasesCompleted, slashed: record.leasesSlashed },
          holdsImage,
          standby,
        };
      } catch (error) {
        signal?.throwIfAborted();
        // A chain read that failed after the answer is no sign of the provider's reach.
        if (!answered && !(error instanceof BaseError)) unreachable++;
        refusals.push({
          peerId: offer.peerId,
          reason: shortMessageOf(error),
        });
        return undefined;
      }
    }),
  );
  const quotes = answers.filter((a): a is QuoteChoice => a !== undefined).sort(compareChoices);
  const chosen = quotes[0];
  unused.push(...quotes.slice(1).map(({ offer, quote }) => ({ peerId: offer.peerId, nonce: quote.nonce })));
  releaseUnused(client, unused, timeoutMs);
  if (!chosen) {
    throw new NoProviderError(`no provider quoted for this job (${asked.length} asked)`, {
      details: refusals.map((r) => `${r.peerId}: ${r.reason}`).join("; "),
      unreachable: asked.length > 0 && unreachable === asked.length,
    });
  }
  return { chosen, quotes, refusals };
}

/**
 * Asks `peer` for a quote, and once more on a new connection if the first try failed on its
 * connection (reset, closed, a handshake cut short): after a partition heals, the connection a
 * tenant still holds may carry nothing, and only a fresh one says whether the provider is there. A
 * quote that does not check, or the deadline, is not tried again.
 */
async function requestQuoteRetried(
  client: BatonClient,
  peer: PeerId,
  body: Parameters<typeof requestQuote>[3],
  signal: AbortSignal,
): Promise<Awaited<ReturnType<typeof requestQuote>>> {
  try {
    return await requestQuote(client.host, peer, client.peerKey, body, { signal });
  } catch (error) {
    if (signal.aborted || error instanceof BaseError) throw error;
    // A new connection beside the old one: other streams (another job's session) may still use it.
    return await requestQuote(client.host, peer, client.peerKey, body, { signal, freshConnection: true });
  }
}

/**
 * Gives the quotes back to their providers, in the background: their GPUs are free for other
 * tenants (and this job's next hand-off) at once, not a minute later when the quotes expire. A
 * release that fails costs nothing but that minute.
 */
function releaseUnused(
  client: BatonClient,
  unused: readonly { peerId: string; nonce: bigint }[],
  timeoutMs: number,
): void {
  for (const { peerId, nonce } of unused) {
    releaseQuotes(client.host, peerIdFromString(peerId), client.peerKey, [nonce], {
      signal: AbortSignal.timeout(timeoutMs),
    }).catch((error: unknown) =>
      client.log.debug("quote not released", { peerId, nonce: nonce.toString(), error: shortMessageOf(error) }),
    );
  }
}

/** Slashes per completed lease, scaled to compare without fractions; a new provider counts as clean. */
function slashRate({ completed, slashed }: QuoteChoice["reputation"]): bigint {
  return (slashed * 1_000_000n) / (completed + slashed + 1n);
}

function compareChoices(a: QuoteChoice, b: QuoteChoice): number {
  if (a.standby !== b.standby) return a.standby ? -1 : 1;
  if (a.quote.pricePerSecond !== b.quote.pricePerSecond)
    return a.quote.pricePerSecond < b.quote.pricePerSecond ? -1 : 1;
  if (a.holdsImage !== b.holdsImage) return a.holdsImage ? -1 : 1;
  const ra = slashRate(a.reputation);
  const rb = slashRate(b.reputation);
  if (ra !== rb) return ra < rb ? -1 : 1;
  return a.latencyMs - b.latencyMs;
}
