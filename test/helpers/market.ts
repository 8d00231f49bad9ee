import { chmod, mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { createPublicClient, createTestClient, createWalletClient, http, parseEther, type TestClient } from "viem";
import { hardhat } from "viem/chains";
import type { HDAccount } from "viem/accounts";

import { deployBaton, writeDeployment } from "../../deploy/deploy.ts";
import { devAccount, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { contracts, createChainClient, writeContract, type ChainClient } from "../../sdk/chain/client.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { createBatonClient, type BatonClient } from "../../sdk/client.ts";
import type { Logger } from "../../sdk/logger.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost, keepConnected, loadOrCreatePeerKey, type BatonHost } from "../../sdk/p2p/host.ts";
import { writeNodeConfig, type NodeConfigInput } from "../../node/config.ts";
import { DATA_FILES } from "../../node/provider-node.ts";
import { spawnScript, type Spawned } from "./processes.ts";

export interface ProviderHandle {
  index: number;
  account: HDAccount;
  dataDir: string;
  peerId: string;
  address: string | undefined;
  process: Spawned | undefined;
  /** Starts (or restarts) the node process and waits until it listens. */
  start(): Promise<void>;
}

export interface Tenant {
  account: HDAccount;
  chain: ChainClient;
  host: BatonHost;
  key: PrivateKey;
  /** The tenant's own IPFS store, when asked for. */
  ipfs: IpfsNode | undefined;
}

export interface Market {
  dir: string;
  chain: LocalChain;
  deployment: Deployment;
  deploymentFile: string;
  admin: ChainClient;
  test: TestClient;
  providers: ProviderHandle[];
  /** A tenant with payment tokens and its own libp2p host, bootstrapped to the providers (and an IPFS store in `ipfsDir`). */
  tenant(index: number, options?: { ipfsDir?: string }): Promise<Tenant>;
  /**
   * An SDK client for tenant `index` (dev account 10 + index), its state in `dataDir`, bootstrapped
   * to the providers. The market stops it, unless the test closed it first.
   */
  client(index: number, dataDir: string, options?: { log?: Logger }): Promise<BatonClient>;
  stop(): Promise<void>;
}

export interface StartMarketOptions {
  providers: number;
  /** Node config overrides, e.g. fast heartbeats for tests. */
  config?: Partial<NodeConfigInput>;
  /** Config overrides for one provider. */
  configFor?: (index: number) => Partial<NodeConfigInput>;
}

/**
 * A whole local market for a test: chain, contracts, N registered providers (each a separate
 * `baton provider start` process with its own keys, ports and data dir). Provider accounts are dev
 * accounts 1…N; tenants use accounts 10 and up.
 */
export async function startMarket({ providers: count, config = {}, configFor }: StartMarketOptions): Promise<Market> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "baton-market-"));
  // Provider jobs run as an unprivileged user: it must be able to pass through to their work dirs.
  await chmod(dir, 0o711);
  const chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  const hosts: BatonHost[] = [];
  const ipfsNodes: IpfsNode[] = [];
  const stops: (() => void)[] = [];
  const clients: BatonClient[] = [];
  const funded = new Set<number>();
  try {
    const deployerClient = createWalletClient({
      account: devAccount(0),
      transport: http(chain.rpcUrl),
      chain: hardhat,
    });
    const publicClient = createPublicClient({ transport: http(chain.rpcUrl), chain: hardhat, pollingInterval: 50 });
    const deployment = await deployBaton({ walletClient: deployerClient, publicClient });
    const deploymentFile = await writeDeployment(path.join(dir, "deployments"), deployment);
    const admin = createChainClient({
      rpcUrl: chain.rpcUrl,
      deployment,
      account: devAccount(0),
      pollingIntervalMs: 50,
    });
    const { stakingToken, paymentToken, registry } = contracts(deployment);

    const providers: ProviderHandle[] = [];
    for (let index = 0; index < count; index++) {
      const account = devAccount(index + 1);
      const dataDir = path.join(dir, `provider-${index}`);
      const peerKey = await loadOrCreatePeerKey(await ensureDir(dataDir, DATA_FILES.peerKey));
      const peerId = peerIdFromPrivateKey(peerKey).toString();
      await writeNodeConfig(dataDir, {
        rpcUrl: chain.rpcUrl,
        deployment: deploymentFile,
        gpus: { fake: "1xFakeGPU" },
        sandbox: "bwrap",
        price: { basePerSecond: "0", perGpuPerSecond: "1000000000000" },
        collateralPerLease: parseEther("10").toString(),
        chainHeartbeatPeriodS: 2,
        chainHeartbeatTimeoutS: 20,
        offerRefreshMs: 500,
        claimIntervalMs: 3_000,
        metricsPort: 0,
        ...config,
        ...configFor?.(index),
      });
      const client = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account, pollingIntervalMs: 50 });
      await writeContract(admin, {
        ...stakingToken,
        functionName: "mint",
        args: [account.address, parseEther("1000")],
      });
      await writeContract(client, {
        ...stakingToken,
        functionName: "approve",
        args: [registry.address, parseEther("500")],
      });
      await writeContract(client, { ...registry, functionName: "register", args: [peerId, "{}", parseEther("500")] });
      const handle: ProviderHandle = {
        index,
        account,
        dataDir,
        peerId,
        address: undefined,
        process: undefined,
        async start() {
          const bootstrap = providers.filter((p) => p !== handle && p.address).map((p) => p.address!);
          const args = ["provider", "start", "--data-dir", dataDir, ...bootstrap.flatMap((b) => ["--bootstrap", b])];
          const proc = spawnScript("cli/baton.ts", args, { BATON_PROVIDER_KEY: privateKeyOf(account) });
          handle.process = proc;
          const line = await proc.waitFor(/provider node listening on /, 60_000);
          handle.address = line.split("provider node listening on ")[1]!.split(",")[0]!.trim();
        },
      };
      providers.push(handle);
    }
    for (const provider of providers) await provider.start();

    const test = createTestClient({ mode: "hardhat", transport: http(chain.rpcUrl), chain: hardhat });
    return {
      dir,
      chain,
      deployment,
      deploymentFile,
      admin,
      test,
      providers,
      async tenant(index, options = {}) {
        const account = devAccount(10 + index);
        const tenantChain = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account, pollingIntervalMs: 50 });
        await writeContract(admin, {
          ...paymentToken,
          functionName: "mint",
          args: [account.address, parseEther("1000")],
        });
        const key = await generateKeyPair("Ed25519");
        const bootstrap = providers.map((p) => p.address!).filter(Boolean);
        // No dialling until the IPFS node is on the host: bitswap ignores peers connected before it.
        const host = await createBatonHost({ privateKey: key });
        hosts.push(host);
        const ipfs = options.ipfsDir ? await createIpfsNode({ host, dir: options.ipfsDir }) : undefined;
        if (ipfs) ipfsNodes.push(ipfs);
        stops.push(keepConnected(host, bootstrap));
        return { account, chain: tenantChain, host, key, ipfs };
      },
      async client(index, dataDir, options = {}) {
        const account = devAccount(10 + index);
        if (!funded.has(index)) {
          funded.add(index);
          await writeContract(admin, {
            ...paymentToken,
            functionName: "mint",
            args: [account.address, parseEther("1000")],
          });
        }
        const client = await createBatonClient({
          rpcUrl: chain.rpcUrl,
          account,
          deployment,
          bootstrap: providers.map((p) => p.address!).filter(Boolean),
          dataDir,
          ...(options.log ? { log: options.log } : {}),
        });
        clients.push(client);
        return client;
      },
      async stop() {
        await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
        for (const stop of stops) stop();
        await Promise.all(ipfsNodes.map((i) => i.stop()));
        await Promise.all(hosts.map((h) => h.stop()));
        await Promise.all(providers.map((p) => p.process?.stop()));
        await chain.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    for (const stop of stops) stop();
    await chain.stop();
    throw error;
  }
}

async function ensureDir(dir: string, file: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  return path.join(dir, file);
}

/** The raw key of a dev account, for BATON_PROVIDER_KEY. */
export function privateKeyOf(account: HDAccount): string {
  const key = account.getHdKey().privateKey!;
  return `0x${Buffer.from(key).toString("hex")}`;
}
