import { mkdir, open, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";

import { unixfs } from "@helia/unixfs";
import type { Multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";

import { UserError } from "../../sdk/errors.ts";
import { imageKey, parseImageReference, type ImageDigest } from "../../sdk/images/reference.ts";
import type { IpfsNode } from "../../sdk/ipfs/node.ts";
import type { JobImage } from "../../sdk/job-spec.ts";
import type { Logger } from "../../sdk/logger.ts";
import { lastLine, PodmanError, type Podman } from "./podman.ts";

/**
 * Why an image was refused; the tenant is told the message. `anywhere`: no provider could run the
 * image as given (not pinned, not in its registry), so the job fails rather than moving on.
 */
export class ImageRefusedError extends UserError {
  override name = "ImageRefusedError";
  readonly anywhere: boolean;

  constructor(message: string, options: { details?: string; cause?: unknown; anywhere?: boolean } = {}) {
    super(message, options);
    this.anywhere = options.anywhere ?? false;
  }
}

export interface ImageCacheInit {
  podman: Podman;
  ipfs: IpfsNode;
  /** Holds the cache's index and, while one is fetched, an image given by CID. */
  dir: string;
  /** The store's bound: least recently used images beyond it are removed (never one in use). */
  cacheBytes: number;
  /** Largest image accepted (unpacked size, as `podman image inspect` reports it). */
  maxImageBytes: number;
  /** Longest a pull (or a fetch by CID) may take; a registry that hangs fails the start after it. */
  pullTimeoutMs: number;
  log: Logger;
  /** False when the store does not exist yet: there is nothing in it to match the index against. */
  storeUsed?: boolean;
}

/**
 * Why a job's spec cannot run on a lease whose quote named `leaseImage` (the manifest digest the
 * node signed for; undefined for a process job), or undefined when nothing the spec says contradicts
 * it. A registry reference is checked by its `@sha256:` here; a layout by CID, whose manifest is
 * known only once fetched, by {@link ImageCache.acquire}.
 */
export function imageMismatch(image: JobImage | undefined, leaseImage: ImageDigest | undefined): string | undefined {
  if (image === undefined) {
    return leaseImage === undefined ? undefined : `the lease was opened for image ${leaseImage}; the spec runs none`;
  }
  const key = imageKey(image);
  if (leaseImage === undefined) return `the spec runs image ${key}; the lease was opened for a job without one`;
  if (typeof image !== "string") return undefined;
  const { digest } = parseImageReference(image);
  // Unpinned: the cache refuses it, whatever the lease says.
  if (digest === undefined || digest === leaseImage) return undefined;
  return `the spec runs image ${key}; the lease was opened for ${leaseImage}`;
}

/** An image ready to run, held in the cache until `release()`. */
export interface HeldImage {
  /** Podman's image id. */
  id: string;
  key: string;
  release(): void;
}

interface Entry {
  id: string;
  sizeBytes: number;
  lastUsedAt: number;
  /**
   * The manifests Podman recorded the image under when it was pulled (it checks each against its
   * digest as it pulls; an image pulled by an index's digest is recorded under the index's and its
   * platform manifest's): the digests a lease may name it by.
   */
  digests: string[];
}

/** The platform Podman names for this host: images for another one cannot run here. */
const HOST_ARCH: Record<string, string> = {
  x64: "amd64",
  arm64: "arm64",
  arm: "arm",
  ppc64: "ppc64le",
  s390x: "s390x",
};

const INDEX_FILE = "images.json";

/**
 * The images of image jobs, in the node's own Podman store: pulled through Podman (so the operator's
 * registries, mirrors and auth apply, and Podman checks every layer and the config against their
 * digests), or fetched by CID over IPFS as an OCI layout and pulled from that. Bounded: past
 * `cacheBytes`, the least recently used images not in use are removed. An image that fails a check
 * (platform, size) is removed before the refusal, so nothing partial stays.
 */
export class ImageCache {
  readonly #init: ImageCacheInit;
  readonly #entries: Map<string, Entry>;
  readonly #inUse = new Map<string, number>();
  readonly #pulls = new Map<string, Promise<Entry>>();
  #saving: Promise<void> = Promise.resolve();
  #evicting: Promise<void> = Promise.resolve();

  private constructor(init: ImageCacheInit, entries: Map<string, Entry>) {
    this.#init = init;
    this.#entries = entries;
  }

  /**
   * Opens the cache: its index is matched against the store, and images in the store the index
   * does not know (a pull cut short by a crash) are removed.
   */
  static async open(init: ImageCacheInit): Promise<ImageCache> {
    await mkdir(init.dir, { recursive: true, mode: 0o700 });
    await rm(path.join(init.dir, "layouts"), { recursive: true, force: true });
    let saved: Record<string, Entry> = {};
    try {
      saved = JSON.parse(await readFile(path.join(init.dir, INDEX_FILE), "utf8")) as Record<string, Entry>;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT")
        init.log.warn("image index unreadable; starting empty", { error });
    }
    const { stdout } =
      init.storeUsed === false
        ? { stdout: "" }
        : await init.podman.run(["images", "--all", "--format", "{{.ID}}", "--no-trunc"]);
    const present = new Set(
      stdout
        .split("\n")
        .map((id) => id.trim().replace(/^sha256:/, ""))
        .filter(Boolean),
    );
    // An entry without digests is from before they were recorded: its image is pulled again.
    const entries = new Map(
      Object.entries(saved).filter(([, entry]) => present.has(entry.id) && Array.isArray(entry.digests)),
    );
    const known = new Set([...entries.values()].map((entry) => entry.id));
    const strays = [...present].filter((id) => !known.has(id));
    if (strays.length > 0) {
      init.log.info("removing images the cache does not know", { count: strays.length });
      await init.podman
        .run(["rmi", "--force", ...strays])
        .catch((error: unknown) => init.log.warn("stray images not removed", { error }));
    }
    const cache = new ImageCache(init, entries);
    await cache.#save();
    return cache;
  }

  /** The keys of the cached images, most recently used first: what the node's offers advertise. */
  keys(limit = 64): string[] {
    return [...this.#entries.entries()]
      .sort(([, a], [, b]) => b.lastUsedAt - a.lastUsedAt)
      .slice(0, limit)
      .map(([key]) => key);
  }

  /**
   * The job's image, pulled or fetched unless cached, checked to be the manifest `digest` names
   * (the lease's image, which the node signed for), and held (not evicted) until released.
   *
   * @throws {ImageRefusedError} the image cannot be had, fails a check, or is another manifest than
   * `digest`; the message says why.
   */
  async acquire(
    image: JobImage,
    { digest, providers, signal }: { digest: ImageDigest; providers: Multiaddr[]; signal: AbortSignal },
  ): Promise<HeldImage> {
    const key = imageKey(image);
    let entry = this.#entries.get(key);
    if (!entry) {
      // Two leases of the same new image share one pull.
      let pull = this.#pulls.get(key);
      if (!pull) {
        pull = this.#fetch(image, key, providers, signal).finally(() => this.#pulls.delete(key));
        this.#pulls.set(key, pull);
      }
      entry = await pull;
    }
    // What was pulled (now or for an earlier lease) must be the manifest the lease names.
    if (!entry.digests.includes(digest)) {
      throw new ImageRefusedError(`image ${key} is not ${digest}, the image the lease was opened for`, {
        details: `it was pulled as ${entry.digests.join(", ")}`,
        anywhere: true,
      });
    }
    entry.lastUsedAt = Date.now();
    this.#inUse.set(key, (this.#inUse.get(key) ?? 0) + 1);
    await this.#save();
    this.#evictSoon();
    let released = false;
    return {
      id: entry.id,
      key,
      release: () => {
        if (released) return;
        released = true;
        const left = (this.#inUse.get(key) ?? 1) - 1;
        if (left > 0) this.#inUse.set(key, left);
        else this.#inUse.delete(key);
        this.#evictSoon();
      },
    };
  }

  async #fetch(image: JobImage, key: string, providers: Multiaddr[], signal: AbortSignal): Promise<Entry> {
    const { pullTimeoutMs, log } = this.#init;
    const started = performance.now();
    const deadline = AbortSignal.any([signal, AbortSignal.timeout(pullTimeoutMs)]);
    const id =
      typeof image === "string"
        ? await this.#pull(image, deadline)
        : await this.#pullFromIpfs(image.cid, providers, deadline);
    const entry = await this.#check(id, key);
    this.#entries.set(key, entry);
    log.info("image ready", { image: key, bytes: entry.sizeBytes, ms: Math.round(performance.now() - started) });
    return entry;
  }

  /** Pulls a registry image by digest; Podman verifies the manifest and every blob against their digests. */
  async #pull(reference: string, signal: AbortSignal): Promise<string> {
    const parsed = parseImageReference(reference);
    if (parsed.digest === undefined) {
      throw new ImageRefusedError(`image ${reference} is not pinned to a digest`, {
        anywhere: true,
        details:
          "the SDK pins a tag to its digest when the job is submitted: submit through it, or write name@sha256:…",
      });
    }
    try {
      const { stdout } = await this.#init.podman.run(["pull", "--quiet", reference], {
        signal,
        timeoutMs: this.#init.pullTimeoutMs,
      });
      return imageIdOf(stdout);
    } catch (error) {
      throw this.#pullFailure(reference, error, signal);
    }
  }

  /** Fetches an OCI image layout (a UnixFS directory, or one OCI archive file) by CID, then pulls it. */
  async #pullFromIpfs(cidText: string, providers: Multiaddr[], signal: AbortSignal): Promise<string> {
    let cid: CID;
    try {
      cid = CID.parse(cidText);
    } catch (cause) {
      throw new ImageRefusedError(`image CID ${cidText} is not a CID`, { cause, anywhere: true });
    }
    const { ipfs, podman, maxImageBytes } = this.#init;
    const layouts = path.join(this.#init.dir, "layouts");
    const target = path.join(layouts, cid.toString());
    await mkdir(layouts, { recursive: true, mode: 0o700 });
    try {
      const kind = await ipfs.withGcPaused(async () => {
        const found = await exportLayout(ipfs, cid, target, { providers, signal, maxBytes: maxImageBytes });
        // Pinned while cached: the next provider of a hand-off can fetch the image from this one.
        await ipfs.pin(cid, { signal });
        return found;
      });
      // Podman names an image pulled from a layout after its path, and refuses upper-case letters
      // in a name: the layout is pulled through a link at a lower-case path (runroot/layouts/<cid>).
      const links = path.join(podman.init.runroot, "layouts");
      await mkdir(links, { recursive: true, mode: 0o700 });
      const link = path.join(links, cid.toString());
      await rm(link, { force: true });
      await symlink(target, link);
      try {
        const source = kind === "directory" ? `oci:${link}` : `oci-archive:${link}`;
        const { stdout } = await podman.run(["pull", "--quiet", source], {
          signal,
          timeoutMs: this.#init.pullTimeoutMs,
        });
        return imageIdOf(stdout);
      } finally {
        await rm(link, { force: true });
      }
    } catch (error) {
      await ipfs.unpin(cid).catch(() => {});
      if (error instanceof ImageRefusedError) throw error;
      throw this.#pullFailure(`cid:${cidText}`, error, signal);
    } finally {
      await rm(target, { recursive: true, force: true });
    }
  }

  /** A failed pull, said as the tenant needs it: which image, and the cause Podman (or IPFS) gave. */
  #pullFailure(image: string, error: unknown, signal: AbortSignal): ImageRefusedError {
    if (signal.aborted) {
      const timedOut = signal.reason instanceof DOMException && signal.reason.name === "TimeoutError";
      return new ImageRefusedError(
        timedOut
          ? `image ${image} could not be had within ${Math.round(this.#init.pullTimeoutMs / 1000)} s`
          : `fetching image ${image} was stopped`,
        { cause: error },
      );
    }
    const said =
      error instanceof PodmanError ? lastLine(error.stderr) : error instanceof Error ? error.message : String(error);
    const missing = /manifest unknown|name unknown|not found|no such image/i.test(said);
    const cause = missing
      ? "it does not exist"
      : /digest did not match|does not match digest|manifest digest/i.test(said)
        ? "its content does not match its digest"
        : /no image found in (manifest|image index) for architecture/i.test(said)
          ? `it has no variant for this provider's platform (linux/${HOST_ARCH[process.arch] ?? process.arch})`
          : said;
    return new ImageRefusedError(`image ${image} cannot be used: ${cause}`, {
      details: said,
      cause: error,
      anywhere: missing,
    });
  }

  /**
   * Checks a pulled image (platform, size) and records the manifests it was pulled as; one that
   * fails is removed before the refusal.
   */
  async #check(id: string, key: string): Promise<Entry> {
    const { stdout } = await this.#init.podman.run([
      "image",
      "inspect",
      "--format",
      "{{.Os}} {{.Architecture}} {{.Size}} {{.Digest}}{{range .RepoDigests}} {{.}}{{end}}",
      id,
    ]);
    const [os, arch, size, ...names] = stdout.trim().split(/\s+/);
    // `.Digest` is a bare digest, each of `.RepoDigests` a `name@digest`.
    const digests = [...new Set(names.map((name) => name.slice(name.lastIndexOf("@") + 1)))];
    const sizeBytes = Number(size);
    const hostArch = HOST_ARCH[process.arch] ?? process.arch;
    let refusal: string | undefined;
    if (os !== "linux" || arch !== hostArch) {
      refusal = `image ${key} is for ${os}/${arch}; this provider runs linux/${hostArch}`;
    } else if (!(sizeBytes <= this.#init.maxImageBytes)) {
      refusal = `image ${key} is ${formatGiB(sizeBytes)}, over this provider's limit of ${formatGiB(this.#init.maxImageBytes)}`;
    }
    if (refusal !== undefined) {
      await this.#init.podman.run(["rmi", "--force", id]).catch(() => {});
      throw new ImageRefusedError(refusal);
    }
    return { id, sizeBytes, lastUsedAt: Date.now(), digests };
  }

  /** Evicts after any eviction under way (one at a time); a failure is logged, never thrown. */
  #evictSoon(): void {
    this.#evicting = this.#evicting
      .then(() => this.#evict())
      .catch((error: unknown) => this.#init.log.warn("image eviction failed", { error }));
  }

  /** Removes least recently used images not in use until the cache fits its bound. */
  async #evict(): Promise<void> {
    let total = [...this.#entries.values()].reduce((sum, entry) => sum + entry.sizeBytes, 0);
    const candidates = [...this.#entries.entries()]
      .filter(([key]) => !this.#inUse.has(key))
      .sort(([, a], [, b]) => a.lastUsedAt - b.lastUsedAt);
    for (const [key, entry] of candidates) {
      if (total <= this.#init.cacheBytes) break;
      // Taken (or replaced) while an earlier image was removed: it stays.
      if (this.#inUse.has(key) || this.#entries.get(key) !== entry) continue;
      this.#entries.delete(key);
      total -= entry.sizeBytes;
      try {
        await this.#init.podman.run(["rmi", "--force", entry.id]);
        if (key.startsWith("cid:")) await this.#init.ipfs.unpin(CID.parse(key.slice(4)));
        this.#init.log.info("image evicted", { image: key, bytes: entry.sizeBytes });
      } catch (error) {
        this.#init.log.warn("image not evicted", { image: key, error });
      }
    }
    await this.#save();
  }

  /**
   * Writes the index (atomically: a temp file renamed over it), after any write under way: two
   * writes at once would rename the same temp file twice.
   */
  #save(): Promise<void> {
    const file = path.join(this.#init.dir, INDEX_FILE);
    const write = this.#saving.then(async () => {
      await writeFile(`${file}.tmp`, JSON.stringify(Object.fromEntries(this.#entries)), { mode: 0o600 });
      await rename(`${file}.tmp`, file);
    });
    this.#saving = write.catch(() => undefined);
    return write;
  }
}

/** The image id `podman pull --quiet` prints last. */
function imageIdOf(pullOutput: string): string {
  return (pullOutput.trim().split("\n").at(-1) ?? "").replace(/^sha256:/, "");
}

function formatGiB(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}

/**
 * Writes the UnixFS DAG at `cid` to `target`: a directory tree (an OCI layout) or one file (an OCI
 * archive), at most `maxBytes` in all. Blocks are verified against their CIDs as they arrive.
 */
async function exportLayout(
  ipfs: IpfsNode,
  cid: CID,
  target: string,
  { providers, signal, maxBytes }: { providers: Multiaddr[]; signal: AbortSignal; maxBytes: number },
): Promise<"directory" | "file"> {
  const fs = unixfs(ipfs.helia);
  let total = 0;
  const writeFileAt = async (file: CID, to: string): Promise<void> => {
    const handle = await open(to, "w", 0o600);
    try {
      for await (const chunk of ipfs.cat(file, { providers, signal })) {
        total += chunk.byteLength;
        if (total > maxBytes)
          throw new ImageRefusedError(`image ${cid} is larger than this provider's limit of ${formatGiB(maxBytes)}`);
        await handle.write(chunk);
      }
    } finally {
      await handle.close();
    }
  };
  const root = await fs.stat(cid, { signal, providers });
  if (root.type !== "directory") {
    await writeFileAt(cid, target);
    return "file";
  }
  const walk = async (dir: CID, to: string): Promise<void> => {
    await mkdir(to, { mode: 0o700 });
    for await (const entry of fs.ls(dir, { signal })) {
      if (entry.name.includes("/") || entry.name === ".." || entry.name === ".") {
        throw new ImageRefusedError(`image ${cid} has an entry named "${entry.name}"`);
      }
      const stat = await fs.stat(entry.cid, { signal, providers });
      if (stat.type === "directory") await walk(entry.cid, path.join(to, entry.name));
      else await writeFileAt(entry.cid, path.join(to, entry.name));
    }
  };
  await walk(cid, target);
  return "directory";
}
