import { statfsSync } from "node:fs";

import type { NodeComponents } from "./components.ts";

/**
 * Bytes free to the node where its jobs' work dirs, checkpoints and IPFS store live (the least of
 * the jobs dir's and the data dir's file systems).
 */
export function freeDiskBytes({ jobsDir, dataDir }: Pick<NodeComponents, "jobsDir" | "dataDir">): number {
  return Math.min(
    ...[jobsDir, dataDir].map((dir) => {
      const stats = statfsSync(dir);
      return stats.bavail * stats.bsize;
    }),
  );
}

/**
 * Why the node takes no new lease for lack of disk, or undefined while it has `minFreeDiskGiB`: a
 * lease it took on a nearly full disk would fail later, when its job or a checkpoint cannot be
 * written, and cost its tenant a hand-off.
 */
export function diskTooFull(components: Pick<NodeComponents, "jobsDir" | "dataDir" | "config">): string | undefined {
  const free = freeDiskBytes(components);
  const needed = components.config.minFreeDiskGiB * 2 ** 30;
  if (free >= needed) return undefined;
  const gib = (bytes: number): string => `${(bytes / 2 ** 30).toFixed(1)} GiB`;
  return `the provider's disk is nearly full (${gib(free)} free, it takes new leases with ${gib(needed)})`;
}
