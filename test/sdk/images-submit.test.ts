import { readFile } from "node:fs/promises";
import path from "node:path";

import { parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { offerMatches } from "../../sdk/actions/findOffers.ts";
import { runJob } from "../../sdk/actions/runJob.ts";
import { serve } from "../../sdk/actions/serve.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { ImageResolutionError } from "../../sdk/errors.ts";
import type { JobEvent } from "../../sdk/tenant/job-events.ts";
import { startMarket, type Market } from "../helpers/market.ts";
import { throwawayPodman, type ThrowawayPodman } from "../helpers/podman.ts";
import { until } from "../helpers/processes.ts";
import { installed, startRegistry, type Registry } from "../helpers/registry.ts";

// Submitting an image job on a real market: the SDK pins the tag before anything is leased, and
// a provider that runs processes only (its offer names no runtimes) never gets the job.

const missing = ["docker-registry", "podman"].filter((tool) => !installed(tool));

describe.skipIf(missing.length > 0)(
  `runJob with a registry image${missing.length > 0 ? ` (skipped: ${missing.join(" and ")} not installed)` : ""}`,
  () => {
    let registry: Registry;
    let podman: ThrowawayPodman;
    let market: Market;
    let client: BatonClient;
    let pushed: string;

    beforeAll(async () => {
      [registry, podman, market] = await Promise.all([
        startRegistry(),
        throwawayPodman(),
        // One provider with a (fake) GPU, running processes only, as every provider before images.
        startMarket({ providers: 1 }),
      ]);
      client = await market.client(0, path.join(market.dir, "tenant"));
      const image = `${registry.address}/train:v1`;
      await podman.buildBusybox(image);
      const digestFile = path.join(podman.dir, "digest");
      await podman.podman(["push", "--tls-verify=false", "--digestfile", digestFile, image]);
      pushed = (await readFile(digestFile, "utf8")).trim();
    }, 240_000);

    afterAll(async () => {
      await Promise.allSettled([market?.stop(), podman?.remove(), registry?.stop()]);
    });

    it("the job's record carries the tag pinned to the pushed digest; no process-only provider is leased", async () => {
      const job = await runJob(
        client,
        { name: "image-job", image: `${registry.address}/train:v1`, resources: { gpus: 1 }, maxDurationS: 60 },
        { maxPricePerSecond: parseEther("0.001") },
      );
      const events: JobEvent[] = [];
      job.on("*", (event) => events.push(event));

      const record = await client.jobs.get(job.jobId);
      expect(record?.spec.image).toBe(`${registry.address}/train@${pushed}`);

      const error = await job.result().then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(error?.message).toMatch(/found 0 provider offer\(s\) for 1 GPU\(s\) with the podman runtime/);
      // The provider was there all along, and would have taken the same job as a process.
      expect(client.offers.list().filter((offer) => offerMatches(offer, { gpus: 1 }))).toHaveLength(1);
      expect(events.filter((e) => e.type === "lease-opened")).toEqual([]);
      expect((await client.jobs.get(job.jobId))?.leases).toEqual([]);
    });

    it("a tag the registry does not have: runJob throws before any record is written", async () => {
      const before = (await client.jobs.list()).length;
      const error = await runJob(
        client,
        { image: `${registry.address}/train:nope`, resources: { gpus: 1 } },
        { maxPricePerSecond: parseEther("0.001") },
      ).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(ImageResolutionError);
      expect((error as ImageResolutionError).reason).toBe("not-found");
      expect(await client.jobs.list()).toHaveLength(before);
    });

    it("serve pins the tag before its first replica's job; an unknown tag starts nothing", async () => {
      const spec = { image: `${registry.address}/train:v1`, resources: { gpus: 1 }, service: {} };
      const options = { replicas: 1, maxPricePerSecond: parseEther("0.001") };
      const before = new Set((await client.jobs.list()).map((r) => r.jobId));

      const unknown = await serve(client, { ...spec, image: `${registry.address}/train:nope` }, options).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(unknown).toBeInstanceOf(ImageResolutionError);
      expect((await client.jobs.list()).filter((r) => !before.has(r.jobId))).toEqual([]);

      // No provider runs images here: the replica's job waits for offers until it is closed.
      const controller = new AbortController();
      const serving = serve(client, spec, { ...options, signal: controller.signal }).catch((e: unknown) => e);
      const replicaJob = async () => (await client.jobs.list()).find((r) => !before.has(r.jobId));
      await until(async () => (await replicaJob()) !== undefined, 30_000, "the replica's job record");
      expect((await replicaJob())?.spec.image).toBe(`${registry.address}/train@${pushed}`);
      controller.abort(new Error("test over"));
      expect(await serving).toMatchObject({ message: "test over" });
    });
  },
);
