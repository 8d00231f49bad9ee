import type { JobImage } from "../job-spec.ts";
import { formatImageReference, parseImageReference } from "./reference.ts";

/**
 * How an image is named in offers and caches: a registry image's reference written out in full
 * (`registry/repository@sha256:…` once pinned, so `busybox@…` and `docker.io/library/busybox@…`
 * are one image), or `cid:<cid>` for an OCI layout shared over IPFS.
 */
export function imageKeyOf(image: JobImage): string {
  if (typeof image !== "string") return `cid:${image.cid}`;
  const { tag, ...reference } = parseImageReference(image);
  return formatImageReference(reference.digest ? reference : { ...reference, tag });
}
