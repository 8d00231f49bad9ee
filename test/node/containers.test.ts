import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { buildImages, type BuiltImage } from "../../scripts/build-images.ts";
import {
  CONTAINER_DRIVER_DIR,
  gpuOptions,
  removeNodeContainers,
  startContainerJob,
  type ContainerJobOptions,
} from "../../node/containers/container-job.ts";
import { ImageCache, imageMismatch } from "../../node/containers/images.ts";
import { Podman } from "../../node/containers/podman.ts";
import { DISK_IMAGE, loopDevices, mountPoints } from "../../node/disk-quota.ts";
import { openWorkDirs, quotaEnforcement, releaseQuotaFileSystems } from "../../node/work-dirs.ts";
import type { IpfsNode } from "../../sdk/ipfs/node.ts";
import { silentLogger } from "../../sdk/logger.ts";
import { installed, startRegistry, type Registry } from "../helpers/registry.ts";
import { throwawayPodman } from "../helpers/podman.ts";

const missing = ["podman", "docker-registry", "busybox"].filter((tool) => !installed(tool));
const quotasMount = (await quotaEnforcement("auto")) === "mount";

/**
 * The provider's image side with real parts: a registry on loopback, images built here with no
 * download, Podman running them. The whole market with image jobs is in test/sdk/run-image-job.test.ts.
 */
describe.skipIf(missing.length > 0)(`image jobs on a provider (needs ${missing.join(", ") || "podman"})`, () => {
  let dir: string;
  let registry: Registry;
  let busybox: BuiltImage;
  let registriesConf: string;
  const stores: Podman[] = [];

  /** Podman over a fresh store of its own, as a node has. */
  const openPodman = async (name: string): Promise<Podman> => {
    const root = path.join(dir, name);
    const podman = await Podman.open({ root, registriesConf });
    stores.push(podman);
    return podman;
  };

  /** A cache over its own store; it never fetches by CID here (the market test does). */
  const openCache = async (
    name: string,
    options: { cacheBytes?: number; maxImageBytes?: number; pullTimeoutMs?: number } = {},
  ) => {
    const podman = await openPodman(name);
    const cache = await ImageCache.open({
      podman,
      ipfs: undefined as unknown as IpfsNode,
      dir: path.join(dir, `${name}-cache`),
      cacheBytes: options.cacheBytes ?? 2 ** 30,
      maxImageBytes: options.maxImageBytes ?? 2 ** 30,
      pullTimeoutMs: options.pullTimeoutMs ?? 60_000,
      log: silentLogger,
    });
    return { podman, cache };
  };

  const imagesIn = async (podman: Podman): Promise<string[]> =>
    (await podman.run(["images", "--format", "{{.ID}}"])).stdout.split("\n").filter(Boolean);

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-containers-test-"));
    registry = await startRegistry();
    registriesConf = path.join(dir, "registries.conf");
    await writeFile(registriesConf, `[[registry]]\nlocation = "${registry.address}"\ninsecure = true\n`);
    busybox = (await buildImages({ registry: registry.address })).find((image) => image.name === "busybox")!;
  }, 300_000);

  afterAll(async () => {
    for (const podman of stores) {
      // No container of any test is left, whatever it did.
      const left = await podman.run(["ps", "--all", "--format", "{{.Names}}"]).catch(() => ({ stdout: "" }));
      expect(left.stdout.trim()).toBe("");
      await podman.run(["rmi", "--all", "--force"]).catch(() => {});
      await rm(podman.init.runroot, { recursive: true, force: true });
    }
    await registry?.stop();
    if (dir) await releaseQuotaFileSystems(dir, silentLogger);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /**
   * A busybox job run as a node runs it, on a store of its own: the job, the lines it printed, and
   * the cache's hold on the image (release it once the job is over).
   */
  const runBusybox = async (store: string, leaseId: string, options: Partial<ContainerJobOptions>) => {
    const { podman, cache } = await openCache(store);
    const held = await cache.acquire(busybox.pushedRef!, {
      digest: busybox.digest!,
      providers: [],
      signal: AbortSignal.timeout(60_000),
    });
    const lines: string[] = [];
    const job = await startContainerJob({
      podman,
      image: held.id,
      node: "test",
      leaseId,
      workDir: path.join(dir, `jobs/${leaseId}/work`),
      onLine: (_, line) => lines.push(line),
      ...options,
    });
    return { job, lines, held, podman };
  };

  it("runs a job as nobody, with the BATON_* env, a read-only root, only its work dir writable and no network", async () => {
    const { job, lines, held } = await runBusybox("run", "1", {
      command: [
        "sh",
        "-c",
        "id -u; echo $BATON_CHECKPOINT_DIR; touch /x || echo ro; echo hi > /work/output/f; ls /sys/class/net; exit 3",
      ],
    });
    const exit = await job.exited;
    held.release();
    expect(exit).toMatchObject({ code: 3, signal: null, reason: "exited" });
    expect(lines).toEqual(expect.arrayContaining(["65534", "/work/checkpoints", "ro", "lo"]));
    expect(lines).not.toContain("eth0");
    expect(await readFile(path.join(dir, "jobs/1/work/output/f"), "utf8")).toBe("hi\n");
    expect(job.sandbox).toBe("podman");
  });

  it("takes and gives back the same image many times at once without losing its index", async () => {
    const { cache } = await openCache("busy");
    const signal = AbortSignal.timeout(60_000);
    const held = await Promise.all(
      Array.from({ length: 10 }, () =>
        cache.acquire(busybox.pushedRef!, { digest: busybox.digest!, providers: [], signal }),
      ),
    );
    for (let round = 0; round < 20; round++) {
      held.pop()!.release();
      held.unshift(await cache.acquire(busybox.pushedRef!, { digest: busybox.digest!, providers: [], signal }));
    }
    for (const one of held) one.release();
    expect(cache.keys()).toEqual([busybox.pushedRef]);
    const index = JSON.parse(await readFile(path.join(dir, "busy-cache", "images.json"), "utf8")) as object;
    expect(Object.keys(index)).toEqual([busybox.pushedRef]);
  });

  it("a command the image does not have ends the job with 127, as in a shell, saying so in its log", async () => {
    const { job, lines, held } = await runBusybox("missing-command", "7", { command: ["no-such-program"] });
    expect(await job.exited).toMatchObject({ code: 127, reason: "exited" });
    held.release();
    expect(lines.join("\n")).toMatch(/failed to exec pid1: No such file or directory|no-such-program.*not found/);
  });

  it("with network: true the job has a network interface", async () => {
    const { job, lines, held } = await runBusybox("net", "2", { network: true, command: ["ls", "/sys/class/net"] });
    expect(await job.exited).toMatchObject({ code: 0 });
    held.release();
    expect(lines.length).toBeGreaterThan(1);
  });

  it("over its memory limit the job is killed and the reason is memory", async () => {
    const { job, held } = await runBusybox("memory", "3", {
      limits: { memoryBytes: 64 * 2 ** 20 },
      // The shell holds 200 MB of command output in memory.
      command: ["sh", "-c", 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived'],
    });
    expect(await job.exited).toMatchObject({ reason: "memory", signal: "SIGKILL" });
    held.release();
  });

  it.skipIf(!quotasMount)(
    "past its disk quota /work refuses the job's writes and the reason is disk; removed, its file system leaves nothing",
    async () => {
      const jobsDir = path.join(dir, "quota-jobs");
      await mkdir(jobsDir);
      const workDirs = await openWorkDirs({ jobsDir, diskQuota: "mount", log: silentLogger });
      const workDir = await workDirs.create(8n, 64 * 2 ** 20);
      const { job, lines, held } = await runBusybox("disk", "8", {
        workDir: workDir.path,
        command: ["sh", "-c", "dd if=/dev/zero of=/work/big bs=1M count=100"],
      });
      const exit = await workDirs.supervise(job, workDir);
      held.release();
      expect(exit).toMatchObject({ code: 1, reason: "disk", detail: "the job used more than its 64 MiB disk quota" });
      expect(lines.join("\n")).toMatch(/No space left on device/);

      await workDirs.remove(8n);
      const image = path.join(path.dirname(workDir.path), DISK_IMAGE);
      expect((await mountPoints()).filter((mountPoint) => mountPoint === workDir.path)).toEqual([]);
      expect((await loopDevices()).filter((loop) => loop.backingFile.startsWith(image))).toEqual([]);
      expect(existsSync(image) || existsSync(workDir.path)).toBe(false);
    },
  );

  it("kill() passes SIGTERM to the job through the container's init; the wall time stops it too", async () => {
    const trapping = (wallTimeMs?: number): Partial<ContainerJobOptions> => ({
      killGraceMs: 5_000,
      ...(wallTimeMs ? { limits: { wallTimeMs } } : {}),
      command: ["sh", "-c", 'trap "echo term; exit 9" TERM; echo up; while :; do sleep 0.1; done'],
    });
    const killed = await runBusybox("kill", "4", trapping());
    await expect.poll(() => killed.lines.includes("up"), { timeout: 30_000 }).toBe(true);
    expect(await killed.job.kill()).toMatchObject({ code: 9, reason: "killed" });
    expect(killed.lines).toContain("term");
    killed.held.release();
    const timed = await runBusybox("wall-time", "5", trapping(1_500));
    expect(await timed.job.exited).toMatchObject({ code: 9, reason: "wall-time" });
    timed.held.release();
  });

  it("a restarted node removes the containers its previous run left", async () => {
    const { job, held, podman } = await runBusybox("restart", "6", { node: "node-a", command: ["sleep", "600"] });
    expect(await removeNodeContainers(podman, "node-b", silentLogger)).toBe(0);
    expect(await removeNodeContainers(podman, "node-a", silentLogger)).toBe(1);
    expect((await job.exited).signal).toBe("SIGKILL");
    held.release();
  });

  it("refuses, naming the cause, an image not pinned, not in the registry, too large, or from a registry that hangs; and leaves no image", async () => {
    const { podman, cache } = await openCache("refusals", { maxImageBytes: 100_000 });
    // Only the hanging registry meets the short pull timeout: the size is known once the pull ends,
    // which on a loaded machine took more than 3 s.
    const hangs = await openCache("refusals-hang", { pullTimeoutMs: 3_000 });
    const acquire = (image: string, from = cache) =>
      from.acquire(image, { digest: busybox.digest!, providers: [], signal: AbortSignal.timeout(60_000) });
    await expect(acquire(`${registry.address}/baton/busybox:latest`)).rejects.toMatchObject({
      anywhere: true,
      shortMessage: expect.stringMatching(/not pinned to a digest/),
    });
    await expect(acquire(`${registry.address}/baton/busybox@sha256:${"0".repeat(64)}`)).rejects.toMatchObject({
      anywhere: true,
      shortMessage: expect.stringMatching(/does not exist/),
    });
    await expect(acquire(busybox.pushedRef!)).rejects.toMatchObject({
      anywhere: false,
      shortMessage: expect.stringMatching(/over this provider's limit/),
    });
    const hanging = net.createServer(() => {});
    hanging.listen(0, "127.0.0.1");
    await once(hanging, "listening");
    const { port } = hanging.address() as net.AddressInfo;
    try {
      await expect(acquire(`127.0.0.1:${port}/baton/busybox@${busybox.digest}`, hangs.cache)).rejects.toMatchObject({
        shortMessage: expect.stringMatching(/within 3 s/),
      });
    } finally {
      hanging.close();
    }
    for (const { podman: store, cache: held } of [{ podman, cache }, hangs]) {
      expect(await imagesIn(store)).toEqual([]);
      expect(held.keys()).toEqual([]);
    }
  });

  it("refuses to hand out an image as another manifest than the lease's, and keeps it for its own", async () => {
    const { podman, cache } = await openCache("other-manifest");
    const signal = AbortSignal.timeout(60_000);
    const other = `sha256:${"1".repeat(64)}` as const;
    await expect(cache.acquire(busybox.pushedRef!, { digest: other, providers: [], signal })).rejects.toMatchObject({
      name: "ImageRefusedError",
      anywhere: true,
      shortMessage: `image ${busybox.pushedRef!} is not ${other}, the image the lease was opened for`,
    });
    // Pulled and checked: it is the image its reference names, cached, and not held.
    expect(cache.keys()).toEqual([busybox.pushedRef]);
    expect((await imagesIn(podman)).length).toBe(1);
    const held = await cache.acquire(busybox.pushedRef!, { digest: busybox.digest!, providers: [], signal });
    held.release();
  });

  it("takes an image pulled by its index's digest as that index: what a multi-platform reference names", async () => {
    const builder = await throwawayPodman();
    try {
      const digestFile = path.join(builder.dir, "digest");
      await builder.podman(["manifest", "create", "localhost/list:1"]);
      await builder.podman([
        "manifest",
        "add",
        "--tls-verify=false",
        "localhost/list:1",
        `docker://${busybox.pushedRef!}`,
      ]);
      await builder.podman([
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        "--digestfile",
        digestFile,
        "localhost/list:1",
        `docker://${registry.address}/baton/list:1`,
      ]);
      const index = (await readFile(digestFile, "utf8")).trim() as `sha256:${string}`;
      expect(index).not.toBe(busybox.digest);
      const { cache } = await openCache("index");
      const signal = AbortSignal.timeout(60_000);
      const held = await cache.acquire(`${registry.address}/baton/list@${index}`, {
        digest: index,
        providers: [],
        signal,
      });
      held.release();
    } finally {
      await builder.remove();
    }
  });

  it("imageMismatch: a spec's image against the lease's, before anything is pulled", () => {
    const pinned = `${registry.address}/baton/busybox@${busybox.digest!}`;
    const other = `sha256:${"2".repeat(64)}` as const;
    expect(imageMismatch(undefined, undefined)).toBeUndefined();
    expect(imageMismatch(pinned, busybox.digest)).toBeUndefined();
    expect(imageMismatch(pinned, other)).toBe(`the spec runs image ${pinned}; the lease was opened for ${other}`);
    expect(imageMismatch(pinned, undefined)).toBe(
      `the spec runs image ${pinned}; the lease was opened for a job without one`,
    );
    expect(imageMismatch(undefined, other)).toBe(`the lease was opened for image ${other}; the spec runs none`);
    // A layout's manifest is known once it is fetched: the cache checks it then.
    expect(
      imageMismatch({ cid: "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" }, other),
    ).toBeUndefined();
    // Not pinned: the cache refuses it whatever the lease names.
    expect(imageMismatch(`${registry.address}/baton/busybox:latest`, other)).toBeUndefined();
  });

  it("refuses an image for another platform", async () => {
    const builder = await throwawayPodman();
    try {
      // No RUN step: nothing of arm64 has to run here to build it.
      const context = path.join(builder.dir, "context");
      await mkdir(context);
      await writeFile(path.join(context, "Containerfile"), "FROM scratch\nCOPY Containerfile /f\n");
      await builder.podman(["build", "--arch", "arm64", "--format", "oci", "-t", "localhost/arm:1", context]);
      const digestFile = path.join(builder.dir, "digest");
      await builder.podman([
        "push",
        "--tls-verify=false",
        "--digestfile",
        digestFile,
        "localhost/arm:1",
        `docker://${registry.address}/baton/arm:1`,
      ]);
      const digest = (await readFile(digestFile, "utf8")).trim();
      const { podman, cache } = await openCache("platform");
      await expect(
        cache.acquire(`${registry.address}/baton/arm@${digest}`, {
          digest: digest as `sha256:${string}`,
          providers: [],
          signal: AbortSignal.timeout(60_000),
        }),
      ).rejects.toThrow(/is for linux\/arm64; this provider runs linux\/amd64/);
      expect(await imagesIn(podman)).toEqual([]);
    } finally {
      await builder.remove();
    }
  });

  it("evicts the least recently used image past its bound, never one in use", async () => {
    const [, train] = await buildImages({ registry: registry.address });
    const { podman, cache } = await openCache("evict", { cacheBytes: train!.sizeBytes + 1 });
    const signal = AbortSignal.timeout(120_000);
    const first = await cache.acquire(busybox.pushedRef!, { digest: busybox.digest!, providers: [], signal });
    const second = await cache.acquire(train!.pushedRef!, { digest: train!.digest!, providers: [], signal });
    // Both in use: both kept, over the bound.
    expect((await imagesIn(podman)).length).toBe(2);
    first.release();
    await expect.poll(async () => (await imagesIn(podman)).length, { timeout: 30_000 }).toBe(1);
    expect(cache.keys()).toEqual([train!.pushedRef]);
    second.release();
  });

  it("refuses a blob whose content does not match its digest", async () => {
    // Last: it spoils the busybox layer in the registry for every later pull.
    const manifest = JSON.parse(
      await readFile(
        path.join(
          registry.dir,
          "data/docker/registry/v2/blobs/sha256",
          busybox.digest!.slice(7, 9),
          busybox.digest!.slice(7),
          "data",
        ),
        "utf8",
      ),
    ) as { layers: { digest: string }[] };
    const layer = manifest.layers[0]!.digest.slice(7);
    const blob = path.join(registry.dir, "data/docker/registry/v2/blobs/sha256", layer.slice(0, 2), layer, "data");
    const bytes = await readFile(blob);
    bytes[bytes.length - 100] = bytes[bytes.length - 100]! ^ 0xff;
    await writeFile(blob, bytes);
    const { podman, cache } = await openCache("tampered");
    await expect(
      cache.acquire(busybox.pushedRef!, {
        digest: busybox.digest!,
        providers: [],
        signal: AbortSignal.timeout(60_000),
      }),
    ).rejects.toThrow(/does not match its digest/);
    expect(await imagesIn(podman)).toEqual([]);
    expect(await readdir(path.join(dir, "tampered-cache"))).toEqual(["images.json"]);
  });
});

describe("gpuOptions: only the lease's GPUs in the container", () => {
  it("names each GPU by CDI where the host has a spec, by UUID when known", () => {
    expect(gpuOptions([0, 2], ["GPU-a", "GPU-b"], { cdi: true })).toEqual([
      "--device",
      "nvidia.com/gpu=GPU-a",
      "--device",
      "nvidia.com/gpu=GPU-b",
    ]);
    expect(gpuOptions([1], undefined, { cdi: true })).toEqual(["--device", "nvidia.com/gpu=1"]);
    expect(gpuOptions([], undefined, { cdi: true })).toEqual([]);
  });

  it("without CDI: the GPUs' device nodes that exist, and the driver's libraries read-only in /usr/local/nvidia/lib64", () => {
    const ldconfig = [
      "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1",
      "\tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1",
      "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
      "\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6",
    ].join("\n");
    // This machine has no /dev/nvidia* nodes: only the libraries are given.
    expect(gpuOptions([0], undefined, { cdi: false, ldconfig })).toEqual([
      "--volume",
      `/usr/lib/x86_64-linux-gnu/libcuda.so.1:${CONTAINER_DRIVER_DIR}/libcuda.so.1:ro`,
      "--volume",
      `/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1:${CONTAINER_DRIVER_DIR}/libnvidia-ml.so.1:ro`,
    ]);
  });
});
