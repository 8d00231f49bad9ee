/**
 * The index's SQL store, with two backends behind one interface: embedded (Node's built-in
 * `node:sqlite`, one file, as node/store.ts uses; the default, so that `baton explorer` runs with
 * nothing else) and Postgres (`--database-url`, for an explorer that serves many readers or whose
 * index should live on a database server). Both keep the same schema with the same meaning:
 *
 * The contracts' events are kept as rows, one per log, keyed by where they sit in the chain (block
 * number, log index): writing a log twice is writing the same row, so a page read again after a
 * crash changes nothing. Each page's events, the hash of every block they came from and the cursor
 * (the last block read) are written in one transaction, so a restart resumes at a page boundary
 * with nothing lost and nothing counted twice. The hashes are what a reorg is detected by; undoing
 * one is deleting every row above the last block whose hash the chain still has.
 *
 * What an explorer shows (providers, leases, jobs, slashes) are SQL views over the events: a reorg
 * or a restart only ever touches the events table, and the views can never disagree with it.
 * Token amounts stay decimal strings in the views: a sum of 18-decimal amounts overflows SQL's
 * 64-bit integers past 9.2 tokens, so amounts are added up in TypeScript with bigint.
 *
 * The store is asynchronous because Postgres is; the SQLite store answers synchronously under the
 * same promises.
 */
import type { IndexLogQuery } from "../chain/audit-events.ts";
import type { Deployment } from "../chain/deployments.ts";
import { UserError } from "../errors.ts";

/**
 * One decoded event as stored. Amounts and ids in `args` are decimal strings (JSON has no bigint), and
 * so are lease ids everywhere: `openLeaseFor`'s have bit 63 set, past both a JS number's 2^53 and a
 * signed 64-bit column's 2^63.
 */
export interface IndexedEvent {
  blockNumber: number;
  logIndex: number;
  blockHash: string;
  txHash: string;
  /** Unix seconds of the event's block. */
  timestamp: number;
  contract: "LeaseManager" | "ProviderRegistry";
  name: string;
  leaseId: string | null;
  provider: string | null;
  jobId: string | null;
  args: Record<string, unknown>;
  /** The raw log, decoded again by readers that need viem's exact values (an audit: bigints, checksummed addresses). */
  topics: string[];
  data: string;
}

/** An event without its decoded `args`, as {@link IndexReader.logs} returns it. */
export type IndexedLog = Omit<IndexedEvent, "args">;

/** The last block the index holds everything up to, and its hash when it was read. */
export interface Cursor {
  blockNumber: number;
  blockHash: string;
}

/** Which events {@link IndexReader.events} returns: all of them, or those matching one column. */
export interface EventFilter {
  leaseId?: string;
  provider?: string;
  jobId?: string;
  name?: string;
  txHash?: string;
}

/** Which events {@link IndexReader.logs} returns: what an audit asks of its event source. */
export type LogQuery = IndexLogQuery;

/** A row of the `leases` view: one per `LeaseOpened`, with its latest status and counts. */
export interface LeaseRow {
  lease_id: string;
  job_id: string;
  provider: string;
  tenant: string;
  /** "0" for none. */
  predecessor: string;
  deposit: string;
  opened_block: number;
  opened_tx: string;
  opened_at: number;
  status: string;
  heartbeats: number;
  checkpoints: number;
}

/** A row of the `providers` view: one per registration, with the registry's counters rebuilt. */
export interface ProviderRow {
  provider: string;
  peer_id: string;
  registered_block: number;
  leases: number;
  completed: number;
  slashed: number;
}

/** A row of the `slashes` view: one per `LeaseSlashed`, with where its collateral went (decimal strings). */
export interface SlashRow {
  lease_id: string;
  provider: string;
  job_id: string;
  caller: string;
  compensation: string;
  reward: string;
  treasury_amount: string;
  refund: string;
  block_number: number;
  tx_hash: string;
  timestamp: number;
}

/** Which leases {@link IndexReader.leases} returns: all, or those matching one column. */
export type LeaseFilter = { leaseId: string } | { provider: string } | { jobId: string } | { predecessor: string };

/** What pages and audits read from an index. */
export interface IndexReader {
  /** The block the index holds everything up to; undefined before its first page. */
  cursor(): Promise<Cursor | undefined>;
  /** Events in chain order, all of them or those matching one column. */
  events(where?: EventFilter): Promise<IndexedEvent[]>;
  /** Events of some types in a block range, in chain order: what an audit reads instead of `eth_getLogs`. */
  logs(query: LogQuery): Promise<IndexedLog[]>;
  /** Leases in order of opening. */
  leases(where?: LeaseFilter): Promise<LeaseRow[]>;
  /** How many leases stand in each status. */
  leaseCounts(): Promise<Record<string, number>>;
  /** Providers in order of registration. */
  providers(where?: { provider: string }): Promise<ProviderRow[]>;
  /** Slashes in chain order. */
  slashes(where?: { provider: string } | { jobId: string }): Promise<SlashRow[]>;
}

/** An index: what {@link IndexReader} reads, and what the indexer writes. */
export interface IndexStore extends IndexReader {
  /** Where it is, for messages (a Postgres URL without its password). */
  readonly location: string;
  /**
   * Runs `read` against one state of the index, so that an answer made of several queries (a
   * page) never mixes the index before and after a page was written: every figure is as of one
   * cursor.
   */
  snapshot<T>(read: (reader: IndexReader) => Promise<T>): Promise<T>;
  /** Writes a page: its events, the hashes of the blocks it read, and the new cursor, all or nothing. */
  writePage(events: readonly IndexedEvent[], blocks: ReadonlyMap<number, string>, cursor: Cursor): Promise<void>;
  /** Blocks whose hashes the index remembers, newest first: where a reorg's common ancestor is looked for. */
  rememberedBlocks(): Promise<{ number: number; hash: string }[]>;
  /** Forgets everything above `cursor.blockNumber` (a reorg replaced it) and resumes from there. */
  rollBack(cursor: Cursor): Promise<void>;
  /** Forgets every event (a reorg went below every remembered block): the next sync starts over. */
  reset(): Promise<void>;
  close(): Promise<void>;
}

/** Where an index lives: an SQLite file, or a Postgres database. */
export type IndexLocation = { file: string } | { databaseUrl: string };

/**
 * The columns of an event row, named as {@link IndexedEvent} names them (quoted: Postgres folds
 * unquoted names to lower case). Both backends' `events` tables have these columns.
 */
export const EVENT_COLUMNS = `block_number AS "blockNumber", log_index AS "logIndex", block_hash AS "blockHash",
  tx_hash AS "txHash", "timestamp", contract, name, lease_id AS "leaseId", provider, job_id AS "jobId", args, topics, data`;

/** {@link EVENT_COLUMNS} but `args`: what an audit reads (it decodes the raw log instead). */
export const LOG_COLUMNS = EVENT_COLUMNS.replace(" args,", "");

/** The column and value an {@link EventFilter} selects on, if any: one column, as each index covers one. */
export function eventFilterColumn(where: EventFilter | undefined): [column: string, value: string] | undefined {
  if (where?.txHash !== undefined) return ["tx_hash", where.txHash.toLowerCase()];
  if (where?.leaseId !== undefined) return ["lease_id", where.leaseId];
  if (where?.provider !== undefined) return ["provider", where.provider.toLowerCase()];
  if (where?.jobId !== undefined) return ["job_id", where.jobId.toLowerCase()];
  if (where?.name !== undefined) return ["name", where.name];
  return undefined;
}

/** The column and value a {@link LeaseFilter} selects on, if any. */
export function leaseFilterColumn(where: LeaseFilter | undefined): [column: string, value: string] | undefined {
  if (where === undefined) return undefined;
  if ("leaseId" in where) return ["lease_id", where.leaseId];
  if ("provider" in where) return ["provider", where.provider.toLowerCase()];
  if ("jobId" in where) return ["job_id", where.jobId.toLowerCase()];
  return ["predecessor", where.predecessor];
}

/**
 * The tables' format, kept in the index's `meta`. An index of another format (before 2: lease ids as
 * 64-bit integers, which `openLeaseFor`'s ids overflow) is rebuilt from the chain by the explorer,
 * and refused by readers until then.
 */
export const SCHEMA_VERSION = "2";

/** What drops an index's tables and views (not `meta`, which keeps its identity), so that they are made anew. */
export const DROP_TABLES = `DROP VIEW IF EXISTS providers; DROP VIEW IF EXISTS slashes; DROP VIEW IF EXISTS leases;
DROP TABLE IF EXISTS events; DROP TABLE IF EXISTS blocks; DELETE FROM meta WHERE key IN ('cursor', 'schema');`;

/** The refusal of an index in an older format, to a reader. */
export const outdatedIndexError = (location: string): UserError =>
  new UserError(
    `the index at ${location} is in an older format: start \`baton explorer\` on it once, which rebuilds it from the chain`,
  );

/** What an index is of: one deployment on one chain. */
export const identityOf = (deployment: Deployment): string =>
  `${deployment.chainId}:${deployment.contracts.leaseManager.toLowerCase()}`;

/** The refusal of an index that holds another deployment's events. */
export const otherDeploymentError = (found: string, expected: string): UserError =>
  new UserError(`the index holds the events of deployment ${found} (chain:lease manager), not ${expected}`, {
    details: "give each deployment its own index (another --db file, or another Postgres database)",
  });

const POSTGRES_URL = /^postgres(?:ql)?:\/\//i;

/**
 * Where an index named on the command line lives: a `postgres://` or `postgresql://` URL is a
 * Postgres database, anything else an SQLite file.
 *
 * @throws {UserError} on a Postgres URL that does not parse.
 */
export function indexLocation(text: string): IndexLocation {
  if (!POSTGRES_URL.test(text)) return { file: text };
  return { databaseUrl: checkedDatabaseUrl(text) };
}

/**
 * A Postgres URL, checked: `postgres://user[:password]@host[:port]/database` (libpq's form; PGPASSWORD
 * and ~/.pgpass work as with psql, to keep a password off the command line).
 *
 * @throws {UserError} when it is not one.
 */
export function checkedDatabaseUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch (error) {
    throw new UserError("the database URL does not parse: give postgres://user@host:5432/database", { cause: error });
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
    throw new UserError(`the database URL must start with postgres:// or postgresql://, not ${url.protocol}//`);
  }
  return text;
}

/** A Postgres URL as messages may show it: its password replaced. */
export function redactedUrl(text: string): string {
  const url = new URL(text);
  if (url.password !== "") url.password = "***";
  return url.toString();
}

/**
 * Opens (or creates) the index of `deployment` at `location`. Unless `mustExist` (a reader such as
 * an audit, which an empty new index would only mislead), a missing index is created. Postgres'
 * client is loaded only when a Postgres index is opened.
 *
 * @throws {UserError} when the index is missing and must exist, holds another deployment's index,
 * or its database cannot be reached.
 *
 * @example
 * const store = await openIndexStore({ databaseUrl: "postgres://baton@127.0.0.1/explorer" }, deployment);
 */
export async function openIndexStore(
  location: IndexLocation,
  deployment: Deployment,
  options: { mustExist?: boolean } = {},
): Promise<IndexStore> {
  if ("file" in location) {
    const { SqliteIndexStore } = await import("./sqlite-store.ts");
    return SqliteIndexStore.open(location.file, deployment, options);
  }
  const { PostgresIndexStore } = await import("./postgres-store.ts");
  return PostgresIndexStore.open(location.databaseUrl, deployment, options);
}
