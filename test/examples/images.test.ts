import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chown, cp, mkdir, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

import {
  buildImages,
  BUSYBOX,
  podman,
  podmanGlobalArgs,
  PODMAN_ULIMITS,
  sharedLibraries,
  type BuildImagesProgress,
  type BuiltImage,
  type PodmanStorage,
} from "../../scripts/build-images.ts";
import { readJobFile } from "../../sdk/job-spec.ts";
import { cleanUp, providerDirs, runToEnd, startExampleJob, tempDir } from "../helpers/example-jobs.ts";
import { root } from "../helpers/processes.ts";
import { startRegistry, type Registry } from "../helpers/registry.ts";

// The images of scripts/build-images.ts, built here into a podman storage of the test's own, run
// by real podman as a provider would run an image job (no network, read-only, as nobody, the work
// dir mounted at /work), pushed to a real registry on the loopback and exported as OCI layouts.

const trainScript = path.join(root, "examples/train/train.mjs");

/** What the image tests need, and why they are skipped without it. */
function missingTool(): string | undefined {
  for (const [command, args] of [
    ["podman", ["--version"]],
    ["runc", ["--version"]],
    ["docker-registry", ["--version"]],
    ["skopeo", ["--version"]],
    [BUSYBOX, ["true"]],
  ] as const) {
    const probe = spawnSync(command, args, { encoding: "utf8", timeout: 30_000 });
    if (probe.error || probe.status !== 0) {
      return `${command} cannot be run here (${probe.error?.message ?? probe.stderr.trim()})`;
    }
  }
  // Rootless podman runs --user 65534 as a subordinate uid, whose files this user could not remove.
  if (process.getuid?.() !== 0) return "podman runs as root in these tests, and this process is not root";
  return undefined;
}
const skipReason = missingTool();

afterEach(cleanUp);

/** The same job, twice: as train.yaml's process job and as train-image.yaml's image job. */
describe("examples/*/train-image.yaml", () => {
  it("is train/train.yaml's job in the train image built here, without command or inputs", async () => {
    const processJob = (await readJobFile(path.join(root, "examples/train/train.yaml"))).spec;
    const { spec, files } = await readJobFile(path.join(root, "examples/train/train-image.yaml"));
    expect(spec.image).toBe("127.0.0.1:5000/baton/train:latest");
    expect(spec.command).toBeUndefined();
    expect(spec.workdir).toBeUndefined();
    expect(spec.inputs).toEqual([]);
    expect(files).toEqual({});
    for (const key of ["env", "resources", "network", "checkpointIntervalS", "maxDurationS"] as const) {
      expect(spec[key], key).toEqual(processJob[key]);
    }
  });

  it("is pytorch/train.yaml's job in a PyTorch image pinned by digest, in the work dir", async () => {
    const processJob = await readJobFile(path.join(root, "examples/pytorch/train.yaml"));
    const image = await readJobFile(path.join(root, "examples/pytorch/train-image.yaml"));
    expect(image.spec.image).toMatch(/^docker\.io\/pytorch\/pytorch:[\w.-]+-runtime@sha256:[0-9a-f]{64}$/);
    // The image's WORKDIR is /workspace; train.py is an input, in the work dir.
    expect(image.spec.workdir).toBe("/work");
    expect(image.files).toEqual(processJob.files);
    for (const key of ["command", "env", "resources", "network", "checkpointIntervalS", "maxDurationS"] as const) {
      expect(image.spec[key], key).toEqual(processJob.spec[key]);
    }
  });
});

describe("sharedLibraries", () => {
  it("lists the files ldd resolved, the loader included and the vDSO left out", () => {
    const ldd = [
      "\tlinux-vdso.so.1 (0x00007ffd4b3f2000)",
      "\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f0e1a000000)",
      "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e19e1e000)",
      "\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1a3b1000)",
    ].join("\n");
    expect(sharedLibraries(ldd)).toEqual([
      "/lib/x86_64-linux-gnu/libstdc++.so.6",
      "/lib/x86_64-linux-gnu/libc.so.6",
      "/lib64/ld-linux-x86-64.so.2",
    ]);
    expect(sharedLibraries("\tstatically linked\n")).toEqual([]);
  });

  it("refuses a library ldd did not find", () => {
    expect(() => sharedLibraries("\tlibcuda.so.1 => not found\n")).toThrow(/a shared library of Node is missing/);
  });
});

interface ContainerRun {
  code: number | null;
  stdout: string[];
  stderr: string[];
}

let containers = 0;

/**
 * `podman run --rm` of `image` as a provider runs an image job: no network, a read-only root, as
 * nobody, `workDir` at /work. Named, so that afterAll finds it if it is left running.
 */
function runContainer(
  storage: PodmanStorage,
  options: { image: string; workDir: string; env?: Record<string, string>; argv?: string[]; input?: string },
): Promise<ContainerRun> {
  const args = [
    ...podmanGlobalArgs(storage),
    "run",
    "--rm",
    `--name=baton-images-test-${++containers}`,
    "--network=none",
    "--read-only",
    "--user=65534:65534",
    ...PODMAN_ULIMITS,
    `--volume=${options.workDir}:/work`,
    ...Object.entries(options.env ?? {}).flatMap(([name, value]) => ["--env", `${name}=${value}`]),
    ...(options.input === undefined ? [] : ["--interactive"]),
    options.image,
    ...(options.argv ?? []),
  ];
  const child = spawn("podman", args, { stdio: ["pipe", "pipe", "pipe"], signal: AbortSignal.timeout(60_000) });
  child.stdin.end(options.input ?? "");
  const stdout: string[] = [];
  const stderr: string[] = [];
  createInterface({ input: child.stdout }).on("line", (line) => stdout.push(line));
  createInterface({ input: child.stderr }).on("line", (line) => stderr.push(line));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** A work dir the job's user (nobody) may write, as the node makes one. */
async function workDirIn(base: string, name: string): Promise<string> {
  const dir = path.join(base, "work", name);
  await mkdir(dir, { recursive: true });
  await chown(dir, 65534, 65534);
  return dir;
}

/** The BATON_* variables the node sets for a job in /work. */
const BATON_ENV = {
  BATON_LEASE_ID: "test-lease",
  BATON_CHECKPOINT_DIR: "/work/checkpoints",
  BATON_RESUME_DIR: "/work/resume",
  BATON_OUTPUT_DIR: "/work/output",
};

describe("images built by scripts/build-images.ts", () => {
  let base: string | undefined;
  let registry: Registry | undefined;
  const storages: PodmanStorage[] = [];
  let storage: PodmanStorage;
  const images = new Map<string, BuiltImage>();
  const progress: BuildImagesProgress[] = [];

  const image = (name: string): BuiltImage => images.get(name)!;

  beforeAll(async () => {
    if (skipReason) return;
    base = await mkdtemp(path.join(os.tmpdir(), "baton-images-test-"));
    storage = { root: path.join(base, "storage/root"), runroot: path.join(base, "storage/runroot") };
    storages.push(storage);
    registry = await startRegistry();
    const started = performance.now();
    const built = await buildImages({
      storage,
      registry: registry.address,
      ociDir: path.join(base, "oci"),
      onProgress: (event) => progress.push(event),
      signal: AbortSignal.timeout(100_000),
    });
    for (const one of built) images.set(one.name, one);
    console.log(
      `built, pushed and exported in ${((performance.now() - started) / 1000).toFixed(1)} s: ` +
        built.map((one) => `${one.name} ${(one.sizeBytes / 1e6).toFixed(1)} MB`).join(", "),
    );
  });

  afterAll(async () => {
    // Everything goes, whatever failed: the containers, the storages (only ours), the registry.
    const failures: unknown[] = [];
    for (const one of storages) {
      await podman(one, ["rm", "--all", "--force", "--time=0"]).catch((error: unknown) => failures.push(error));
    }
    await registry?.stop().catch((error: unknown) => failures.push(error));
    if (base) await rm(base, { recursive: true, force: true }).catch((error: unknown) => failures.push(error));
    if (failures.length > 0) throw new AggregateError(failures, "cleaning up after the image tests failed");
  });

  it("builds busybox and train FROM scratch into the given storage, reporting each step", async ({ skip }) => {
    skip(skipReason !== undefined, skipReason);
    expect([...images.keys()]).toEqual(["busybox", "train"]);
    expect(image("busybox")).toMatchObject({ localRef: "localhost/baton/busybox:latest", tag: "latest" });
    expect(image("train")).toMatchObject({ localRef: "localhost/baton/train:latest", tag: "latest" });
    // busybox alone; Node (about 120 MB) and its libraries, a few KB of trainer.
    expect(image("busybox").sizeBytes).toBeLessThan(4e6);
    const node = (await stat(process.execPath)).size;
    expect(image("train").sizeBytes).toBeGreaterThan(node);
    expect(image("train").sizeBytes).toBeLessThan(node + 20e6);

    const config = async (ref: string) =>
      JSON.parse(await podman(storage, ["image", "inspect", "--format", "{{json .Config}}", ref])) as {
        Cmd: string[];
        Entrypoint?: string[] | null;
        WorkingDir: string;
        Env: string[];
      };
    expect(await config(image("busybox").localRef)).toMatchObject({ Cmd: ["sh"] });
    expect(await config(image("train").localRef)).toMatchObject({
      Cmd: ["node", "/opt/train/train.mjs"],
      WorkingDir: "/work",
      Env: ["PATH=/usr/local/bin:/usr/bin:/bin"],
    });

    for (const name of ["busybox", "train"] as const) {
      const events = progress.filter((event) => "image" in event && event.image === name).map((event) => event.type);
      expect(events[0]).toBe("build:start");
      expect(events).toContain("build:step");
      expect(events.slice(events.indexOf("build:done"))).toEqual([
        "build:done",
        "push:start",
        "push:done",
        "export:start",
        "export:done",
      ]);
    }
  });

  it("runs busybox's sh, as nobody, with a read-only root and no network", async ({ skip }) => {
    skip(skipReason !== undefined, skipReason);
    const workDir = await workDirIn(base!, "busybox");
    // No command: the image's own, sh, reads the script from stdin.
    const run = await runContainer(storage, {
      image: image("busybox").localRef,
      workDir,
      input: [
        "id -u; id -g",
        "ls /sys/class/net",
        "touch /bin/x 2>/dev/null && echo root-writable",
        "echo hello > /work/greeting",
      ].join("\n"),
    });
    expect(run, run.stderr.join("\n")).toMatchObject({ code: 0, stdout: ["65534", "65534", "lo"] });
    expect(await readFile(path.join(workDir, "greeting"), "utf8")).toBe("hello\n");
    expect((await stat(path.join(workDir, "greeting"))).uid).toBe(65534);
  });

  it("runs train-image.yaml's job in the train image to train.yaml's result, checkpoints and output", async ({
    skip,
  }) => {
    skip(skipReason !== undefined, skipReason);
    const { spec } = await readJobFile(path.join(root, "examples/train/train-image.yaml"));
    const env = { ...spec.env, TRAIN_STEP_DELAY_MS: "0" };

    // The process job, as test/examples/train.test.ts runs it.
    const dirs = await providerDirs(await tempDir("images-process"), "provider");
    const reference = await runToEnd(startExampleJob([process.execPath, trainScript], dirs, env), dirs);

    const workDir = await workDirIn(base!, "train");
    const run = await runContainer(storage, { image: image("train").localRef, workDir, env: { ...BATON_ENV, ...env } });
    expect(run.code, run.stderr.join("\n")).toBe(0);
    expect(run.stdout[0]).toBe("starting fresh at step 0");
    expect(run.stdout.at(-1)).toBe(`result ${JSON.stringify(JSON.parse(reference))}`);
    expect(await readFile(path.join(workDir, "output/result.json"), "utf8")).toBe(reference);
    expect(JSON.parse(reference)).toMatchObject({ steps: 2000, seed: 1 });

    // A checkpoint every 200 steps, the newest 3 kept, nothing half-written; the same bytes as the
    // process job's, and owned by the job's user.
    const checkpoints = path.join(workDir, "checkpoints");
    expect((await readdir(checkpoints)).sort()).toEqual(["step-001600", "step-001800", "step-002000"]);
    expect((await readdir(path.join(checkpoints, "step-002000"))).sort()).toEqual(["SHA256SUMS", "state.json"]);
    expect(await readFile(path.join(checkpoints, "step-002000/state.json"))).toEqual(
      await readFile(path.join(dirs.checkpointDir, "step-002000/state.json")),
    );
    expect((await stat(path.join(checkpoints, "step-002000/state.json"))).uid).toBe(65534);
    expect(await readdir(path.join(workDir, "output"))).toEqual(["result.json"]);
  });

  it("resumes the process job's checkpoint in the train image pulled by digest from the registry", async ({ skip }) => {
    skip(skipReason !== undefined, skipReason);
    const short = { TRAIN_STEPS: "300", TRAIN_CHECKPOINT_EVERY: "100" };
    const dirs = await providerDirs(await tempDir("images-process"), "provider");
    const reference = await runToEnd(startExampleJob([process.execPath, trainScript], dirs, short), dirs);

    // Another provider: its own storage, the image from the registry, pinned.
    const provider = { root: path.join(base!, "provider/root"), runroot: path.join(base!, "provider/runroot") };
    storages.push(provider);
    const { pushedRef, imageId } = image("train");
    await podman(provider, ["pull", "--quiet", "--tls-verify=false", pushedRef!]);
    expect((await podman(provider, ["image", "inspect", "--format", "{{.Id}}", pushedRef!])).trim()).toBe(imageId);

    const workDir = await workDirIn(base!, "train-resumed");
    // What the node does: the checkpoint's contents into resume/, for the job's user.
    const resume = path.join(workDir, "resume");
    await cp(path.join(dirs.checkpointDir, "step-000200"), resume, { recursive: true });
    for (const file of [".", ...(await readdir(resume))]) await chown(path.join(resume, file), 65534, 65534);
    const run = await runContainer(provider, { image: pushedRef!, workDir, env: { ...BATON_ENV, ...short } });
    expect(run.code, run.stderr.join("\n")).toBe(0);
    expect(run.stdout[0]).toBe("resuming at step 200 from /work/resume");
    expect(await readFile(path.join(workDir, "output/result.json"), "utf8")).toBe(reference);
  });

  it("pushes each image under the digest the registry serves, and writes an OCI layout of the same manifest", async ({
    skip,
  }) => {
    skip(skipReason !== undefined, skipReason);
    for (const one of images.values()) {
      const repository = `${registry!.address}/baton/${one.name}`;
      expect(one.pushedRef).toBe(`${repository}@${one.digest}`);
      const inspect = (reference: string) => {
        const result = spawnSync("skopeo", ["inspect", "--tls-verify=false", reference], { encoding: "utf8" });
        expect(result.status, result.stderr).toBe(0);
        return JSON.parse(result.stdout) as { Digest: string; Layers: string[] };
      };
      const pushed = inspect(`docker://${repository}:${one.tag}`);
      expect(pushed.Digest).toBe(one.digest);
      // Two layers: busybox and its links; the runtime and the trainer.
      expect(pushed.Layers).toHaveLength(2);

      const layout = one.ociDir!;
      expect(JSON.parse(await readFile(path.join(layout, "oci-layout"), "utf8"))).toEqual({
        imageLayoutVersion: "1.0.0",
      });
      const index = JSON.parse(await readFile(path.join(layout, "index.json"), "utf8")) as {
        manifests: { digest: string; annotations: Record<string, string> }[];
      };
      expect(index.manifests).toEqual([
        expect.objectContaining({
          digest: one.digest,
          annotations: { "org.opencontainers.image.ref.name": one.tag },
        }),
      ]);
      // The manifest is stored under its own hash, and skopeo reads the layout as the same image.
      const manifest = await readFile(path.join(layout, "blobs/sha256", one.digest!.slice("sha256:".length)));
      expect(`sha256:${createHash("sha256").update(manifest).digest("hex")}`).toBe(one.digest);
      expect(inspect(`oci:${layout}:${one.tag}`).Digest).toBe(one.digest);
      expect(one.transferBytes).toBeGreaterThan(0);
    }
  });

  it("leaves no container behind in any storage", async ({ skip }) => {
    skip(skipReason !== undefined, skipReason);
    for (const one of storages) {
      expect(await podman(one, ["ps", "--all", "--external", "--quiet"])).toBe("");
    }
  });
});
