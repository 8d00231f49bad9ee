import { readFile } from "node:fs/promises";
import path from "node:path";
import { getAddress, isAddress, type Address } from "viem";
import { z } from "zod";

import { UserError } from "../errors.ts";

const address = z
  .string()
  .refine((value) => isAddress(value), "not an address")
  .transform((value) => getAddress(value));

const bigintString = z
  .string()
  .regex(/^\d+$/, "not a non-negative integer")
  .transform((value) => BigInt(value));

/** Schema of `deployments/<chainId>.json`, written by the deploy module and read by every client. */
export const deploymentSchema = z.object({
  chainId: z.number().int().positive(),
  deployer: address,
  deployBlock: bigintString,
  deployedAt: z.string(),
  contracts: z.object({
    providerRegistry: address,
    leaseManager: address,
    stakingToken: address,
    paymentToken: address,
  }),
  parameters: z.object({
    minStake: bigintString,
    unbondingPeriod: z.number().int().positive(),
    tenantShareBps: z.number().int().min(0).max(10_000),
    callerShareBps: z.number().int().min(0).max(10_000),
    treasury: address,
    minHeartbeatTimeout: z.number().int().positive(),
    maxHeartbeatTimeout: z.number().int().positive(),
    devTokens: z.boolean(),
  }),
});

export type Deployment = z.output<typeof deploymentSchema>;

/** The JSON form of a {@link Deployment}: bigints as decimal strings. */
export type DeploymentJson = z.input<typeof deploymentSchema>;

export function deploymentToJson(deployment: Deployment): DeploymentJson {
  return {
    ...deployment,
    deployBlock: deployment.deployBlock.toString(),
    parameters: { ...deployment.parameters, minStake: deployment.parameters.minStake.toString() },
  };
}

/** Where the deployment of `chainId` lives under `dir`. */
export function deploymentPath(dir: string, chainId: number): string {
  return path.join(dir, `${chainId}.json`);
}

/**
 * Reads and validates `deployments/<chainId>.json`.
 *
 * @example
 * const deployment = await loadDeployment("deployments", 31337);
 * console.log(deployment.contracts.leaseManager);
 */
export async function loadDeployment(dir: string, chainId: number): Promise<Deployment> {
  return loadDeploymentFile(deploymentPath(dir, chainId));
}

/** Reads and validates one deployment file. */
export async function loadDeploymentFile(file: string): Promise<Deployment> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (cause) {
    throw new UserError(`no deployment at ${file}: deploy first (npm run deploy)`, { cause });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new UserError(`${file} is not JSON`, { cause });
  }
  return parseDeployment(json, file);
}

export function parseDeployment(value: unknown, source = "deployment"): Deployment {
  const parsed = deploymentSchema.safeParse(value);
  if (!parsed.success) {
    throw new UserError(`${source} is not a valid Baton deployment`, { details: z.prettifyError(parsed.error) });
  }
  return parsed.data;
}

export type DeploymentAddresses = Record<keyof Deployment["contracts"], Address>;
