import { readFile } from "node:fs/promises";
import path from "node:path";

import { parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { runJob, type JobHandle } from "../../sdk/actions/runJob.ts";
import { contracts, leaseStatus } from "../../sdk/chain/client.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { freePort, startLink, type LinkDelay, type LinkShaper } from "../helpers/link.ts";
import {
  expectEverySuspicionCleared,
  expectTokensConserved,
  recorder,
  SCRIPT,
  totals,
  trainSpec,
  useRunJobMarket,
} from "../helpers/run-job.ts";

/*
 * Issue 21's slow, lossy home links, over a bounded run: four providers, each behind a link shaper
 * of 200 ms round trip (±10 % jitter) and 2 % of chunks lost each way, which every byte between it
 * and the tenant crosses (each provider announces only its link's address; the tenant listens
 * nowhere). Four 60 s jobs at once, one on each provider: liveness must raise no failure, every job
 * ends on its own provider with the reference result, each lease Completed, nobody slashed.
 */
const PROVIDERS = 4;
const LINK: LinkDelay = { upMs: 100, downMs: 100, jitterMs: 20, lossPercent: 2 };

const ports: number[] = [];
const links: LinkShaper[] = [];
beforeAll(async () => {
  for (let i = 0; i < PROVIDERS; i++) {
    ports.push(await freePort());
    links.push(await startLink(ports[i]!, LINK));
  }
});
// Hooks after a file run in reverse: the links close after the market stops.
afterAll(() => Promise.all(links.map((link) => link.close())));

const fixture = useRunJobMarket({
  providers: PROVIDERS,
  // The tenant's liveness is what is under test; on-chain heartbeats get a loaded machine's slack.
  chainHeartbeatTimeoutS: 20,
  // No block lanes: a lane beside the link would carry checkpoints around it.
  configFor: (index) => ({
    listen: [`/ip4/127.0.0.1/tcp/${ports[index]!}`],
    announce: [links[index]!.multiaddr],
    blockLanePort: null,
  }),
});

describe("four jobs on four providers behind 200 ms, 2 % lossy links", () => {
  let client: BatonClient;

  beforeAll(async () => {
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant"), { listen: [] });
  });

  /** Runs a 60 s job whose first lease goes to `provider` (the others are left out of its first bid). */
  const jobOn = (provider: string): Promise<JobHandle> => {
    let first = true;
    return runJob(client, trainSpec("100"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
      excludeProviders: () => {
        if (!first) return [];
        first = false;
        return fixture.market.providers.map((p) => p.account.address).filter((p) => p !== provider);
      },
    });
  };

  it("no false failure: each job ends on its provider with the reference result, each lease Completed, nobody slashed", async () => {
    const addresses = fixture.market.providers.map((p) => p.account.address);
    // Every offer heard first: a job bids only to providers the tenant knows.
    await expect
      .poll(() => addresses.every((a) => client.offers.list().some((o) => o.provider === a)), { timeout: 30_000 })
      .toBe(true);
    const before = await totals(fixture.market);
    const jobs = await Promise.all(addresses.map((address) => jobOn(address)));
    const recorded = jobs.map((job) => recorder(job));
    const results = await Promise.all(jobs.map((job) => job.result()));
    await Promise.all(jobs.map((job) => job.settled()));

    const { leaseManager } = contracts(fixture.market.deployment);
    for (const [index, result] of results.entries()) {
      const events = recorded[index]!.events;
      expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
      expect(result.handOffs).toBe(0);
      expect(result.leases.map((l) => l.provider)).toEqual([addresses[index]]);
      expect(events.filter((e) => ["provider-failed", "re-leased", "slashed"].includes(e.type))).toEqual([]);
      expectEverySuspicionCleared(events);
      // `settled()` does not wait for the provider's `finish`: its lease is Active until that lands.
      await expect
        .poll(
          async () => {
            const lease = await fixture.market.admin.publicClient.readContract({
              ...leaseManager,
              functionName: "getLease",
              args: [BigInt(result.leases[0]!.leaseId)],
            });
            return leaseStatus[lease.status];
          },
          { timeout: 30_000 },
        )
        .toBe("Completed");
    }
    await expectTokensConserved(fixture.market, before);
  }, 240_000);
});
