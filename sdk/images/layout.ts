import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { lstat, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { unixfs } from "@helia/unixfs";
import { CID } from "multiformats/cid";
import { z } from "zod";

import type { BatonClient } from "../client.ts";
import { shortMessageOf, UserError } from "../errors.ts";
import type { DirectoryFile } from "../ipfs/node.ts";
import type { ImageDigest } from "./reference.ts";
import { IMAGE_MANIFEST_MEDIA_TYPES, INDEX_MEDIA_TYPES, RESOLVE_TIMEOUT_MS } from "./registry.ts";

/**
 * OCI image layouts (the image-spec's `image-layout.md`): a directory with an `oci-layout` file,
 * an `index.json`, and every blob under `blobs/sha256/<hex>`, named by its digest. `podman push
 * IMAGE oci:DIR:TAG` and `skopeo copy … oci:DIR:TAG` write one. A job names a layout by the CID of
 * the UnixFS directory that holds it, and its providers fetch it from the tenant like an input.
 */

/** A manifest or index inside a layout larger than this is refused (containerd's limit for manifests). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/** Indexes nest (an index of per-platform manifests); deeper than this is not an image. */
const MAX_INDEX_DEPTH = 4;

const INDEX_TYPES = new Set<string>(INDEX_MEDIA_TYPES);
const MANIFEST_TYPES = new Set<string>(IMAGE_MANIFEST_MEDIA_TYPES);

const descriptorSchema = z.object({
  mediaType: z.string().max(256),
  digest: z.string().regex(/^sha256:[a-f0-9]{64}$/, "a sha256 digest"),
  size: z.number().int().nonnegative(),
  annotations: z.record(z.string(), z.string()).optional(),
});
const indexSchema = z.object({ schemaVersion: z.literal(2), manifests: z.array(descriptorSchema).max(4096) });
const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  config: descriptorSchema,
  layers: z.array(descriptorSchema).max(4096),
});
const ociLayoutSchema = z.object({ imageLayoutVersion: z.string().min(1).max(32) });

type Descriptor = z.output<typeof descriptorSchema>;

export interface ImageLayout {
  /** The layout's directory. */
  dir: string;
  /** What `index.json` lists: the images (or per-platform indexes) in the layout. */
  manifests: { digest: ImageDigest; mediaType: string; tag?: string }[];
  /** Every blob, checked against its name. */
  blobs: { digest: ImageDigest; size: number }[];
  /** The blobs' bytes in all. */
  bytes: number;
}

/**
 * Checks that `dir` is an OCI image layout a provider can run: an `oci-layout` file with an
 * `imageLayoutVersion`, an `index.json`, only regular files under `blobs/sha256/`, each one's
 * SHA-256 the one its name says, and every blob that `index.json` reaches (manifests, configs,
 * layers, through nested indexes) present with the size its descriptor gives. Reads every blob.
 *
 * @throws {UserError} in one line: what is missing or wrong, and where.
 * @example
 * const { manifests, bytes } = await checkImageLayout("train-image");
 */
export async function checkImageLayout(dir: string, { signal }: { signal?: AbortSignal } = {}): Promise<ImageLayout> {
  const fail = (why: string): never => {
    throw new UserError(`${dir} is not a usable OCI image layout: ${why}`);
  };
  const readJson = async (name: string): Promise<unknown> => {
    const file = path.join(dir, name);
    const info = await lstat(file).catch(() => undefined);
    if (!info) return fail(`it has no ${name} (write a layout with \`podman push IMAGE oci:DIR:TAG\`)`);
    if (!info.isFile()) return fail(`${name} is not a regular file`);
    if (info.size > MAX_MANIFEST_BYTES) return fail(`${name} is larger than ${MAX_MANIFEST_BYTES} bytes`);
    try {
      return JSON.parse(await readFile(file, { encoding: "utf8", signal }));
    } catch {
      return fail(`${name} is not JSON`);
    }
  };
  const parse = <S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> => {
    const parsed = schema.safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      return fail(`${what}: ${issue.path.length > 0 ? `${issue.path.join(".")}: ` : ""}${issue.message}`);
    }
    return parsed.data;
  };

  // The directory itself may be a link the user made; nothing inside it may be.
  const info = await stat(dir).catch(() => undefined);
  if (!info) throw new UserError(`${dir} does not exist`);
  if (!info.isDirectory()) return fail("it is not a directory");
  parse(ociLayoutSchema, await readJson("oci-layout"), "oci-layout");
  const index = parse(indexSchema, await readJson("index.json"), "index.json");
  if (index.manifests.length === 0) fail("index.json lists no image");

  // Every blob, hashed: a layout damaged on disk or in transit is caught here, not on a provider.
  const blobsDir = path.join(dir, "blobs");
  if (!(await lstat(blobsDir).catch(() => undefined))?.isDirectory()) fail("it has no blobs/ directory");
  const algorithms = await readdir(blobsDir, { withFileTypes: true });
  for (const entry of algorithms) {
    if (entry.name !== "sha256" || !entry.isDirectory()) {
      fail(`blobs/${entry.name} is not a sha256 blob directory (only sha256 digests are supported)`);
    }
  }
  const sizes = new Map<string, number>();
  let bytes = 0;
  const shaDir = path.join(blobsDir, "sha256");
  for (const entry of algorithms.length > 0 ? await readdir(shaDir, { withFileTypes: true }) : []) {
    signal?.throwIfAborted();
    const name = `blobs/sha256/${entry.name}`;
    if (!/^[a-f0-9]{64}$/.test(entry.name)) fail(`${name} is not named by a sha256 digest`);
    if (!entry.isFile()) fail(`${name} is not a regular file`);
    const hash = createHash("sha256");
    let size = 0;
    for await (const chunk of createReadStream(path.join(shaDir, entry.name), { signal }) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      size += chunk.byteLength;
    }
    const actual = hash.digest("hex");
    if (actual !== entry.name) fail(`${name} is damaged: its contents hash to sha256:${actual}`);
    sizes.set(`sha256:${entry.name}`, size);
    bytes += size;
  }

  // Everything index.json reaches must be here: a provider would fail on a missing layer.
  const reach = async (descriptor: Descriptor, from: string, depth: number): Promise<void> => {
    const size = sizes.get(descriptor.digest);
    if (size === undefined) fail(`${from} names ${descriptor.digest}, which is not in blobs/sha256/`);
    if (size !== descriptor.size) {
      fail(`${from} gives ${descriptor.digest} ${descriptor.size} bytes, but it has ${size}`);
    }
    const isIndex = INDEX_TYPES.has(descriptor.mediaType);
    if (!isIndex && !MANIFEST_TYPES.has(descriptor.mediaType)) return;
    if (size! > MAX_MANIFEST_BYTES) fail(`${descriptor.digest} is a manifest larger than ${MAX_MANIFEST_BYTES} bytes`);
    const blob = `blobs/${descriptor.digest.replace(":", "/")}`;
    const value = await readJson(blob);
    if (isIndex) {
      if (depth >= MAX_INDEX_DEPTH) fail(`indexes nest deeper than ${MAX_INDEX_DEPTH}`);
      for (const child of parse(indexSchema, value, blob).manifests) await reach(child, blob, depth + 1);
      return;
    }
    const manifest = parse(manifestSchema, value, blob);
    for (const child of [manifest.config, ...manifest.layers]) await reach(child, blob, depth + 1);
  };
  for (const descriptor of index.manifests) await reach(descriptor, "index.json", 0);

  return {
    dir,
    manifests: index.manifests.map((m) => {
      const tag = m.annotations?.["org.opencontainers.image.ref.name"];
      return { digest: m.digest as ImageDigest, mediaType: m.mediaType, ...(tag ? { tag } : {}) };
    }),
    blobs: [...sizes].map(([digest, size]) => ({ digest: digest as ImageDigest, size })),
    bytes,
  };
}

/**
 * The manifest digest of the image in an OCI layout added to IPFS (`image: { cid }`): the one
 * entry of its `index.json`, which is what Podman pulls from a layout named without a tag. A job's
 * quotes carry it as the lease's `image`. Reads `index.json` from the client's store (the tenant
 * that added the layout holds it), or from connected peers, for as long as a registry reference's
 * resolution may take ({@link RESOLVE_TIMEOUT_MS}).
 *
 * @throws {UserError} when the CID is not a layout directory with a readable `index.json` that
 * lists exactly one image.
 * @example
 * const digest = await layoutManifestDigest(client, "bafybei…"); // "sha256:…"
 */
export async function layoutManifestDigest(
  client: Pick<BatonClient, "ipfs">,
  cid: string,
  { signal }: { signal?: AbortSignal } = {},
): Promise<ImageDigest> {
  const fail = (why: string, cause?: unknown): never => {
    throw new UserError(`image ${cid} is not an OCI image layout a job can run: ${why}`, {
      details: "add one with `baton image add DIR` (or addImageLayout), which checks it first",
      ...(cause === undefined ? {} : { cause }),
    });
  };
  let root: CID;
  try {
    root = CID.parse(cid);
  } catch (cause) {
    return fail("it is not a CID", cause);
  }
  const reading = AbortSignal.any([AbortSignal.timeout(RESOLVE_TIMEOUT_MS), ...(signal ? [signal] : [])]);
  let bytes: Uint8Array;
  try {
    const fs = unixfs(client.ipfs.helia);
    const stat = await fs.stat(root, { signal: reading });
    if (stat.type !== "directory") return fail("it is not a directory");
    let entry: CID | undefined;
    for await (const child of fs.ls(root, { signal: reading })) {
      if (child.name === "index.json") entry = child.cid;
    }
    if (!entry) return fail("it has no index.json");
    const chunks: Uint8Array[] = [];
    for await (const chunk of client.ipfs.cat(entry, { maxBytes: MAX_MANIFEST_BYTES, signal: reading })) {
      chunks.push(chunk);
    }
    bytes = Buffer.concat(chunks);
  } catch (error) {
    signal?.throwIfAborted();
    if (error instanceof UserError) throw error;
    return fail(`its index.json cannot be read (${shortMessageOf(error)})`, error);
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch (cause) {
    return fail("its index.json is not JSON", cause);
  }
  const index = indexSchema.safeParse(json);
  if (!index.success) return fail(`its index.json is not an OCI index (${index.error.issues[0]!.message})`);
  const [only, ...more] = index.data.manifests;
  if (!only || more.length > 0) {
    return fail(`its index.json lists ${index.data.manifests.length} images; a job's layout holds exactly one`);
  }
  return only.digest as ImageDigest;
}

export interface AddImageLayoutParameters {
  /** An OCI image layout directory, or a tar archive of one (at its top level or in one directory). */
  path: string;
  signal?: AbortSignal;
}

export interface AddImageLayoutReturnType extends Omit<ImageLayout, "dir"> {
  /** The UnixFS directory holding the layout: a job spec's `image: { cid }`. */
  cid: string;
}

/**
 * Checks an OCI image layout ({@link checkImageLayout}) and adds it to the tenant's IPFS store as
 * one UnixFS directory (`oci-layout`, `index.json`, `blobs/sha256/…`; anything else in the
 * directory is left out), pinned. A tar archive is unpacked by the system's `tar` into a temp dir
 * (under `TMPDIR`), which is removed afterwards. The tenant serves the layout to its job's
 * providers while its client runs, as it serves input files.
 *
 * @throws {UserError} for a missing path, an archive `tar` cannot unpack, or a layout that fails the checks.
 * @example
 * const { cid } = await addImageLayout(client, { path: "train-image" });
 * const job = await runJob(client, { image: { cid }, command: ["/train"] }, { maxPricePerSecond });
 */
export async function addImageLayout(
  client: Pick<BatonClient, "ipfs">,
  { path: input, signal }: AddImageLayoutParameters,
): Promise<AddImageLayoutReturnType> {
  const info = await stat(input).catch(() => undefined);
  if (!info) throw new UserError(`${input} does not exist`);
  if (info.isDirectory()) return add(client, await checkImageLayout(input, { signal }), signal);
  const temp = await mkdtemp(path.join(os.tmpdir(), "baton-image-"));
  try {
    await promisify(execFile)("tar", ["-xf", path.resolve(input), "-C", temp, "--no-same-owner"], { signal }).catch(
      (error: { stderr?: string }) => {
        signal?.throwIfAborted();
        const said = error.stderr?.trim().split("\n")[0] ?? String(error);
        throw new UserError(`${input} is neither a directory nor a tar archive tar can unpack (${said})`);
      },
    );
    const top = await readdir(temp, { withFileTypes: true });
    const dir =
      top.length === 1 && top[0]!.isDirectory() && top[0]!.name !== "blobs" ? path.join(temp, top[0]!.name) : temp;
    const layout = await checkImageLayout(dir, { signal }).catch((error: unknown) => {
      // Say which archive, not which temp dir.
      if (error instanceof UserError) throw new UserError(error.shortMessage.replace(dir, `${input} (unpacked)`));
      throw error;
    });
    return await add(client, layout, signal);
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}

async function add(
  client: Pick<BatonClient, "ipfs">,
  { dir, ...layout }: ImageLayout,
  signal: AbortSignal | undefined,
): Promise<AddImageLayoutReturnType> {
  // Opened one at a time, as the importer asks for them: a layout can have thousands of blobs.
  async function* files(): AsyncGenerator<DirectoryFile> {
    for (const name of [
      "oci-layout",
      "index.json",
      ...layout.blobs.map((b) => `blobs/${b.digest.replace(":", "/")}`),
    ]) {
      yield { path: name, content: createReadStream(path.join(dir, name)) };
    }
  }
  const cid = await client.ipfs.addDirectory(files(), { pin: true, signal });
  return { cid: cid.toString(), ...layout };
}
