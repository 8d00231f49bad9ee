import { statfsSync } from "node:fs";

import { formatDiskQuota } from "../sdk/job-spec.ts";
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
 * written, and cost its tenant a hand-off. With `quotaBytes`, a job's disk quota, the node also
 * needs room for that much: a job's work dir fills as it writes (a quota's file system is a sparse
 * file), so the room is not set aside, but a job that could not have its quota at the start is
 * refused then rather than run out of disk later.
 */
export function diskTooFull(
  components: Pick<NodeComponents, "jobsDir" | "dataDir" | "config">,
  quotaBytes = 0,
): string | undefined {
  const free = freeDiskBytes(components);
  const reserve = components.config.minFreeDiskGiB * 2 ** 30;
  const needed = reserve + quotaBytes;
  if (free >= needed) return undefined;
  const gib = (bytes: number): string => `${(bytes / 2 ** 30).toFixed(1)} GiB`;
  if (quotaBytes === 0) {
    return `the provider's disk is nearly full (${gib(free)} free, it takes new leases with ${gib(needed)})`;
  }
  return `the provider's disk has ${gib(free)} free, too little for the job's ${formatDiskQuota(quotaBytes)} disk quota and the ${gib(reserve)} it keeps free`;
}
