import {
  BaseError as ViemBaseError,
  ContractFunctionRevertedError,
  createPublicClient,
  createWalletClient,
  defineChain,
  encodeFunctionData,
  http,
  type Abi,
  type Account,
  type Chain,
  type ContractFunctionArgs,
  type ContractFunctionName,
  type PublicClient,
  type TransactionReceipt,
  type Transport,
  type WalletClient,
} from "viem";

import { ChainError, UserError, walk } from "../errors.ts";
import { devTokenAbi, leaseManagerAbi, providerRegistryAbi } from "../generated/abis.ts";
import type { Deployment } from "./deployments.ts";
import { checkConfirmations, DEFAULT_CONFIRMATIONS } from "./confirmations.ts";
import { DEFAULT_MAX_LOG_RANGE } from "./logs.ts";
import { sendLock, sendUntilMined, type FeePolicy, type SendLock } from "./send.ts";
import { stickyFallback } from "./transport.ts";

/** Every custom error a Baton transaction can revert with, so reverts decode to their names. */
export const batonErrorsAbi = [...leaseManagerAbi, ...providerRegistryAbi, ...devTokenAbi].filter(
  (item) => item.type === "error",
);

export interface ChainClient {
  chain: Chain;
  deployment: Deployment;
  publicClient: PublicClient<Transport, Chain>;
  /** Present when the client has an account to sign with. */
  walletClient: WalletClient<Transport, Chain, Account> | undefined;
  /** The widest block range one `eth_getLogs` asks for (scans go in pages: sdk/chain/logs.ts). */
  maxLogRange: bigint;
  /** The fee cap and resend interval of every transaction {@link writeContract} sends. */
  fees: FeePolicy;
  /** One send at a time for the account: concurrent writes take consecutive nonces. */
  sendLock: SendLock;
  /** The chain's block time in seconds, when known (see `chainBlockTime`, which estimates it otherwise). */
  blockTimeS?: number;
  /**
   * Blocks that must lie on a block before what it holds counts (sdk/chain/confirmations.ts): audits
   * read at `latest − confirmations`, and a lease is believed once its opening is that deep.
   */
  confirmations: number;
}

export interface CreateChainClientParameters {
  /**
   * The chain's JSON-RPC endpoint, or several: requests go to the last one that answered, and to
   * the next when it fails ({@link stickyFallback}).
   */
  rpcUrl: string | readonly string[];
  deployment: Deployment;
  account?: Account;
  /** How often to poll for receipts and events; loopback chains answer in a few ms. */
  pollingIntervalMs?: number;
  /** The widest block range one `eth_getLogs` asks for. Default 10,000 blocks, what public RPC nodes commonly accept. */
  maxLogRange?: bigint;
  /** The most wei per gas a transaction may pay, however high fees go. Default: no cap. */
  maxFeePerGas?: bigint;
  /** Send a transaction again (fees 12.5% higher, within the cap) when not mined after this long. Default 30 s. */
  replaceAfterMs?: number;
  /** The chain's block time in seconds, when known; it is estimated from recent blocks otherwise. */
  blockTimeS?: number;
  /**
   * Blocks that must lie on a block before what it holds counts: 0 (the default) trusts the latest
   * block, as a local chain allows; a public chain wants more (see the README's "Running on a public chain").
   */
  confirmations?: number;
}

/**
 * Viem clients for one Baton deployment.
 *
 * @example
 * const chain = createChainClient({ rpcUrl: "http://127.0.0.1:8545", deployment, account });
 */
export function createChainClient({
  rpcUrl,
  deployment,
  account,
  pollingIntervalMs = 250,
  maxLogRange = DEFAULT_MAX_LOG_RANGE,
  maxFeePerGas,
  replaceAfterMs = 30_000,
  blockTimeS,
  confirmations = DEFAULT_CONFIRMATIONS,
}: CreateChainClientParameters): ChainClient {
  checkConfirmations(confirmations);
  if (maxLogRange < 1n) throw new UserError(`the largest log range must be at least 1 block, not ${maxLogRange}`);
  const urls = typeof rpcUrl === "string" ? [rpcUrl] : [...rpcUrl];
  if (urls.length === 0) throw new UserError("no RPC URL given");
  const chain = defineChain({
    id: deployment.chainId,
    name: `chain-${deployment.chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: urls } },
  });
  const transport = urls.length === 1 ? http(urls[0], { retryCount: 2, timeout: 15_000 }) : stickyFallback(urls);
  const publicClient = createPublicClient({ chain, transport, pollingInterval: pollingIntervalMs });
  const walletClient = account
    ? createWalletClient({ chain, account, transport, pollingInterval: pollingIntervalMs })
    : undefined;
  return {
    chain,
    deployment,
    publicClient,
    walletClient,
    maxLogRange,
    fees: { maxFeePerGas, replaceAfterMs },
    sendLock: sendLock(),
    confirmations,
    ...(blockTimeS === undefined ? {} : { blockTimeS }),
  };
}

/**
 * Checks that the RPC endpoint answers and serves the deployment's chain.
 *
 * @throws {ChainError} when nothing answers; {UserError} when it is another chain.
 */
export async function checkChain(client: ChainClient, signal?: AbortSignal): Promise<void> {
  let chainId: number;
  try {
    chainId = await client.publicClient.getChainId();
  } catch (cause) {
    throw new ChainError(`no JSON-RPC node answers at ${client.chain.rpcUrls.default.http.join(" or ")}`, { cause });
  }
  signal?.throwIfAborted();
  if (chainId !== client.deployment.chainId) {
    throw new UserError(
      `wrong chain: the RPC serves chain ${chainId}, the deployment is for ${client.deployment.chainId}`,
    );
  }
}

/**
 * The name and arguments of a Baton custom error inside an error, if any: a viem error, or one of
 * ours (a {@link ChainError} from {@link writeContract}) that carries it as its cause.
 */
export function revertOf(error: unknown): { name: string; args: readonly unknown[] } | undefined {
  const viemError = walk(error, (e) => e instanceof ViemBaseError);
  if (!(viemError instanceof ViemBaseError)) return undefined;
  const reverted = viemError.walk((e) => e instanceof ContractFunctionRevertedError);
  if (reverted instanceof ContractFunctionRevertedError && reverted.data?.errorName) {
    return { name: reverted.data.errorName, args: reverted.data.args ?? [] };
  }
  // viem sometimes cannot decode what Hardhat/EDR decoded already; its text names the error.
  const named = /reverted with custom error '(\w+)\(([^)]*)\)'/.exec(viemError.details ?? "");
  if (named) return { name: named[1]!, args: named[2] ? named[2].split(", ") : [] };
  return undefined;
}

export interface WriteParameters<
  abi extends Abi,
  functionName extends ContractFunctionName<abi, "nonpayable" | "payable">,
> {
  address: `0x${string}`;
  abi: abi;
  functionName: functionName;
  args: ContractFunctionArgs<abi, "nonpayable" | "payable", functionName>;
  /**
   * The block to simulate against. `latest` (the default) runs at the latest block's time, which
   * lags the clock on an idle chain; calls that depend on a deadline simulate at `pending`, the time
   * the next block will have (where the RPC supports it; elsewhere it answers as `latest`).
   */
  blockTag?: "latest" | "pending";
  signal?: AbortSignal;
}

/**
 * Simulates, sends and waits for a contract write. A revert becomes a {@link ChainError} whose
 * message names the contract's custom error, e.g. `LeaseManager_HeartbeatNotMissed(3, 1700000060)`.
 */
export async function writeContract<
  const abi extends Abi,
  functionName extends ContractFunctionName<abi, "nonpayable" | "payable">,
>(client: ChainClient, parameters: WriteParameters<abi, functionName>): Promise<TransactionReceipt> {
  const wallet = client.walletClient;
  if (!wallet) throw new UserError("this client has no account to send transactions with");
  const { address, abi, functionName, args, blockTag, signal } = parameters;
  const fullAbi = [...abi, ...batonErrorsAbi] as unknown as abi;
  let receipt: TransactionReceipt;
  try {
    await client.publicClient.simulateContract({
      account: wallet.account,
      address,
      abi: fullAbi,
      functionName,
      args,
      ...(blockTag ? { blockTag } : {}),
    } as never);
    signal?.throwIfAborted();
    const data = encodeFunctionData({ abi: fullAbi, functionName, args } as never);
    receipt = await sendUntilMined(
      client.publicClient,
      wallet,
      client.fees,
      { to: address, data, signal },
      client.sendLock,
    );
  } catch (cause) {
    const revert = revertOf(cause);
    const what = `${String(functionName)} failed`;
    if (revert) {
      throw new ChainError(`${what}: ${revert.name}(${revert.args.map(String).join(", ")})`, { cause });
    }
    throw new ChainError(what, { cause, details: cause instanceof ViemBaseError ? cause.shortMessage : String(cause) });
  }
  if (receipt.status !== "success") {
    throw new ChainError(`${String(functionName)} reverted in ${receipt.transactionHash}`);
  }
  return receipt;
}

/** LeaseManager's `Lease.Status` values, in the order `getLease` numbers them: the one list of lease statuses. */
export const leaseStatus = ["None", "Active", "Closing", "Completed", "Closed", "Expired", "Slashed"] as const;
export type ChainLeaseStatus = (typeof leaseStatus)[number];

export const contracts = (deployment: Deployment) =>
  ({
    leaseManager: { address: deployment.contracts.leaseManager, abi: leaseManagerAbi },
    registry: { address: deployment.contracts.providerRegistry, abi: providerRegistryAbi },
    stakingToken: { address: deployment.contracts.stakingToken, abi: devTokenAbi },
    paymentToken: { address: deployment.contracts.paymentToken, abi: devTokenAbi },
  }) as const;
