import { mkdir } from "node:fs/promises";
import path from "node:path";

import type { PrivateKey } from "@libp2p/interface";
import type { LocalAccount } from "viem";

import { checkChain, createChainClient, type ChainClient } from "./chain/client.ts";
import { loadDeploymentFile, type Deployment } from "./chain/deployments.ts";
import { blockLaneOf } from "./ipfs/block-lanes.ts";
import { createIpfsNode, type IpfsNode } from "./ipfs/node.ts";
import { silentLogger, type Logger } from "./logger.ts";
import { createBatonHost, keepConnected, loadOrCreatePeerKey, type BatonHost } from "./p2p/host.ts";
import { watchOffers } from "./p2p/offers.ts";
import { openJobStore, type JobStore } from "./tenant/job-store.ts";
import type { Offer } from "./wire/messages.ts";

/** The tenant's IPFS store, inside its data dir: `baton image add` opens it without the rest of the client. */
export const TENANT_IPFS_DIR = "ipfs";

export interface CreateBatonClientParameters {
  /** The JSON-RPC endpoint of the deployment's chain, or several to fail over between (see `createChainClient`). */
  rpcUrl: string | readonly string[];
  /** The tenant's Ethereum account: it pays for leases and signs session proofs. */
  account: LocalAccount;
  /** The deployment, or the path of its JSON file (`deployments/<chainId>.json`). */
  deployment: Deployment | string;
  /** Full `/ip4/…/tcp/…/p2p/<id>` multiaddrs of peers to join the network through. */
  bootstrap?: string[];
  /**
   * The tenant's own state: its libp2p key, its IPFS store (checkpoints it holds), and one record per
   * job, so that a restarted client re-attaches to its running jobs.
   */
  dataDir: string;
  /** Where the tenant's libp2p host listens (providers fetch checkpoints from it); loopback by default. */
  listen?: string[];
  /**
   * The addresses to tell peers instead of the listening ones: a public address. A provider behind a
   * NAT that this tenant reaches through a relay dials it there directly (see the README).
   */
  announce?: string[];
  /**
   * Port of the tenant's block lanes (its checkpoints sent to providers on TLS beside libp2p: see
   * sdk/ipfs/block-lanes.ts), on the host of the first TCP `listen` address; 0 (the default) picks a
   * free port, null sends them over libp2p only. Behind a router, forward it too.
   */
  blockLanePort?: number | null;
  log?: Logger;
  /** How often to poll the chain for receipts; loopback chains answer in a few ms. */
  pollingIntervalMs?: number;
  /** The widest block range one `eth_getLogs` asks for. Default 10,000 blocks. */
  maxLogRange?: bigint;
  /** The most wei per gas the tenant's transactions may pay. Default: no cap. */
  maxFeePerGas?: bigint;
  /** Send a transaction again (12.5% more fee, within the cap) when not mined after this long. Default 30 s. */
  replaceAfterMs?: number;
  /**
   * The chain's block time in seconds, if known; otherwise estimated from recent blocks when first
   * needed. Quotes whose heartbeat timeout the block time makes unmeetable are refused.
   */
  blockTimeS?: number;
  /**
   * Blocks that must lie on a block before the tenant believes what it holds (sdk/chain/confirmations.ts).
   * A job starts on a lease at once, but the lease counts (the job's `lease-confirmed` event, slashes
   * recorded, audits) only this deep, and a lease whose opening a reorg drops is left for a new one.
   * Default 0: the latest block, what a local chain needs; see the README for public chains.
   */
  confirmations?: number;
  signal?: AbortSignal;
}

/** The offers currently known, newest per provider peer, expired ones dropped on read. */
export interface OfferBook {
  list(): Offer[];
  /** Resolves at the next verified offer (for waiting until a market shows up). */
  next(signal?: AbortSignal): Promise<Offer>;
}

export interface BatonClient {
  account: LocalAccount;
  chain: ChainClient;
  host: BatonHost;
  /** The libp2p key the tenant signs session messages with. */
  peerKey: PrivateKey;
  ipfs: IpfsNode;
  offers: OfferBook;
  jobs: JobStore;
  dataDir: string;
  log: Logger;
  /**
   * Runs `send` after every transaction this client sent before it: one account's transactions
   * must not race for the same nonce (a hand-off and a slash may be due at the same moment).
   */
  transact<T>(send: () => Promise<T>): Promise<T>;
  /** Stops the host and the IPFS node. Running jobs keep running on their providers. */
  close(): Promise<void>;
}

/**
 * A tenant's client: chain access for one deployment, a libp2p host that listens for offers, an
 * embedded IPFS store for the checkpoints it holds, and its job records, all under `dataDir`.
 *
 * @example
 * const client = await createBatonClient({
 *   rpcUrl: "http://127.0.0.1:8545",
 *   account: privateKeyToAccount(process.env.BATON_TENANT_KEY as `0x${string}`),
 *   deployment: "deployments/31337.json",
 *   bootstrap: ["/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo…"],
 *   dataDir: ".baton/tenant",
 * });
 */
export async function createBatonClient({
  rpcUrl,
  account,
  deployment,
  bootstrap = [],
  dataDir,
  listen = ["/ip4/127.0.0.1/tcp/0"],
  announce = [],
  blockLanePort = 0,
  log = silentLogger,
  pollingIntervalMs = 100,
  maxLogRange,
  maxFeePerGas,
  replaceAfterMs,
  blockTimeS,
  confirmations,
  signal,
}: CreateBatonClientParameters): Promise<BatonClient> {
  const resolved = typeof deployment === "string" ? await loadDeploymentFile(deployment) : deployment;
  const chain = createChainClient({
    rpcUrl,
    deployment: resolved,
    account,
    pollingIntervalMs,
    ...(maxLogRange ? { maxLogRange } : {}),
    ...(maxFeePerGas ? { maxFeePerGas } : {}),
    ...(replaceAfterMs ? { replaceAfterMs } : {}),
    ...(blockTimeS === undefined ? {} : { blockTimeS }),
    ...(confirmations === undefined ? {} : { confirmations }),
  });
  await checkChain(chain, signal);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const jobs = await openJobStore(path.join(dataDir, "jobs"));
  const peerKey = await loadOrCreatePeerKey(path.join(dataDir, "peer.key"));
  const host = await createBatonHost({ privateKey: peerKey, listen, announce });
  let ipfs: IpfsNode;
  try {
    // Before any dial: bitswap ignores peers that connected before it registered.
    const blockLane = blockLaneOf(listen, blockLanePort);
    ipfs = await createIpfsNode({
      host,
      dir: path.join(dataDir, TENANT_IPFS_DIR),
      log: log.child("ipfs"),
      ...(blockLane ? { blockLane } : {}),
    });
  } catch (error) {
    await host.stop();
    throw error;
  }
  const stopDialling = keepConnected(host, bootstrap);

  const known = new Map<string, Offer>();
  const waiters = new Set<(offer: Offer) => void>();
  const unwatch = watchOffers({
    host,
    chain,
    onOffer: (offer) => {
      known.set(offer.peerId, offer);
      for (const wake of waiters) wake(offer);
      waiters.clear();
    },
    onError: (error) => log.debug("offer dropped", { error }),
  });
  const offers: OfferBook = {
    list: () => [...known.values()].filter((offer) => offer.expiresAt > Date.now()),
    next: (waitSignal) =>
      new Promise((resolve, reject) => {
        const abort = (): void => {
          waiters.delete(wake);
          reject(waitSignal!.reason);
        };
        const wake = (offer: Offer): void => {
          waitSignal?.removeEventListener("abort", abort);
          resolve(offer);
        };
        if (waitSignal?.aborted) return reject(waitSignal.reason);
        waitSignal?.addEventListener("abort", abort, { once: true });
        waiters.add(wake);
      }),
  };

  let queue: Promise<unknown> = Promise.resolve();
  return {
    account,
    chain,
    host,
    peerKey,
    ipfs,
    offers,
    jobs,
    dataDir,
    log,
    transact(send) {
      const next = queue.then(send, send);
      queue = next.catch(() => undefined);
      return next;
    },
    async close() {
      unwatch();
      stopDialling();
      await ipfs.stop();
      await host.stop();
    },
  };
}
