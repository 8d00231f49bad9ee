import { zeroHash, type Hex } from "viem";

import type { BatonClient } from "../client.ts";
import { UserError } from "../errors.ts";
import type { JobImage } from "../job-spec.ts";
import { layoutManifestDigest } from "./layout.ts";
import { parseImageReference, type ImageDigest } from "./reference.ts";

/**
 * The image of a lease, as its quote, its `LeaseOpened` event and the provider's signature carry
 * it: the 32 bytes of the SHA-256 digest of the image's manifest (or image index), or zero for a
 * job that runs no image.
 *
 * @example
 * imageDigestToBytes32("sha256:ab…") // "0xab…"
 * imageDigestToBytes32(undefined) // "0x000…0"
 */
export function imageDigestToBytes32(digest: ImageDigest | undefined): Hex {
  return digest === undefined ? zeroHash : `0x${digest.slice("sha256:".length)}`;
}

/**
 * A lease's image as a digest, `sha256:…`; undefined for zero, a job that runs no image.
 *
 * @example
 * imageDigestFromBytes32(lease.image) // "sha256:ab…"
 */
export function imageDigestFromBytes32(image: Hex): ImageDigest | undefined {
  return BigInt(image) === 0n ? undefined : `sha256:${image.slice(2).toLowerCase()}`;
}

/**
 * The manifest digest a job's image is: the `@sha256:` of a pinned registry reference, or, for an
 * OCI layout given by CID, the one image its `index.json` lists ({@link layoutManifestDigest});
 * undefined for a process job. Every lease of the job is opened with it in its quote, so the
 * provider signs that it runs this image and no other.
 *
 * @throws {UserError} for a reference not pinned to a digest (`runJob` and `serve` pin tags when a
 * job is submitted), or a CID that is not a layout of one image.
 * @example
 * const digest = await jobImageDigest(client, spec.image, { signal });
 */
export async function jobImageDigest(
  client: Pick<BatonClient, "ipfs">,
  image: JobImage | undefined,
  { signal }: { signal?: AbortSignal } = {},
): Promise<ImageDigest | undefined> {
  if (image === undefined) return undefined;
  if (typeof image !== "string") return layoutManifestDigest(client, image.cid, { ...(signal ? { signal } : {}) });
  const { digest } = parseImageReference(image);
  if (digest === undefined) {
    throw new UserError(`image ${image} is not pinned to a digest`, {
      details: "runJob and serve pin a tag when the job is submitted; write name@sha256:… to lease it yourself",
    });
  }
  return digest;
}
