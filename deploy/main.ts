/**
 * Deploys Baton to any RPC URL and writes `deployments/<chainId>.json`.
 *
 *   npm run deploy -- --rpc-url http://127.0.0.1:8545
 *   BATON_DEPLOYER_KEY=0x… npm run deploy -- --rpc-url https://rpc.example --staking-token 0x… --payment-token 0x…
 *
 * The deployer key comes from BATON_DEPLOYER_KEY; on a local chain (id 31337) it defaults to
 * Hardhat's first development account.
 */
import { parseArgs } from "node:util";
import {
  createPublicClient,
  createWalletClient,
  defineChain,
  getAddress,
  http,
  isAddress,
  isHex,
  type Address,
} from "viem";
import { privateKeyToAccount, type Account } from "viem/accounts";

import { deployBaton, writeDeployment, type DeployParameters } from "./deploy.ts";
import { devAccount } from "./local-chain.ts";

const LOCAL_CHAIN_ID = 31337;

const { values } = parseArgs({
  options: {
    "rpc-url": { type: "string", default: "http://127.0.0.1:8545" },
    out: { type: "string", default: "deployments" },
    "staking-token": { type: "string" },
    "payment-token": { type: "string" },
    "min-stake": { type: "string" },
    "unbonding-period": { type: "string" },
    "tenant-share-bps": { type: "string" },
    "caller-share-bps": { type: "string" },
    treasury: { type: "string" },
    "min-heartbeat-timeout": { type: "string" },
    "max-heartbeat-timeout": { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});

if (values.help) {
  console.log(`usage: npm run deploy -- [--rpc-url URL] [--out DIR] [--staking-token ADDR] [--payment-token ADDR]
       [--min-stake WEI] [--unbonding-period S] [--tenant-share-bps N] [--caller-share-bps N]
       [--treasury ADDR] [--min-heartbeat-timeout S] [--max-heartbeat-timeout S]
The deployer key is read from BATON_DEPLOYER_KEY (defaults to a dev account on chain ${LOCAL_CHAIN_ID}).`);
  process.exit(0);
}

function fail(message: string): never {
  console.error(`deploy: ${message}`);
  process.exit(1);
}

function addressOption(name: string, value: string | undefined): Address | undefined {
  if (value === undefined) return undefined;
  if (!isAddress(value)) fail(`--${name} is not an address: ${value}`);
  return getAddress(value);
}

function integerOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) fail(`--${name} must be a non-negative integer, got ${value}`);
  return Number(value);
}

const parameters: Partial<DeployParameters> = Object.fromEntries(
  Object.entries({
    stakingToken: addressOption("staking-token", values["staking-token"]),
    paymentToken: addressOption("payment-token", values["payment-token"]),
    minStake: values["min-stake"] === undefined ? undefined : BigInt(integerOption("min-stake", values["min-stake"])!),
    unbondingPeriod: integerOption("unbonding-period", values["unbonding-period"]),
    tenantShareBps: integerOption("tenant-share-bps", values["tenant-share-bps"]),
    callerShareBps: integerOption("caller-share-bps", values["caller-share-bps"]),
    treasury: addressOption("treasury", values.treasury),
    minHeartbeatTimeout: integerOption("min-heartbeat-timeout", values["min-heartbeat-timeout"]),
    maxHeartbeatTimeout: integerOption("max-heartbeat-timeout", values["max-heartbeat-timeout"]),
  }).filter(([, value]) => value !== undefined),
);

const rpcUrl = values["rpc-url"];
const probe = createPublicClient({ transport: http(rpcUrl, { retryCount: 0 }) });
let chainId: number;
try {
  chainId = await probe.getChainId();
} catch (cause) {
  fail(`no JSON-RPC node answers at ${rpcUrl} (${(cause as Error).message.split("\n")[0]})`);
}

let account: Account;
const key = process.env.BATON_DEPLOYER_KEY;
if (key !== undefined) {
  if (!isHex(key) || key.length !== 66) fail("BATON_DEPLOYER_KEY must be a 0x-prefixed 32-byte hex private key");
  account = privateKeyToAccount(key);
} else if (chainId === LOCAL_CHAIN_ID) {
  account = devAccount(0);
} else {
  fail(`chain ${chainId} is not a local chain: set BATON_DEPLOYER_KEY`);
}

const chain = defineChain({
  id: chainId,
  name: `chain-${chainId}`,
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpcUrl] } },
});
const publicClient = createPublicClient({ chain, transport: http(rpcUrl) });
const walletClient = createWalletClient({ chain, account, transport: http(rpcUrl) });

const deployment = await deployBaton({
  walletClient,
  publicClient,
  parameters,
  onProgress: ({ step, address }) => console.log(`  ${step.padEnd(34)} ${address}`),
});
const file = await writeDeployment(values.out, deployment);
console.log(`deployed to chain ${chainId}; wrote ${file}`);
