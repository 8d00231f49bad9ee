import { mkdir } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";

import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { formatUnits, parseUnits } from "viem";
import { generatePrivateKey } from "viem/accounts";

import {
  checkChain,
  contracts,
  createChainClient,
  leaseStatus,
  writeContract,
  type ChainClient,
} from "../sdk/chain/client.ts";
import { loadDeploymentFile } from "../sdk/chain/deployments.ts";
import { metadataWithPeerProof, peerBinding, verifyPeerProof } from "../sdk/chain/peer-proof.ts";
import { UserError } from "../sdk/errors.ts";
import { loadOrCreatePeerKey } from "../sdk/p2p/host.ts";
import { DATA_FILES, loadNodeConfig, writeNodeConfig, type NodeConfigInput } from "../node/config.ts";
import { loadAccount, writeKeystore } from "../node/keystore.ts";
import { NodeStore } from "../node/store.ts";
import { table } from "./output.ts";

const DEFAULT_DATA_DIR = path.join(".baton", "provider");

const common = {
  "data-dir": { type: "string", default: DEFAULT_DATA_DIR },
} as const;

function keyOptions(): { privateKey?: string; password?: string } {
  return {
    ...(process.env.BATON_PROVIDER_KEY ? { privateKey: process.env.BATON_PROVIDER_KEY } : {}),
    ...(process.env.BATON_KEYSTORE_PASSWORD ? { password: process.env.BATON_KEYSTORE_PASSWORD } : {}),
  };
}

async function connect(dataDir: string): Promise<{ chain: ChainClient; peerId: string; peerKey: PrivateKey }> {
  const config = await loadNodeConfig(dataDir);
  const deployment = await loadDeploymentFile(path.resolve(dataDir, config.deployment));
  const account = await loadAccount({ keystore: path.resolve(dataDir, config.keystore), ...keyOptions() });
  const chain = createChainClient({ rpcUrl: config.rpcUrl, deployment, account, pollingIntervalMs: 100 });
  await checkChain(chain);
  const peerKey = await loadOrCreatePeerKey(path.join(dataDir, DATA_FILES.peerKey));
  return { chain, peerId: peerIdFromPrivateKey(peerKey).toString(), peerKey };
}

async function tokenAmount(chain: ChainClient, token: "stakingToken" | "paymentToken", text: string): Promise<bigint> {
  const decimals = await chain.publicClient.readContract({
    ...contracts(chain.deployment)[token],
    functionName: "decimals",
  });
  if (!/^\d+(\.\d+)?$/.test(text)) throw new UserError(`not an amount: ${text}`);
  return parseUnits(text, decimals);
}

async function init(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...common,
      "rpc-url": { type: "string", default: "http://127.0.0.1:8545" },
      deployment: { type: "string", default: path.join("deployments", "31337.json") },
      listen: { type: "string", multiple: true },
      bootstrap: { type: "string", multiple: true },
      "fake-gpus": { type: "string" },
      "cpu-jobs": { type: "boolean", default: false },
      "unsafe-no-sandbox": { type: "boolean", default: false },
      "price-base": { type: "string", default: "0" },
      "price-per-gpu": { type: "string", default: "1000000000000" },
      collateral: { type: "string", default: "10000000000000000000" },
    },
  });
  const dataDir = values["data-dir"];
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const keystore = "key.json";
  if (!process.env.BATON_PROVIDER_KEY) {
    const password = process.env.BATON_KEYSTORE_PASSWORD;
    if (!password)
      throw new UserError("set BATON_KEYSTORE_PASSWORD to encrypt the new key (or BATON_PROVIDER_KEY in development)");
    await writeKeystore(path.join(dataDir, keystore), generatePrivateKey(), password);
  }
  const peerKey = await loadOrCreatePeerKey(path.join(dataDir, DATA_FILES.peerKey));
  const config: NodeConfigInput = {
    rpcUrl: values["rpc-url"],
    deployment: path.resolve(values.deployment),
    keystore,
    listen: values.listen ?? ["/ip4/127.0.0.1/tcp/0"],
    bootstrap: values.bootstrap ?? [],
    gpus: values["fake-gpus"] ? { fake: values["fake-gpus"] } : "auto",
    cpuJobs: values["cpu-jobs"],
    sandbox: values["unsafe-no-sandbox"] ? "unsafe-none" : "bwrap",
    price: { basePerSecond: values["price-base"], perGpuPerSecond: values["price-per-gpu"] },
    collateralPerLease: values.collateral,
  };
  const file = await writeNodeConfig(dataDir, config);
  const account = await loadAccount({ keystore: path.join(dataDir, keystore), ...keyOptions() });
  console.log(`wrote ${file}`);
  console.log(`address  ${account.address}`);
  console.log(`peer id  ${peerIdFromPrivateKey(peerKey).toString()}`);
  console.log("next: fund the address with gas and staking tokens, then `baton provider register --stake N`");
}

async function register(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { ...common, stake: { type: "string" }, metadata: { type: "string", default: "{}" } },
  });
  if (!values.stake) throw new UserError("--stake N is required (in staking tokens)");
  const { chain, peerId, peerKey } = await connect(values["data-dir"]);
  const { registry, stakingToken } = contracts(chain.deployment);
  const me = chain.walletClient!.account.address;
  // Tenants trust our peer id only with this proof that its key is ours (see sdk/chain/peer-proof.ts).
  const binding = peerBinding(chain.deployment, me);
  const metadata = await metadataWithPeerProof(values.metadata, peerKey, binding);
  const amount = await tokenAmount(chain, "stakingToken", values.stake);
  const balance = await chain.publicClient.readContract({ ...stakingToken, functionName: "balanceOf", args: [me] });
  if (balance < amount) {
    throw new UserError(`insufficient staking-token balance: ${formatUnits(balance, 18)} < ${values.stake}`);
  }
  await writeContract(chain, { ...stakingToken, functionName: "approve", args: [registry.address, amount] });
  const current = await chain.publicClient.readContract({ ...registry, functionName: "getProvider", args: [me] });
  if (current.registered) {
    if (current.peerId !== peerId || !(await verifyPeerProof(peerId, current.metadata, binding))) {
      await writeContract(chain, { ...registry, functionName: "updateProfile", args: [peerId, metadata] });
      console.log(`updated the profile of ${me}: peer id ${peerId}, with its proof`);
    }
    await writeContract(chain, { ...registry, functionName: "stake", args: [amount] });
    console.log(`added ${values.stake} to the stake of ${me}`);
  } else {
    await writeContract(chain, { ...registry, functionName: "register", args: [peerId, metadata, amount] });
    console.log(`registered ${me} as ${peerId} with a stake of ${values.stake}`);
  }
}

async function start(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...common,
      bootstrap: { type: "string", multiple: true },
      "exit-with-stdin": { type: "boolean", default: false },
    },
  });
  const config = await loadNodeConfig(values["data-dir"]);
  config.bootstrap.push(...(values.bootstrap ?? []));
  // Loaded here: the node (libp2p, Helia, the sandbox) costs seconds that other commands need not pay.
  const { startProviderNode } = await import("../node/provider-node.ts");
  const node = await startProviderNode({ dataDir: values["data-dir"], config, ...keyOptions() });
  console.log(`provider node listening on ${node.addresses.join(", ")}`);
  if (node.metricsPort !== undefined) console.log(`metrics on http://127.0.0.1:${node.metricsPort}/metrics`);
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: draining (no new leases; running ones keep their heartbeats until they end)`);
    node.drain().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  if (values["exit-with-stdin"]) {
    // Started by a supervisor (`baton devnet`) that holds our stdin: when it dies, even by SIGKILL,
    // the pipe closes and we stop at once, jobs included, rather than live on as an orphan.
    process.stdin.on("end", () => {
      if (stopping) return;
      stopping = true;
      console.log("stdin closed: the supervisor is gone; stopping");
      node.stop().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    });
    process.stdin.resume();
  }
}

async function status(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { ...common, json: { type: "boolean", default: false } } });
  const { chain } = await connect(values["data-dir"]);
  const { registry, leaseManager } = contracts(chain.deployment);
  const me = chain.walletClient!.account.address;
  const provider = await chain.publicClient.readContract({ ...registry, functionName: "getProvider", args: [me] });
  const claimable = await chain.publicClient.readContract({ ...leaseManager, functionName: "claimable", args: [me] });
  const store = new NodeStore(path.join(values["data-dir"], DATA_FILES.database));
  const rows = store.leases(["preparing", "running", "exited", "finished", "fenced", "failed"]);
  store.close();
  const leases = await Promise.all(
    rows.slice(-20).map(async (row) => {
      const lease = await chain.publicClient.readContract({
        ...leaseManager,
        functionName: "getLease",
        args: [row.leaseId],
      });
      return { id: row.leaseId, node: row.state, chain: leaseStatus[lease.status] ?? "?", earned: lease.earned };
    }),
  );
  const unclaimed = claimable + leases.reduce((sum, l) => sum + l.earned, 0n);
  if (values.json) {
    console.log(
      JSON.stringify(
        { address: me, provider, claimable, unclaimed, leases },
        (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v),
        2,
      ),
    );
    return;
  }
  const f = (v: bigint): string => formatUnits(v, 18);
  console.log(
    table([
      ["address", me],
      ["registered", provider.registered ? `yes, peer ${provider.peerId}` : "no"],
      ["eligible", provider.eligible ? "yes" : "no (stake below minimum)"],
      ["stake", f(provider.stake)],
      ["locked as collateral", f(provider.locked)],
      [
        "unbonding",
        provider.unbonding > 0n
          ? `${f(provider.unbonding)} until ${new Date(Number(provider.unbondingEndsAt) * 1000).toISOString()}`
          : "0",
      ],
      [
        "leases opened/completed/slashed",
        `${provider.leasesOpened}/${provider.leasesCompleted}/${provider.leasesSlashed}`,
      ],
      ["seconds served", provider.secondsServed],
      ["claimable now", f(claimable)],
      ["earned, unclaimed (incl. unsettled)", f(unclaimed)],
    ]),
  );
  if (leases.length > 0) {
    console.log("");
    console.log(
      table([
        ["lease", "node", "chain", "earned (unsettled)"],
        ...leases.map((l) => [l.id, l.node, l.chain, f(l.earned)]),
      ]),
    );
  }
}

async function unstake(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: { ...common }, allowPositionals: true });
  if (!positionals[0]) throw new UserError("usage: baton provider unstake <amount>");
  const { chain } = await connect(values["data-dir"]);
  const amount = await tokenAmount(chain, "stakingToken", positionals[0]);
  await writeContract(chain, {
    ...contracts(chain.deployment).registry,
    functionName: "requestUnstake",
    args: [amount],
  });
  const provider = await chain.publicClient.readContract({
    ...contracts(chain.deployment).registry,
    functionName: "getProvider",
    args: [chain.walletClient!.account.address],
  });
  console.log(
    `unbonding ${positionals[0]}; withdraw after ${new Date(Number(provider.unbondingEndsAt) * 1000).toISOString()}`,
  );
}

async function withdraw(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { ...common } });
  const { chain } = await connect(values["data-dir"]);
  await writeContract(chain, { ...contracts(chain.deployment).registry, functionName: "withdraw", args: [] });
  console.log("withdrawn");
}

export const providerCommands: Record<string, { run: (args: string[]) => Promise<void>; help: string }> = {
  init: { run: init, help: "create keys and a config file (--rpc-url, --deployment, --fake-gpus, --cpu-jobs, …)" },
  register: { run: register, help: "register with the peer id and stake (--stake N), or add stake" },
  start: { run: start, help: "run the node (SIGTERM/Ctrl-C drains it; --exit-with-stdin for supervisors)" },
  status: { run: status, help: "stake, leases, earnings, claimable (--json)" },
  unstake: { run: unstake, help: "start unbonding <amount> of free stake" },
  withdraw: { run: withdraw, help: "withdraw stake whose unbonding period passed" },
};
