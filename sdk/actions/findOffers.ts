import type { BatonClient } from "../client.ts";
import { chainBlockTime, heartbeatTimingProblem } from "../chain/block-time.ts";
import { imageKey } from "../images/reference.ts";
import type { JobImage } from "../job-spec.ts";
import { offerPrice } from "../p2p/offers.ts";
import type { JobRuntime, Offer } from "../wire/messages.ts";
import { NoProviderError } from "../errors.ts";

export interface Requirements {
  gpus: number;
  gpuModel?: string | undefined;
  minVramMiB?: number | undefined;
  /** The job's disk quota in GiB (`resources.diskGiB`): offers that give a job less are left out. */
  diskGiB?: number | undefined;
  /** How the job runs: `podman` for a job with an image. Default `process`. */
  runtime?: JobRuntime | undefined;
  /** A holder's lease (see the bid's `requirements.hold`): only offers that hold match. */
  hold?: boolean | undefined;
}

export interface FindOffersParameters {
  requirements: Requirements;
  /** Highest price per second to accept, in payment-token base units. */
  maxPricePerSecond?: bigint | undefined;
  /** Provider addresses or peer ids to leave out (e.g. the one that just failed this job). */
  exclude?: readonly string[];
  /** Provider addresses or peer ids whose offers come after every other (e.g. ones that failed this job before). */
  lastResort?: readonly string[];
  /** The job's image: offers of providers that hold it already come before the others of their rank. */
  image?: JobImage | undefined;
  /**
   * Provider addresses or peer ids that hold the checkpoint the job resumes from (its holders): warm
   * standbys, whose offers come first within their rank, since a hand-off to one needs no transfer.
   */
  standby?: readonly string[];
  /** Wait until at least this many offers match. Default 1. */
  minCount?: number;
  /** Longest wait for `minCount` matching offers. Default 10 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface FoundOffer {
  offer: Offer;
  /** What a lease with these requirements costs per second under this offer. */
  pricePerSecond: bigint;
  /** Whether the provider was on the `lastResort` list. */
  lastResort: boolean;
  /** Whether the provider holds the job's image already (false for a job without one). */
  holdsImage: boolean;
  /** Whether the provider was on the `standby` list. */
  standby: boolean;
}

/** Whether an offer can take a job with these requirements now, within the price. */
export function offerMatches(offer: Offer, requirements: Requirements, maxPricePerSecond?: bigint): boolean {
  if (!offer.runtimes.includes(requirements.runtime ?? "process")) return false;
  if (requirements.hold) {
    if (!(offer.holds ?? offer.cpuJobs)) return false;
  } else if (requirements.gpus === 0 ? !offer.cpuJobs : offer.gpusFree < requirements.gpus) return false;
  if (maxPricePerSecond !== undefined && offerPrice(offer, requirements.gpus) > maxPricePerSecond) return false;
  if (
    requirements.diskGiB !== undefined &&
    offer.maxJobDiskGiB !== undefined &&
    requirements.diskGiB > offer.maxJobDiskGiB
  ) {
    return false;
  }
  if (requirements.gpus > 0) {
    const fitting = offer.gpus.filter(
      (gpu) =>
        (!requirements.gpuModel || gpu.model.includes(requirements.gpuModel)) &&
        (!requirements.minVramMiB || gpu.vramMiB >= requirements.minVramMiB),
    );
    if (fitting.length < requirements.gpus) return false;
  }
  return true;
}

/**
 * The order offers are tried in: `lastResort` providers after all others; within each, warm
 * standbys first (they hold the checkpoint to resume from), then those that hold the job's image (a
 * pull of a large image can take longer than the job's first checkpoint interval); then the cheapest.
 */
export function compareOffers(a: FoundOffer, b: FoundOffer): number {
  return (
    Number(a.lastResort) - Number(b.lastResort) ||
    Number(b.standby) - Number(a.standby) ||
    Number(b.holdsImage) - Number(a.holdsImage) ||
    (a.pricePerSecond < b.pricePerSecond ? -1 : a.pricePerSecond > b.pricePerSecond ? 1 : 0)
  );
}

/**
 * The verified offers that match `requirements`, in the order {@link compareOffers} gives (cheapest
 * first, those of `lastResort` providers after all others, holders of `image` first within each),
 * leaving out offers whose on-chain heartbeat timeout the chain's block time makes unmeetable,
 * waiting up to `timeoutMs` for `minCount` of them (offers arrive by gossip every few seconds).
 *
 * @throws {NoProviderError} when too few providers offer what is asked within the wait.
 * @example
 * const offers = await findOffers(client, { requirements: { gpus: 1 }, maxPricePerSecond: 10n ** 15n });
 */
export async function findOffers(
  client: BatonClient,
  {
    requirements,
    maxPricePerSecond,
    exclude = [],
    lastResort = [],
    image,
    standby = [],
    minCount = 1,
    timeoutMs = 10_000,
    signal,
  }: FindOffersParameters,
): Promise<FoundOffer[]> {
  const listed = (list: readonly string[]) => {
    const set = new Set(list.map((e) => e.toLowerCase()));
    return (offer: Offer): boolean => set.has(offer.provider.toLowerCase()) || set.has(offer.peerId.toLowerCase());
  };
  const excluded = listed(exclude);
  const late = listed(lastResort);
  const warm = listed(standby);
  const key = image === undefined ? undefined : imageKey(image);
  const blockTimeS = await chainBlockTime(client.chain, signal ? { signal } : {});
  // An offer whose on-chain heartbeat timeout this chain's blocks make unmeetable is no use: its
  // provider would turn slashable while serving (and `bid` refuses such a quote anyway).
  const unkeepable = (offer: Offer): boolean =>
    heartbeatTimingProblem({
      periodS: offer.chainHeartbeatPeriodS,
      timeoutS: offer.chainHeartbeatTimeoutS,
      blockTimeS,
    }) !== undefined;
  const matching = (): FoundOffer[] =>
    client.offers
      .list()
      .filter((offer) => !excluded(offer) && !unkeepable(offer) && offerMatches(offer, requirements, maxPricePerSecond))
      .map((offer) => ({
        offer,
        pricePerSecond: offerPrice(offer, requirements.gpus),
        lastResort: late(offer),
        holdsImage: key !== undefined && offer.images.includes(key),
        standby: warm(offer),
      }))
      .sort(compareOffers);
  const deadline = AbortSignal.any([AbortSignal.timeout(timeoutMs), ...(signal ? [signal] : [])]);
  let found = matching();
  while (found.length < minCount) {
    try {
      await client.offers.next(deadline);
    } catch (error) {
      signal?.throwIfAborted();
      if ((error as Error).name !== "TimeoutError") throw error;
      const want =
        `${requirements.gpus} GPU(s)${requirements.gpuModel ? ` (${requirements.gpuModel})` : ""}` +
        (requirements.runtime && requirements.runtime !== "process" ? ` with the ${requirements.runtime} runtime` : "");
      throw new NoProviderError(
        `found ${found.length} provider offer(s) for ${want}${maxPricePerSecond === undefined ? "" : ` at ≤ ${maxPricePerSecond}/s`} within ${timeoutMs} ms; needed ${minCount}`,
        {
          details:
            `offers seen: ${client.offers.list().length}, excluded: ${new Set(exclude).size}, ` +
            `with a heartbeat timeout too short for this chain's ${blockTimeS} s blocks: ${client.offers.list().filter(unkeepable).length}`,
        },
      );
    }
    found = matching();
  }
  return found;
}
