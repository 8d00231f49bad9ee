import { createHash } from "node:crypto";

import { z } from "zod";

import { ImageResolutionError, type ImageResolutionFailure, walk } from "../errors.ts";
import type { JobImage } from "../job-spec.ts";
import {
  DEFAULT_REGISTRY,
  formatImageReference,
  isLoopbackRegistry,
  parseImageReference,
  pinImageReference,
  type ImageDigest,
} from "./reference.ts";

/**
 * Pinning a registry reference to its digest with the OCI distribution API, the way `podman pull`
 * finds what a tag names: anonymous (public images only), over HTTPS except for a registry on this
 * machine.
 */

/**
 * Longest a whole resolution may take (token and manifest requests together) unless the caller
 * says otherwise. Docker Hub answers in well under a second and a slow mirror in a few; a registry
 * that accepts the connection and then says nothing must not hold a submit forever.
 */
export const RESOLVE_TIMEOUT_MS = 30_000;

/** A manifest or index larger than this is refused (containerd's limit for manifests). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/** A token or an error body larger than this is refused: Docker Hub's tokens are a few KiB, error bodies less. */
const MAX_ANSWER_BYTES = 64 * 1024;

/** Docker Hub's API host: `docker.io` names the registry, not the host that serves it. */
const DOCKER_HUB_API_HOST = "registry-1.docker.io";

/** An index: one manifest per platform (OCI's, and Docker's manifest list). */
export const INDEX_MEDIA_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
] as const;

/** One image's manifest: its config and layers (OCI's, and Docker's v2 schema 2). */
export const IMAGE_MANIFEST_MEDIA_TYPES = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
] as const;

/** The manifest types asked for: a tag is pinned to what it names, an index or one image's manifest. */
export const MANIFEST_MEDIA_TYPES = [...INDEX_MEDIA_TYPES, ...IMAGE_MANIFEST_MEDIA_TYPES] as const;

const SHA256_DIGEST = /^sha256:[a-f0-9]{64}$/;

export interface ResolveImageDigestOptions {
  signal?: AbortSignal;
  /** Longest the resolution may take. Default {@link RESOLVE_TIMEOUT_MS}. */
  timeoutMs?: number;
}

export interface ResolveImageDigestReturnType {
  /** The reference pinned, without its tag: `registry/repository@sha256:…`. */
  reference: string;
  digest: ImageDigest;
  /** The manifest's media type, as the registry gave it; absent for a reference pinned already (nothing was asked). */
  mediaType?: string;
}

/**
 * Pins an image reference to the digest its tag names now (a reference without a tag means
 * `latest`, as for Docker). It asks for the manifest with HEAD and reads `Docker-Content-Digest`;
 * a registry that leaves it out gets a GET, and the digest is the SHA-256 of the manifest's bytes.
 * A 401 with a Bearer challenge is answered with an anonymous token for pulling. A reference that
 * already has a digest is returned pinned, without any request.
 *
 * @throws {UserError} for a malformed reference.
 * @throws {ImageResolutionError} (a UserError) when the image is not found, the registry wants
 * credentials, cannot be reached, does not answer within `timeoutMs`, or answers with a digest
 * that is not sha256.
 * @example
 * const { reference } = await resolveImageDigest("pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime");
 * // "docker.io/pytorch/pytorch@sha256:…"
 */
export async function resolveImageDigest(
  text: string,
  { signal, timeoutMs = RESOLVE_TIMEOUT_MS }: ResolveImageDigestOptions = {},
): Promise<ResolveImageDigestReturnType> {
  const parsed = parseImageReference(text);
  if (parsed.digest) return { reference: pinImageReference(parsed, parsed.digest), digest: parsed.digest };
  signal?.throwIfAborted();
  const reference = { ...parsed, tag: parsed.tag ?? "latest" };
  const image = formatImageReference(reference);
  const { registry } = reference;
  const base = registryEndpoint(registry);
  const fail = (reason: ImageResolutionFailure, why: string, details?: string, cause?: unknown) =>
    new ImageResolutionError(reason, `cannot pin image ${image}: ${why}`, {
      ...(details ? { details } : {}),
      ...(cause === undefined ? {} : { cause }),
    });

  const deadline = AbortSignal.timeout(timeoutMs);
  const session = registrySession({
    manifestUrl: `${base}/v2/${reference.repository}/manifests/${encodeURIComponent(reference.tag)}`,
    repository: reference.repository,
    signal: AbortSignal.any([deadline, ...(signal ? [signal] : [])]),
    fail,
  });
  try {
    const head = await session.request("HEAD");
    const headDigest = head.headers.get("docker-content-digest");
    if (head.ok && headDigest !== null) {
      const digest = checkDigest(headDigest, fail);
      return { reference: pinImageReference(reference, digest), digest, ...mediaTypeOf(head, fail) };
    }
    // No digest in the head (some registries leave it out), or a refusal whose body says why.
    const response = await session.request("GET");
    if (!response.ok) throw await refusal(response, registry, fail);
    const mediaType = mediaTypeOf(response, fail);
    const body = await readCapped(response, MAX_MANIFEST_BYTES);
    if (!body) throw fail("bad-response", `its manifest is larger than ${MAX_MANIFEST_BYTES} bytes`);
    const digest: ImageDigest = `sha256:${createHash("sha256").update(body).digest("hex")}`;
    const claimed = response.headers.get("docker-content-digest");
    if (claimed !== null && checkDigest(claimed, fail) !== digest) {
      throw fail(
        "bad-response",
        `registry ${registry} sent a manifest whose digest is not the one it claims`,
        `${claimed}, but its bytes hash to ${digest}`,
      );
    }
    return { reference: pinImageReference(reference, digest), digest, ...mediaType };
  } catch (error) {
    if (signal?.aborted) throw signal.reason;
    if (deadline.aborted) {
      throw fail("timeout", `registry ${registry} did not answer within ${timeoutMs} ms`, `asked ${base}`, error);
    }
    if (error instanceof ImageResolutionError) throw error;
    const code = (walk(error, (e) => typeof (e as { code?: unknown } | null)?.code === "string") as { code?: string })
      ?.code;
    throw fail(
      "unreachable",
      `cannot reach registry ${registry}`,
      `${base}: ${code ?? (error as Error).message}`,
      error,
    );
  }
}

/**
 * Where a registry's API is: Docker Hub's at `registry-1.docker.io`, every other at its own host;
 * over HTTPS, except a registry on this machine, over plain HTTP (as Docker treats one; a provider's
 * Podman needs such a registry marked `insecure` in its registries.conf).
 *
 * @example
 * registryEndpoint("docker.io") // "https://registry-1.docker.io"
 * registryEndpoint("127.0.0.1:5000") // "http://127.0.0.1:5000"
 */
export function registryEndpoint(registry: string): string {
  const host = registry === DEFAULT_REGISTRY ? DOCKER_HUB_API_HOST : registry;
  return `${isLoopbackRegistry(registry) ? "http" : "https"}://${host}`;
}

/**
 * A job's image pinned: a registry reference resolved to its digest ({@link resolveImageDigest}),
 * an OCI layout's CID as it is. What a job is submitted with, so that every lease runs the same image.
 *
 * @example
 * spec.image = await pinJobImage(spec.image, { signal });
 */
export async function pinJobImage(image: JobImage, options: ResolveImageDigestOptions = {}): Promise<JobImage> {
  if (typeof image !== "string") return image;
  return (await resolveImageDigest(image, options)).reference;
}

type Fail = (reason: ImageResolutionFailure, why: string, details?: string, cause?: unknown) => ImageResolutionError;

function checkDigest(digest: string, fail: Fail): ImageDigest {
  if (!SHA256_DIGEST.test(digest)) {
    throw fail("bad-response", "the registry named its manifest by a digest that is not sha256", digest.slice(0, 200));
  }
  return digest as ImageDigest;
}

function mediaTypeOf(response: Response, fail: Fail): { mediaType?: string } {
  const mediaType = response.headers.get("content-type")?.split(";")[0]!.trim();
  // Some registries label every manifest application/json (its digest is still right); any other
  // type is not one that was asked for.
  if (!mediaType || mediaType === "application/json") return {};
  if (!(MANIFEST_MEDIA_TYPES as readonly string[]).includes(mediaType)) {
    throw fail("bad-response", `the registry answered a ${mediaType.slice(0, 100)}, not an OCI or Docker v2 manifest`);
  }
  return { mediaType };
}

/** The distribution API's error body: `{ errors: [{ code, message }] }`. */
const registryErrorsSchema = z.object({
  errors: z.array(z.object({ code: z.string().max(64), message: z.string().max(512).optional() })).max(16),
});

/** What a registry's non-2xx answer to a manifest request means, from its status and its error codes. */
async function refusal(response: Response, registry: string, fail: Fail): Promise<ImageResolutionError> {
  // An error body is a few hundred bytes; a larger one (or none) leaves the status to speak.
  const body = await readCapped(response, MAX_ANSWER_BYTES).catch(() => undefined);
  let codes: string[] = [];
  let said = "";
  try {
    const errors = registryErrorsSchema.parse(JSON.parse(body?.toString("utf8") ?? "")).errors;
    codes = errors.map((e) => e.code);
    said = errors.map((e) => `${e.code}${e.message ? `: ${e.message}` : ""}`).join("; ");
  } catch {
    // Not the API's error shape (a proxy's page, say): the status alone says what happened.
  }
  const details = `HTTP ${response.status}${said ? ` (${said})` : ""}`;
  if (response.status === 404 || codes.includes("MANIFEST_UNKNOWN") || codes.includes("NAME_UNKNOWN")) {
    return fail("not-found", `registry ${registry} has no such image or tag`, details);
  }
  if (
    response.status === 401 ||
    response.status === 403 ||
    codes.includes("UNAUTHORIZED") ||
    codes.includes("DENIED")
  ) {
    // Docker Hub answers so for a repository that does not exist as well as for a private one.
    return fail(
      "unauthorized",
      `registry ${registry} refused anonymous access (the image is private or does not exist)`,
      `${details}; only public images can be pinned`,
    );
  }
  return fail("bad-response", `registry ${registry} answered HTTP ${response.status}`, details);
}

/** A Bearer challenge from `WWW-Authenticate` (RFC 6750): where to get a token, and for what. */
export interface BearerChallenge {
  realm: string;
  service?: string;
  scope?: string;
}

/**
 * Reads `Bearer realm="…",service="…",scope="…"`; `undefined` for any other scheme (a registry that
 * wants a password, say) or a challenge without a realm.
 */
export function parseBearerChallenge(header: string | null): BearerChallenge | undefined {
  const match = header ? /^\s*bearer\s+(.*)$/i.exec(header) : null;
  if (!match) return undefined;
  const params = new Map<string, string>();
  for (const [, name, quoted, bare] of match[1]!.matchAll(/([A-Za-z]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))/g)) {
    params.set(name!.toLowerCase(), quoted === undefined ? bare! : quoted.replace(/\\(.)/g, "$1"));
  }
  const realm = params.get("realm");
  if (!realm) return undefined;
  const service = params.get("service");
  const scope = params.get("scope");
  return { realm, ...(service ? { service } : {}), ...(scope ? { scope } : {}) };
}

const tokenSchema = z.union([
  z.object({ token: z.string().min(1).max(MAX_ANSWER_BYTES) }),
  z.object({ access_token: z.string().min(1).max(MAX_ANSWER_BYTES) }).transform((t) => ({ token: t.access_token })),
]);

/**
 * Requests for one manifest, signed with an anonymous pull token once the registry asks for one
 * (a 401 with a Bearer challenge); the token is fetched once and kept for the next request.
 */
function registrySession({
  manifestUrl,
  repository,
  signal,
  fail,
}: {
  manifestUrl: string;
  repository: string;
  signal: AbortSignal;
  fail: Fail;
}) {
  let authorization: string | undefined;
  let challenged = false;
  const send = (method: "HEAD" | "GET"): Promise<Response> =>
    fetch(manifestUrl, {
      method,
      headers: { Accept: MANIFEST_MEDIA_TYPES.join(", "), ...(authorization ? { Authorization: authorization } : {}) },
      signal,
    });

  const token = async (challenge: BearerChallenge): Promise<string> => {
    let url: URL;
    try {
      url = new URL(challenge.realm);
    } catch {
      throw fail("bad-response", "the registry's token realm is not a URL", challenge.realm.slice(0, 200));
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw fail("bad-response", "the registry's token realm is not an http(s) URL", challenge.realm.slice(0, 200));
    }
    if (challenge.service) url.searchParams.set("service", challenge.service);
    url.searchParams.set("scope", challenge.scope ?? `repository:${repository}:pull`);
    const response = await fetch(url, { signal });
    if (!response.ok) {
      await response.body?.cancel();
      throw fail(
        "unauthorized",
        `the registry's token service refused an anonymous token`,
        `${url.origin}: HTTP ${response.status}`,
      );
    }
    const body = await readCapped(response, MAX_ANSWER_BYTES);
    if (!body) throw fail("bad-response", `the registry's token answer is larger than ${MAX_ANSWER_BYTES} bytes`);
    try {
      return tokenSchema.parse(JSON.parse(body.toString("utf8"))).token;
    } catch (cause) {
      throw fail("bad-response", "the registry's token answer has no token", url.origin, cause);
    }
  };

  return {
    async request(method: "HEAD" | "GET"): Promise<Response> {
      const response = await send(method);
      if (response.status !== 401 || challenged) return response;
      const challenge = parseBearerChallenge(response.headers.get("www-authenticate"));
      // Another scheme (Basic: a password) is for credentials we do not have: the 401 stands.
      if (!challenge) return response;
      challenged = true;
      await response.body?.cancel();
      authorization = `Bearer ${await token(challenge)}`;
      return send(method);
    },
  };
}

/** A response's body, or `undefined` (the rest left unread) when it declares or delivers more than `maxBytes`. */
async function readCapped(response: Response, maxBytes: number): Promise<Buffer | undefined> {
  if (Number(response.headers.get("content-length") ?? 0) > maxBytes) {
    await response.body?.cancel();
    return undefined;
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  // Leaving the loop early cancels the stream.
  for await (const chunk of response.body ?? []) {
    total += chunk.byteLength;
    if (total > maxBytes) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
