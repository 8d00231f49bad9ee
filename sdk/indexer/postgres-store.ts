/**
 * The index in Postgres (sdk/indexer/store.ts; `baton explorer --database-url`), through `pg`'s
 * connection pool. The schema is the embedded one's, in Postgres' words: the same tables, keys,
 * indexes and views, with `args` and `topics` as `jsonb` (what `->>` reads) instead of JSON text,
 * and `bigint` block numbers, lease ids and times (read back as JavaScript numbers: all lie far
 * below 2^53).
 *
 * A page is written in one transaction of one pooled connection, with each table's rows in one
 * statement (arrays unnested), so a page of thousands of events costs three round trips, not
 * thousands. Readers get their snapshot from a `REPEATABLE READ` transaction: the indexer commits
 * pages beside them without waiting on them, and they never see half of one.
 */
import { DatabaseError, Pool, types, type PoolClient } from "pg";

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
  redactedUrl,
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
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (number bigint PRIMARY KEY, hash text NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  block_number bigint NOT NULL,
  log_index integer NOT NULL,
  block_hash text NOT NULL,
  tx_hash text NOT NULL,
  "timestamp" bigint NOT NULL,
  contract text NOT NULL,
  name text NOT NULL,
  lease_id text,
  provider text,
  job_id text,
  args jsonb NOT NULL,
  topics jsonb NOT NULL,
  data text NOT NULL,
  PRIMARY KEY (block_number, log_index)
);
-- The embedded index's indexes, for the same reason: a lease's, job's or provider's events of one
-- kind are one range of each.
CREATE INDEX IF NOT EXISTS events_by_lease ON events (lease_id, name, block_number, log_index);
CREATE INDEX IF NOT EXISTS events_by_provider ON events (provider, name, block_number, log_index);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, name, block_number, log_index);
CREATE INDEX IF NOT EXISTS events_by_name ON events (name, block_number, log_index);
CREATE INDEX IF NOT EXISTS events_by_tx ON events (tx_hash);

CREATE OR REPLACE VIEW leases AS
SELECT o.lease_id, o.job_id, o.provider, o.args->>'tenant' AS tenant,
  o.args->>'predecessor' AS predecessor,
  o.args->>'deposit' AS deposit,
  o.block_number AS opened_block, o.tx_hash AS opened_tx, o."timestamp" AS opened_at,
  COALESCE((SELECT CASE s.name WHEN 'LeaseCloseRequested' THEN 'closing' WHEN 'LeaseClosed' THEN 'closed'
      WHEN 'LeaseCompleted' THEN 'completed' WHEN 'LeaseExpired' THEN 'expired' ELSE 'slashed' END
    FROM events s WHERE s.lease_id = o.lease_id AND s.contract = 'LeaseManager'
      AND s.name IN ('LeaseCloseRequested', 'LeaseClosed', 'LeaseCompleted', 'LeaseExpired', 'LeaseSlashed')
    ORDER BY s.block_number DESC, s.log_index DESC LIMIT 1), 'active') AS status,
  (SELECT COUNT(*) FROM events h WHERE h.lease_id = o.lease_id AND h.name = 'HeartbeatRecorded') AS heartbeats,
  (SELECT COUNT(*) FROM events c WHERE c.lease_id = o.lease_id AND c.name = 'CheckpointCommitted') AS checkpoints
FROM events o WHERE o.name = 'LeaseOpened';

CREATE OR REPLACE VIEW slashes AS
SELECT e.lease_id, l.provider, l.job_id, e.args->>'caller' AS caller,
  e.args->>'compensation' AS compensation, e.args->>'reward' AS reward,
  e.args->>'treasuryAmount' AS treasury_amount, e.args->>'refund' AS refund,
  e.block_number, e.tx_hash, e."timestamp"
FROM events e JOIN leases l ON l.lease_id = e.lease_id WHERE e.name = 'LeaseSlashed';

CREATE OR REPLACE VIEW providers AS
SELECT r.provider, r.args->>'peerId' AS peer_id, r.block_number AS registered_block,
  (SELECT COUNT(*) FROM leases l WHERE l.provider = r.provider) AS leases,
  (SELECT COUNT(*) FROM leases l WHERE l.provider = r.provider AND l.status = 'completed') AS completed,
  (SELECT COUNT(*) FROM slashes s WHERE s.provider = r.provider) AS slashed
FROM events r WHERE r.name = 'ProviderRegistered';
`;

/**
 * Held while the schema is created and the identity bound, so that two explorers starting on one
 * new database do not race to create the same tables (`CREATE … IF NOT EXISTS` is not safe
 * against a concurrent creator). Any fixed number: it only has to be the same in every process.
 */
const SCHEMA_LOCK = 0x6261746f6e; // "baton"

/** Postgres' type id of `bigint` (pg_type.oid of int8). */
const INT8_OID = 20;

/**
 * `bigint` as a JavaScript number (`pg` reads it as a string, since it may not fit): every bigint
 * here is a block number, a time or a count, all far below 2^53 (lease ids are text).
 */
function parseInt8(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new RangeError(`${text} does not fit a JavaScript number`);
  return value;
}

const typeParsers = {
  getTypeParser: ((oid: number, format?: "text" | "binary") =>
    oid === INT8_OID ? parseInt8 : types.getTypeParser(oid, format)) as typeof types.getTypeParser,
};

/** What runs a query: the pool, or one connection inside a transaction. */
type Queryable = Pick<Pool, "query"> | PoolClient;

/** Reads of an index, through a pool (each query on its own) or one connection (in a snapshot). */
class PostgresReader implements IndexReader {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  async cursor(): Promise<Cursor | undefined> {
    const value = await meta(this.#db, "cursor");
    return value === undefined ? undefined : (JSON.parse(value) as Cursor);
  }

  async events(where?: EventFilter): Promise<IndexedEvent[]> {
    const filter = eventFilterColumn(where);
    const clause = filter === undefined ? "" : `WHERE ${filter[0]} = $1`;
    const { rows } = await this.#db.query<IndexedEvent>(
      `SELECT ${EVENT_COLUMNS} FROM events ${clause} ORDER BY block_number, log_index`,
      filter === undefined ? [] : [filter[1]],
    );
    return rows;
  }

  async logs({ contract, names, fromBlock, toBlock, where }: LogQuery): Promise<IndexedLog[]> {
    let clause = "";
    const params: unknown[] = [contract, names, Number(fromBlock), Number(toBlock)];
    if (where !== undefined) {
      if (where.values.length === 0) return [];
      // One array parameter, whatever the number of values: `= ANY` is Postgres' `IN (…)` over an array.
      clause = ` AND ${where.column} = ANY($5::text[])`;
      params.push(where.values);
    }
    const { rows } = await this.#db.query<IndexedLog>(
      `SELECT ${LOG_COLUMNS} FROM events WHERE contract = $1 AND name = ANY($2::text[]) AND block_number BETWEEN $3 AND $4${clause}
        ORDER BY block_number, log_index`,
      params,
    );
    return rows;
  }

  async leases(where?: LeaseFilter): Promise<LeaseRow[]> {
    return this.#select<LeaseRow>("leases", leaseFilterColumn(where), "opened_block, lease_id");
  }

  async leaseCounts(): Promise<Record<string, number>> {
    const { rows } = await this.#db.query<{ status: string; n: number }>(
      "SELECT status, COUNT(*) AS n FROM leases GROUP BY status",
    );
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

  async #select<Row extends object>(
    view: string,
    filter: readonly [string, string | number] | undefined,
    order: string,
  ): Promise<Row[]> {
    const clause = filter === undefined ? "" : `WHERE ${filter[0]} = $1`;
    const { rows } = await this.#db.query<Row>(
      `SELECT * FROM ${view} ${clause} ORDER BY ${order}`,
      filter === undefined ? [] : [filter[1]],
    );
    return rows;
  }
}

/** The index in a Postgres database. */
export class PostgresIndexStore extends PostgresReader implements IndexStore {
  readonly location: string;
  readonly #pool: Pool;
  /** Rows the events table held when its statistics were last gathered, as far as this store knows. */
  #analyzedRows: number;
  /** Rows this store wrote since. */
  #writtenRows = 0;

  /**
   * Opens the index of `deployment` in the database at `url`, creating its tables unless
   * `mustExist` (then nothing is created: a reader may have no right to).
   *
   * @throws {UserError} when the database cannot be reached, has no index and must, or holds
   * another deployment's index.
   */
  static async open(
    url: string,
    deployment: Deployment,
    { mustExist = false }: { mustExist?: boolean } = {},
  ): Promise<IndexStore> {
    const location = redactedUrl(url);
    const pool = new Pool({ connectionString: url, types: typeParsers });
    // A pooled connection that breaks while idle (the server restarted) is dropped by the pool, and
    // the next query opens another or fails with its own error: nothing to do here but not crash.
    pool.on("error", () => {});
    try {
      const identity = identityOf(deployment);
      if (mustExist) {
        const { rows } = await pool.query<{ found: boolean }>("SELECT to_regclass('meta') IS NOT NULL AS found");
        if (!rows[0]!.found) {
          throw new UserError(`no index in the database ${location}: start \`baton explorer --database-url …\` first`);
        }
        const found = await meta(pool, "identity");
        if (found !== identity) throw otherDeploymentError(found ?? "none", identity);
        if ((await meta(pool, "schema")) !== SCHEMA_VERSION) throw outdatedIndexError(location);
      } else {
        await transaction(pool, async (client) => {
          await client.query("SELECT pg_advisory_xact_lock($1)", [SCHEMA_LOCK]);
          const { rows } = await client.query<{ found: boolean }>("SELECT to_regclass('events') IS NOT NULL AS found");
          if (rows[0]!.found) {
            // Another deployment's index is refused before anything of it is dropped.
            const found = await meta(client, "identity");
            if (found !== undefined && found !== identity) throw otherDeploymentError(found, identity);
            if ((await meta(client, "schema")) !== SCHEMA_VERSION) await client.query(DROP_TABLES);
          }
          await client.query(SCHEMA);
          await client.query(
            "INSERT INTO meta (key, value) VALUES ('schema', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [SCHEMA_VERSION],
          );
          const found = await meta(client, "identity");
          if (found === undefined) {
            await client.query("INSERT INTO meta (key, value) VALUES ('identity', $1)", [identity]);
          } else if (found !== identity) {
            throw otherDeploymentError(found, identity);
          }
        });
      }
      const { rows } = await pool.query<{ n: number }>(
        "SELECT GREATEST(reltuples, 0)::bigint AS n FROM pg_class WHERE oid = 'events'::regclass",
      );
      return new PostgresIndexStore(pool, location, rows[0]!.n);
    } catch (error) {
      await pool.end();
      throw reachable(error, location);
    }
  }

  private constructor(pool: Pool, location: string, analyzedRows: number) {
    super(pool);
    this.#pool = pool;
    this.location = location;
    this.#analyzedRows = analyzedRows;
  }

  snapshot<T>(read: (reader: IndexReader) => Promise<T>): Promise<T> {
    return transaction(
      this.#pool,
      (client) => read(new PostgresReader(client)),
      "ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    );
  }

  async writePage(events: readonly IndexedEvent[], blocks: ReadonlyMap<number, string>, cursor: Cursor): Promise<void> {
    // One row per block: the cursor's block may also be one an event came from.
    const hashes = new Map(blocks).set(cursor.blockNumber, cursor.blockHash);
    await transaction(this.#pool, async (client) => {
      if (events.length > 0) {
        const column = <T>(pick: (e: IndexedEvent) => T): T[] => events.map(pick);
        await client.query(
          `INSERT INTO events (block_number, log_index, block_hash, tx_hash, "timestamp", contract, name, lease_id,
            provider, job_id, args, topics, data)
          SELECT b, l, bh, tx, ts, c, n, lid, p, j, a::jsonb, t::jsonb, d
            FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[],
              $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
              AS page (b, l, bh, tx, ts, c, n, lid, p, j, a, t, d)
          ON CONFLICT (block_number, log_index) DO UPDATE SET block_hash = excluded.block_hash,
            tx_hash = excluded.tx_hash, "timestamp" = excluded."timestamp", contract = excluded.contract,
            name = excluded.name, lease_id = excluded.lease_id, provider = excluded.provider,
            job_id = excluded.job_id, args = excluded.args, topics = excluded.topics, data = excluded.data`,
          [
            column((e) => e.blockNumber),
            column((e) => e.logIndex),
            column((e) => e.blockHash),
            column((e) => e.txHash),
            column((e) => e.timestamp),
            column((e) => e.contract),
            column((e) => e.name),
            column((e) => e.leaseId),
            column((e) => e.provider),
            column((e) => e.jobId),
            column((e) => JSON.stringify(e.args)),
            column((e) => JSON.stringify(e.topics)),
            column((e) => e.data),
          ],
        );
      }
      await client.query(
        `INSERT INTO blocks (number, hash) SELECT * FROM unnest($1::bigint[], $2::text[])
          ON CONFLICT (number) DO UPDATE SET hash = excluded.hash`,
        [[...hashes.keys()], [...hashes.values()]],
      );
      await setCursor(client, cursor);
    });
    // Once the table has more than doubled since its statistics were gathered (a first sync's
    // pages), gather them again. Autovacuum would, but only at its next round (up to a minute), and
    // until then the planner, with no statistics, reads one lease's heartbeats through the name
    // index, past every heartbeat of the chain. Doubling keeps it to a few times in a sync.
    this.#writtenRows += events.length;
    if (this.#writtenRows > this.#analyzedRows) {
      await this.#pool.query("ANALYZE events");
      this.#analyzedRows += this.#writtenRows;
      this.#writtenRows = 0;
    }
  }

  async rememberedBlocks(): Promise<{ number: number; hash: string }[]> {
    const { rows } = await this.#pool.query<{ number: number; hash: string }>(
      "SELECT number, hash FROM blocks ORDER BY number DESC",
    );
    return rows;
  }

  async rollBack(cursor: Cursor): Promise<void> {
    await transaction(this.#pool, async (client) => {
      await client.query("DELETE FROM events WHERE block_number > $1", [cursor.blockNumber]);
      await client.query("DELETE FROM blocks WHERE number > $1", [cursor.blockNumber]);
      await setCursor(client, cursor);
    });
  }

  async reset(): Promise<void> {
    await transaction(this.#pool, async (client) => {
      await client.query("DELETE FROM events");
      await client.query("DELETE FROM blocks");
      await client.query("DELETE FROM meta WHERE key = 'cursor'");
    });
  }

  async close(): Promise<void> {
    await this.#pool.end();
  }
}

async function meta(db: Queryable, key: string): Promise<string | undefined> {
  const { rows } = await db.query<{ value: string }>("SELECT value FROM meta WHERE key = $1", [key]);
  return rows[0]?.value;
}

async function setCursor(client: PoolClient, cursor: Cursor): Promise<void> {
  await client.query(
    "INSERT INTO meta (key, value) VALUES ('cursor', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    [JSON.stringify(cursor)],
  );
}

/** Runs `work` in one transaction on one pooled connection: committed if it resolves, rolled back if it throws. */
async function transaction<T>(pool: Pool, work: (client: PoolClient) => Promise<T>, mode = ""): Promise<T> {
  const client = await pool.connect();
  let broken: unknown;
  try {
    await client.query(`BEGIN ${mode}`);
    try {
      const result = await work(client);
      await client.query("COMMIT");
      return result;
    } catch (error) {
      // A connection that cannot even roll back is broken: it leaves the pool with the release below.
      await client.query("ROLLBACK").catch((rollbackError: unknown) => {
        broken = rollbackError;
      });
      throw error;
    }
  } finally {
    client.release(broken instanceof Error ? broken : undefined);
  }
}

/**
 * A failure to reach the database, said as what to do about it; any other error as it is. `pg`
 * reports an unreachable server with Node's socket codes and a refusal with Postgres' SQLSTATE.
 */
function reachable(error: unknown, location: string): unknown {
  if (error instanceof UserError) return error;
  const code = (error as { code?: unknown }).code;
  if (code === "ECONNREFUSED" || code === "ENOTFOUND" || code === "ETIMEDOUT" || code === "EHOSTUNREACH") {
    return new UserError(`cannot reach Postgres at ${location}: is the server running, and the host and port right?`, {
      cause: error,
    });
  }
  if (error instanceof DatabaseError) {
    // 28xxx: authentication and authorization; 3D000: no such database.
    if (error.code?.startsWith("28")) {
      return new UserError(
        `Postgres at ${location} refused the login (${error.message}): check the user and its password (the URL, PGPASSWORD or ~/.pgpass)`,
        { cause: error },
      );
    }
    if (error.code === "3D000") {
      return new UserError(`${error.message} at ${location}: create it first (createdb, or CREATE DATABASE)`, {
        cause: error,
      });
    }
  }
  return error;
}
