import { access } from "node:fs/promises";
import path from "node:path";

import { Option, type Command } from "commander";

import { MAX_CONFIRMATIONS } from "../sdk/chain/confirmations.ts";
import { handOffCount } from "../sdk/hand-offs.ts";
import type { BatonClient, JobHandle } from "../sdk/index.ts";
import { UserError } from "../sdk/errors.ts";
import { MAX_HOLDERS, type JobRecord, type JobStore } from "../sdk/tenant/job-store.ts";
import { openAccount, passwordOption, type PasswordOptions } from "./key.ts";
import { networkFileOption, networkNames, networkOptions, resolveNetwork, type NetworkOptions } from "./network.ts";
import { jsonLine, printJson, table } from "./output.ts";
import { examples, integerIn, jobIdArg, tokenAmount } from "./program.ts";

export const DEFAULT_DATA_DIR = path.join(".baton", "tenant");

/** The options of every command that acts as a tenant. */
export interface TenantOptions extends NetworkOptions, PasswordOptions {
  dataDir: string;
  keystore?: string;
  json?: boolean;
  logs?: boolean;
  verbose?: boolean;
  confirmations?: number;
}

/** Adds the options of a command that acts as a tenant: its data dir, its key, the network, output. */
export function tenantOptions(command: Command): Command {
  command
    .option("--data-dir <dir>", "the tenant's state: its job records, checkpoints and libp2p key", DEFAULT_DATA_DIR)
    .option("--keystore <file>", "the tenant's key (else BATON_TENANT_KEY, a raw key for development)");
  passwordOption(command);
  networkOptions(command);
  return command
    .option(
      "--confirmations <blocks>",
      "blocks that must lie on a lease's opening before the tenant believes it (default 0: the latest block; see the README for public chains)",
      integerIn("--confirmations", 0, MAX_CONFIRMATIONS),
    )
    .option("--json", "print events and results as JSON lines")
    .option("--logs", "show the job's own output")
    .option("--verbose", "log what the SDK does");
}

/** The tenant's client from the command line: the network (see cli/network.ts) and the key. */
export async function connect(options: TenantOptions): Promise<{ client: BatonClient; names: Map<string, string> }> {
  const network = await resolveNetwork(options);
  if (network.bootstrap.length === 0) {
    throw new UserError("no peers to join the network through: give --bootstrap MULTIADDR, or --network FILE");
  }
  const account = await openAccount(options, { keystore: options.keystore, devKeyVariable: "BATON_TENANT_KEY" });
  const { createBatonClient, createLogger } = await import("../sdk/index.ts");
  const client = await createBatonClient({
    rpcUrl: network.rpcUrl,
    account,
    deployment: network.deployment,
    bootstrap: network.bootstrap,
    ...(network.listen ? { listen: network.listen } : {}),
    dataDir: options.dataDir,
    ...(options.confirmations === undefined ? {} : { confirmations: options.confirmations }),
    log: createLogger("tenant", { level: options.verbose ? "info" : "warn" }),
  });
  return { client, names: network.names };
}

/** The job records of a data dir, read without the network; `undefined` when it has none yet. */
async function localJobs(dataDir: string): Promise<JobStore | undefined> {
  const dir = path.join(dataDir, "jobs");
  if (
    !(await access(dir).then(
      () => true,
      () => false,
    ))
  )
    return undefined;
  const { openJobStore } = await import("../sdk/tenant/job-store.ts");
  return openJobStore(dir);
}

/** A job's record without its checkpoint key: what `--json` shows (the key stays in the data dir). */
function shown(record: JobRecord): Omit<JobRecord, "key"> {
  const copy: Partial<JobRecord> = { ...record };
  delete copy.key;
  return copy as Omit<JobRecord, "key">;
}

/**
 * Follows a job to its end: live display, Ctrl-C detaches (the job goes on; `baton job watch` picks
 * it up), and a summary at the end. Waits for due slashes so the compensation shows.
 */
async function follow(client: BatonClient, job: JobHandle, options: TenantOptions, names: Map<string, string>) {
  const { showJob, summary } = await import("./job-display.ts");
  const stop = showJob(job, { json: options.json, logs: options.logs, names });
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
    const record = await client.jobs.get(job.jobId);
    if (!options.json && record) process.stdout.write(summary(record, names) + "\n");
    await client.close();
  }
}

interface RunOptions extends TenantOptions {
  maxPrice: string;
  budget?: string;
  watch?: boolean;
  retryLimit: number;
  holders: number;
  tenantCopy: "full" | "sample" | "none";
  unpack?: boolean;
}

async function run(file: string, options: RunOptions): Promise<void> {
  const [{ readJobFile, runJob }, { parseEther }] = await Promise.all([import("../sdk/index.ts"), import("viem")]);
  const { spec, files } = await readJobFile(file);
  const { client, names } = await connect(options);
  let job: JobHandle;
  try {
    job = await runJob(client, spec, {
      maxPricePerSecond: parseEther(options.maxPrice),
      ...(options.budget === undefined ? {} : { budget: parseEther(options.budget) }),
      files,
      retryLimit: options.retryLimit,
      ...(options.holders > 0 || options.tenantCopy !== "full"
        ? {
            replication: {
              holders: options.holders,
              tenantCopy: options.tenantCopy,
              ...(options.unpack ? { unpack: true } : {}),
            },
          }
        : {}),
    });
  } catch (error) {
    await client.close();
    throw error;
  }
  process.stdout.write(options.json ? jsonLine({ jobId: job.jobId }) : `job ${job.jobId}\n`);
  if (options.watch) return follow(client, job, options, names);
  // Without --watch: wait until the job runs, then leave it; `baton job watch` follows it later.
  await new Promise<void>((resolve, reject) => {
    job.on("started", () => resolve());
    job.result().then(() => resolve(), reject);
  });
  await job.detach();
  await client.close();
  if (!options.json) process.stdout.write(`started; follow it with: baton job watch ${job.jobId}\n`);
}

/**
 * A job that ended is reported from its record, without the network; a running one is followed
 * (re-attaching to its provider, or handing it on if that provider is gone).
 */
async function watch(jobId: `0x${string}`, options: TenantOptions): Promise<void> {
  const record = await (await localJobs(options.dataDir))?.get(jobId);
  if (!record) throw new UserError(`no job ${jobId} in ${options.dataDir} (each data dir keeps its own jobs)`);
  if (record.state === "running") {
    const { attachJob } = await import("../sdk/index.ts");
    const { client, names } = await connect(options);
    let job: JobHandle;
    try {
      job = await attachJob(client, jobId);
    } catch (error) {
      await client.close();
      throw error;
    }
    return follow(client, job, options, names);
  }
  if (options.json) printJson(shown(record));
  else {
    const { summary } = await import("./job-display.ts");
    process.stdout.write(summary(record, await networkNames(options)) + "\n");
  }
  if (record.state === "failed")
    throw new UserError(`job ${jobId} failed: ${record.error ?? "no reason was recorded"}`);
  if (record.state === "cancelled") throw new UserError(`job ${jobId} was cancelled`);
}

async function cancel(jobId: `0x${string}`, options: TenantOptions): Promise<void> {
  const record = await (await localJobs(options.dataDir))?.get(jobId);
  if (!record) throw new UserError(`no job ${jobId} in ${options.dataDir} (each data dir keeps its own jobs)`);
  if (record.state !== "running") throw new UserError(`job ${jobId} already ended: ${record.state}`);
  const { cancelJob } = await import("../sdk/index.ts");
  const { client } = await connect(options);
  try {
    const { closed } = await cancelJob(client, { jobId });
    if (options.json) printJson({ jobId, closed });
    else {
      const lease = closed === undefined ? "" : `; lease ${closed} closed, unused deposit refunded`;
      process.stdout.write(`job ${jobId} cancelled${lease}\n`);
    }
  } finally {
    await client.close();
  }
}

/** The data dir's job records, with no key and no network: the provider names come from the network file if any. */
async function list(options: Pick<TenantOptions, "dataDir" | "json" | "network">): Promise<void> {
  const records = (await (await localJobs(options.dataDir))?.list()) ?? [];
  if (options.json) return printJson(records.map(shown));
  if (records.length === 0) {
    process.stdout.write(`no jobs in ${options.dataDir}; start one with: baton job run <spec.yaml> --max-price N\n`);
    return;
  }
  const names = await networkNames(options);
  const rows: string[][] = [["job", "name", "state", "leases", "hand-offs", "provider now"]];
  for (const record of records) {
    const last = record.leases.at(-1);
    rows.push([
      record.jobId,
      record.spec.name,
      record.state,
      String(record.leases.length),
      String(handOffCount(record.leases.filter((lease) => lease.state !== "vanished"))),
      last ? (names.get(last.provider.toLowerCase()) ?? last.provider) : "-",
    ]);
  }
  process.stdout.write(table(rows) + "\n");
}

/** `baton job …`: run, follow, cancel and list jobs. */
export function jobCommands(program: Command): void {
  const job = program.command("job").description("run jobs on the network and follow them across providers");

  examples(
    tenantOptions(
      job
        .command("run")
        .description("run a job from a spec file: lease a provider, send the job, and (with --watch) follow it")
        .argument("<spec>", "the job spec (YAML or JSON)")
        .requiredOption(
          "--max-price <tokens>",
          "the most to pay per second, in payment tokens",
          tokenAmount("--max-price"),
        )
        .option("--budget <tokens>", "the most to spend on the job in all", tokenAmount("--budget"))
        .option("--watch", "follow the job to its end (Ctrl-C detaches; `baton job watch` follows it again)")
        .option(
          "--retry-limit <n>",
          "how many providers may fail the job before it fails",
          integerIn("--retry-limit", 0, 1000),
          3,
        )
        .option(
          "--holders <n>",
          "how many other providers pin each checkpoint (each a lease of its own, paid from the budget)",
          integerIn("--holders", 0, MAX_HOLDERS),
          0,
        )
        .addOption(
          new Option(
            "--tenant-copy <copy>",
            "whether this machine keeps a copy of each checkpoint too (sample: checks the holders by a few random blocks instead; none: holders only)",
          )
            .choices(["full", "sample", "none"])
            .default("full"),
        )
        .option(
          "--unpack",
          "give holders that could run the job its key, to unpack each checkpoint ahead: a hand-off to one resumes with no decryption or unpacking (they can read the checkpoints)",
        ),
    ),
    [
      "baton job run examples/train/train.yaml --max-price 0.001 --watch",
      "baton job run train.yaml --max-price 0.001 --holders 2 --tenant-copy none --watch",
      "baton job run train.yaml --max-price 0.001 --budget 1 --keystore tenant.json --network net.json",
    ],
  ).action(run);

  examples(
    tenantOptions(
      job
        .command("watch")
        .description("follow a job to its end (re-attaches after a restart); an ended job's outcome, offline")
        .argument("<jobId>", "the job id `baton job run` printed", jobIdArg),
    ),
    ["baton job watch 0x5f…", "baton job watch 0x5f… --json"],
  ).action(watch);

  examples(
    tenantOptions(
      job
        .command("cancel")
        .description("cancel a job: close its lease (the unused deposit is refunded)")
        .argument("<jobId>", "the job id", jobIdArg),
    ),
    ["baton job cancel 0x5f…"],
  ).action(cancel);

  examples(
    job
      .command("list")
      .description("list the jobs in the data dir (offline: no key, no chain)")
      .option("--data-dir <dir>", "the tenant's state", DEFAULT_DATA_DIR)
      .addOption(networkFileOption())
      .option("--json", "print the job records (without their keys) as JSON"),
    ["baton job list", "baton job list --data-dir .baton/tenant --json"],
  ).action(list);
}
