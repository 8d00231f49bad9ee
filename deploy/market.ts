import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { createTestClient, http, parseEther, type TestClient } from "viem";
import type { HDAccount } from "viem/accounts";
import { hardhat } from "viem/chains";

import type { NodeConfigInput } from "../node/config.ts";
import { createChainClient, type BatonClient, type ChainClient } from "../sdk/index.ts";
import { createIpfsNode, type IpfsNode } from "../sdk/ipfs/node.ts";
import { createBatonHost, keepConnected, type BatonHost } from "../sdk/p2p/host.ts";
import {
  chainHeartbeatsFor,
  startDevnet,
  type Devnet,
  type DevnetProvider,
  type DevnetSoFar,
  type StartDevnetParameters,
  type TenantClientOptions,
} from "./devnet.ts";
import { devAccount, type LocalChainKind } from "./local-chain.ts";

export type ProviderHandle = DevnetProvider;

export interface Tenant {
  account: HDAccount;
  chain: ChainClient;
  host: BatonHost;
  key: PrivateKey;
  /** The tenant's own IPFS store, when asked for. */
  ipfs: IpfsNode | undefined;
}

export interface Market extends Devnet {
  /** The chain's dev methods (time travel, mining), in its own dialect: Hardhat's or Anvil's. */
  test: TestClient;
  /** A tenant with payment tokens and its own libp2p host, bootstrapped to the providers (and an IPFS store in `ipfsDir`). */
  tenant(index: number, options?: { ipfsDir?: string }): Promise<Tenant>;
  /**
   * `devnet.tenantClient` for tenant `index` (dev account 10 + index), its state in `dataDir`. The
   * market stops it, unless the test closed it first.
   */
  client(
    index: number,
    dataDir: string,
    options?: Omit<TenantClientOptions, "index" | "dataDir">,
  ): Promise<BatonClient>;
}

export interface StartMarketOptions {
  providers: number;
  /** The chain's EVM: Hardhat's EDR (the default) or Anvil. */
  chain?: LocalChainKind;
  /** Seconds between blocks (interval mining); 0, the default, mines each transaction at once. */
  blockTimeS?: number;
  /** Where the devnet lives; a fresh temp dir by default. */
  dir?: string;
  /** Node config overrides, e.g. fast heartbeats for tests. */
  config?: Partial<NodeConfigInput>;
  /** Config overrides for one provider. */
  configFor?: (index: number, devnet: DevnetSoFar) => Partial<NodeConfigInput>;
  /** See `StartDevnetParameters.wrapProvider`. */
  wrapProvider?: StartDevnetParameters["wrapProvider"];
  /** See `StartDevnetParameters.netns`: tenants then run on `market.hosts.tenant`, not in this process. */
  netns?: StartDevnetParameters["netns"];
}

/**
 * A devnet for a test or a benchmark (fake GPUs, fast on-chain heartbeats: period 2 s, timeout
 * 20 s, or what slow blocks need), plus tenants: dev accounts 10 and up, funded with payment tokens
 * on first use.
 */
export async function startMarket({
  providers,
  chain,
  blockTimeS = 0,
  dir,
  config = {},
  configFor,
  wrapProvider,
  netns,
}: StartMarketOptions): Promise<Market> {
  const devnet = await startDevnet({
    providers,
    ...(chain ? { chain } : {}),
    blockTimeS,
    ...(dir ? { dir } : {}),
    config: {
      gpus: { fake: "1xFakeGPU" },
      cpuJobs: false,
      price: { basePerSecond: "0", perGpuPerSecond: "1000000000000" },
      collateralPerLease: parseEther("10").toString(),
      ...chainHeartbeatsFor(blockTimeS, { periodS: 2, timeoutS: 20 }),
      offerRefreshMs: 500,
      claimIntervalMs: 3_000,
      ...config,
    },
    ...(configFor ? { configFor } : {}),
    ...(wrapProvider ? { wrapProvider } : {}),
    ...(netns ? { netns } : {}),
  });
  const hosts: BatonHost[] = [];
  const ipfsNodes: IpfsNode[] = [];
  const stops: (() => void)[] = [];
  const clients: BatonClient[] = [];
  const funded = new Set<number>();
  const fund = async (index: number): Promise<HDAccount> => {
    const account = devAccount(10 + index);
    if (!funded.has(index)) {
      funded.add(index);
      await devnet.fund(account.address, parseEther("1000"));
    }
    return account;
  };
  const bootstrap = (): string[] => devnet.providers.map((p) => p.address!).filter(Boolean);
  return {
    ...devnet,
    test: createTestClient({ mode: devnet.chain.kind, transport: http(devnet.chain.rpcUrl), chain: hardhat }),
    async tenant(index, options = {}) {
      const account = await fund(index);
      const chain = createChainClient({
        rpcUrl: devnet.chain.rpcUrl,
        deployment: devnet.deployment,
        account,
        pollingIntervalMs: 50,
        blockTimeS,
      });
      const key = await generateKeyPair("Ed25519");
      // No dialling until the IPFS node is on the host: bitswap ignores peers connected before it.
      const host = await createBatonHost({ privateKey: key });
      hosts.push(host);
      const ipfs = options.ipfsDir ? await createIpfsNode({ host, dir: options.ipfsDir }) : undefined;
      if (ipfs) ipfsNodes.push(ipfs);
      stops.push(keepConnected(host, bootstrap()));
      return { account, chain, host, key, ipfs };
    },
    async client(index, dataDir, options = {}) {
      const client = await devnet.tenantClient({ ...options, index, dataDir });
      clients.push(client);
      return client;
    },
    async stop() {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      for (const stop of stops) stop();
      await Promise.all(ipfsNodes.map((i) => i.stop()));
      await Promise.all(hosts.map((h) => h.stop()));
      await devnet.stop();
    },
  };
}
