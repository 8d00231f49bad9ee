import { readFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";

import { formatEther, isHex, parseEther, type Hex } from "viem";
import { z } from "zod";

import { loadAccount } from "../node/keystore.ts";
import {
  attachJob,
  cancelJob,
  createBatonClient,
  createLogger,
  readJobFile,
  runJob,
  UserError,
  type BatonClient,
  type JobHandle,
} from "../sdk/index.ts";
import { jsonReplacer, showJob } from "./job-display.ts";
import { table } from "./output.ts";

const DEFAULT_DATA_DIR = path.join(".baton", "tenant");
/** Written by `baton devnet`: where its chain, deployment and providers are. */
export const DEFAULT_NETWORK_FILE = path.join(".baton", "devnet", "network.json");

export const networkFileSchema = z.object({
  rpcUrl: z.string().url(),
  /** The deployment JSON, relative to the network file. */
  deployment: z.string(),
  bootstrap: z.array(z.string()),
  /** Provider address → a name for displays. */
  names: z.record(z.string(), z.string()).default({}),
});
export type NetworkFile = z.output<typeof networkFileSchema>;

export const common = {
  "data-dir": { type: "string", default: DEFAULT_DATA_DIR },
  network: { type: "string" },
  "rpc-url": { type: "string" },
  deployment: { type: "string" },
  bootstrap: { type: "string", multiple: true },
  keystore: { type: "string" },
  json: { type: "boolean", default: false },
  logs: { type: "boolean", default: false },
  verbose: { type: "boolean", default: false },
} as const;

export type CommonValues = {
  "data-dir": string;
  network?: string | undefined;
  "rpc-url"?: string | undefined;
  deployment?: string | undefined;
  bootstrap?: string[] | undefined;
  keystore?: string | undefined;
  json: boolean;
  logs: boolean;
  verbose: boolean;
};

async function readNetwork(file: string): Promise<NetworkFile | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new UserError(`cannot read ${file}`, { cause: error });
  }
  const parsed = networkFileSchema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new UserError(`${file} is not a network file`, { details: z.prettifyError(parsed.error) });
  return { ...parsed.data, deployment: path.resolve(path.dirname(file), parsed.data.deployment) };
}

/** The tenant's client from the command line: the network file (a devnet's by default), overridden by flags. */
export async function connect(values: CommonValues): Promise<{ client: BatonClient; names: Map<string, string> }> {
  const network = await readNetwork(values.network ?? DEFAULT_NETWORK_FILE);
  if (values.network && !network) throw new UserError(`no network file at ${values.network}`);
  const rpcUrl = values["rpc-url"] ?? network?.rpcUrl;
  const deployment = values.deployment ?? network?.deployment;
  const bootstrap = values.bootstrap ?? network?.bootstrap ?? [];
  if (!rpcUrl || !deployment) {
    throw new UserError(
      `no network: start one with \`baton devnet\` (it writes ${DEFAULT_NETWORK_FILE}), or give --rpc-url and --deployment`,
    );
  }
  if (bootstrap.length === 0) throw new UserError("no peers to join through: give --bootstrap <multiaddr>");
  const account = await loadAccount({
    ...(values.keystore ? { keystore: values.keystore } : {}),
    ...(process.env.BATON_TENANT_KEY ? { privateKey: process.env.BATON_TENANT_KEY } : {}),
    ...(process.env.BATON_KEYSTORE_PASSWORD ? { password: process.env.BATON_KEYSTORE_PASSWORD } : {}),
  });
  const client = await createBatonClient({
    rpcUrl,
    account,
    deployment,
    bootstrap,
    dataDir: values["data-dir"],
    log: createLogger("tenant", { level: values.verbose ? "info" : "warn" }),
  });
  const names = new Map(Object.entries(network?.names ?? {}).map(([a, n]) => [a.toLowerCase(), n]));
  return { client, names };
}

function jobIdArg(text: string | undefined): Hex {
  if (!text || !isHex(text) || text.length !== 66) throw new UserError("give a job id: 0x followed by 64 hex digits");
  return text.toLowerCase() as Hex;
}

export function amount(text: string | undefined, what: string): bigint | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+(\.\d+)?$/.test(text)) throw new UserError(`${what} must be a token amount like 0.5, not ${text}`);
  return parseEther(text);
}

/**
 * Follows a job to its end: live display, Ctrl-C detaches (the job goes on; `baton job watch`
 * picks it up), and a summary at the end. Waits for due slashes so the compensation shows.
 */
async function follow(
  client: BatonClient,
  job: JobHandle,
  values: CommonValues,
  names: Map<string, string>,
): Promise<void> {
  const stop = showJob(job, { json: values.json, logs: values.logs, names });
  const onSignal = (): void => {
    process.stderr.write(`\ndetaching; the job goes on. Follow it again with: baton job watch ${job.jobId}\n`);
    void job.detach();
  };
  process.once("SIGINT", onSignal);
  try {
    await job.result();
    await job.settled();
  } finally {
    process.off("SIGINT", onSignal);
    stop();
    if (!values.json) process.stdout.write(summary(await client.jobs.get(job.jobId), names) + "\n");
    await client.close();
  }
}

/** The job's record as a table: lineage across providers, then totals. */
export function summary(record: Awaited<ReturnType<BatonClient["jobs"]["get"]>>, names: Map<string, string>): string {
  if (!record) return "";
  const rows: (string | number | bigint)[][] = [
    ["lease", "provider", "state", "ran", "price/s", "deposit", "compensation"],
  ];
  for (const lease of record.leases) {
    const ran = ((lease.endedAt ?? Date.now()) - lease.openedAt) / 1000;
    rows.push([
      lease.leaseId,
      names.get(lease.provider.toLowerCase()) ?? lease.provider,
      lease.state,
      `${ran.toFixed(1)} s`,
      formatEther(BigInt(lease.pricePerSecond)),
      formatEther(BigInt(lease.deposit)),
      lease.slash ? formatEther(BigInt(lease.slash.compensation)) : "-",
    ]);
  }
  const lines = [
    `job ${record.jobId}: ${record.state}${record.error ? ` (${record.error})` : ""}`,
    table(rows),
    `hand-offs ${record.handOffs}, safe checkpoints held ${record.safe.length}, deposited ${formatEther(BigInt(record.deposited))}`,
  ];
  if (record.result?.outputDir) lines.push(`output: ${record.result.outputDir}`);
  return lines.join("\n");
}

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...common,
      "max-price": { type: "string" },
      budget: { type: "string" },
      watch: { type: "boolean", default: false },
      "retry-limit": { type: "string", default: "3" },
    },
  });
  const file = positionals[0];
  if (!file)
    throw new UserError("usage: baton job run <spec.yaml> --max-price <tokens/s> [--budget <tokens>] [--watch]");
  const { spec, files } = await readJobFile(file);
  const maxPricePerSecond = amount(values["max-price"], "--max-price");
  if (maxPricePerSecond === undefined) throw new UserError("give --max-price: the most to pay per second, in tokens");
  const budget = amount(values.budget, "--budget");
  const retryLimit = Number(values["retry-limit"]);
  if (!Number.isInteger(retryLimit) || retryLimit < 0) throw new UserError("--retry-limit must be a whole number");
  const { client, names } = await connect(values);
  let job: JobHandle;
  try {
    job = await runJob(client, spec, {
      maxPricePerSecond,
      ...(budget === undefined ? {} : { budget }),
      files,
      retryLimit,
    });
  } catch (error) {
    await client.close();
    throw error;
  }
  process.stdout.write(values.json ? JSON.stringify({ jobId: job.jobId }) + "\n" : `job ${job.jobId}\n`);
  if (values.watch) return follow(client, job, values, names);
  // Without --watch: wait until the job runs, then leave it; `baton job watch` follows it later.
  await new Promise<void>((resolve, reject) => {
    job.on("started", () => resolve());
    job.result().then(() => resolve(), reject);
  });
  await job.detach();
  await client.close();
  process.stdout.write(`started; follow it with: baton job watch ${job.jobId}\n`);
}

async function watch(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: common });
  const jobId = jobIdArg(positionals[0]);
  const { client, names } = await connect(values);
  let job: JobHandle;
  try {
    job = await attachJob(client, jobId);
  } catch (error) {
    await client.close();
    throw error;
  }
  return follow(client, job, values, names);
}

async function cancel(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: common });
  const jobId = jobIdArg(positionals[0]);
  const { client } = await connect(values);
  try {
    const { closed } = await cancelJob(client, { jobId });
    process.stdout.write(
      values.json
        ? JSON.stringify({ jobId, closed }, jsonReplacer) + "\n"
        : `job ${jobId} cancelled${closed === undefined ? "" : `; lease ${closed} closed, unused deposit refunded`}\n`,
    );
  } finally {
    await client.close();
  }
}

async function list(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: common });
  const { client, names } = await connect(values);
  try {
    const records = await client.jobs.list();
    if (values.json) {
      // The job keys stay in the data dir: listing jobs must not print secrets.
      const shown = records.map((record) => ({ ...record, key: undefined }));
      process.stdout.write(JSON.stringify(shown) + "\n");
      return;
    }
    const rows: string[][] = [["job", "name", "state", "leases", "hand-offs", "provider now"]];
    for (const r of records) {
      const last = r.leases.at(-1);
      rows.push([
        r.jobId,
        r.spec.name,
        r.state,
        String(r.leases.length),
        String(r.handOffs),
        last ? (names.get(last.provider.toLowerCase()) ?? last.provider) : "-",
      ]);
    }
    process.stdout.write(table(rows) + "\n");
  } finally {
    await client.close();
  }
}

export const jobCommands = {
  run: { run: run, help: "run a job from a spec file: --max-price <tokens/s> [--budget <tokens>] [--watch]" },
  watch: { run: watch, help: "follow a job (re-attaches after a restart): <job id>" },
  cancel: { run: cancel, help: "cancel a job and close its lease: <job id>" },
  list: { run: list, help: "list the jobs in the data dir" },
};
