import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { createPublicClient, createWalletClient, http, parseEther } from "viem";
import type { HDAccount } from "viem/accounts";
import { hardhat } from "viem/chains";

import { writeNodeConfig, type NodeConfigInput } from "../node/config.ts";
import { detectGpus } from "../node/gpus.ts";
import { writeKeystore } from "../node/keystore.ts";
import { DATA_FILES } from "../node/config.ts";
import { defaultRunRoot, Podman } from "../node/containers/podman.ts";
import { fallbackJobsDir } from "../node/jobs-dir.ts";
import { releaseQuotaFileSystems } from "../node/work-dirs.ts";
import { minHeartbeatTimeout } from "../sdk/chain/block-time.ts";
import { metadataWithPeerProof, peerBinding } from "../sdk/chain/peer-proof.ts";
import {
  contracts,
  createBatonClient,
  createChainClient,
  writeContract,
  type BatonClient,
  type ChainClient,
  type Deployment,
  type Logger,
} from "../sdk/index.ts";
import { silentLogger } from "../sdk/logger.ts";
import { loadOrCreatePeerKey } from "../sdk/p2p/host.ts";
import { defaultDeployParameters, deployBaton, writeDeployment } from "./deploy.ts";
import { checkBlockTime, devAccount, startLocalChain, type LocalChain, type LocalChainKind } from "./local-chain.ts";
import { startDevnetHosts, type DevnetHosts } from "./devnet-hosts.ts";
import { spawnScript, type Spawned } from "./processes.ts";

export interface DevnetProvider {
  index: number;
  /** A name for displays: `provider-<index>`. */
  name: string;
  account: HDAccount;
  dataDir: string;
  peerId: string;
  /** Its full listen multiaddr (`…/p2p/<id>`), once started. */
  address: string | undefined;
  process: Spawned | undefined;
  /** Starts (or restarts) the node process and waits until it listens. */
  start(): Promise<void>;
}

export interface Devnet {
  dir: string;
  chain: LocalChain;
  /** Seconds between blocks (interval mining), or 0: each transaction mined at once. */
  blockTimeS: number;
  deployment: Deployment;
  deploymentFile: string;
  /** The chain client of the deployer, who can mint dev tokens. */
  admin: ChainClient;
  providers: DevnetProvider[];
  /** Where the CLI finds this network (`baton job … --network <file>`). */
  networkFile: string;
  /** With `netns`: the hosts, the tenant's among them. */
  hosts: DevnetHosts | undefined;
  /** Mints payment tokens to `address` (dev tokens: anyone may mint). */
  fund(address: `0x${string}`, amount: bigint): Promise<void>;
  /**
   * An SDK client for tenant dev account `10 + index`, funded with 100 payment tokens, bootstrapped
   * to every provider, its state in `dataDir` (default `<dir>/tenant-<index>`).
   */
  tenantClient(options?: TenantClientOptions): Promise<BatonClient>;
  /** Stops every provider and the chain; with `keep`, leaves `dir` behind. */
  stop(options?: { keep?: boolean }): Promise<void>;
}

export interface TenantClientOptions {
  index?: number;
  dataDir?: string;
  log?: Logger;
  /** Where the tenant listens; loopback by default, `[]` for a tenant nobody can dial (one behind a NAT). */
  listen?: string[];
  /** The peers it joins through; every provider's address by default. */
  bootstrap?: string[];
}

/** What a provider's config may depend on: the chain, and the peer ids of the providers before it. */
export interface DevnetSoFar {
  rpcUrl: string;
  peerIds: string[];
}

export interface StartDevnetParameters {
  providers: number;
  /** The chain's EVM: Hardhat's EDR (the default) or Anvil. */
  chain?: LocalChainKind;
  /**
   * Seconds between blocks, as on a public chain (2 on most L2s, 12 on Ethereum); 0, the default,
   * mines each transaction at once. The setup (deployment, registrations) is mined at once either
   * way; the chain switches to a block every `blockTimeS` before the providers start.
   */
  blockTimeS?: number;
  /** Where everything lives; a fresh temp dir by default. */
  dir?: string;
  /** Node config for every provider (e.g. fast heartbeats), and per provider (told the chain's URL and the peer ids before it). */
  config?: Partial<NodeConfigInput>;
  configFor?: (index: number, devnet: DevnetSoFar) => Partial<NodeConfigInput>;
  /**
   * What runs provider `index`'s node process instead of itself: `nsenter --net=… …` puts it on
   * a host of its own (see `netns.ts`; its config must then name an RPC URL it can reach).
   */
  wrapProvider?: (index: number) => ((argv: string[]) => string[]) | undefined;
  /**
   * Puts each provider on a host of its own, and tenants on one more, instead of all on this
   * machine's loopback (see `devnet-hosts.ts`; needs root): the last `behindNat` providers behind
   * NATs, reached through provider 1. The network file is then for the tenant host: run tenants
   * with `devnet.hosts.tenant.command(argv)` (`nsenter --net=… …`).
   */
  netns?: { behindNat?: number };
  /** Receives every provider's output lines, tagged with its name. */
  onProviderLine?: (name: string, line: string) => void;
  /** Progress while starting, for people. */
  onStep?: (message: string) => void;
  signal?: AbortSignal;
}

/** Registered stake per provider. */
const PROVIDER_STAKE = parseEther("500");

/**
 * The password of every devnet provider's keystore (`<data dir>/key.json`), so that the provider
 * commands open a devnet provider like any other (`BATON_KEYSTORE_PASSWORD=devnet baton provider
 * status --data-dir .baton/devnet/provider-1`). Development only: the keys are Hardhat's well-known
 * accounts anyway.
 */
export const DEVNET_KEYSTORE_PASSWORD = "devnet";

/**
 * scrypt's cost for those keystores: their password is public, so the default cost (about a second
 * and 256 MiB per key) would buy nothing but a slower devnet.
 */
const DEVNET_SCRYPT_N = 2 ** 12;

/**
 * What a devnet provider runs with unless told otherwise: CPU jobs accepted (the example job needs
 * no GPU), a price of 10⁻⁶ tokens per second, collateral of 10 tokens per lease, and on-chain
 * heartbeats every 2 s with a 10 s timeout (on slow blocks, what {@link chainHeartbeatsFor} raises
 * them to), so that a dead provider is slashable within seconds (a public chain would use the
 * defaults: 30 s and 120 s).
 */
export const DEVNET_NODE_CONFIG = {
  cpuJobs: true,
  price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
  collateralPerLease: parseEther("10").toString(),
  chainHeartbeatPeriodS: 2,
  chainHeartbeatTimeoutS: 10,
  offerRefreshMs: 1_000,
  claimIntervalMs: 10_000,
} satisfies Partial<NodeConfigInput>;

/**
 * On-chain heartbeat settings no faster than a chain with `blockTimeS` blocks can keep: the period
 * at least a block (a faster one only sends a heartbeat per block anyway), the timeout at least
 * `minHeartbeatTimeout` of it. At 12 s blocks the devnet's 2 s / 10 s become 12 s / 48 s.
 */
export function chainHeartbeatsFor(
  blockTimeS: number,
  { periodS, timeoutS }: { periodS: number; timeoutS: number },
): Pick<NodeConfigInput, "chainHeartbeatPeriodS" | "chainHeartbeatTimeoutS"> {
  const period = Math.max(periodS, Math.ceil(blockTimeS));
  return {
    chainHeartbeatPeriodS: period,
    chainHeartbeatTimeoutS: Math.max(timeoutS, Math.ceil(minHeartbeatTimeout(period, blockTimeS))),
  };
}

/** The devnet deployment's shortest heartbeat timeout: the default, or what the block time needs for a 1 s period. */
function devnetMinHeartbeatTimeout(blockTimeS: number): number {
  return Math.max(defaultDeployParameters.minHeartbeatTimeout, Math.ceil(minHeartbeatTimeout(1, blockTimeS)));
}

/**
 * A whole Baton network on this machine: a local chain (Hardhat/EDR, or Anvil, on 127.0.0.1), the
 * contracts deployed, and N registered providers, each a separate `baton provider start` process
 * with its own keys, ports, data dir and IPFS store. Providers use the machine's GPUs when
 * `nvidia-smi` finds them and fake (labelled) ones otherwise. Each provider is tied to us through
 * its stdin, so it stops when we do, however we die. Provider accounts are dev accounts 1…N.
 *
 * @example
 * const devnet = await startDevnet({ providers: 3 });
 * try { ... } finally { await devnet.stop(); }
 */
export async function startDevnet({
  providers: count,
  chain: kind = "hardhat",
  blockTimeS = 0,
  dir: givenDir,
  config = {},
  configFor,
  wrapProvider,
  netns,
  onProviderLine,
  onStep = () => {},
  signal,
}: StartDevnetParameters): Promise<Devnet> {
  // Before anything starts: `mineEvery` would refuse it only after the whole setup.
  checkBlockTime(kind, blockTimeS);
  const dir = givenDir ?? (await mkdtemp(path.join(os.tmpdir(), "baton-devnet-")));
  await mkdir(dir, { recursive: true });
  // Provider jobs run as an unprivileged user: it must be able to pass through to their work dirs.
  await chmod(dir, 0o711);
  onStep(`starting the local chain (${kind === "anvil" ? "Anvil" : "Hardhat/EDR"})`);
  const chain = await startLocalChain({ chain: kind, signal: signal ?? AbortSignal.timeout(60_000) });
  const providers: DevnetProvider[] = [];
  let hosts: DevnetHosts | undefined;
  try {
    if (netns) {
      onStep("making a host for each provider and one for tenants (network namespaces)");
      hosts = await startDevnetHosts({
        providers: count,
        behindNat: netns.behindNat ?? 0,
        dir,
        chainPort: Number(new URL(chain.rpcUrl).port),
      });
    }
    const deployerClient = createWalletClient({
      account: devAccount(0),
      transport: http(chain.rpcUrl),
      chain: hardhat,
    });
    const publicClient = createPublicClient({ transport: http(chain.rpcUrl), chain: hardhat, pollingInterval: 50 });
    onStep("deploying the contracts");
    const deployment = await deployBaton({
      walletClient: deployerClient,
      publicClient,
      parameters: { minHeartbeatTimeout: devnetMinHeartbeatTimeout(blockTimeS) },
      blockTimeS,
    });
    const deploymentFile = await writeDeployment(path.join(dir, "deployments"), deployment);
    const admin = createChainClient({
      rpcUrl: chain.rpcUrl,
      deployment,
      account: devAccount(0),
      pollingIntervalMs: 50,
      blockTimeS,
    });
    const { stakingToken, paymentToken, registry } = contracts(deployment);
    const realGpus = (await detectGpus({ signal: AbortSignal.timeout(10_000) }).catch(() => [])).length > 0;
    onStep(
      realGpus ? "using this machine's GPUs" : "no nvidia-smi here: providers get one FAKE GPU each (labelled as fake)",
    );

    const networkFile = path.join(dir, "network.json");
    let networkWritten = false;
    const writeNetwork = (): Promise<void> =>
      writeFile(
        networkFile,
        JSON.stringify(
          {
            rpcUrl: hosts?.rpcUrl ?? chain.rpcUrl,
            deployment: path.relative(dir, deploymentFile),
            bootstrap: providers.filter((p) => p.address).map((p) => p.address!),
            ...(hosts ? { listen: [`/ip4/0.0.0.0/tcp/0`] } : {}),
            names: Object.fromEntries(providers.map((p) => [p.account.address, p.name])),
          },
          null,
          2,
        ),
      );
    for (let index = 0; index < count; index++) {
      signal?.throwIfAborted();
      const account = devAccount(index + 1);
      const name = `provider-${index + 1}`;
      const dataDir = path.join(dir, name);
      await mkdir(dataDir, { recursive: true, mode: 0o700 });
      const peerKey = await loadOrCreatePeerKey(path.join(dataDir, DATA_FILES.peerKey));
      const peerId = peerIdFromPrivateKey(peerKey).toString();
      await writeKeystore(
        path.join(dataDir, "key.json"),
        privateKeyOf(account),
        DEVNET_KEYSTORE_PASSWORD,
        DEVNET_SCRYPT_N,
      );
      await writeNodeConfig(dataDir, {
        rpcUrl: chain.rpcUrl,
        deployment: deploymentFile,
        gpus: realGpus ? "auto" : { fake: "1xFakeGPU" },
        sandbox: "bwrap",
        metricsPort: 0,
        keystore: "key.json",
        ...DEVNET_NODE_CONFIG,
        ...chainHeartbeatsFor(blockTimeS, {
          periodS: DEVNET_NODE_CONFIG.chainHeartbeatPeriodS,
          timeoutS: DEVNET_NODE_CONFIG.chainHeartbeatTimeoutS,
        }),
        blockTimeS,
        ...config,
        ...hosts?.configFor(index),
        ...configFor?.(index, { rpcUrl: chain.rpcUrl, peerIds: providers.map((p) => p.peerId) }),
      });
      onStep(`registering ${name} (${account.address}) with a stake of 500`);
      const client = createChainClient({
        rpcUrl: chain.rpcUrl,
        deployment,
        account,
        pollingIntervalMs: 50,
        blockTimeS,
      });
      await writeContract(admin, {
        ...stakingToken,
        functionName: "mint",
        args: [account.address, parseEther("1000")],
      });
      await writeContract(client, {
        ...stakingToken,
        functionName: "approve",
        args: [registry.address, PROVIDER_STAKE],
      });
      const metadata = await metadataWithPeerProof("{}", peerKey, peerBinding(deployment, account.address));
      await writeContract(client, { ...registry, functionName: "register", args: [peerId, metadata, PROVIDER_STAKE] });
      const handle: DevnetProvider = {
        index,
        name,
        account,
        dataDir,
        peerId,
        address: undefined,
        process: undefined,
        async start() {
          const bootstrap = providers.filter((p) => p !== handle && p.address).map((p) => p.address!);
          const launch = (listen: string | undefined): Spawned => {
            const args = [
              "provider",
              "start",
              "--exit-with-stdin",
              "--data-dir",
              dataDir,
              ...(listen ? ["--listen", listen] : []),
              ...bootstrap.flatMap((b) => ["--bootstrap", b]),
            ];
            const wrap = wrapProvider?.(index) ?? hosts?.provider(index).command;
            return spawnScript(
              "cli/baton.ts",
              args,
              { BATON_PROVIDER_KEY: privateKeyOf(account) },
              {
                ...(onProviderLine ? { onLine: (line: string) => onProviderLine(name, line) } : {}),
                ...(wrap ? { wrap } : {}),
              },
            );
          };
          // A restart listens where the node listened before, as a real provider's fixed port does:
          // peers that bootstrapped from that address (clients, other providers) dial it again. Only
          // when the port was taken meanwhile does it take a new one; clients that read the network
          // file then find it there.
          // One that listens through a relay listens there again, as its config says.
          // One on a host of its own listens at a fixed port, as its config says.
          const previous =
            hosts || handle.address?.includes("/p2p-circuit") ? undefined : handle.address?.replace(/\/p2p\/.*$/, "");
          let proc = launch(previous);
          handle.process = proc;
          const line = await proc.waitFor(/provider node listening on /, 60_000).catch(async (error: unknown) => {
            if (!previous || !proc.lines.some((l) => l.includes("is already in use"))) throw error;
            proc = launch(undefined);
            handle.process = proc;
            return proc.waitFor(/provider node listening on /, 60_000);
          });
          // On a host of its own it prints its addresses there (its LAN's, loopback): not the ones others dial.
          handle.address =
            hosts?.addressOf(
              index,
              providers.map((p) => p.peerId),
            ) ?? line.split("provider node listening on ")[1]!.split(",")[0]!.trim();
          if (networkWritten) await writeNetwork();
        },
      };
      providers.push(handle);
    }
    if (blockTimeS > 0) {
      onStep(`mining a block every ${blockTimeS} s from now on`);
      // The chain's own dev methods: the devnet is the only place outside tests that uses them.
      await chain.mineEvery(blockTimeS);
    }
    for (const provider of providers) {
      onStep(`starting ${provider.name}`);
      await provider.start();
    }

    await writeNetwork();
    networkWritten = true;
    let stopped: Promise<void> | undefined;
    return {
      dir,
      chain,
      blockTimeS,
      deployment,
      deploymentFile,
      admin,
      providers,
      networkFile,
      hosts,
      async fund(address, amount) {
        await writeContract(admin, { ...paymentToken, functionName: "mint", args: [address, amount] });
      },
      async tenantClient({
        index = 0,
        dataDir = path.join(dir, `tenant-${index}`),
        log,
        listen,
        bootstrap = providers.map((p) => p.address!),
      } = {}) {
        if (hosts) throw new Error("a devnet of separate hosts: run tenants on its tenant host (devnet.hosts.tenant)");
        const account = devAccount(10 + index);
        await writeContract(admin, {
          ...paymentToken,
          functionName: "mint",
          args: [account.address, parseEther("100")],
        });
        return createBatonClient({
          rpcUrl: chain.rpcUrl,
          account,
          deployment,
          bootstrap,
          dataDir,
          blockTimeS,
          ...(log ? { log } : {}),
          ...(listen ? { listen } : {}),
        });
      },
      stop({ keep = false } = {}) {
        stopped ??= (async () => {
          await Promise.all(providers.map((p) => p.process?.stop()));
          // A provider stopped with SIGKILL (a test's victim, or one past its stop timeout) leaves
          // its Podman runroot in /run, and its leases' work dirs' file systems mounted: the
          // devnet's own, so they go with it.
          await Promise.all(providers.map((p) => removeRunRoot(p.dataDir)));
          for (const p of providers) {
            for (const jobs of [p.dataDir, await fallbackJobsDir(p.dataDir)]) {
              await releaseQuotaFileSystems(jobs, silentLogger);
            }
          }
          await chain.stop();
          await hosts?.close();
          if (!keep && !givenDir) await rm(dir, { recursive: true, force: true });
        })();
        return stopped;
      },
    };
  } catch (error) {
    await Promise.all(providers.map((p) => p.process?.stop()));
    await chain.stop();
    await hosts?.close();
    throw error;
  }
}

/**
 * Removes a stopped provider's container runroot (see `defaultRunRoot`) unless a container of its
 * store is still there: Podman needs the runroot to clean that one up.
 */
async function removeRunRoot(dataDir: string): Promise<void> {
  const root = path.join(dataDir, "containers", "storage");
  const runroot = defaultRunRoot(root);
  if (!existsSync(runroot)) return;
  const podman = await Podman.open({ root, runroot }).catch(() => undefined);
  const left = await podman?.run(["ps", "--all", "--quiet"]).then(
    ({ stdout }) => stdout.trim(),
    () => "?",
  );
  if (left === "") await rm(runroot, { recursive: true, force: true });
}

/** The raw key of a dev account, for BATON_PROVIDER_KEY / BATON_TENANT_KEY. */
export function privateKeyOf(account: HDAccount): `0x${string}` {
  const key = account.getHdKey().privateKey!;
  return `0x${Buffer.from(key).toString("hex")}`;
}
