import { access, readFile } from "node:fs/promises";
import path from "node:path";

import { Option, type Command } from "commander";
import { z } from "zod";

import { ChainError, UserError } from "../sdk/errors.ts";
import { collect } from "./program.ts";

/** Written by `baton devnet`: where its chain, deployment and providers are. */
export const DEFAULT_NETWORK_FILE = path.join(".baton", "devnet", "network.json");

/** Where `npm run deploy` writes `<chainId>.json`: the deployment of a chain given by its RPC URL alone. */
const DEPLOYMENTS_DIR = "deployments";

export const networkFileSchema = z.object({
  /** One JSON-RPC endpoint, or several to fail over between (the first answers while it can). */
  rpcUrl: z.union([z.string().url(), z.array(z.string().url()).min(1)]),
  /** The deployment JSON, relative to the network file. */
  deployment: z.string(),
  bootstrap: z.array(z.string()),
  /**
   * Where a tenant's host listens, when not on loopback: `/ip4/0.0.0.0/tcp/0` on a host with a public
   * address, where providers behind NATs can then dial it directly (AutoNAT confirms the address).
   */
  listen: z.array(z.string()).optional(),
  /** Provider address → a name for displays. */
  names: z.record(z.string(), z.string()).default({}),
});
export type NetworkFile = z.output<typeof networkFileSchema>;

/** The network options as commander parses them. */
export interface NetworkOptions {
  network?: string;
  rpcUrl?: string[];
  deployment?: string;
  bootstrap?: string[];
}

/** Where a command finds the chain, the contracts and the peers. */
export interface Network {
  /** The chain's JSON-RPC endpoint, or several in order of preference (the SDK fails over between them). */
  rpcUrl: string | string[];
  /** The deployment file. */
  deployment: string;
  /** Peers to join the network through (may be empty: only commands that use libp2p need them). */
  bootstrap: string[];
  /** Where a tenant's host listens; loopback when not given. */
  listen: string[] | undefined;
  /** Provider address (lower case) → a name for displays ("provider-2" on a devnet). */
  names: Map<string, string>;
}

const NO_NETWORK =
  `no network: start one with \`baton devnet\` (it writes ${DEFAULT_NETWORK_FILE}, read by default), ` +
  "or give --network FILE (or BATON_NETWORK), or --rpc-url URL";

/** `--network <file>` (or BATON_NETWORK): a network file, by default the devnet's when there is one. */
export function networkFileOption(): Option {
  return new Option("--network <file>", `a network file (default: ${DEFAULT_NETWORK_FILE} when it exists)`).env(
    "BATON_NETWORK",
  );
}

/**
 * Adds the options every command that talks to a network takes, the one way they all find it:
 * `--network <file>` (or BATON_NETWORK), by default the devnet's network file when there is one;
 * `--rpc-url`, `--deployment` and `--bootstrap` override what the file says (an RPC URL without
 * `--network` leaves the devnet's file out: it names another network).
 */
export function networkOptions(command: Command, { bootstrap = true }: { bootstrap?: boolean } = {}): Command {
  command
    .addOption(networkFileOption())
    .option(
      "--rpc-url <url>",
      "the chain's JSON-RPC endpoint, instead of the network file's (or the devnet's); repeat it to fail over between several",
      collect,
    )
    .option(
      "--deployment <file>",
      `the contracts' deployment file, instead of the network file's (else ${DEPLOYMENTS_DIR}/<chain id>.json)`,
    );
  if (bootstrap) {
    command.option(
      "--bootstrap <multiaddr>",
      "a peer to join the network through, instead of the network file's (repeatable)",
      collect,
    );
  }
  return command;
}

/**
 * Reads a network file; `undefined` when there is none at `file`.
 *
 * @throws {UserError} when it cannot be read or is not a network file.
 */
export async function readNetworkFile(file: string): Promise<NetworkFile | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new UserError(`cannot read ${file}`, { cause: error });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new UserError(`${file} is not JSON`, { cause });
  }
  const parsed = networkFileSchema.safeParse(json);
  if (!parsed.success) throw new UserError(`${file} is not a network file`, { details: z.prettifyError(parsed.error) });
  return { ...parsed.data, deployment: path.resolve(path.dirname(file), parsed.data.deployment) };
}

/**
 * The network file a command reads: the one named, else the devnet's when it exists, unless an RPC
 * URL says the network is another one (the devnet's peers and deployment would be the wrong ones).
 */
async function networkFileOf(options: NetworkOptions): Promise<NetworkFile | undefined> {
  if (options.network !== undefined) {
    const network = await readNetworkFile(options.network);
    if (!network) throw new UserError(`no network file at ${options.network}`);
    return network;
  }
  if (options.rpcUrl !== undefined) return undefined;
  const exists = await access(DEFAULT_NETWORK_FILE).then(
    () => true,
    () => false,
  );
  return exists ? readNetworkFile(DEFAULT_NETWORK_FILE) : undefined;
}

/**
 * Finds the network from the options (see {@link networkOptions}). With an RPC URL and no
 * deployment, the deployment is `deployments/<chain id>.json` for the chain that URL serves.
 *
 * @throws {UserError} when no network is given and there is no devnet.
 */
export async function resolveNetwork(options: NetworkOptions): Promise<Network> {
  const file = await networkFileOf(options);
  const given = options.rpcUrl?.length === 1 ? options.rpcUrl[0] : options.rpcUrl;
  const rpcUrl = given ?? file?.rpcUrl;
  if (rpcUrl === undefined) throw new UserError(NO_NETWORK);
  const deployment =
    options.deployment !== undefined
      ? path.resolve(options.deployment)
      : (file?.deployment ?? (await deploymentOfChain(rpcUrl)));
  return {
    rpcUrl,
    deployment,
    bootstrap: options.bootstrap ?? file?.bootstrap ?? [],
    listen: file?.listen,
    names: namesOf(file),
  };
}

/** Provider names from the network file, when there is one (no chain needed: for local displays). */
export async function networkNames(options: Pick<NetworkOptions, "network">): Promise<Map<string, string>> {
  return namesOf(await networkFileOf(options));
}

function namesOf(file: NetworkFile | undefined): Map<string, string> {
  return new Map(Object.entries(file?.names ?? {}).map(([address, name]) => [address.toLowerCase(), name]));
}

/** `deployments/<chain id>.json` for the chain the first answering endpoint serves. */
async function deploymentOfChain(rpcUrl: string | string[]): Promise<string> {
  const [{ createPublicClient, http }, { deploymentPath }] = await Promise.all([
    import("viem"),
    import("../sdk/chain/deployments.ts"),
  ]);
  const urls = typeof rpcUrl === "string" ? [rpcUrl] : rpcUrl;
  let cause: unknown;
  for (const url of urls) {
    try {
      const chainId = await createPublicClient({ transport: http(url, { retryCount: 0 }) }).getChainId();
      return path.resolve(deploymentPath(DEPLOYMENTS_DIR, chainId));
    } catch (error) {
      cause = error;
    }
  }
  throw new ChainError(`no JSON-RPC node answers at ${urls.join(" or ")}`, { cause });
}
