/**
 * Deploys Baton to any RPC URL and writes `deployments/<chainId>.json`.
 *
 *   npm run deploy -- --rpc-url http://127.0.0.1:8545
 *   BATON_DEPLOYER_KEY=0x… npm run deploy -- --rpc-url https://rpc.example --staking-token 0x… --payment-token 0x…
 *
 * The deployer key comes from BATON_DEPLOYER_KEY; on a local chain (id 31337) it defaults to
 * Hardhat's first development account. Exit codes as `baton`'s: 0 deployed, 1 failed (no node at
 * the URL, a transaction refused), 2 usage error (an unknown option, a value out of range).
 */
import { createPublicClient, createWalletClient, defineChain, getAddress, http, isAddress, isHex } from "viem";
import { privateKeyToAccount, type Account } from "viem/accounts";

import { printJson } from "../cli/output.ts";
import {
  BatonCommand,
  blockTimeArg,
  examples,
  integerIn,
  runProgram,
  UsageError,
  wholeNumber,
} from "../cli/program.ts";
import { deploymentToJson } from "../sdk/chain/deployments.ts";
import { ChainError, UserError } from "../sdk/errors.ts";
import { checkDeployParameters, deployBaton, writeDeployment, type DeployParameters } from "./deploy.ts";
import { devAccount } from "./local-chain.ts";

const LOCAL_CHAIN_ID = 31337;

interface DeployOptions {
  rpcUrl: string;
  out: string;
  json?: boolean;
  blockTime?: number;
  stakingToken?: `0x${string}`;
  paymentToken?: `0x${string}`;
  minStake?: bigint;
  unbondingPeriod?: number;
  tenantShareBps?: number;
  callerShareBps?: number;
  treasury?: `0x${string}`;
  minHeartbeatTimeout?: number;
  maxHeartbeatTimeout?: number;
}

const address =
  (name: string) =>
  (value: string): `0x${string}` => {
    if (!isAddress(value)) throw new UsageError(`--${name} is not an address: ${value}`);
    return getAddress(value);
  };

function wei(value: string): bigint {
  if (!/^\d+$/.test(value)) throw new UsageError(`--min-stake must be a whole number of base units, not ${value}`);
  return BigInt(value);
}

const seconds = (name: string) => wholeNumber(`--${name}`);
const bps = (name: string) => integerIn(`--${name}`, 0, 10_000);

async function deploy(options: DeployOptions): Promise<void> {
  const { rpcUrl, out, json, blockTime, ...given } = options;
  const overrides = Object.fromEntries(
    Object.entries(given).filter(([, value]) => value !== undefined),
  ) as Partial<DeployParameters>;
  try {
    checkDeployParameters(overrides, blockTime);
  } catch (error) {
    if (error instanceof UserError) throw new UsageError(error.shortMessage);
    throw error;
  }
  const probe = createPublicClient({ transport: http(rpcUrl, { retryCount: 0 }) });
  let chainId: number;
  try {
    chainId = await probe.getChainId();
  } catch (cause) {
    throw new ChainError(`no JSON-RPC node answers at ${rpcUrl}`, { cause });
  }
  let account: Account;
  const key = process.env.BATON_DEPLOYER_KEY;
  if (key !== undefined) {
    if (!isHex(key) || key.length !== 66) {
      throw new UsageError("BATON_DEPLOYER_KEY must be a 0x-prefixed 32-byte hex private key");
    }
    account = privateKeyToAccount(key);
  } else if (chainId === LOCAL_CHAIN_ID) {
    account = devAccount(0);
  } else {
    throw new UsageError(`chain ${chainId} is not a local chain: set BATON_DEPLOYER_KEY`);
  }

  const chain = defineChain({
    id: chainId,
    name: `chain-${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const deployment = await deployBaton({
    walletClient: createWalletClient({ chain, account, transport: http(rpcUrl) }),
    publicClient: createPublicClient({ chain, transport: http(rpcUrl) }),
    parameters: overrides,
    ...(blockTime === undefined ? {} : { blockTimeS: blockTime }),
    // With --json, stdout carries the deployment alone: progress goes to stderr.
    onProgress: ({ step, address }) => (json ? console.error : console.log)(`  ${step.padEnd(34)} ${address}`),
  });
  const file = await writeDeployment(out, deployment);
  if (json) return printJson({ file, ...deploymentToJson(deployment) });
  console.log(`deployed to chain ${chainId}; wrote ${file}`);
}

const program = new BatonCommand("npm run deploy --")
  .description("deploy Baton's contracts to a chain and write deployments/<chainId>.json")
  .option("--rpc-url <url>", "the chain's JSON-RPC endpoint", "http://127.0.0.1:8545")
  .option("--out <dir>", "where to write <chainId>.json", "deployments")
  .option("--staking-token <address>", "an existing staking token (default: a new dev token)", address("staking-token"))
  .option("--payment-token <address>", "an existing payment token (default: a new dev token)", address("payment-token"))
  .option("--min-stake <wei>", "the least stake that makes a provider eligible, in base units", wei)
  .option(
    "--unbonding-period <s>",
    "seconds stake waits after unstaking (above the longest heartbeat timeout)",
    seconds("unbonding-period"),
  )
  .option("--tenant-share-bps <n>", "a slash's share that compensates the tenant", bps("tenant-share-bps"))
  .option("--caller-share-bps <n>", "a slash's share that rewards its caller", bps("caller-share-bps"))
  .option("--treasury <address>", "receives the rest of a slash (default: burned)", address("treasury"))
  .option(
    "--min-heartbeat-timeout <s>",
    "the shortest heartbeat timeout a quote may set",
    seconds("min-heartbeat-timeout"),
  )
  .option(
    "--max-heartbeat-timeout <s>",
    "the longest heartbeat timeout a quote may set",
    seconds("max-heartbeat-timeout"),
  )
  .option(
    "--block-time <s>",
    "the chain's block time in seconds (default: estimated from its recent blocks); heartbeat timeouts it makes unmeetable are refused",
    blockTimeArg(),
  )
  .option("--json", "print the deployment as JSON (progress goes to stderr)")
  .addHelpText(
    "after",
    `\nThe deployer key is read from BATON_DEPLOYER_KEY (a dev account on chain ${LOCAL_CHAIN_ID} when unset).`,
  )
  .action(deploy);
examples(program, [
  "npm run deploy",
  "BATON_DEPLOYER_KEY=0x… npm run deploy -- --rpc-url https://rpc.example --staking-token 0x… --payment-token 0x…",
]);

await runProgram(program);
