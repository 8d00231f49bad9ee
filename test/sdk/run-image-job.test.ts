import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { keccak256, parseEther, toHex } from "viem";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { Podman } from "../../node/containers/podman.ts";
import { buildImages, type BuiltImage } from "../../scripts/build-images.ts";
import { auditJob } from "../../sdk/actions/auditJob.ts";
import { bid } from "../../sdk/actions/bid.ts";
import { findOffers } from "../../sdk/actions/findOffers.ts";
import { openLease } from "../../sdk/actions/openLease.ts";
import { runJob } from "../../sdk/actions/runJob.ts";
import { watchLease } from "../../sdk/actions/watchLease.ts";
import { contracts } from "../../sdk/chain/client.ts";
import { startGateway } from "../../cli/gateway.ts";
import { serve } from "../../sdk/actions/serve.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { imageDigestToBytes32 } from "../../sdk/images/digest.ts";
import { addImageLayout } from "../../sdk/images/layout.ts";
import type { ImageDigest } from "../../sdk/images/reference.ts";
import { parseJobSpec, readJobFile, type JobSpecInput } from "../../sdk/job-spec.ts";
import { requestQuote } from "../../sdk/wire/clients.ts";
import { root, until } from "../helpers/processes.ts";
import { installed, startRegistry, type Registry } from "../helpers/registry.ts";
import { recorder, serving, TRAIN_ENV, useRunJobMarket } from "../helpers/run-job.ts";
import type { ProviderHandle } from "../helpers/market.ts";

// Image jobs through the whole market: a real registry on loopback, images built here, two
// providers running them with Podman and one running processes only (its offers name no podman
// runtime, so no image job is ever leased to it); a provider SIGKILLed under a running image job.

const missing = ["podman", "docker-registry", "busybox"].filter((tool) => !installed(tool));

/** Where the providers' registries.conf is: written once the registry's port is known, before any pull. */
const registriesConf = path.join(os.tmpdir(), `baton-image-jobs-${process.pid}.conf`);

const setup = {} as { registry: Registry; train: BuiltImage; busybox: BuiltImage; ociDir: string };

/** Containers in a provider's own store (see node/containers/setup.ts). */
const containersOf = async (provider: ProviderHandle): Promise<string[]> => {
  const root = path.join(provider.dataDir, "containers", "storage");
  const podman = await Podman.open({ root });
  const { stdout } = await podman.run(["ps", "--all", "--format", "{{.Names}}"]);
  return stdout.split("\n").filter(Boolean);
};

describe.skipIf(missing.length > 0)(`image jobs on the market (needs ${missing.join(", ") || "podman"})`, () => {
  beforeAll(async () => {
    setup.registry = await startRegistry();
    await writeFile(registriesConf, `[[registry]]\nlocation = "${setup.registry.address}"\ninsecure = true\n`);
    setup.ociDir = await mkdtemp(path.join(os.tmpdir(), "baton-oci-"));
    const built = await buildImages({ registry: setup.registry.address, ociDir: setup.ociDir });
    setup.train = built.find((image) => image.name === "train")!;
    setup.busybox = built.find((image) => image.name === "busybox")!;
  }, 300_000);

  /** Provider 2 runs processes only, as every provider before image jobs. */
  const PROCESS_ONLY = 2;
  const fixture = useRunJobMarket({
    configFor: (index) => ({ containers: index === PROCESS_ONLY ? { enabled: false } : { registriesConf } }),
  });

  afterAll(async () => {
    await setup.registry?.stop();
    await rm(registriesConf, { force: true });
    if (setup.ociDir) await rm(setup.ociDir, { recursive: true, force: true });
  });

  let client: BatonClient;
  beforeAll(async () => {
    client = await fixture.market.client(0, path.join(fixture.dir, "tenant-images"));
  });

  /** The example trainer in its image: the image's own command, train.yaml's settings. */
  const trainImageSpec = (image: string): JobSpecInput => ({
    name: "train-image",
    image,
    env: { ...TRAIN_ENV, TRAIN_STEP_DELAY_MS: "20" },
    resources: { gpus: 0, cpus: 1, memoryMiB: 256 },
    maxDurationS: 300,
  });

  it("a job given by tag runs pinned to its digest; SIGKILL its provider and it resumes on another from the same image, to the uninterrupted result", async () => {
    const job = await runJob(client, trainImageSpec(`${setup.registry.address}/baton/train:latest`), {
      maxPricePerSecond: parseEther("0.001"),
    });
    const pinned = `${setup.registry.address}/baton/train@${setup.train.digest}`;
    expect((await client.jobs.get(job.jobId))?.spec.image).toBe(pinned);
    const { when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const victim = serving(fixture.market, job);
    victim.process!.child.kill("SIGKILL");
    // Back for the next test even if this one fails; a restarted node removes any container its
    // killed run left (conmon keeps a container running when the node dies, until the job ends).
    let back = false;
    onTestFinished(async () => {
      if (!back) await victim.start();
    });

    const failed = await when("provider-failed");
    const restarted = await when("started", (e) => e.leaseId !== failed.leaseId);
    const result = await job.result();
    await job.settled();

    expect(restarted.resumed).toBe(true);
    expect(result.handOffs).toBe(1);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
    // Every lease of the job ran the pinned image: the one the record carries, and the one the chain
    // says each lease's provider signed for, which an auditor reads from the chain alone.
    expect((await client.jobs.get(job.jobId))?.spec.image).toBe(pinned);
    const audit = await auditJob(client, { jobId: job.jobId });
    expect(audit.lineage.map((lease) => lease.image)).toEqual([setup.train.digest, setup.train.digest]);
    const successor = fixture.market.providers.find((p) => p.account.address === result.leases.at(-1)!.provider)!;
    expect(successor.account.address).not.toBe(victim.account.address);
    const cached = JSON.parse(
      await readFile(path.join(successor.dataDir, "containers", "images.json"), "utf8"),
    ) as Record<string, unknown>;
    expect(Object.keys(cached)).toContain(pinned);

    back = true;
    await victim.start();
    // It removed the container its killed run left; it relaunched the job (its lease was still
    // running when it died) and then stopped it, once the chain said the lease had ended.
    await expect.poll(() => containersOf(victim), { timeout: 60_000, interval: 500 }).toEqual([]);
  });

  it("a tag the registry does not have: runJob and serve throw before any record is written", async () => {
    const before = (await client.jobs.list()).length;
    const nope = `${setup.registry.address}/baton/train:nope`;
    const options = { maxPricePerSecond: parseEther("0.001") };
    await expect(runJob(client, trainImageSpec(nope), options)).rejects.toMatchObject({
      name: "ImageResolutionError",
      reason: "not-found",
    });
    await expect(
      serve(client, { ...trainImageSpec(nope), service: {} }, { ...options, replicas: 1 }),
    ).rejects.toMatchObject({ name: "ImageResolutionError", reason: "not-found" });
    expect(await client.jobs.list()).toHaveLength(before);
  });

  it("serve pins the tag before its first replica's job", async () => {
    const before = new Set((await client.jobs.list()).map((record) => record.jobId));
    const controller = new AbortController();
    const serving = serve(
      client,
      { ...trainImageSpec(`${setup.registry.address}/baton/busybox:latest`), command: ["sleep", "600"], service: {} },
      { replicas: 1, maxPricePerSecond: parseEther("0.001"), signal: controller.signal },
    ).catch((error: unknown) => error);
    const replicaJob = async () => (await client.jobs.list()).find((record) => !before.has(record.jobId));
    await until(async () => (await replicaJob()) !== undefined, 30_000, "the replica's job record");
    expect((await replicaJob())?.spec.image).toBe(`${setup.registry.address}/baton/busybox@${setup.busybox.digest}`);
    controller.abort(new Error("test over"));
    expect(await serving).toMatchObject({ message: "test over" });
  });

  it("an image that is not in the registry fails the job at once, naming it", async () => {
    const absent = `${setup.registry.address}/baton/train@sha256:${"1".repeat(64)}`;
    const job = await runJob(client, trainImageSpec(absent), { maxPricePerSecond: parseEther("0.001") });
    const error = await job.result().then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(error?.message).toMatch(/does not exist/);
    expect((await client.jobs.get(job.jobId))?.handOffs).toBe(0);
  });

  it("an image given by CID runs with the registry stopped: the provider fetches the OCI layout from the tenant", async () => {
    const { cid } = await addImageLayout(client, { path: path.join(setup.ociDir, "busybox") });
    await setup.registry.stop();
    const job = await runJob(
      client,
      {
        name: "busybox-by-cid",
        image: { cid },
        command: [
          "sh",
          "-c",
          'echo "from $(cat /etc/hostname 2>/dev/null || echo the image)" > $BATON_OUTPUT_DIR/said.txt',
        ],
        resources: { gpus: 0, cpus: 1, memoryMiB: 128 },
        maxDurationS: 120,
      },
      { maxPricePerSecond: parseEther("0.001") },
    );
    const { events } = recorder(job);
    const result = await job.result().catch((error: unknown) => {
      throw new Error(
        `${String(error)}: ${JSON.stringify(events.filter((e) => e.type === "provider-failed").map((e) => ("reason" in e ? e.reason : "")))}`,
      );
    });
    expect(result.exitCode).toBe(0);
    expect(await readFile(path.join(result.outputDir!, "said.txt"), "utf8")).toMatch(/^from /);
    // The lease names the manifest the layout's index.json lists: the registry's, for the same image.
    const audit = await auditJob(client, { jobId: job.jobId });
    expect(audit.lineage.map((lease) => lease.image)).toEqual([setup.busybox.digest]);
  });

  /**
   * A lease opened through the SDK's own bid for an image job of `image`, whose session is then
   * started with `spec` (not what the quote named): the provider's refusal.
   */
  const startOnLeaseFor = async (image: ImageDigest, spec: JobSpecInput & { name: string }) => {
    const requirements = { gpus: 0, runtime: "podman" as const };
    const maxPricePerSecond = parseEther("0.001");
    const offers = await findOffers(client, { requirements, maxPricePerSecond, timeoutMs: 15_000 });
    const { chosen } = await bid(client, {
      jobId: keccak256(toHex(spec.name)),
      offers,
      requirements,
      image: imageDigestToBytes32(image),
      maxPricePerSecond,
      durationS: 120,
    });
    expect(chosen.quote.image).toBe(imageDigestToBytes32(image));
    const { leaseId } = await openLease(client, {
      quote: chosen.quote,
      signature: chosen.signature,
      deposit: chosen.quote.pricePerSecond * 120n,
    });
    const watch = watchLease(client, {
      leaseId,
      peerId: chosen.offer.peerId,
      start: { spec: parseJobSpec(spec) },
      liveness: { heartbeatMs: 500 },
    });
    for await (const event of watch) {
      if (event.type === "refused" || event.type === "accepted") return event;
    }
    throw new Error("the session ended without an answer");
  };

  it("a provider refuses a lease whose quote named another image than the spec runs: a pinned one at once, a layout once fetched", async () => {
    const pinnedBusybox = `${setup.registry.address}/baton/busybox@${setup.busybox.digest!}`;
    const command = { command: ["true"], resources: { gpus: 0, cpus: 1, memoryMiB: 64 }, maxDurationS: 60 };
    const byReference = await startOnLeaseFor(setup.train.digest!, {
      name: "wrong-reference",
      image: pinnedBusybox,
      ...command,
    });
    expect(byReference).toMatchObject({
      type: "refused",
      body: {
        reason: "spec-mismatch",
        message: `the spec runs image ${pinnedBusybox}; the lease was opened for ${setup.train.digest!}`,
      },
    });
    // A layout's manifest is known once it is fetched and pulled: then it is checked, and refused
    // as an image that runs nowhere on this lease.
    const { cid } = await addImageLayout(client, { path: path.join(setup.ociDir, "busybox") });
    const byCid = await startOnLeaseFor(setup.train.digest!, { name: "wrong-layout", image: { cid }, ...command });
    expect(byCid).toMatchObject({
      type: "refused",
      body: {
        reason: "image-refused",
        message: expect.stringMatching(`is not ${setup.train.digest!}, the image the lease was opened for`),
      },
    });
  });

  it("a service in an image answers through the gateway: it listens on $BATON_HTTP_SOCKET in /work, which the node's proxy dials", async () => {
    const { spec, files } = await readJobFile(path.join(root, "examples/serve/serve.yaml"));
    // The classifier in the train image (which has Node), with the registry stopped: the image is
    // cached on the providers from the first test.
    const service = await serve(
      client,
      {
        ...spec,
        image: `${setup.registry.address}/baton/train@${setup.train.digest}`,
        command: ["node", "/work/server.mjs"],
      },
      { replicas: 1, maxPricePerSecond: parseEther("0.001"), files },
    );
    const gateway = await startGateway(service, 0);
    try {
      await service.ready(1, 60_000);
      const response = await fetch(
        `http://127.0.0.1:${(gateway.address() as { port: number }).port}/predict?text=hello`,
      );
      expect(response.status).toBe(200);
      expect(response.headers.get("x-baton-lease")).toMatch(/^\d+$/);
      expect(await response.json()).toHaveProperty("label");
    } finally {
      gateway.close();
      await service.close();
    }
  });

  it("the process-only provider quotes no image job, whatever the bid's offers said", async () => {
    const processOnly = fixture.market.providers[PROCESS_ONLY]!;
    const response = await requestQuote(
      client.host,
      peerIdFromString(processOnly.peerId),
      client.peerKey,
      {
        chainId: fixture.market.deployment.chainId,
        leaseManager: contracts(fixture.market.deployment).leaseManager.address,
        jobId: keccak256(toHex("an image job for a process-only provider")),
        tenant: client.account.address,
        requirements: { gpus: 0 },
        image: imageDigestToBytes32(setup.busybox.digest!),
        maxPricePerSecond: parseEther("0.001"),
        durationS: 120,
      },
      { address: multiaddr(processOnly.address!), signal: AbortSignal.timeout(10_000) },
    );
    expect(response).toEqual({
      kind: "refusal",
      reason: "requirements-not-met",
      message: "this node runs no image jobs (no Podman)",
    });
  });

  it("no image job was leased to the process-only provider, and no container is left on any provider", async () => {
    const processOnly = fixture.market.providers[PROCESS_ONLY]!.account.address;
    const leases = (await client.jobs.list()).flatMap((record) => record.leases);
    expect(leases.length).toBeGreaterThan(0);
    expect(leases.filter((lease) => lease.provider === processOnly)).toEqual([]);
    for (const [index, provider] of fixture.market.providers.entries()) {
      if (index !== PROCESS_ONLY) await expect.poll(() => containersOf(provider), { timeout: 30_000 }).toEqual([]);
    }
  });
});
