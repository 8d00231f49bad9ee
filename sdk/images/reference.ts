import { CID } from "multiformats/cid";

import { UserError } from "../errors.ts";
import type { JobImage } from "../job-spec.ts";

/**
 * A container image reference, as Docker and Podman read one (the grammar of
 * github.com/distribution/reference): `[registry/]repository[:tag][@sha256:<64 hex>]`.
 */
export interface ImageReference {
  /** Host and optional port, e.g. `docker.io`, `ghcr.io`, `127.0.0.1:5000`. */
  registry: string;
  /** Path of the repository in the registry, e.g. `library/busybox`, `pytorch/pytorch`. */
  repository: string;
  tag?: string;
  digest?: ImageDigest;
}

export type ImageDigest = `sha256:${string}`;

/** The registry a reference without one names (as Docker reads `busybox` or `pytorch/pytorch`). */
export const DEFAULT_REGISTRY = "docker.io";

/** Longest reference accepted: Docker's limit for a repository name (255) plus a tag and a digest. */
export const MAX_IMAGE_REFERENCE_LENGTH = 512;

const DIGEST = /^sha256:[a-f0-9]{64}$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;

/** Whether a registry is on this machine; such a registry is reached over plain HTTP, as Docker does. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.replace(/:\d+$/, "");
  return host === "localhost" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

function isDomain(part: string): boolean {
  // A bracketed IPv6 address has colons of its own: `[::1]:5000`.
  if (/^\[[0-9a-fA-F:.]+\](?::\d{1,5})?$/.test(part)) return true;
  const [host, port, ...rest] = part.split(":");
  if (rest.length > 0 || (port !== undefined && !/^\d{1,5}$/.test(port))) return false;
  return host!.split(".").every((label) => DOMAIN_COMPONENT.test(label));
}

/**
 * Parses an image reference. A reference without a registry is Docker Hub's, and a Docker Hub
 * name of one component is an official image (`busybox` → `docker.io/library/busybox`).
 *
 * @throws {UserError} naming what is wrong.
 *
 * @example
 * parseImageReference("pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime")
 * // { registry: "docker.io", repository: "pytorch/pytorch", tag: "2.4.0-cuda12.4-cudnn9-runtime" }
 */
export function parseImageReference(text: string): ImageReference {
  const fail = (why: string): never => {
    throw new UserError(`"${text}" is not a valid image reference: ${why}`, {
      details: "expected [registry/]repository[:tag][@sha256:<64 hex digits>], e.g. 127.0.0.1:5000/train@sha256:…",
    });
  };
  if (typeof text !== "string" || text.length === 0) return fail("it is empty");
  if (text.length > MAX_IMAGE_REFERENCE_LENGTH)
    return fail(`it is longer than ${MAX_IMAGE_REFERENCE_LENGTH} characters`);
  let rest = text;
  let digest: ImageDigest | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    const candidate = rest.slice(at + 1);
    if (!DIGEST.test(candidate)) return fail(`the digest "${candidate}" is not sha256: and 64 lower-case hex digits`);
    digest = candidate as ImageDigest;
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    if (!TAG.test(tag)) return fail(`the tag "${tag}" is not letters, digits, _, . and - (at most 128)`);
    rest = rest.slice(0, colon);
  }
  const parts = rest.split("/");
  let registry = DEFAULT_REGISTRY;
  if (parts.length > 1 && (parts[0]!.includes(".") || parts[0]!.includes(":") || parts[0] === "localhost")) {
    if (!isDomain(parts[0]!)) return fail(`"${parts[0]}" is not a registry host[:port]`);
    registry = parts.shift()!;
  }
  if (parts.length === 0 || !parts.every((part) => PATH_COMPONENT.test(part))) {
    return fail("the repository must be lower-case letters and digits, separated by /, ., _ or -");
  }
  if (registry === "index.docker.io") registry = DEFAULT_REGISTRY;
  if (registry === DEFAULT_REGISTRY && parts.length === 1) parts.unshift("library");
  return { registry, repository: parts.join("/"), ...(tag ? { tag } : {}), ...(digest ? { digest } : {}) };
}

/** The reference written out in full: `registry/repository[:tag][@digest]`. */
export function formatImageReference({ registry, repository, tag, digest }: ImageReference): string {
  return `${registry}/${repository}${tag ? `:${tag}` : ""}${digest ? `@${digest}` : ""}`;
}

/** The reference pinned to a digest, without its tag: what every lease of a job runs. */
export function pinImageReference(reference: ImageReference, digest: ImageDigest): string {
  return `${reference.registry}/${reference.repository}@${digest}`;
}

/**
 * The key under which providers list the images they hold (an offer's `images`): a registry
 * reference in full and pinned, `registry/repository@sha256:…` (a reference without a digest keeps
 * its tag, and matches no provider's key), or `cid:<cid>` for an OCI layout added to IPFS.
 *
 * @example
 * imageKey("busybox@sha256:" + "ab".repeat(32)) // "docker.io/library/busybox@sha256:abab…"
 * imageKey({ cid: "bafy…" }) // "cid:bafy…"
 */
export function imageKey(image: JobImage): string {
  if (typeof image !== "string") return `cid:${cidV1(image.cid)}`;
  const reference = parseImageReference(image);
  return reference.digest ? pinImageReference(reference, reference.digest) : formatImageReference(reference);
}

/** A CID in its v1 form, so that a v0 and a v1 of the same content are one key; text that is no CID as it is. */
function cidV1(text: string): string {
  try {
    return CID.parse(text).toV1().toString();
  } catch {
    return text;
  }
}
