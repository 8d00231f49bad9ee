import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { parseGwei } from "viem";
import { z } from "zod";

import { UserError } from "../sdk/errors.ts";
import { logLevels, type LogLevel } from "../sdk/logger.ts";
import { heartbeatTimingProblem } from "../sdk/chain/block-time.ts";
import { DEFAULT_CONFIRMATIONS, MAX_CONFIRMATIONS } from "../sdk/chain/confirmations.ts";
import { SESSION_HEARTBEAT_MS } from "../sdk/wire/protocols.ts";
import {
  BID_RATE_LIMIT,
  BID_READ_TIMEOUT_MS,
  CHAIN_HEARTBEAT_PERIOD_S,
  CHAIN_HEARTBEAT_TIMEOUT_S,
  CHAIN_POLL_MS,
  CLAIM_INTERVAL_MS,
  CLAIM_MIN_AMOUNT,
  DRAIN_OUTPUT_LINGER_MS,
  DRAIN_TIMEOUT_MS,
  HAND_BACK_TIMEOUT_MS,
  MAX_OPENING_WINDOW_S,
  LOW_GAS_BALANCE_WEI,
  MAX_INPUT_BYTES,
  MAX_JOB_DISK_GIB,
  OFFER_REFRESH_MS,
  OFFER_TTL_MS,
  QUOTE_TTL_S,
  RESUME_FETCH_TIMEOUT_MS,
  SESSION_OPEN_TIMEOUT_MS,
  SESSION_REPLAY_MESSAGES,
} from "./constants.ts";

const wei = z.union([z.string().regex(/^\d+$/), z.number().int().nonnegative()]).transform((value) => BigInt(value));

/** The provider node's config file (`<dataDir>/config.yaml`), validated when the node starts. */
export const nodeConfigSchema = z
  .object({
    /**
     * JSON-RPC endpoint of the chain, or a list of them: requests go to the last one that answered
     * and move to the next when it fails (sdk/chain/transport.ts).
     */
    rpcUrl: z.union([z.string().url(), z.array(z.string().url()).min(1)]),
    /** The widest block range one `eth_getLogs` asks for; lower it for an RPC that allows less. */
    maxLogRange: z.number().int().positive().default(10_000),
    /**
     * The most the node pays per gas, in gwei, however high fees spike (its transactions wait for
     * fees to come down); null: no cap. Its heartbeats wait too, so set it above the fees a lease
     * must be able to pay within its heartbeat timeout.
     */
    maxFeePerGasGwei: z.number().positive().nullable().default(null),
    /** A transaction not mined after this long is sent again, with 12.5% more fee within the cap. */
    resendTxAfterS: z.number().positive().default(30),
    /**
     * Blocks that must lie on what the chain says before the node stops a job over it: a lease that
     * ended (closed, slashed, expired, completed) or whose opening a reorg took. It starts jobs and
     * keeps leases alive (heartbeats, acknowledgements, finish) on the newest block. 0 (the default,
     * what a local chain needs) trusts the newest block; see the README for public chains.
     */
    confirmations: z.number().int().min(0).max(MAX_CONFIRMATIONS).default(DEFAULT_CONFIRMATIONS),
    /** The deployment file (`deployments/<chainId>.json`) of the contracts to use. */
    deployment: z.string().min(1),
    /** A v3 keystore file, relative to the data dir; BATON_PROVIDER_KEY overrides it in development. */
    keystore: z.string().default("key.json"),
    /**
     * Multiaddrs to listen on. `<relay's multiaddr>/p2p-circuit` listens through that relay, a bare
     * `/p2p-circuit` through one found among the node's peers: for a node nobody can dial (see the README).
     */
    listen: z.array(z.string()).default(["/ip4/127.0.0.1/tcp/0"]),
    /** Addresses announced instead of the listening ones (a router's public address and forwarded port). */
    announce: z.array(z.string()).default([]),
    /** Relay for up to this many peers that listen through this node; 0 (the default) relays for none. */
    relayReservations: z.number().int().min(0).max(1_024).default(0),
    bootstrap: z.array(z.string()).default([]),
    /** "all" keeps loopback/private addresses in the DHT (local networks); "public" for the internet. */
    dhtAddresses: z.enum(["all", "public"]).default("all"),
    /**
     * Port of the HTTP lanes (TLS straight to a server job's socket; the tenant's gateway then skips
     * the libp2p hop), on the host of the first TCP `listen` address; 0 picks a free port, null
     * serves tenants' HTTP over libp2p only. A node behind a router forwards this port as well.
     */
    httpLanePort: z.number().int().min(0).max(65_535).nullable().default(0),
    /**
     * Port of the block lanes (checkpoints and outputs sent on TLS beside libp2p, a third of its CPU
     * per byte: sdk/ipfs/block-lanes.ts), on the host of the first TCP `listen` address; 0 picks a
     * free port, null sends blocks over libp2p only. A node behind a router forwards it as well.
     */
    blockLanePort: z.number().int().min(0).max(65_535).nullable().default(0),
    /** Prometheus metrics on 127.0.0.1:<port>; 0 picks a free port, null turns them off. */
    metricsPort: z.number().int().min(0).max(65_535).nullable().default(0),
    gpus: z.union([z.literal("auto"), z.object({ fake: z.string() }).strict()]).default("auto"),
    /** Serve jobs that need no GPU (also what lets a GPU-less machine start). */
    cpuJobs: z.boolean().default(false),
    /**
     * Take holders' leases: pin other jobs' checkpoints for pay (`price.basePerSecond`; a node with
     * none holds nothing, the lease manager refusing a zero price), running nothing, whether or not
     * it takes CPU jobs. A GPU node that holds a job's checkpoints is its warm standby.
     */
    holds: z.boolean().default(true),
    /** The most holders' leases at once; they count apart from `maxLeases`. */
    maxHolds: z.number().int().positive().default(16),
    /**
     * Where job work dirs live. Default: `<dataDir>/jobs`, or a directory under /var/lib/baton/jobs
     * when the job user (nobody, for a node running as root) cannot pass through a directory above the
     * data dir, such as a 0700 home.
     */
    jobsDir: z.string().min(1).optional(),
    /** Run jobs under bubblewrap, or (never for untrusted tenants) directly. */
    sandbox: z.enum(["bwrap", "unsafe-none"]).default("bwrap"),
    /** Image jobs: containers run by Podman, images in the node's own store. */
    containers: z
      .object({
        /**
         * "auto": on when Podman is installed and the node runs as root (rootless Podman is
         * untried: `true` turns it on anyway). Off: image jobs are not offered, and refused.
         */
        enabled: z.union([z.literal("auto"), z.boolean()]).default("auto"),
        podmanPath: z.string().min(1).default("podman"),
        /** OCI runtime; runc works where crun refuses (hybrid cgroup hosts). */
        runtime: z.string().min(1).default("runc"),
        /** The node's image and container store; default `<dataDir>/containers/storage`. */
        storageDir: z.string().min(1).optional(),
        /** `registries.conf` for pulls (mirrors, insecure registries); default the system's. */
        registriesConf: z.string().min(1).optional(),
        /** The store's bound: least recently used images beyond it are removed. */
        imageCacheGiB: z.number().positive().default(50),
        /** The largest image (unpacked) the node accepts. */
        maxImageGiB: z.number().positive().default(20),
        /** Longest a pull may take: a registry that hangs fails the start after it. */
        pullTimeoutS: z.number().int().positive().default(1800),
      })
      .strict()
      .prefault({}),
    /** Cores and memory a job may use at most, whatever it asks for. */
    jobLimits: z
      .object({ cpus: z.number().positive().default(1), memoryMiB: z.number().int().positive().default(2048) })
      .default({ cpus: 1, memoryMiB: 2048 }),
    price: z.object({ basePerSecond: wei, perGpuPerSecond: wei }),
    collateralPerLease: wei,
    /** Off-chain heartbeat period on lease sessions. */
    heartbeatMs: z.number().int().min(50).default(SESSION_HEARTBEAT_MS),
    chainHeartbeatPeriodS: z.number().int().positive().default(CHAIN_HEARTBEAT_PERIOD_S),
    chainHeartbeatTimeoutS: z.number().int().positive().default(CHAIN_HEARTBEAT_TIMEOUT_S),
    /**
     * The chain's block time in seconds; when absent, the node estimates it from recent blocks at
     * start. Heartbeat settings that this block time makes unmeetable are refused.
     */
    blockTimeS: z.number().nonnegative().optional(),
    maxDurationS: z
      .number()
      .int()
      .positive()
      .default(24 * 3600),
    maxLeases: z.number().int().positive().default(16),
    /**
     * The furthest deadline a tenant's signed opening may set: the node starts the job before the
     * opening is mined, so this is the most compute it risks on one that fails on chain.
     */
    maxOpeningWindowS: z.number().int().positive().default(MAX_OPENING_WINDOW_S),
    offerRefreshMs: z.number().int().min(100).default(OFFER_REFRESH_MS),
    offerTtlMs: z.number().int().min(100).default(OFFER_TTL_MS),
    quoteTtlS: z.number().int().positive().default(QUOTE_TTL_S),
    chainPollMs: z.number().int().min(100).default(CHAIN_POLL_MS),
    claimIntervalMs: z.number().int().min(1_000).default(CLAIM_INTERVAL_MS),
    /** Earnings owed (payment-token base units) below which no claim is sent; with nothing owed none is. */
    claimMinAmount: wei.default(CLAIM_MIN_AMOUNT),
    /** Gas balance (wei) below which the node warns in its log that it is running dry. */
    lowGasBalance: wei.default(LOW_GAS_BALANCE_WEI),
    bidRateLimit: z
      .object({ count: z.number().int().positive(), windowMs: z.number().int().positive() })
      .default({ ...BID_RATE_LIMIT }),
    bidReadTimeoutMs: z.number().int().positive().default(BID_READ_TIMEOUT_MS),
    sessionOpenTimeoutMs: z.number().int().positive().default(SESSION_OPEN_TIMEOUT_MS),
    sessionReplayMessages: z.number().int().nonnegative().default(SESSION_REPLAY_MESSAGES),
    /** On SIGTERM, how long running leases may go on before they are handed back to their tenants. */
    drainTimeoutMs: z.number().int().nonnegative().default(DRAIN_TIMEOUT_MS),
    /** How long a handed-back lease waits for its tenant's close before the node finishes it itself. */
    handBackTimeoutMs: z.number().int().positive().default(HAND_BACK_TIMEOUT_MS),
    /** After a drain in which jobs ended, how long their outputs stay served before the node stops. */
    drainOutputLingerMs: z.number().int().nonnegative().default(DRAIN_OUTPUT_LINGER_MS),
    /**
     * How long a job's output stays pinned after it was published, for its tenant to fetch (one that
     * was away when its job ended fetches it when it re-attaches); then it is unpinned and collected.
     */
    outputRetentionS: z
      .number()
      .int()
      .positive()
      .default(24 * 3600),
    /** The least severe log lines written; the BATON_LOG_LEVEL environment variable overrides it. */
    logLevel: z.enum(logLevels).default("info"),
    resumeFetchTimeoutMs: z.number().int().positive().default(RESUME_FETCH_TIMEOUT_MS),
    /** Largest single input file a job may ask for. */
    maxInputBytes: z.number().int().positive().default(MAX_INPUT_BYTES),
    /**
     * Free disk below which the node takes no new lease (bids refused, offers full): jobs,
     * checkpoints and images need room. Raise it for jobs with large checkpoints.
     */
    minFreeDiskGiB: z.number().nonnegative().default(1),
    /** The largest disk quota (`resources.diskGiB`) a job gets here: a bid for more is refused. */
    maxJobDiskGiB: z.number().positive().default(MAX_JOB_DISK_GIB),
    /**
     * How a job's disk quota holds. `mount`: its work dir is a file system of its own, of the
     * quota's size (a sparse file, ext4, loop-mounted; needs root), so writes past it fail with
     * ENOSPC. `watch`: the node measures the work dir's usage every 2 s and stops a job over its
     * quota. `auto`: `mount` when the node runs as root and the machine has loop devices and
     * mkfs.ext4, else `watch`.
     */
    diskQuota: z.enum(["auto", "mount", "watch"]).default("auto"),
  })
  .strict()
  // The lease manager refuses quotes with fewer than two heartbeats per timeout: one late heartbeat
  // must not make an honest provider slashable.
  .refine((c) => c.chainHeartbeatTimeoutS >= 2 * c.chainHeartbeatPeriodS, {
    message: "chainHeartbeatTimeoutS must be at least twice chainHeartbeatPeriodS",
  })
  // The lease manager refuses a zero price; a node must never quote one.
  .refine((c) => c.price.basePerSecond > 0n || (!c.cpuJobs && c.price.perGpuPerSecond > 0n), {
    message: "price.basePerSecond must be positive for CPU jobs (and some price positive for GPU jobs)",
  })
  .refine((c) => c.maxDurationS > c.chainHeartbeatTimeoutS, {
    message: "maxDurationS must exceed chainHeartbeatTimeoutS",
  })
  .superRefine((c, context) => {
    if (c.blockTimeS === undefined) return;
    const problem = heartbeatTimingProblem({
      periodS: c.chainHeartbeatPeriodS,
      timeoutS: c.chainHeartbeatTimeoutS,
      blockTimeS: c.blockTimeS,
    });
    if (problem) context.addIssue({ code: "custom", message: `chainHeartbeatTimeoutS: ${problem}` });
  });

export type NodeConfig = z.output<typeof nodeConfigSchema>;
export type NodeConfigInput = z.input<typeof nodeConfigSchema>;

/** Whether the node takes holders' leases: told to, and with a price for them. */
export const takesHolds = (config: Pick<NodeConfig, "holds" | "price">): boolean =>
  config.holds && config.price.basePerSecond > 0n;

export const CONFIG_FILE = "config.yaml";

/** The files a provider keeps in its data dir, beside `CONFIG_FILE`. */
export const DATA_FILES = { peerKey: "peer.key", database: "node.db", ipfs: "ipfs" } as const;

/** Reads and validates `<dataDir>/config.yaml`. */
export async function loadNodeConfig(dataDir: string): Promise<NodeConfig> {
  const file = path.join(dataDir, CONFIG_FILE);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (cause) {
    throw new UserError(`no provider config at ${file}: run \`baton provider init\` first`, { cause });
  }
  const parsed = nodeConfigSchema.safeParse(parseYaml(text));
  if (!parsed.success) throw new UserError(`${file} is invalid`, { details: z.prettifyError(parsed.error) });
  return parsed.data;
}

/**
 * The node's log level: `BATON_LOG_LEVEL` from `env` when set (so an operator can turn on debug
 * lines for one run without editing the config), else the config's `logLevel`.
 *
 * @throws {UserError} when `BATON_LOG_LEVEL` names no level.
 */
/** How the node talks to its chain, as `createChainClient` takes it (less the deployment and account). */
export function chainClientOptions(
  config: Pick<
    NodeConfig,
    "rpcUrl" | "maxLogRange" | "maxFeePerGasGwei" | "resendTxAfterS" | "blockTimeS" | "confirmations"
  >,
): {
  rpcUrl: string | string[];
  pollingIntervalMs: number;
  maxLogRange: bigint;
  maxFeePerGas?: bigint;
  replaceAfterMs: number;
  blockTimeS?: number;
  confirmations: number;
} {
  return {
    rpcUrl: config.rpcUrl,
    confirmations: config.confirmations,
    ...(config.blockTimeS === undefined ? {} : { blockTimeS: config.blockTimeS }),
    pollingIntervalMs: 100,
    maxLogRange: BigInt(config.maxLogRange),
    ...(config.maxFeePerGasGwei === null ? {} : { maxFeePerGas: parseGwei(String(config.maxFeePerGasGwei)) }),
    replaceAfterMs: config.resendTxAfterS * 1_000,
  };
}

export function nodeLogLevel(config: Pick<NodeConfig, "logLevel">, env: NodeJS.ProcessEnv = process.env): LogLevel {
  const fromEnv = env.BATON_LOG_LEVEL;
  if (fromEnv === undefined || fromEnv === "") return config.logLevel;
  const level = logLevels.find((l) => l === fromEnv);
  if (!level) throw new UserError(`BATON_LOG_LEVEL must be one of ${logLevels.join(", ")}, not "${fromEnv}"`);
  return level;
}

/** Writes a config file (refusing to overwrite one). */
export async function writeNodeConfig(dataDir: string, config: NodeConfigInput): Promise<string> {
  const file = path.join(dataDir, CONFIG_FILE);
  const checked = nodeConfigSchema.safeParse(config);
  if (!checked.success) throw new UserError("invalid provider config", { details: z.prettifyError(checked.error) });
  await writeFile(file, stringifyYaml(config), { flag: "wx" });
  return file;
}
