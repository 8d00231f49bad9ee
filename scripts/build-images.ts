/**
 * Builds the container images that image jobs are tested, shown and measured with, here, with
 * nothing downloaded: no base image can be pulled on a provider's test machine, so both are
 * `FROM scratch` and hold only files copied from this machine.
 *
 * - `baton/busybox`: the static `/usr/bin/busybox` and the applet links `busybox --install` makes;
 *   `CMD sh`. The smallest image a shell job runs in.
 * - `baton/train`: the example trainer (`examples/train/train.mjs`) at `/opt/train/`, with this
 *   project's Node binary at `/usr/local/bin/node` and exactly the shared libraries `ldd` lists for
 *   it, at the paths it lists them (the dynamic loader included). It runs the trainer as
 *   `examples/train/train.yaml` does, in `/work`, so it gives the same result as the process job.
 *   `--pad-mib N` adds a layer of N MiB of incompressible bytes, for a benchmark that needs a big
 *   image (Node alone is about 120 MB).
 *
 * Each image is built by `podman build` from a context generated in a temp dir, into a throw-away
 * podman storage unless one is given; then, when asked, pushed to a registry on this machine (plain
 * HTTP) and exported as an OCI image layout. Temp dirs are removed before it returns.
 *
 * Usage: node scripts/build-images.ts [--registry 127.0.0.1:PORT] [--oci-dir DIR]
 *          [--root DIR --runroot DIR] [--pad-mib N] [--json]
 * (`npm run build:images -- …`.) Without --registry, --oci-dir or --root the images are built,
 * measured and thrown away: a check that they build.
 */
import { spawn } from "node:child_process";
import { createCipheriv } from "node:crypto";
import { createWriteStream } from "node:fs";
import {
  access,
  chmod,
  constants as fsConstants,
  copyFile,
  mkdir,
  mkdtemp,
  readFile,
  rm,
  writeFile,
} from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";

import { UserError } from "../sdk/errors.ts";
import { isLoopbackRegistry } from "../sdk/images/reference.ts";

const root = path.resolve(import.meta.dirname, "..");

/** Where `busybox-static` installs it (Debian, Ubuntu); the only busybox that runs without libc. */
export const BUSYBOX = "/usr/bin/busybox";
const TRAINER = path.join(root, "examples/train/train.mjs");
/** Every name the images get: `<registry>/baton/<name>`, `localhost/baton/<name>` in podman's store. */
const NAMESPACE = "baton";

export type ImageName = "busybox" | "train";

/** A podman storage of its own: images built and containers run there leave the user's alone. */
export interface PodmanStorage {
  root: string;
  runroot: string;
}

/**
 * podman's global flags for `storage`.
 *
 * - `--runtime runc`: crun, podman's default, is not installed on every machine this runs on.
 * - `overlay.skip_mount_home`: without it podman bind-mounts the storage's `overlay/` dir onto
 *   itself and leaves the mount behind when it exits, so the storage cannot be removed with `rm`.
 */
export function podmanGlobalArgs(storage: PodmanStorage): string[] {
  return [
    "--root",
    storage.root,
    "--runroot",
    storage.runroot,
    "--runtime",
    "runc",
    "--storage-opt",
    "overlay.skip_mount_home=true",
  ];
}

/**
 * Limits for every container podman starts here (`podman run`, and `RUN` steps of a build). Its
 * defaults (nofile 1048576) are above the hard limits a container on a shared machine gets, and
 * runc then refuses to start the container ("error setting rlimits").
 */
export const PODMAN_ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

/** What {@link buildImages} reports as it goes, for a progress line per step. */
export type BuildImagesProgress =
  | { type: "build:start"; image: ImageName }
  /** podman's own `STEP n/m: …` lines. */
  | { type: "build:step"; image: ImageName; line: string }
  | { type: "build:done"; image: ImageName; ms: number; sizeBytes: number }
  | { type: "push:start" | "export:start"; image: ImageName; destination: string }
  | { type: "push:done" | "export:done"; image: ImageName; destination: string; ms: number };

export interface BuildImagesParameters {
  /** Build into this storage and leave the images there; default: a temp storage, removed at the end. */
  storage?: PodmanStorage;
  /** Push each image to `<registry>/baton/<name>`: a loopback registry is reached over plain HTTP. */
  registry?: string;
  /** Export each image as an OCI image layout in `<ociDir>/<name>`. */
  ociDir?: string;
  /** Add a layer of this many MiB of incompressible bytes to the train image. Default 0. */
  padMiB?: number;
  signal?: AbortSignal;
  onProgress?: (event: BuildImagesProgress) => void;
}

export interface BuiltImage {
  name: ImageName;
  /** `latest`, or `padded-<N>mib` for a train image with padding. */
  tag: string;
  /** The name in the storage, e.g. `localhost/baton/train:latest` (gone with a temp storage). */
  localRef: string;
  /** podman's image id: the sha256 of the image's config. */
  imageId: string;
  /** The unpacked size, as `podman images` shows it. */
  sizeBytes: number;
  /** Wall time of `podman build`, generating its context included. */
  buildMs: number;
  /** `<registry>/baton/<name>@sha256:…`, when pushed. */
  pushedRef?: string;
  /** The manifest's digest, when pushed or exported (the same either way: both compress alike). */
  digest?: `sha256:${string}`;
  /** What a pull moves: the config and the (compressed) layers, when pushed or exported. */
  transferBytes?: number;
  /** The OCI image layout, tagged `tag`, when exported. */
  ociDir?: string;
}

export type BuildImagesReturnType = BuiltImage[];

/**
 * Builds `baton/busybox` and `baton/train` (see the top of this file), and pushes and exports them
 * when asked.
 *
 * @throws {UserError} when podman, busybox or `ldd` is missing, or busybox is not the static one.
 *
 * @example
 * const images = await buildImages({ storage: { root, runroot }, registry: "127.0.0.1:5000" });
 * // [{ name: "busybox", pushedRef: "127.0.0.1:5000/baton/busybox@sha256:…", … }, { name: "train", … }]
 */
export async function buildImages(parameters: BuildImagesParameters = {}): Promise<BuildImagesReturnType> {
  const { registry, ociDir, padMiB = 0, signal, onProgress } = parameters;
  if (!Number.isSafeInteger(padMiB) || padMiB < 0) throw new UserError(`padMiB must be a whole number, got ${padMiB}`);
  await checkTools(signal);
  const temp = await mkdtemp(path.join(os.tmpdir(), "baton-images-"));
  try {
    const storage = parameters.storage ?? { root: path.join(temp, "root"), runroot: path.join(temp, "runroot") };
    const images: BuiltImage[] = [];
    for (const name of ["busybox", "train"] as const) {
      const context = path.join(temp, `context-${name}`);
      const tag = name === "train" && padMiB > 0 ? `padded-${padMiB}mib` : "latest";
      const localRef = `localhost/${NAMESPACE}/${name}:${tag}`;
      onProgress?.({ type: "build:start", image: name });
      const started = performance.now();
      const containerfile =
        name === "busybox" ? await busyboxContext(context) : await trainContext(context, { padMiB, signal });
      await podman(
        storage,
        ["build", ...PODMAN_ULIMITS, ...BUILD_FLAGS, "--file", containerfile, "--tag", localRef, context],
        {
          signal,
          onLine: (line) => {
            if (line.startsWith("STEP ")) onProgress?.({ type: "build:step", image: name, line });
          },
        },
      );
      const buildMs = performance.now() - started;
      await rm(context, { recursive: true, force: true });
      const [imageId, size] = (
        await podman(storage, ["image", "inspect", "--format", "{{.Id}} {{.Size}}", localRef], { signal })
      )
        .trim()
        .split(" ");
      const image: BuiltImage = { name, localRef, imageId: imageId!, sizeBytes: Number(size), buildMs, tag };
      onProgress?.({ type: "build:done", image: name, ms: buildMs, sizeBytes: image.sizeBytes });

      if (registry !== undefined) {
        const repository = `${registry}/${NAMESPACE}/${name}`;
        const digest = await push(storage, localRef, `docker://${repository}:${tag}`, {
          tlsVerify: !isLoopbackRegistry(registry),
          image: name,
          temp,
          signal,
          onProgress,
        });
        image.digest = digest;
        image.pushedRef = `${repository}@${digest}`;
        image.transferBytes = transferBytes(await registryManifest(registry, `${NAMESPACE}/${name}`, digest, signal));
      }
      if (ociDir !== undefined) {
        image.ociDir = path.resolve(ociDir, name);
        await mkdir(image.ociDir, { recursive: true });
        const digest = await push(storage, localRef, `oci:${image.ociDir}:${tag}`, {
          tlsVerify: true,
          image: name,
          temp,
          signal,
          onProgress,
        });
        if (image.digest !== undefined && image.digest !== digest) {
          throw new Error(`${name}: the OCI layout's manifest is ${digest}, the registry's ${image.digest}`);
        }
        image.digest = digest;
        image.transferBytes = transferBytes(
          await readFile(path.join(image.ociDir, "blobs", ...digest.split(":")), "utf8"),
        );
      }
      images.push(image);
    }
    return images;
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}

/**
 * `--timestamp 0`: the image's creation date and every file's mtime in its layers are the epoch,
 * so the same files build to the same layers and digests, build after build, machine after machine.
 * `--format oci`: an OCI manifest, the same pushed to a registry as in an OCI layout.
 */
const BUILD_FLAGS = ["--timestamp", "0", "--format", "oci"];

/** The busybox image's context; returns its Containerfile. */
async function busyboxContext(context: string): Promise<string> {
  await mkdir(path.join(context, "bin"), { recursive: true });
  await copyFile(BUSYBOX, path.join(context, "bin/busybox"));
  await chmod(path.join(context, "bin/busybox"), 0o755);
  return writeContainerfile(context, busyboxContainerfile());
}

/** The busybox image: one binary, its applets as symlinks to it (`sh`, `ls`, `cat`, …). */
export function busyboxContainerfile(): string {
  return [
    "FROM scratch",
    "COPY bin/busybox /bin/busybox",
    'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
    'CMD ["sh"]',
  ].join("\n");
}

/**
 * The train image. Three layers, the one that changes most on top: the Node runtime, the padding
 * (when asked), the trainer. No USER: the provider picks the user it runs a job as (`nobody`,
 * listed in `/etc/passwd` so that tools that look the user up find it).
 */
export function trainContainerfile(options: { padded: boolean }): string {
  return [
    "FROM scratch",
    "COPY runtime/ /",
    ...(options.padded ? ["COPY pad/ /opt/pad/"] : []),
    "COPY train/ /opt/train/",
    "ENV PATH=/usr/local/bin:/usr/bin:/bin",
    // The job's work dir, where the node mounts it; train.mjs's defaults (checkpoints/, resume/,
    // output/) are relative to it, as in the process job.
    "WORKDIR /work",
    // train.yaml's `node train.mjs`, with the script where the image has it.
    'CMD ["node", "/opt/train/train.mjs"]',
  ].join("\n");
}

const PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
const GROUP = "root:x:0:\nnogroup:x:65534:\n";

async function trainContext(
  context: string,
  options: { padMiB: number; signal: AbortSignal | undefined },
): Promise<string> {
  const node = process.execPath;
  const runtime = path.join(context, "runtime");
  for (const library of sharedLibraries(await run("ldd", [node], { signal: options.signal }))) {
    // copyFile follows symlinks (libstdc++.so.6 → libstdc++.so.6.0.30): the file lands under the
    // name the loader looks for, which is all the image needs.
    await mkdir(path.join(runtime, path.dirname(library)), { recursive: true });
    await copyFile(library, path.join(runtime, library));
  }
  await mkdir(path.join(runtime, "usr/local/bin"), { recursive: true });
  await copyFile(node, path.join(runtime, "usr/local/bin/node"));
  await mkdir(path.join(runtime, "etc"));
  await writeFile(path.join(runtime, "etc/passwd"), PASSWD);
  await writeFile(path.join(runtime, "etc/group"), GROUP);
  if (options.padMiB > 0) {
    await mkdir(path.join(context, "pad"));
    await writePadding(path.join(context, "pad/padding.bin"), options.padMiB, options.signal);
  }
  await mkdir(path.join(context, "train"));
  await copyFile(TRAINER, path.join(context, "train/train.mjs"));
  await chmod(path.join(context, "train/train.mjs"), 0o644);
  return writeContainerfile(context, trainContainerfile({ padded: options.padMiB > 0 }));
}

/**
 * The shared objects in `ldd`'s output, by absolute path: `libc.so.6 => /lib/…/libc.so.6 (0x…)`
 * and the loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`. The vDSO has no file and is left out.
 *
 * @throws {UserError} when a library is not found.
 */
export function sharedLibraries(lddOutput: string): string[] {
  const libraries: string[] = [];
  for (const line of lddOutput.split("\n").map((l) => l.trim())) {
    if (/=>\s*not found/.test(line)) throw new UserError(`a shared library of Node is missing: ${line}`);
    const match = /(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)$/.exec(line);
    if (match) libraries.push(match[1]!);
  }
  return libraries;
}

/**
 * `mib` MiB of AES-256-CTR keystream: incompressible, so the layer is as big pushed as unpacked,
 * and the same bytes every time (a fixed key), so the layer's digest is too.
 */
async function writePadding(file: string, mib: number, signal: AbortSignal | undefined): Promise<void> {
  const cipher = createCipheriv("aes-256-ctr", Buffer.alloc(32, 7), Buffer.alloc(16));
  const zeros = Buffer.alloc(1024 * 1024);
  const chunks = function* (): Generator<Buffer> {
    for (let i = 0; i < mib; i++) yield cipher.update(zeros);
  };
  await pipeline(chunks, createWriteStream(file), { signal });
}

async function writeContainerfile(context: string, text: string): Promise<string> {
  const file = path.join(context, "Containerfile");
  await writeFile(file, `${text}\n`);
  return file;
}

/** Pushes `localRef` to `destination` (a `docker://` or `oci:` one) and returns the manifest's digest. */
async function push(
  storage: PodmanStorage,
  localRef: string,
  destination: string,
  options: {
    tlsVerify: boolean;
    image: ImageName;
    temp: string;
    signal: AbortSignal | undefined;
    onProgress: ((event: BuildImagesProgress) => void) | undefined;
  },
): Promise<`sha256:${string}`> {
  const { image, onProgress } = options;
  const kind = destination.startsWith("oci:") ? "export" : "push";
  onProgress?.({ type: `${kind}:start`, image, destination });
  const started = performance.now();
  const digestFile = path.join(options.temp, `${image}-${kind}.digest`);
  await podman(
    storage,
    ["push", "--quiet", `--tls-verify=${options.tlsVerify}`, "--digestfile", digestFile, localRef, destination],
    { signal: options.signal },
  );
  const digest = (await readFile(digestFile, "utf8")).trim();
  if (!/^sha256:[0-9a-f]{64}$/.test(digest)) throw new Error(`podman push wrote "${digest}" as the digest`);
  onProgress?.({ type: `${kind}:done`, image, destination, ms: performance.now() - started });
  return digest as `sha256:${string}`;
}

/** The sizes of the config and the layers an OCI image manifest lists. */
function transferBytes(manifestJson: string): number {
  const manifest = JSON.parse(manifestJson) as { config: { size: number }; layers: { size: number }[] };
  return manifest.layers.reduce((sum, layer) => sum + layer.size, manifest.config.size);
}

/** Manifest `digest` of `repository` in `registry`, as a puller gets it (registry API v2). */
async function registryManifest(
  registry: string,
  repository: string,
  digest: string,
  signal: AbortSignal | undefined,
): Promise<string> {
  const scheme = isLoopbackRegistry(registry) ? "http" : "https";
  const response = await fetch(`${scheme}://${registry}/v2/${repository}/manifests/${digest}`, {
    headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
    signal: signal ?? null,
  });
  if (!response.ok) throw new Error(`${registry} answered ${response.status} for ${repository}@${digest}`);
  return response.text();
}

/** Fails with what to install when a tool the images need is missing. */
async function checkTools(signal: AbortSignal | undefined): Promise<void> {
  const missing = (what: string, install: string) => (error: unknown) => {
    throw new UserError(`${what} is missing: the images cannot be built`, { details: install, cause: error });
  };
  await run("podman", ["--version"], { signal }).catch(missing("podman", "apt-get install podman runc"));
  await run("runc", ["--version"], { signal }).catch(missing("runc", "apt-get install runc"));
  await run("ldd", ["--version"], { signal }).catch(missing("ldd", "apt-get install libc-bin"));
  await access(BUSYBOX, fsConstants.X_OK).catch(missing(BUSYBOX, "apt-get install busybox-static"));
  // A dynamically linked busybox (Debian's `busybox` package) would find no libc in a scratch image.
  const linked = await run("ldd", [BUSYBOX], { signal }).then(sharedLibraries, () => []);
  if (linked.length > 0) {
    throw new UserError(`${BUSYBOX} is dynamically linked: it cannot run in an image without libc`, {
      details: "apt-get install busybox-static",
    });
  }
}

/** Runs `podman` on `storage` and returns its stdout. */
export function podman(
  storage: PodmanStorage,
  args: string[],
  options: { signal?: AbortSignal | undefined; onLine?: (line: string) => void } = {},
): Promise<string> {
  return run("podman", [...podmanGlobalArgs(storage), ...args], options);
}

/**
 * Runs a command to its end and returns its stdout; rejects with its stderr's last lines when it
 * fails. `onLine` sees each line of both streams as it comes.
 */
function run(
  command: string,
  args: string[],
  options: { signal?: AbortSignal | undefined; onLine?: (line: string) => void } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], signal: options.signal });
    const stdout: string[] = [];
    const stderr: string[] = [];
    createInterface({ input: child.stdout }).on("line", (line) => {
      stdout.push(line);
      options.onLine?.(line);
    });
    createInterface({ input: child.stderr }).on("line", (line) => {
      stderr.push(line);
      options.onLine?.(line);
    });
    child.once("error", reject);
    child.once("close", (code, signal) => {
      if (code === 0) resolve(stdout.length > 0 ? `${stdout.join("\n")}\n` : "");
      else {
        const why = `${[command, ...args].join(" ")} ended with ${code ?? signal}`;
        reject(new Error(`${why}:\n${stderr.slice(-20).join("\n")}`));
      }
    });
  });
}

const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;
const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

function describeProgress(event: BuildImagesProgress): string {
  switch (event.type) {
    case "build:start":
      return `${event.image}: building`;
    case "build:step":
      return `${event.image}: ${event.line}`;
    case "build:done":
      return `${event.image}: built in ${seconds(event.ms)}, ${mb(event.sizeBytes)}`;
    case "push:start":
    case "export:start":
      return `${event.image}: ${event.type === "push:start" ? "pushing" : "exporting"} to ${event.destination}`;
    case "push:done":
    case "export:done":
      return `${event.image}: ${event.type === "push:done" ? "pushed" : "exported"} in ${seconds(event.ms)}`;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      registry: { type: "string" },
      "oci-dir": { type: "string" },
      root: { type: "string" },
      runroot: { type: "string" },
      "pad-mib": { type: "string", default: "0" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(`usage: node scripts/build-images.ts [options]   (npm run build:images -- [options])
  --registry HOST:PORT     push baton/busybox and baton/train there (plain HTTP for 127.0.0.1, localhost)
  --oci-dir DIR            export each as an OCI image layout, DIR/busybox and DIR/train
  --root DIR --runroot DIR podman storage to build into and keep the images in (default: a temp one, removed)
  --pad-mib N              add N MiB of incompressible bytes to the train image (tag padded-Nmib)
  --json                   the images as JSON on stdout`);
    return;
  }
  if ((values.root === undefined) !== (values.runroot === undefined)) {
    throw new UserError("--root and --runroot go together");
  }
  if (!/^\d+$/.test(values["pad-mib"]))
    throw new UserError(`--pad-mib takes a number of MiB, got "${values["pad-mib"]}"`);
  const images = await buildImages({
    storage: values.root !== undefined ? { root: values.root, runroot: values.runroot! } : undefined,
    registry: values.registry,
    ociDir: values["oci-dir"],
    padMiB: Number(values["pad-mib"]),
    onProgress: (event) => console.error(`build-images: ${describeProgress(event)}`),
  });
  if (values.json) {
    console.log(JSON.stringify(images, null, 2));
    return;
  }
  for (const image of images) {
    const where = image.pushedRef ?? image.ociDir ?? (values.root !== undefined ? image.localRef : "(thrown away)");
    const transfer = image.transferBytes === undefined ? "" : `, ${mb(image.transferBytes)} compressed`;
    console.log(`${image.name}: ${mb(image.sizeBytes)}${transfer}, built in ${seconds(image.buildMs)}: ${where}`);
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(`build-images: ${error instanceof UserError ? error.message : String(error)}`);
    process.exit(1);
  }
}
