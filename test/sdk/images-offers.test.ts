import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { describe, expect, it } from "vitest";

import { findOffers, offerMatches, type FoundOffer } from "../../sdk/actions/findOffers.ts";
import type { BatonClient, OfferBook } from "../../sdk/client.ts";
import { imageKey } from "../../sdk/images/reference.ts";
import { openMessage, parseBody, sealMessage } from "../../sdk/wire/envelope.ts";
import { offerSchema, type Offer } from "../../sdk/wire/messages.ts";
import { maxMessageBytes } from "../../sdk/wire/protocols.ts";

const DIGEST = `sha256:${"ab".repeat(32)}`;
const IMAGE = `127.0.0.1:5000/train@${DIGEST}`;
const LAYOUT = { cid: "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" };

/** An offer as a provider before images signs it: no runtimes, no images. */
function wireOffer(peer: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    chainId: 31337,
    leaseManager: "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    provider: `0x${String(peer).padStart(40, "0")}`,
    peerId: `12D3KooWPeer${peer}`,
    seq: 1,
    gpus: [{ index: 0, model: "FakeGPU", vramMiB: 1024, fake: true }],
    gpusFree: 1,
    cpuJobs: true,
    price: { basePerSecond: "0", perGpuPerSecond: "10" },
    collateralPerLease: "1",
    heartbeatMs: 500,
    chainHeartbeatPeriodS: 2,
    chainHeartbeatTimeoutS: 20,
    maxDurationS: 3600,
    expiresAt: Date.now() + 60_000,
    ...extra,
  };
}

const offer = (peer: number, extra: Record<string, unknown> = {}): Offer => offerSchema.parse(wireOffer(peer, extra));

describe("offers: runtimes and images", () => {
  it("an offer that names neither runs processes only and holds no image", () => {
    expect(offer(1)).toMatchObject({ runtimes: ["process"], images: [] });
  });

  it("refuses an unknown runtime, more than 8 runtimes, more than 64 images, an image key over 600 characters", () => {
    const refused = (extra: Record<string, unknown>) => offerSchema.safeParse(wireOffer(1, extra)).success;
    expect(refused({ runtimes: ["docker"] })).toBe(false);
    expect(refused({ runtimes: Array(9).fill("podman") })).toBe(false);
    expect(refused({ images: Array(65).fill(IMAGE) })).toBe(false);
    expect(refused({ images: ["x".repeat(601)] })).toBe(false);
    expect(refused({ runtimes: ["process", "podman"], images: Array(64).fill("x".repeat(600)) })).toBe(true);
  });

  it("the largest offer a provider sends (64 GPUs, 8 runtimes, 64 image keys of 600 characters) fits in an offer message", async () => {
    const key = await generateKeyPair("Ed25519");
    const peerId = peerIdFromPrivateKey(key).toString();
    const largest = offer(1, {
      peerId,
      gpus: Array.from({ length: 64 }, (_, index) => ({
        index,
        model: "m".repeat(128),
        vramMiB: 2 ** 40,
        fake: false,
      })),
      runtimes: Array(8).fill("podman"),
      // Image keys are references and CIDs: nothing in them that JSON escapes.
      images: Array.from({ length: 64 }, (_, i) => `cid:${i}`.padEnd(600, "x")),
    });
    const bytes = await sealMessage(key, peerId, "offer", largest);
    const opened = await openMessage(bytes, { maxBytes: maxMessageBytes.offer, types: ["offer"] });
    expect(parseBody(offerSchema, opened)).toEqual(largest);
  });

  it("a job with an image matches only offers that run podman; a process job only offers that run processes", () => {
    const gpu = { gpus: 1 };
    const processOnly = offer(1);
    const both = offer(2, { runtimes: ["process", "podman"] });
    const podmanOnly = offer(3, { runtimes: ["podman"] });
    expect([processOnly, both, podmanOnly].map((o) => offerMatches(o, { ...gpu, runtime: "podman" }))).toEqual([
      false,
      true,
      true,
    ]);
    expect([processOnly, both, podmanOnly].map((o) => offerMatches(o, gpu))).toEqual([true, true, false]);
    expect([processOnly, both, podmanOnly].map((o) => offerMatches(o, { ...gpu, runtime: "process" }))).toEqual([
      true,
      true,
      false,
    ]);
  });

  it("a job's disk quota matches only offers that give a job that much; an offer from before quotas names none and matches", () => {
    const small = offer(1, { maxJobDiskGiB: 10 });
    const large = offer(2, { maxJobDiskGiB: 100 });
    const unnamed = offer(3);
    expect(unnamed.maxJobDiskGiB).toBeUndefined();
    const offers = [small, large, unnamed];
    expect(offers.map((o) => offerMatches(o, { gpus: 1, diskGiB: 50 }))).toEqual([false, true, true]);
    expect(offers.map((o) => offerMatches(o, { gpus: 1, diskGiB: 10 }))).toEqual([true, true, true]);
    expect(offers.map((o) => offerMatches(o, { gpus: 1 }))).toEqual([true, true, true]);
  });
});

/**
 * A client whose offer book holds `offers`, and gets no more, on a chain that mines at once: all
 * findOffers reads of a client.
 */
function clientWith(offers: Offer[]): BatonClient {
  const book: OfferBook = {
    list: () => offers,
    next: (signal) =>
      new Promise((_, reject) => signal?.addEventListener("abort", () => reject(signal.reason as Error))),
  };
  return { offers: book, chain: { blockTimeS: 0 } } as unknown as BatonClient;
}

const order = (found: FoundOffer[]) => found.map((f) => f.offer.peerId);

describe("findOffers: holders of the job's image first", () => {
  const podman = { runtimes: ["podman"] };
  // Peer 1 cheapest; peer 3 holds the registry image, peer 4 the layout, peer 5 both but is a last resort.
  const book = [
    offer(1, { ...podman, price: { basePerSecond: "0", perGpuPerSecond: "1" } }),
    offer(2, { ...podman, price: { basePerSecond: "0", perGpuPerSecond: "2" } }),
    offer(3, { ...podman, images: [IMAGE], price: { basePerSecond: "0", perGpuPerSecond: "5" } }),
    offer(4, { ...podman, images: [imageKey(LAYOUT)], price: { basePerSecond: "0", perGpuPerSecond: "4" } }),
    offer(5, { ...podman, images: [IMAGE, imageKey(LAYOUT)], price: { basePerSecond: "0", perGpuPerSecond: "0" } }),
    offer(6, { images: [IMAGE], price: { basePerSecond: "0", perGpuPerSecond: "0" } }),
  ];
  const client = clientWith(book);
  const requirements = { gpus: 1, runtime: "podman" as const };

  it("among offers of the same rank, those that hold the image come first, then the cheapest; last resorts stay last", async () => {
    const found = await findOffers(client, { requirements, image: IMAGE, lastResort: ["12D3KooWPeer5"] });
    // Peer 6 runs processes only: never offered for an image job, though it holds the image.
    expect(order(found)).toEqual(["12D3KooWPeer3", "12D3KooWPeer1", "12D3KooWPeer2", "12D3KooWPeer4", "12D3KooWPeer5"]);
    expect(found.map((f) => f.holdsImage)).toEqual([true, false, false, false, true]);
  });

  it("warm standbys (the job's holders) come before image holders and cheaper offers of their rank; last resorts stay last", async () => {
    const found = await findOffers(client, {
      requirements,
      image: IMAGE,
      lastResort: ["12D3KooWPeer5"],
      standby: ["12D3KooWPeer2", "12D3KooWPeer5"],
    });
    expect(order(found)).toEqual(["12D3KooWPeer2", "12D3KooWPeer3", "12D3KooWPeer1", "12D3KooWPeer4", "12D3KooWPeer5"]);
    expect(found.map((f) => f.standby)).toEqual([true, false, false, false, true]);
  });

  it("the image is compared by its key: Docker Hub's short form and a layout's CID", async () => {
    const hub = clientWith([
      offer(1, { ...podman, price: { basePerSecond: "0", perGpuPerSecond: "1" } }),
      offer(2, { ...podman, images: [`docker.io/library/busybox@${DIGEST}`] }),
    ]);
    expect(order(await findOffers(hub, { requirements, image: `busybox@${DIGEST}` }))).toEqual([
      "12D3KooWPeer2",
      "12D3KooWPeer1",
    ]);
    expect(order(await findOffers(client, { requirements, image: LAYOUT }))).toEqual([
      "12D3KooWPeer5",
      "12D3KooWPeer4",
      "12D3KooWPeer1",
      "12D3KooWPeer2",
      "12D3KooWPeer3",
    ]);
  });

  it("a process job: cheapest first, as before images; no offer counts as holding anything", async () => {
    const found = await findOffers(clientWith(book.map((o) => ({ ...o, runtimes: ["process"] }))), {
      requirements: { gpus: 1 },
    });
    expect(order(found)).toEqual([
      "12D3KooWPeer5",
      "12D3KooWPeer6",
      "12D3KooWPeer1",
      "12D3KooWPeer2",
      "12D3KooWPeer4",
      "12D3KooWPeer3",
    ]);
    expect(found.every((f) => !f.holdsImage)).toBe(true);
  });

  it("no offer runs images: the wait ends in an error that says the runtime was the want", async () => {
    const error = await findOffers(clientWith([offer(1)]), { requirements, image: IMAGE, timeoutMs: 50 }).catch(
      (e: unknown) => e as Error,
    );
    expect((error as Error).message).toMatch(/^found 0 provider offer\(s\) for 1 GPU\(s\) with the podman runtime/);
  });
});
