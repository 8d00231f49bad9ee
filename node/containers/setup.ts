import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import path from "node:path";

import type { IpfsNode } from "../../sdk/ipfs/node.ts";
import type { Logger } from "../../sdk/logger.ts";
import type { NodeConfig } from "../config.ts";
import { removeNodeContainers } from "./container-job.ts";
import { ImageCache } from "./images.ts";
import { Podman, PodmanMissingError } from "./podman.ts";

/** What image jobs run with: Podman over the node's store, the image cache, and the node's label. */
export interface Containers {
  podman: Podman;
  images: ImageCache;
  /** Labels the node's containers, so that a restarted node finds its own. */
  node: string;
  /** Once the node's jobs are stopped: removes the runroot, which holds only containers' state, if none is left. */
  close(): Promise<void>;
}

/**
 * Sets up image jobs as configured: undefined when they are off (`enabled: false`, or `auto` on a
 * machine without Podman, or in a node that is not root). Containers an earlier run of the node left (it was killed with SIGKILL)
 * are removed, so that its leases' jobs can be relaunched in fresh ones.
 *
 * @throws {PodmanMissingError} `enabled: true` without Podman.
 */
export async function setUpContainers(
  { containers: config }: NodeConfig,
  { dataDir, ipfs, node, log }: { dataDir: string; ipfs: IpfsNode; node: string; log: Logger },
): Promise<Containers | undefined> {
  if (config.enabled === false) return undefined;
  // Rootless Podman needs subordinate ids for the job's user (nobody) and was not tried: a node that
  // is not root runs image jobs only when told to.
  if (config.enabled === "auto" && process.getuid?.() !== 0) {
    log.info("image jobs are off: the node is not root (set containers.enabled: true for rootless Podman)", {});
    return undefined;
  }
  const root = config.storageDir ?? path.join(dataDir, "containers", "storage");
  let podman: Podman;
  try {
    podman = await Podman.open({
      podmanPath: config.podmanPath,
      runtime: config.runtime,
      root,
      ...(config.registriesConf ? { registriesConf: config.registriesConf } : {}),
    });
  } catch (error) {
    if (config.enabled !== "auto") throw error;
    if (error instanceof PodmanMissingError) log.info("Podman is not installed: this node runs process jobs only", {});
    else log.warn("image jobs are off: Podman cannot be used here", { error });
    return undefined;
  }
  // A store never used holds no container nor image: no need to ask Podman (two calls, ~0.2 s).
  const used = existsSync(root);
  if (used) await removeNodeContainers(podman, node, log);
  const images = await ImageCache.open({
    podman,
    ipfs,
    dir: path.join(dataDir, "containers"),
    cacheBytes: config.imageCacheGiB * 2 ** 30,
    maxImageBytes: config.maxImageGiB * 2 ** 30,
    pullTimeoutMs: config.pullTimeoutS * 1000,
    log: log.child("images"),
    storeUsed: used,
  });
  return {
    podman,
    images,
    node,
    async close() {
      if (!existsSync(podman.init.runroot)) return;
      // Only with no container left: a container still stopping needs its runroot state, or
      // Podman cannot clean it up (seen: a killed node's container left half-removed).
      const { stdout } = await podman.run(["ps", "--all", "--quiet"]).catch(() => ({ stdout: "?" }));
      if (stdout.trim() === "") await rm(podman.init.runroot, { recursive: true, force: true });
      else log.warn("containers left at stop; the runroot is kept", { runroot: podman.init.runroot });
    },
  };
}
