import type { PrivateKey } from "@libp2p/interface";
import type { PrivateKeyAccount } from "viem/accounts";

import type { ChainClient } from "../sdk/chain/client.ts";
import type { IpfsNode } from "../sdk/ipfs/node.ts";
import type { Logger } from "../sdk/logger.ts";
import type { BatonHost } from "../sdk/p2p/host.ts";
import type { NodeConfig } from "./config.ts";
import type { Containers } from "./containers/setup.ts";
import type { GpuAllocator } from "./gpus.ts";
import type { Metrics } from "./metrics.ts";
import type { NodeStore } from "./store.ts";
import type { WorkDirs } from "./work-dirs.ts";

/**
 * What the node's services are built over (js-libp2p style: each service is a factory taking its
 * own init, then these components), so each can be tested with real parts and composed once.
 */
export interface NodeComponents {
  config: NodeConfig;
  dataDir: string;
  /** Where job work dirs live: `<dataDir>/jobs` unless the job user cannot reach it (see `prepareJobsDir`). */
  jobsDir: string;
  /** The leases' work dirs under `jobsDir`, each with its job's disk quota. */
  workDirs: WorkDirs;
  host: BatonHost;
  /** The embedded IPFS node on `host`, holding this node's checkpoints. */
  ipfs: IpfsNode;
  /** Podman and the image cache, when this node runs image jobs. */
  containers: Containers | undefined;
  peerKey: PrivateKey;
  account: PrivateKeyAccount;
  chain: ChainClient;
  store: NodeStore;
  gpus: GpuAllocator;
  metrics: Metrics;
  log: Logger;
  /** Chain time minus local time, in seconds, kept fresh by the chain duties (tests move chain time). */
  chainClock: { offsetS: number };
  /** Set while the node drains for shutdown: no new bids or leases. */
  draining: { value: boolean };
}

/** Current chain time in seconds, by the local clock corrected with the last observed offset. */
export function chainNow(components: Pick<NodeComponents, "chainClock">): number {
  return Math.floor(Date.now() / 1000) + components.chainClock.offsetS;
}
