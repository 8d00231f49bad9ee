import path from "node:path";

import { peerIdFromPrivateKey } from "@libp2p/peer-id";

import { chainBlockTime, heartbeatTimingProblem } from "../sdk/chain/block-time.ts";
import { checkChain, contracts, createChainClient } from "../sdk/chain/client.ts";
import { loadDeploymentFile } from "../sdk/chain/deployments.ts";
import { peerBinding, verifyPeerProof } from "../sdk/chain/peer-proof.ts";
import { UserError } from "../sdk/errors.ts";
import { blockLaneOf } from "../sdk/ipfs/block-lanes.ts";
import { createIpfsNode } from "../sdk/ipfs/node.ts";
import { createLogger, type Logger } from "../sdk/logger.ts";
import { createBatonHost, keepConnected, loadOrCreatePeerKey } from "../sdk/p2p/host.ts";
import { pollUntil, sleep } from "../sdk/utils/retry.ts";
import { bids } from "./bids.ts";
import { chainDuties } from "./chain-duties.ts";
import { chainNow, type NodeComponents } from "./components.ts";
import { chainClientOptions, DATA_FILES, loadNodeConfig, nodeLogLevel, type NodeConfig } from "./config.ts";
import { detectGpus, fakeGpus, GpuAllocator, type Gpu } from "./gpus.ts";
import { loadAccount } from "./keystore.ts";
import { httpLanes } from "./http-lanes.ts";
import { httpProxy } from "./http-proxy.ts";
import { leases } from "./leases.ts";
import { lockDataDir } from "./lock.ts";
import { Metrics, serveMetrics } from "./metrics.ts";
import { setUpContainers } from "./containers/setup.ts";
import { prepareJobsDir } from "./jobs-dir.ts";
import { offerPublisher } from "./offers.ts";
import { openings } from "./openings.ts";
import { NOBODY_GID, NOBODY_UID } from "./sandbox/constants.ts";
import { detectSandbox } from "./sandbox/detect.ts";
import { NodeStore } from "./store.ts";
import { openWorkDirs } from "./work-dirs.ts";

export interface StartProviderNodeOptions {
  dataDir: string;
  /** Overrides the config file (tests). */
  config?: NodeConfig;
  /** Development key (BATON_PROVIDER_KEY); otherwise the keystore with `password`. */
  privateKey?: string;
  password?: string;
  /** Where the node logs; by default JSON lines on stderr at the config's level (BATON_LOG_LEVEL overrides it). */
  log?: Logger;
}

export interface ProviderNode {
  components: NodeComponents;
  addresses: string[];
  metricsPort: number | undefined;
  /**
   * Drains the node, then stops it: no new bids or leases from now on; running leases go on (jobs
   * running, heartbeated) for `graceMs` (default: the config's `drainTimeoutMs`) in case they end,
   * and if they all do, their outputs are served `drainOutputLingerMs` more; otherwise each lease
   * still running is handed back (its tenant told, its job stopped), and the node waits, at most
   * twice `handBackTimeoutMs`, for each to end on chain: the tenant's close acknowledged, or the
   * lease finished by the node itself.
   */
  drain(graceMs?: number): Promise<void>;
  /** Stops everything now; running jobs are killed. */
  stop(): Promise<void>;
}

async function machineGpus(config: NodeConfig, log: Logger): Promise<Gpu[]> {
  if (config.gpus !== "auto") {
    log.warn("using FAKE GPUs: for tests and development only; offers label them as fake", { spec: config.gpus.fake });
    return fakeGpus(config.gpus.fake);
  }
  const found = await detectGpus();
  if (found.length === 0 && !config.cpuJobs) {
    throw new UserError(
      "no GPU found (nvidia-smi is missing or lists none): set `cpuJobs: true` to serve CPU jobs, or `gpus: { fake: 2xFakeGPU }` for tests",
    );
  }
  return found;
}

/**
 * Starts a provider node from its data dir: checks the chain, the registration and the sandbox
 * before it announces anything, then runs offers, bids, lease sessions and its on-chain duties, and
 * relaunches the jobs of leases it was serving when it last stopped.
 */
export async function startProviderNode(options: StartProviderNodeOptions): Promise<ProviderNode> {
  const { dataDir } = options;
  const config = options.config ?? (await loadNodeConfig(dataDir));
  const log = options.log ?? createLogger("node", { level: nodeLogLevel(config) });
  const lock = lockDataDir(dataDir);
  try {
    return await startLocked(options, config, log, () => lock.release());
  } catch (error) {
    lock.release();
    throw error;
  }
}

/** {@link startProviderNode} once the data dir is ours: `unlock` lets it go when the node stops. */
async function startLocked(
  { dataDir, ...options }: StartProviderNodeOptions,
  config: NodeConfig,
  log: Logger,
  unlock: () => void,
): Promise<ProviderNode> {
  const deployment = await loadDeploymentFile(path.resolve(dataDir, config.deployment));
  const account = await loadAccount({
    keystore: path.resolve(dataDir, config.keystore),
    ...(options.password === undefined ? {} : { password: options.password }),
    ...(options.privateKey === undefined ? {} : { privateKey: options.privateKey }),
  });
  const chain = createChainClient({ ...chainClientOptions(config), deployment, account });
  await checkChain(chain);
  const blockTimeS = await chainBlockTime(chain);
  const timing = heartbeatTimingProblem({
    periodS: config.chainHeartbeatPeriodS,
    timeoutS: config.chainHeartbeatTimeoutS,
    blockTimeS,
  });
  if (timing) {
    throw new UserError(
      `chainHeartbeatTimeoutS (${config.chainHeartbeatTimeoutS} s) is too short for this chain: ${timing}` +
        (config.blockTimeS === undefined
          ? " (block time estimated from recent blocks; set blockTimeS to state it)"
          : ""),
    );
  }

  const peerKey = await loadOrCreatePeerKey(path.join(dataDir, DATA_FILES.peerKey));
  const peerId = peerIdFromPrivateKey(peerKey).toString();
  const registered = await chain.publicClient.readContract({
    ...contracts(deployment).registry,
    functionName: "getProvider",
    args: [account.address],
  });
  if (!registered.registered) {
    throw new UserError(`${account.address} is not registered: run \`baton provider register --stake N\` first`);
  }
  if (registered.peerId !== peerId) {
    throw new UserError(
      `${account.address} is registered with peer id ${registered.peerId}, but this node's is ${peerId}`,
    );
  }
  if (!(await verifyPeerProof(peerId, registered.metadata, peerBinding(deployment, account.address)))) {
    throw new UserError(
      `${account.address} has no proof of its peer key in its registered metadata, so tenants would ignore its offers: run \`baton provider register --stake N\` again to add it`,
    );
  }
  if (!registered.eligible) log.warn("stake is below the minimum: tenants will ignore this node's offers", {});
  const { minHeartbeatTimeout } = deployment.parameters;
  if (config.chainHeartbeatTimeoutS < minHeartbeatTimeout) {
    throw new UserError(
      `chainHeartbeatTimeoutS (${config.chainHeartbeatTimeoutS} s) is below this deployment's minimum heartbeat timeout (${minHeartbeatTimeout} s): the lease manager would refuse every quote`,
    );
  }

  if (config.sandbox === "bwrap") {
    const sandbox = await detectSandbox();
    if (sandbox.kind === "none") {
      throw new UserError(
        "bubblewrap (bwrap) is not installed: install it (apt-get install bubblewrap), or set `sandbox: unsafe-none` to run jobs unsandboxed (never for untrusted tenants)",
      );
    }
  } else {
    log.warn("UNSAFE: jobs run WITHOUT a sandbox; they can read this machine's files and reach its network", {});
  }

  const jobsDir = await prepareJobsDir({
    dataDir,
    configured: config.jobsDir,
    jobUser: process.getuid?.() === 0 ? { uid: NOBODY_UID, gid: NOBODY_GID } : undefined,
    log,
  });
  const workDirs = await openWorkDirs({ jobsDir, diskQuota: config.diskQuota, log });

  const gpuList = await machineGpus(config, log);
  let onCapacityChange = (): void => {};
  const gpus = new GpuAllocator(gpuList, () => onCapacityChange());
  const store = new NodeStore(path.join(dataDir, DATA_FILES.database));
  const chainClock = { offsetS: 0 };
  const metrics = new Metrics({
    gasBalance: () => chain.publicClient.getBalance({ address: account.address }),
    chainNow: () => chainNow({ chainClock }),
  });
  // Bootstrap peers are dialled only once the IPFS node is on the host: bitswap ignores peers that
  // were connected before it registered (seen with Helia 7.1.15).
  const host = await createBatonHost({
    privateKey: peerKey,
    listen: config.listen,
    announce: config.announce,
    ...(config.relayReservations > 0 ? { relay: { maxReservations: config.relayReservations } } : {}),
    dhtAddresses: config.dhtAddresses,
    log: log.child("p2p"),
  });
  const blockLane = blockLaneOf(config.listen, config.blockLanePort);
  const ipfs = await createIpfsNode({
    host,
    dir: path.join(dataDir, DATA_FILES.ipfs),
    log: log.child("ipfs"),
    onBlocksSent: ({ bytes, relayed, lane }) =>
      metrics.blockBytesSent.inc({ path: lane ? "lane" : relayed ? "relayed" : "direct" }, bytes),
    ...(blockLane ? { blockLane } : {}),
  });
  const stopDialling = keepConnected(host, config.bootstrap);
  const containers = await setUpContainers(config, { dataDir, ipfs, node: host.peerId.toString(), log });
  const components: NodeComponents = {
    config,
    dataDir,
    jobsDir,
    workDirs,
    host,
    ipfs,
    containers,
    peerKey,
    account,
    chain,
    store,
    gpus,
    metrics,
    log,
    chainClock,
    draining: { value: false },
  };

  const offers = offerPublisher(components);
  onCapacityChange = () => offers.refresh();
  const bidService = bids(components, () => offers.refresh());
  // Jobs that end are finished on chain at the next duty round (within a second).
  const signedOpenings = openings(components);
  const leaseService = leases(components, {
    openings: signedOpenings,
    onExit: () => void duties.tick(),
    onCapacityChange: () => offers.refresh(),
  });
  const duties = chainDuties(components, leaseService, signedOpenings);
  const proxy = httpProxy(components);
  const lanes = httpLanes(components);
  const metricsServer = config.metricsPort === null ? undefined : await serveMetrics(metrics, config.metricsPort);
  metrics.gpus.set(gpuList.length);

  await leaseService.recover();
  await bidService.start();
  await leaseService.start();
  await proxy.start();
  await lanes.start();
  duties.start();
  offers.start();
  log.info("provider node started", {
    address: account.address,
    peerId,
    addresses: host.getMultiaddrs().map((a) => a.toString()),
    gpus: gpuList.map((g) => `${g.index}:${g.model}${g.fake ? " (fake)" : ""}`),
    metricsPort: metricsServer?.port,
    httpLanePort: lanes.address()?.port,
    blockLanePort: ipfs.blockLanePort,
    blockTimeS,
  });

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    offers.stop();
    stopDialling();
    await bidService.stop().catch(() => undefined);
    await leaseService.stop().catch(() => undefined);
    await proxy.stop().catch(() => undefined);
    await lanes.stop().catch(() => undefined);
    await duties.stop();
    signedOpenings.stop();
    await leaseService.killAll("node stopping");
    await containers?.close();
    await metricsServer?.close();
    await ipfs.stop();
    await host.stop();
    store.close();
    unlock();
    log.info("provider node stopped", {});
  };

  return {
    components,
    addresses: host.getMultiaddrs().map((a) => a.toString()),
    metricsPort: metricsServer?.port,
    async drain(graceMs = config.drainTimeoutMs) {
      components.draining.value = true;
      offers.refresh();
      // Owed: a job running or starting, a result to finish on chain, a hand-back to see through.
      const settled = (): boolean => store.leases().length === 0;
      const pace = { delayMs: 200, backoff: 1 } as const;
      const serving = store.leases().map((lease) => lease.leaseId);
      log.info("draining: no new leases; running ones may finish", { leases: serving.length, graceMs });
      if (await pollUntil(settled, { ...pace, timeoutMs: graceMs })) {
        if (serving.some((leaseId) => store.getLease(leaseId)?.state === "finished")) {
          log.info("jobs ended during the drain: serving their outputs a while longer", {
            lingerMs: config.drainOutputLingerMs,
          });
          await sleep(config.drainOutputLingerMs);
        }
      } else {
        log.info("drain grace over: handing the leases still running back to their tenants", {
          leases: store.leases().length,
        });
        await leaseService.handBack();
        // The chain duties acknowledge each tenant's close, or finish the lease after
        // handBackTimeoutMs; as long again lets that finish land (it is retried every round).
        await pollUntil(settled, { ...pace, timeoutMs: 2 * config.handBackTimeoutMs });
      }
      await duties.tick();
      await stop();
    },
    stop,
  };
}
