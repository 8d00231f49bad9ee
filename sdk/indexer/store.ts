/**
 * The index's SQL store (embedded: Node's built-in `node:sqlite`, as node/store.ts uses). The
 * contracts' events are kept as rows, one per log, keyed by where they sit in the chain (block
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
 */
import { existsSync } from "node:fs";
import { DatabaseSync } from "node:sqlite";

import type { Deployment } from "../chain/deployments.ts";
import { UserError } from "../errors.ts";

/** One decoded event as stored. Amounts and ids in `args` are decimal strings (JSON has no bigint). */
export interface IndexedEvent {
  blockNumber: number;
  logIndex: number;
  blockHash: string;
  txHash: string;
  /** Unix seconds of the event's block. */
  timestamp: number;
  contract: "LeaseManager" | "ProviderRegistry";
  name: string;
  leaseId: number | null;
  provider: string | null;
  jobId: string | null;
  args: Record<string, unknown>;
  /** The raw log, decoded again by readers that need viem's exact values (an audit: bigints, checksummed addresses). */
  topics: string[];
  data: string;
}

/** The last block the index holds everything up to, and its hash when it was read. */
export interface Cursor {
  blockNumber: number;
  blockHash: string;
}

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
  lease_id INTEGER,
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
  CAST(json_extract(o.args, '$.predecessor') AS INTEGER) AS predecessor,
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

const SELECT_EVENT = `SELECT block_number AS blockNumber, log_index AS logIndex, block_hash AS blockHash,
  tx_hash AS txHash, timestamp, contract, name, lease_id AS leaseId, provider, job_id AS jobId, args, topics, data
  FROM events`;

type EventRow = Omit<IndexedEvent, "args" | "topics"> & { args: string; topics: string };

/** Which events {@link IndexStore.logs} returns. */
export interface LogQuery {
  contract: IndexedEvent["contract"];
  name: string;
  fromBlock: bigint;
  toBlock: bigint;
  /** Only events whose lease id, job id or provider is one of `values`. */
  where?: { column: "lease_id" | "job_id" | "provider"; values: readonly (string | number)[] };
}

const parseRow = (row: EventRow): IndexedEvent => ({
  ...row,
  args: JSON.parse(row.args) as Record<string, unknown>,
  topics: JSON.parse(row.topics) as string[],
});

/** What an index is of: one deployment on one chain. */
const identityOf = (deployment: Deployment): string =>
  `${deployment.chainId}:${deployment.contracts.leaseManager.toLowerCase()}`;

/** The embedded index: one SQLite file. */
export class IndexStore {
  readonly db: DatabaseSync;

  /**
   * Opens the index of `deployment` in `file`, creating it unless `mustExist` (a reader such as an
   * audit, which an empty new file would only mislead).
   *
   * @throws {UserError} when the file is missing and must exist, or holds another deployment's index.
   */
  static open(file: string, deployment: Deployment, { mustExist = false }: { mustExist?: boolean } = {}): IndexStore {
    if (mustExist && !existsSync(file)) throw new UserError(`no index at ${file}: start \`baton explorer\` first`);
    const store = new IndexStore(file);
    try {
      store.#bind(identityOf(deployment));
    } catch (error) {
      store.close();
      throw error;
    }
    return store;
  }

  private constructor(file: string) {
    this.db = new DatabaseSync(file);
    // WAL: readers (an API serving pages) never wait on the indexer's page writes.
    this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;");
    this.db.exec(SCHEMA);
  }

  /**
   * The chain and contract the index was built for; set on first use and checked after, so that
   * one file never mixes two deployments' events.
   */
  #bind(identity: string): void {
    const found = this.#meta("identity");
    if (found === undefined) this.db.prepare("INSERT INTO meta (key, value) VALUES ('identity', ?)").run(identity);
    else if (found !== identity) {
      throw new UserError(`the index holds the events of deployment ${found} (chain:lease manager), not ${identity}`);
    }
  }

  cursor(): Cursor | undefined {
    const value = this.#meta("cursor");
    return value === undefined ? undefined : (JSON.parse(value) as Cursor);
  }

  /** Writes a page: its events, the hashes of the blocks it read, and the new cursor, all or nothing. */
  writePage(events: readonly IndexedEvent[], blocks: ReadonlyMap<number, string>, cursor: Cursor): void {
    this.#transaction(() => {
      const insertEvent = this.db.prepare(
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
      const insertBlock = this.db.prepare("INSERT OR REPLACE INTO blocks (number, hash) VALUES (?, ?)");
      for (const [number, hash] of blocks) insertBlock.run(number, hash);
      insertBlock.run(cursor.blockNumber, cursor.blockHash);
      this.#setCursor(cursor);
    });
  }

  /** Blocks whose hashes the index remembers, newest first: where a reorg's common ancestor is looked for. */
  rememberedBlocks(): { number: number; hash: string }[] {
    return this.db.prepare("SELECT number, hash FROM blocks ORDER BY number DESC").all() as {
      number: number;
      hash: string;
    }[];
  }

  /** Forgets everything above `cursor.blockNumber` (a reorg replaced it) and resumes from there. */
  rollBack(cursor: Cursor): void {
    this.#transaction(() => {
      this.db.prepare("DELETE FROM events WHERE block_number > ?").run(cursor.blockNumber);
      this.db.prepare("DELETE FROM blocks WHERE number > ?").run(cursor.blockNumber);
      this.#setCursor(cursor);
    });
  }

  /** Forgets every event (a reorg went below every remembered block): the next sync starts over. */
  reset(): void {
    this.#transaction(() => {
      this.db.exec("DELETE FROM events; DELETE FROM blocks; DELETE FROM meta WHERE key = 'cursor';");
    });
  }

  /** Events in chain order, all of them or those matching one column. */
  events(where?: {
    leaseId?: number;
    provider?: string;
    jobId?: string;
    name?: string;
    txHash?: string;
  }): IndexedEvent[] {
    const [clause, value] =
      where?.txHash !== undefined
        ? ["WHERE tx_hash = ?", where.txHash.toLowerCase()]
        : where?.leaseId !== undefined
          ? ["WHERE lease_id = ?", where.leaseId]
          : where?.provider !== undefined
            ? ["WHERE provider = ?", where.provider.toLowerCase()]
            : where?.jobId !== undefined
              ? ["WHERE job_id = ?", where.jobId.toLowerCase()]
              : where?.name !== undefined
                ? ["WHERE name = ?", where.name]
                : ["", undefined];
    const statement = this.db.prepare(`${SELECT_EVENT} ${clause} ORDER BY block_number, log_index`);
    const rows = (value === undefined ? statement.all() : statement.all(value)) as EventRow[];
    return rows.map(parseRow);
  }

  /** One event type's events in a block range, in chain order: what an audit reads instead of `eth_getLogs`. */
  logs({ contract, name, fromBlock, toBlock, where }: LogQuery): IndexedEvent[] {
    const params: (string | number)[] = [contract, name, Number(fromBlock), Number(toBlock)];
    let clause = "";
    if (where !== undefined) {
      if (where.values.length === 0) return [];
      clause = ` AND ${where.column} IN (${where.values.map(() => "?").join(", ")})`;
      params.push(...where.values);
    }
    const rows = this.db
      .prepare(
        `${SELECT_EVENT} WHERE contract = ? AND name = ? AND block_number BETWEEN ? AND ?${clause}
          ORDER BY block_number, log_index`,
      )
      .all(...params) as EventRow[];
    return rows.map(parseRow);
  }

  close(): void {
    this.db.close();
  }

  #meta(key: string): string | undefined {
    return (this.db.prepare("SELECT value FROM meta WHERE key = ?").get(key) as { value: string } | undefined)?.value;
  }

  #setCursor(cursor: Cursor): void {
    this.db
      .prepare(
        "INSERT INTO meta (key, value) VALUES ('cursor', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
      )
      .run(JSON.stringify(cursor));
  }

  #transaction(write: () => void): void {
    this.db.exec("BEGIN IMMEDIATE");
    try {
      write();
      this.db.exec("COMMIT");
    } catch (error) {
      this.db.exec("ROLLBACK");
      throw error;
    }
  }
}
