/**
 * The embedded index (sdk/indexer/store.ts): one SQLite file, through Node's built-in
 * `node:sqlite`. Its calls are synchronous; they are wrapped in already-settled promises to meet
 * the store's interface, which Postgres' asynchronous client sets.
 */
import { existsSync } from "node:fs";
import { DatabaseSync, type SQLInputValue, type StatementSync } from "../utils/sqlite.ts";

import type { Deployment } from "../chain/deployments.ts";
import { UserError } from "../errors.ts";
import {
  DROP_TABLES,
  EVENT_COLUMNS,
  eventFilterColumn,
  identityOf,
  leaseFilterColumn,
  LOG_COLUMNS,
  otherDeploymentError,
  outdatedIndexError,
  SCHEMA_VERSION,
  type Cursor,
  type EventFilter,
  type IndexedEvent,
  type IndexedLog,
  type IndexReader,
  type IndexStore,
  type LeaseFilter,
  type LeaseRow,
  type LogQuery,
  type ProviderRow,
  type SlashRow,
} from "./store.ts";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  block_number INTEGER NOT NULL,
  log_index INTEGER NOT NULL,
  block_hash TEXT NOT NULL,
  tx_hash TEXT NOT NULL,
  timestamp INTEGER NOT NULL,
  contract TEXT NOT NULL,
  name TEXT NOT NULL,
  lease_id TEXT,
  provider TEXT,
  job_id TEXT,
  args TEXT NOT NULL,
  topics TEXT NOT NULL,
  data TEXT NOT NULL,
  PRIMARY KEY (block_number, log_index)
);
-- The event name is in each index so that a lease's, job's or provider's events of one kind are one
-- range of it: with the name alone, SQLite walks every heartbeat of the chain to count one lease's.
CREATE INDEX IF NOT EXISTS events_by_lease ON events (lease_id, name, block_number, log_index);
CREATE INDEX IF NOT EXISTS events_by_provider ON events (provider, name, block_number, log_index);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, name, block_number, log_index);
CREATE INDEX IF NOT EXISTS events_by_name ON events (name, block_number, log_index);
CREATE INDEX IF NOT EXISTS events_by_tx ON events (tx_hash);

CREATE VIEW IF NOT EXISTS leases AS
SELECT o.lease_id, o.job_id, o.provider, json_extract(o.args, '$.tenant') AS tenant,
  json_extract(o.args, '$.predecessor') AS predecessor,
  json_extract(o.args, '$.deposit') AS deposit,
  o.block_number AS opened_block, o.tx_hash AS opened_tx, o.timestamp AS opened_at,
  COALESCE((SELECT CASE s.name WHEN 'LeaseCloseRequested' THEN 'closing' WHEN 'LeaseClosed' THEN 'closed'
      WHEN 'LeaseCompleted' THEN 'completed' WHEN 'LeaseExpired' THEN 'expired' ELSE 'slashed' END
    FROM events s WHERE s.lease_id = o.lease_id AND s.contract = 'LeaseManager'
      AND s.name IN ('LeaseCloseRequested', 'LeaseClosed', 'LeaseCompleted', 'LeaseExpired', 'LeaseSlashed')
    ORDER BY s.block_number DESC, s.log_index DESC LIMIT 1), 'active') AS status,
  (SELECT COUNT(*) FROM events h WHERE h.lease_id = o.lease_id AND h.name = 'HeartbeatRecorded') AS heartbeats,
  (SELECT COUNT(*) FROM events c WHERE c.lease_id = o.lease_id AND c.name = 'CheckpointCommitted') AS checkpoints
FROM events o WHERE o.name = 'LeaseOpened';

CREATE VIEW IF NOT EXISTS slashes AS
SELECT e.lease_id, l.provider, l.job_id, json_extract(e.args, '$.caller') AS caller,
  json_extract(e.args, '$.compensation') AS compensation, json_extract(e.args, '$.reward') AS reward,
  json_extract(e.args, '$.treasuryAmount') AS treasury_amount, json_extract(e.args, '$.refund') AS refund,
  e.block_number, e.tx_hash, e.timestamp
FROM events e JOIN leases l ON l.lease_id = e.lease_id WHERE e.name = 'LeaseSlashed';

CREATE VIEW IF NOT EXISTS providers AS
SELECT r.provider, json_extract(r.args, '$.peerId') AS peer_id, r.block_number AS registered_block,
  (SELECT COUNT(*) FROM leases l WHERE l.provider = r.provider) AS leases,
  (SELECT COUNT(*) FROM leases l WHERE l.provider = r.provider AND l.status = 'completed') AS completed,
  (SELECT COUNT(*) FROM slashes s WHERE s.provider = r.provider) AS slashed
FROM events r WHERE r.name = 'ProviderRegistered';
`;

type EventRow = Omit<IndexedEvent, "args" | "topics"> & { args: string; topics: string };

const parseRow = (row: EventRow): IndexedEvent => ({
  ...row,
  args: JSON.parse(row.args) as Record<string, unknown>,
  topics: JSON.parse(row.topics) as string[],
});

/** Compiled statements a store keeps (see `#prepare`). */
const STATEMENTS_KEPT = 200;

/** The embedded index: one SQLite file. */
export class SqliteIndexStore implements IndexStore {
  readonly location: string;
  readonly #db: DatabaseSync;
  /** Statements by SQL text: compiling one costs more than running most of the audits' queries. */
  readonly #statements = new Map<string, StatementSync>();

  /**
   * Opens the index of `deployment` in `file`, creating it unless `mustExist`.
   *
   * @throws {UserError} when the file is missing and must exist, holds another deployment's index,
   * or (to a reader) an index in an older format.
   */
  static open(file: string, deployment: Deployment, { mustExist = false }: { mustExist?: boolean } = {}): IndexStore {
    if (mustExist && !existsSync(file)) throw new UserError(`no index at ${file}: start \`baton explorer\` first`);
    const store = new SqliteIndexStore(file);
    try {
      store.#prepareTables(identityOf(deployment), mustExist);
    } catch (error) {
      store.#db.close();
      throw error;
    }
    return store;
  }

  private constructor(file: string) {
    this.location = file;
    this.#db = new DatabaseSync(file);
    // WAL: readers (an API serving pages) never wait on the indexer's page writes.
    // The busy timeout first: switching a fresh file to WAL takes a lock another opener may hold.
    this.#db.exec("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;");
  }

  /**
   * Creates the tables, first dropping those of an older format (a reader refuses them instead),
   * and binds the file to the chain and contract it indexes: set on first use and checked after, so
   * that one file never mixes two deployments' events.
   */
  #prepareTables(identity: string, reader: boolean): void {
    if (this.#prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").get() !== undefined) {
      const found = this.#meta("identity");
      if (found !== undefined && found !== identity) throw otherDeploymentError(found, identity);
      if (this.#meta("schema") !== SCHEMA_VERSION) {
        if (reader) throw outdatedIndexError(this.location);
        this.#transaction(() => this.#db.exec(DROP_TABLES));
      }
    }
    this.#db.exec(SCHEMA);
    const found = this.#meta("identity");
    if (found === undefined) this.#prepare("INSERT INTO meta (key, value) VALUES ('identity', ?)").run(identity);
    else if (found !== identity) throw otherDeploymentError(found, identity);
    this.#prepare(
      "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    ).run(SCHEMA_VERSION);
  }

  /**
   * One state of the index for free: every call here is synchronous, so a `read` that awaits only
   * this store's already-settled answers runs to its end in one turn of the event loop, and no page
   * (written from another turn, after an RPC answer) can land between two of its queries.
   */
  snapshot<T>(read: (reader: IndexReader) => Promise<T>): Promise<T> {
    return read(this);
  }

  async cursor(): Promise<Cursor | undefined> {
    const value = this.#meta("cursor");
    return value === undefined ? undefined : (JSON.parse(value) as Cursor);
  }

  async writePage(events: readonly IndexedEvent[], blocks: ReadonlyMap<number, string>, cursor: Cursor): Promise<void> {
    this.#transaction(() => {
      const insertEvent = this.#prepare(
        `INSERT OR REPLACE INTO events (block_number, log_index, block_hash, tx_hash, timestamp, contract, name,
          lease_id, provider, job_id, args, topics, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      );
      for (const e of events) {
        insertEvent.run(
          e.blockNumber,
          e.logIndex,
          e.blockHash,
          e.txHash,
          e.timestamp,
          e.contract,
          e.name,
          e.leaseId,
          e.provider,
          e.jobId,
          JSON.stringify(e.args),
          JSON.stringify(e.topics),
          e.data,
        );
      }
      const insertBlock = this.#prepare("INSERT OR REPLACE INTO blocks (number, hash) VALUES (?, ?)");
      for (const [number, hash] of blocks) insertBlock.run(number, hash);
      insertBlock.run(cursor.blockNumber, cursor.blockHash);
      this.#setCursor(cursor);
    });
  }

  async rememberedBlocks(): Promise<{ number: number; hash: string }[]> {
    return this.#prepare("SELECT number, hash FROM blocks ORDER BY number DESC").all() as {
      number: number;
      hash: string;
    }[];
  }

  async rollBack(cursor: Cursor): Promise<void> {
    this.#transaction(() => {
      this.#prepare("DELETE FROM events WHERE block_number > ?").run(cursor.blockNumber);
      this.#prepare("DELETE FROM blocks WHERE number > ?").run(cursor.blockNumber);
      this.#setCursor(cursor);
    });
  }

  async reset(): Promise<void> {
    this.#transaction(() => {
      this.#db.exec("DELETE FROM events; DELETE FROM blocks; DELETE FROM meta WHERE key = 'cursor';");
    });
  }

  async events(where?: EventFilter): Promise<IndexedEvent[]> {
    const filter = eventFilterColumn(where);
    const clause = filter === undefined ? "" : `WHERE ${filter[0]} = ?`;
    const statement = this.#prepare(`SELECT ${EVENT_COLUMNS} FROM events ${clause} ORDER BY block_number, log_index`);
    const rows = (filter === undefined ? statement.all() : statement.all(filter[1])) as EventRow[];
    return rows.map(parseRow);
  }

  async logs({ contract, names, fromBlock, toBlock, where }: LogQuery): Promise<IndexedLog[]> {
    if (names.length === 0) return [];
    const params: (string | number)[] = [contract, ...names, Number(fromBlock), Number(toBlock)];
    let clause = "";
    if (where !== undefined) {
      if (where.values.length === 0) return [];
      clause = ` AND ${where.column} IN (${where.values.map(() => "?").join(", ")})`;
      params.push(...where.values);
    }
    const rows = this.#prepare(
      `SELECT ${LOG_COLUMNS} FROM events WHERE contract = ? AND name IN (${names.map(() => "?").join(", ")}) AND block_number BETWEEN ? AND ?${clause}
          ORDER BY block_number, log_index`,
    ).all(...params) as (Omit<IndexedLog, "topics"> & { topics: string })[];
    return rows.map((row) => ({ ...row, topics: JSON.parse(row.topics) as string[] }));
  }

  async leases(where?: LeaseFilter): Promise<LeaseRow[]> {
    const filter = leaseFilterColumn(where);
    return this.#select<LeaseRow>("leases", filter, "opened_block, lease_id");
  }

  async leaseCounts(): Promise<Record<string, number>> {
    const rows = this.#prepare("SELECT status, COUNT(*) AS n FROM leases GROUP BY status").all() as {
      status: string;
      n: number;
    }[];
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  }

  async providers(where?: { provider: string }): Promise<ProviderRow[]> {
    const filter = where === undefined ? undefined : (["provider", where.provider.toLowerCase()] as const);
    return this.#select<ProviderRow>("providers", filter, "registered_block");
  }

  async slashes(where?: { provider: string } | { jobId: string }): Promise<SlashRow[]> {
    const filter =
      where === undefined
        ? undefined
        : "provider" in where
          ? (["provider", where.provider.toLowerCase()] as const)
          : (["job_id", where.jobId.toLowerCase()] as const);
    return this.#select<SlashRow>("slashes", filter, "block_number");
  }

  async close(): Promise<void> {
    this.#db.close();
  }

  /** Rows of a view, all or those with one column equal to a value, ordered by `order`. */
  #select<Row>(view: string, filter: readonly [string, SQLInputValue] | undefined, order: string): Row[] {
    const clause = filter === undefined ? "" : `WHERE ${filter[0]} = ?`;
    const statement = this.#prepare(`SELECT * FROM ${view} ${clause} ORDER BY ${order}`);
    return (filter === undefined ? statement.all() : statement.all(filter[1])) as Row[];
  }

  /**
   * `sql` compiled once. A lease list's `IN (?, …)` makes one text per list length, so the cache is
   * emptied when it grows past STATEMENTS_KEPT.
   */
  #prepare(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (statement === undefined) {
      if (this.#statements.size >= STATEMENTS_KEPT) this.#statements.clear();
      statement = this.#db.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  #meta(key: string): string | undefined {
    return (this.#prepare("SELECT value FROM meta WHERE key = ?").get(key) as { value: string } | undefined)?.value;
  }

  #setCursor(cursor: Cursor): void {
    this.#prepare(
      "INSERT INTO meta (key, value) VALUES ('cursor', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    ).run(JSON.stringify(cursor));
  }

  #transaction(write: () => void): void {
    this.#db.exec("BEGIN IMMEDIATE");
    try {
      write();
      this.#db.exec("COMMIT");
    } catch (error) {
      this.#db.exec("ROLLBACK");
      throw error;
    }
  }
}
