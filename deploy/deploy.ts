import { mkdir, writeFile } from "node:fs/promises";
import {
  getAddress,
  getContractAddress,
  zeroAddress,
  type Abi,
  type Account,
  type Address,
  type Chain,
  type Hex,
  type PublicClient,
  type Transport,
  type WalletClient,
} from "viem";

import {
  devTokenAbi,
  devTokenBytecode,
  leaseManagerAbi,
  leaseManagerBytecode,
  providerRegistryAbi,
  providerRegistryBytecode,
} from "../sdk/generated/abis.ts";
import { estimateBlockTime, minHeartbeatTimeout } from "../sdk/chain/block-time.ts";
import { deploymentPath, deploymentToJson, type Deployment } from "../sdk/chain/deployments.ts";
import { UserError } from "../sdk/errors.ts";

/** What a deployment can be tuned with; every field has a default for local networks. */
export interface DeployParameters {
  /** An existing staking token; a fresh dev token when absent. */
  stakingToken?: Address;
  /** An existing payment token; a fresh dev token when absent (it may equal the staking token). */
  paymentToken?: Address;
  minStake: bigint;
  /** Seconds; must exceed `maxHeartbeatTimeout` (the contract checks it). */
  unbondingPeriod: number;
  tenantShareBps: number;
  callerShareBps: number;
  /** Receives the rest of each slash; the zero address burns it. */
  treasury: Address;
  /**
   * Seconds; the shortest heartbeat timeout a quote may set. A few block times at least, so that a
   * heartbeat sent in time is mined in time: raise it on a chain with slow blocks (e.g. 60 on one
   * with 12 s blocks).
   */
  minHeartbeatTimeout: number;
  /** Seconds; the longest heartbeat timeout a quote may set. */
  maxHeartbeatTimeout: number;
}

/**
 * Local defaults. Half of a slashed collateral compensates the tenant and a tenth rewards whoever
 * calls the slash (enough to pay a keeper's gas many times over on an L2); the rest is burned so
 * that no party profits from a provider's failure beyond its loss. Heartbeat timeouts up to an
 * hour (and no shorter than 4 s, for devnets that mine at once), and a week of unbonding so stake
 * always outlives every slash window.
 */
export const defaultDeployParameters: DeployParameters = {
  minStake: 100n * 10n ** 18n,
  unbondingPeriod: 7 * 24 * 3600,
  tenantShareBps: 5_000,
  callerShareBps: 1_000,
  treasury: zeroAddress,
  minHeartbeatTimeout: 4,
  maxHeartbeatTimeout: 3600,
};

/** The longest unbonding period the registry accepts (its MAX_UNBONDING_PERIOD). */
const MAX_UNBONDING_PERIOD = 365 * 24 * 3600;
/** The longest heartbeat timeout the lease manager accepts (a uint24). */
const MAX_HEARTBEAT_TIMEOUT = 2 ** 24 - 1;

/**
 * The parameters a deployment would use (the defaults, overridden), checked against what the
 * contracts' constructors accept, so that a bad value is refused before any transaction; with the
 * chain's block time, also that the shortest heartbeat timeout allowed can be kept on it (with the
 * shortest period, 1 s: see `minHeartbeatTimeout` in sdk/chain/block-time.ts).
 *
 * @throws {UserError} naming the parameter and its range.
 */
export function checkDeployParameters(overrides: Partial<DeployParameters>, blockTimeS?: number): DeployParameters {
  const parameters: DeployParameters = { ...defaultDeployParameters, ...overrides };
  const {
    minHeartbeatTimeout: shortest,
    maxHeartbeatTimeout,
    unbondingPeriod,
    tenantShareBps,
    callerShareBps,
  } = parameters;
  if (maxHeartbeatTimeout < 1 || maxHeartbeatTimeout > MAX_HEARTBEAT_TIMEOUT) {
    throw new UserError(`maxHeartbeatTimeout (${maxHeartbeatTimeout} s) must be 1 to ${MAX_HEARTBEAT_TIMEOUT} s`);
  }
  if (shortest < 2 || shortest > maxHeartbeatTimeout) {
    throw new UserError(
      `minHeartbeatTimeout (${shortest} s) must be at least 2 and at most maxHeartbeatTimeout (${maxHeartbeatTimeout} s)`,
    );
  }
  if (blockTimeS !== undefined && shortest < minHeartbeatTimeout(1, blockTimeS)) {
    throw new UserError(
      `minHeartbeatTimeout (${shortest} s) is too short for a chain with ${blockTimeS} s blocks: quotes could set ` +
        `timeouts that honest providers cannot keep; it must be at least ${Math.ceil(minHeartbeatTimeout(1, blockTimeS))} s ` +
        `(two gaps of a 1 s heartbeat period plus a block)`,
    );
  }
  if (unbondingPeriod <= maxHeartbeatTimeout) {
    throw new UserError(
      `unbondingPeriod (${unbondingPeriod} s) must exceed maxHeartbeatTimeout (${maxHeartbeatTimeout} s), or unbonding stake could escape a slash`,
    );
  }
  if (unbondingPeriod > MAX_UNBONDING_PERIOD) {
    throw new UserError(`unbondingPeriod (${unbondingPeriod} s) must be at most ${MAX_UNBONDING_PERIOD} s (365 days)`);
  }
  if (tenantShareBps + callerShareBps > 10_000) {
    throw new UserError(
      `tenantShareBps + callerShareBps (${tenantShareBps} + ${callerShareBps}) must be at most 10000 (all of a slash)`,
    );
  }
  return parameters;
}

export type DeployProgress = { step: string; address: Address; txHash: Hex };

export interface DeployBatonParameters {
  walletClient: WalletClient<Transport, Chain, Account>;
  publicClient: PublicClient;
  parameters?: Partial<DeployParameters>;
  /** The chain's block time in seconds, when known; it is estimated from recent blocks otherwise. */
  blockTimeS?: number;
  onProgress?: (event: DeployProgress) => void;
}

/**
 * Deploys (unless given) dev tokens, then the registry and the lease manager, wired together at
 * construction, and returns the deployment record. Works against the in-process Hardhat chain,
 * `hardhat node` on loopback, or any RPC URL, as long as the clients point there.
 *
 * @example
 * const deployment = await deployBaton({ walletClient, publicClient });
 * await writeDeployment("deployments", deployment);
 */
export async function deployBaton({
  walletClient,
  publicClient,
  parameters: overrides = {},
  blockTimeS,
  onProgress,
}: DeployBatonParameters): Promise<Deployment> {
  const parameters = checkDeployParameters(overrides, blockTimeS ?? (await estimateBlockTime(publicClient)));
  const deployer = walletClient.account.address;
  const chainId = await publicClient.getChainId();
  const startBlock = await publicClient.getBlockNumber();

  const deploy = async (
    step: string,
    abi: Abi,
    bytecode: Hex,
    args: readonly unknown[],
    nonce?: number,
  ): Promise<Address> => {
    const txHash = await walletClient.deployContract({
      abi,
      bytecode,
      args,
      ...(nonce === undefined ? {} : { nonce }),
    });
    const receipt = await publicClient.waitForTransactionReceipt({ hash: txHash });
    if (receipt.status !== "success" || !receipt.contractAddress) {
      throw new Error(`deploying ${step} failed in transaction ${txHash}`);
    }
    const address = getAddress(receipt.contractAddress);
    onProgress?.({ step, address, txHash });
    return address;
  };

  const devTokens = parameters.stakingToken === undefined || parameters.paymentToken === undefined;
  const stakingToken =
    parameters.stakingToken ??
    (await deploy("staking token (dev)", devTokenAbi, devTokenBytecode, ["Baton Stake", "BSTK"]));
  const paymentToken =
    parameters.paymentToken ??
    (await deploy("payment token (dev)", devTokenAbi, devTokenBytecode, ["Baton Pay", "BPAY"]));
  // The registry takes the lease manager's address before the manager exists: the deployer's
  // contract after the registry. Both are sent with those nonces, so that nothing the deployer
  // sends meanwhile can move the manager elsewhere; the manager's constructor checks the pair.
  const nonce = await publicClient.getTransactionCount({ address: deployer, blockTag: "pending" });
  const expectedLeaseManager = getContractAddress({ from: deployer, nonce: BigInt(nonce + 1) });
  const providerRegistry = await deploy(
    "ProviderRegistry",
    providerRegistryAbi,
    providerRegistryBytecode,
    [stakingToken, parameters.minStake, BigInt(parameters.unbondingPeriod), expectedLeaseManager],
    nonce,
  );
  const leaseManager = await deploy(
    "LeaseManager",
    leaseManagerAbi,
    leaseManagerBytecode,
    [
      paymentToken,
      providerRegistry,
      parameters.tenantShareBps,
      parameters.callerShareBps,
      parameters.treasury,
      BigInt(parameters.minHeartbeatTimeout),
      BigInt(parameters.maxHeartbeatTimeout),
    ],
    nonce + 1,
  );

  const treasury = await publicClient.readContract({
    address: leaseManager,
    abi: leaseManagerAbi,
    functionName: "treasury",
  });
  return {
    chainId,
    deployer,
    deployBlock: startBlock + 1n,
    deployedAt: new Date().toISOString(),
    contracts: { providerRegistry, leaseManager, stakingToken, paymentToken },
    parameters: {
      minStake: parameters.minStake,
      unbondingPeriod: parameters.unbondingPeriod,
      tenantShareBps: parameters.tenantShareBps,
      callerShareBps: parameters.callerShareBps,
      treasury,
      minHeartbeatTimeout: parameters.minHeartbeatTimeout,
      maxHeartbeatTimeout: parameters.maxHeartbeatTimeout,
      devTokens,
    },
  };
}

/** Writes `<dir>/<chainId>.json` and returns its path. */
export async function writeDeployment(dir: string, deployment: Deployment): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = deploymentPath(dir, deployment.chainId);
  await writeFile(file, JSON.stringify(deploymentToJson(deployment), null, 2) + "\n");
  return file;
}
