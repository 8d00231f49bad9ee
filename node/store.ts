import { mkdirSync } from "node:fs";
import path from "node:path";
import { DatabaseSync, type StatementSync } from "../sdk/utils/sqlite.ts";

import { UserError } from "../sdk/errors.ts";

/**
 * The node's memory across crashes: quotes it signed, leases it serves and their jobs, in SQLite
 * (Node's built-in `node:sqlite`, so nothing native is compiled at install). Every write is a single
 * statement or an explicit transaction, with the WAL journal, so a SIGKILL at any instant leaves
 * either the old or the new row, never half of one; and with `synchronous=FULL`, so a power loss
 * keeps every write made before it, but for a batch task's own bookkeeping (`updateLease`).
 */

/** Where a lease stands on this node. */
export type LeaseState =
  /** Opened on chain, session accepted, job not yet started (fetching inputs, resume checkpoint). */
  | "preparing"
  | "running"
  /** The job process ended; the result waits to be finished on chain. */
  | "exited"
  /** `finish` landed on chain. */
  | "finished"
  /** The chain says the lease ended without us (closed, slashed, expired): job killed, GPUs freed. */
  | "fenced"
  /** The job could not be started or was lost (e.g. the node restarted while it ran). */
  | "failed"
  /**
   * Given back while the node drained: the tenant was told (a `draining` refusal on its session) and
   * the job stopped. The node heartbeats the lease until the tenant's close, which it acknowledges
   * (then `fenced`), or finishes it itself if no close comes (then `finished`).
   */
  | "handed-back";

/** What a lease's pin is: a checkpoint of its job, or its job's (or a task's) output. */
export type LeasePinKind = "checkpoint" | "output";

export interface LeaseRow {
  leaseId: bigint;
  jobId: string;
  tenant: string;
  tenantPeer: string;
  state: LeaseState;
  gpus: number[];
  spec: unknown;
  /** The dir the job runs in: the lease's work dir, or on a batch lease its task's dir in it (`WorkDirs.taskDir`). */
  workDir: string;
  pid: number | null;
  startedAt: number;
  endedAt: number | null;
  exitCode: number | null;
  reason: string | null;
  chainPeriodS: number;
  lastChainHeartbeat: number | null;
  resultCid: string | null;
  /** The job's checkpoint key (base64); kept so a restarted node can go on publishing checkpoints. */
  jobKey: string | null;
  /**
   * On a batch lease (one that runs tasks one after another, see the `start` message): the task it
   * runs, or ran last (its `spec` is that task's). Null for a lease that runs one job.
   */
  taskId: string | null;
  /**
   * On a holder's lease (one that runs no job and pins checkpoints, see `start.hold`): how many it
   * keeps. Null for a lease that runs a job.
   */
  holdKeep: number | null;
}

/** A checkpoint a holder's lease pins. */
export interface HeldCheckpoint {
  cid: string;
  /** Its size as fetched. */
  bytes: number;
}

/** A checkpoint published for a lease whose CID no heartbeat has committed on chain yet. */
export interface PendingCheckpoint {
  /** Increases with every checkpoint the node publishes: the order they were published in. */
  seq: number;
  cid: string;
}

export interface QuoteRow {
  nonce: bigint;
  jobId: string;
  tenant: string;
  gpus: number[];
  expiresAt: number;
  /** Quoted for a holder's lease (the bid's `requirements.hold`). */
  hold: boolean;
}

/**
 * The schema, as the steps that build it: step N (counted from 1) takes a database from version
 * N - 1 to version N, and `PRAGMA user_version` says which version a database is at. A change to
 * the layout is a new step at the end; a step, once released, is never edited, since databases out
 * there were built by it.
 *
 * Step 1 is the layout from before versions were recorded, word for word: run on a database of
 * that time (version 0, its tables already there), its `IF NOT EXISTS` clauses leave the tables
 * and their rows as they are, and only the version is written.
 */
export const MIGRATIONS: readonly string[] = [
  `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quotes (
  nonce TEXT PRIMARY KEY,
  job_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  gpus TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
  lease_id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  tenant_peer TEXT NOT NULL,
  state TEXT NOT NULL,
  gpus TEXT NOT NULL,
  spec TEXT NOT NULL,
  work_dir TEXT NOT NULL,
  pid INTEGER,
  started_at INTEGER NOT NULL,
  ended_at INTEGER,
  exit_code INTEGER,
  reason TEXT,
  chain_period_s INTEGER NOT NULL,
  last_chain_heartbeat INTEGER,
  pending_checkpoint_cid TEXT,
  result_cid TEXT,
  job_key TEXT
);
CREATE INDEX IF NOT EXISTS leases_state ON leases(state);
`,
  // Every checkpoint's CID waits for a heartbeat, not only the latest: one published while a
  // heartbeat transaction was pending used to be overwritten, or cleared with the one sent.
  `
CREATE TABLE pending_checkpoints (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  lease_id TEXT NOT NULL,
  cid TEXT NOT NULL
);
CREATE INDEX pending_checkpoints_lease ON pending_checkpoints(lease_id, seq);
INSERT INTO pending_checkpoints (lease_id, cid)
  SELECT lease_id, pending_checkpoint_cid FROM leases WHERE pending_checkpoint_cid IS NOT NULL;
ALTER TABLE leases DROP COLUMN pending_checkpoint_cid;
`,
  // Batch leases: the task a lease runs (or ran last), null for a lease that runs one job.
  `
ALTER TABLE leases ADD COLUMN task_id TEXT;
`,
  // Holders' leases: how many checkpoints one keeps (null for a lease that runs a job), and those it holds.
  `
ALTER TABLE leases ADD COLUMN hold_keep INTEGER;
CREATE TABLE held (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  lease_id TEXT NOT NULL,
  cid TEXT NOT NULL,
  bytes INTEGER NOT NULL
);
CREATE INDEX held_lease ON held(lease_id, seq);
`,
  // What a lease that runs a job pins: checkpoints (those it published and kept, the one it resumed
  // from), let go when the lease ends, also when the node was down then; outputs, let go once they
  // are `outputRetentionS` old. And which quotes were for holders' leases (counted apart).
  `
ALTER TABLE quotes ADD COLUMN hold INTEGER NOT NULL DEFAULT 0;
CREATE TABLE lease_pins (
  lease_id TEXT NOT NULL,
  cid TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('checkpoint', 'output')),
  pinned_at INTEGER NOT NULL,
  PRIMARY KEY (lease_id, cid)
);
CREATE INDEX lease_pins_outputs ON lease_pins(kind, pinned_at);
`,
];

/** The schema version this code reads and writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Brings `db` up to the version of `steps` (default {@link MIGRATIONS}): the steps it lacks run in
 * one transaction with the new version, so a crash or a failing step leaves the database exactly as
 * it was. A database newer than the steps is refused rather than guessed at.
 *
 * @returns the version the database was at before.
 * @throws {UserError} when the database is newer than this code.
 */
export function migrate(db: DatabaseSync, file: string, steps: readonly string[] = MIGRATIONS): number {
  const { user_version: found } = db.prepare("PRAGMA user_version").get() as { user_version: number };
  if (found > steps.length) {
    throw new UserError(
      `${file} is at schema version ${found}, newer than this baton reads (${steps.length}): run the baton that wrote it, or a newer one`,
    );
  }
  if (found === steps.length) return found;
  db.exec("BEGIN IMMEDIATE");
  try {
    for (let version = found + 1; version <= steps.length; version++) db.exec(steps[version - 1]!);
    db.exec(`PRAGMA user_version = ${steps.length}`);
    db.exec("COMMIT");
  } catch (error) {
    db.exec("ROLLBACK");
    throw error;
  }
  return found;
}

interface LeaseRecord {
  lease_id: string;
  job_id: string;
  tenant: string;
  tenant_peer: string;
  state: LeaseState;
  gpus: string;
  spec: string;
  work_dir: string;
  pid: number | null;
  started_at: number;
  ended_at: number | null;
  exit_code: number | null;
  reason: string | null;
  chain_period_s: number;
  last_chain_heartbeat: number | null;
  result_cid: string | null;
  job_key: string | null;
  task_id: string | null;
  hold_keep: number | null;
}

function toLease(r: LeaseRecord): LeaseRow {
  return {
    leaseId: BigInt(r.lease_id),
    jobId: r.job_id,
    tenant: r.tenant,
    tenantPeer: r.tenant_peer,
    state: r.state,
    gpus: JSON.parse(r.gpus) as number[],
    spec: JSON.parse(r.spec) as unknown,
    workDir: r.work_dir,
    pid: r.pid,
    startedAt: r.started_at,
    endedAt: r.ended_at,
    exitCode: r.exit_code,
    reason: r.reason,
    chainPeriodS: r.chain_period_s,
    lastChainHeartbeat: r.last_chain_heartbeat,
    resultCid: r.result_cid,
    jobKey: r.job_key,
    taskId: r.task_id,
    holdKeep: r.hold_keep,
  };
}

/** States in which the node still owes the lease something (heartbeats, a result, a kill, an acknowledgement). */
export const LIVE_STATES: readonly LeaseState[] = ["preparing", "running", "exited", "handed-back"];

export class NodeStore {
  readonly #db: DatabaseSync;
  /**
   * Statements by their SQL, each prepared once: compiling one costs more than running it, and a
   * batch lease reads and writes its row several times per task. The SQL strings are the code's own
   * (an update's columns come from a fixed list), so there are few of them.
   */
  readonly #statements = new Map<string, StatementSync>();

  constructor(file: string) {
    if (file !== ":memory:") mkdirSync(path.dirname(file), { recursive: true });
    this.#db = new DatabaseSync(file);
    // The busy timeout first: switching a fresh file to WAL takes a lock another opener may hold.
    this.#db.exec("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;");
    try {
      migrate(this.#db, file);
    } catch (error) {
      this.#db.close();
      throw error;
    }
  }

  close(): void {
    this.#db.close();
  }

  #prepare(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#db.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  /** Runs `fn` in one transaction: all of its writes land, or none. */
  transaction<T>(fn: () => T): T {
    this.#db.exec("BEGIN IMMEDIATE");
    try {
      const result = fn();
      this.#db.exec("COMMIT");
      return result;
    } catch (error) {
      this.#db.exec("ROLLBACK");
      throw error;
    }
  }

  /** The next quote nonce: strictly increasing across restarts, so no nonce is ever signed twice. */
  nextNonce(): bigint {
    return this.transaction(() => {
      const row = this.#prepare("SELECT value FROM meta WHERE key = 'next_nonce'").get() as
        { value: string } | undefined;
      const nonce = row ? BigInt(row.value) : 0n;
      this.#prepare(
        "INSERT INTO meta (key, value) VALUES ('next_nonce', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
      ).run((nonce + 1n).toString());
      return nonce;
    });
  }

  getMeta(key: string): string | undefined {
    return (this.#prepare("SELECT value FROM meta WHERE key = ?").get(key) as { value: string } | undefined)?.value;
  }

  setMeta(key: string, value: string): void {
    this.#prepare(
      "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    ).run(key, value);
  }

  saveQuote(quote: QuoteRow): void {
    this.#prepare("INSERT INTO quotes (nonce, job_id, tenant, gpus, expires_at, hold) VALUES (?, ?, ?, ?, ?, ?)").run(
      quote.nonce.toString(),
      quote.jobId,
      quote.tenant,
      JSON.stringify(quote.gpus),
      quote.expiresAt,
      quote.hold ? 1 : 0,
    );
  }

  getQuote(nonce: bigint): QuoteRow | undefined {
    const r = this.#prepare("SELECT * FROM quotes WHERE nonce = ?").get(nonce.toString()) as
      { nonce: string; job_id: string; tenant: string; gpus: string; expires_at: number; hold: number } | undefined;
    if (!r) return undefined;
    return {
      nonce: BigInt(r.nonce),
      jobId: r.job_id,
      tenant: r.tenant,
      gpus: JSON.parse(r.gpus) as number[],
      expiresAt: r.expires_at,
      hold: r.hold === 1,
    };
  }

  /** Forgets quotes that expired before `now` (ms). */
  pruneQuotes(now: number): void {
    this.#prepare("DELETE FROM quotes WHERE expires_at < ?").run(now);
  }

  insertLease(lease: LeaseRow): void {
    this.#prepare(
      `INSERT INTO leases (lease_id, job_id, tenant, tenant_peer, state, gpus, spec, work_dir, pid, started_at, ended_at,
           exit_code, reason, chain_period_s, last_chain_heartbeat, result_cid, job_key, task_id, hold_keep)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      lease.leaseId.toString(),
      lease.jobId,
      lease.tenant,
      lease.tenantPeer,
      lease.state,
      JSON.stringify(lease.gpus),
      JSON.stringify(lease.spec),
      lease.workDir,
      lease.pid,
      lease.startedAt,
      lease.endedAt,
      lease.exitCode,
      lease.reason,
      lease.chainPeriodS,
      lease.lastChainHeartbeat,
      lease.resultCid,
      lease.jobKey,
      lease.taskId,
      lease.holdKeep,
    );
  }

  getLease(leaseId: bigint): LeaseRow | undefined {
    const r = this.#prepare("SELECT * FROM leases WHERE lease_id = ?").get(leaseId.toString()) as
      LeaseRecord | undefined;
    return r ? toLease(r) : undefined;
  }

  /**
   * What the HTTP proxy checks on every request (whose lease, its state, where its socket is),
   * without `getLease`'s parsing of the spec.
   */
  httpRoute(leaseId: bigint): Pick<LeaseRow, "tenantPeer" | "state" | "workDir"> | undefined {
    const r = this.#prepare("SELECT tenant_peer, state, work_dir FROM leases WHERE lease_id = ?").get(
      leaseId.toString(),
    ) as Pick<LeaseRecord, "tenant_peer" | "state" | "work_dir"> | undefined;
    return r ? { tenantPeer: r.tenant_peer, state: r.state, workDir: r.work_dir } : undefined;
  }

  /** Leases in the given states, oldest first. */
  leases(states: readonly LeaseState[] = LIVE_STATES): LeaseRow[] {
    const placeholders = states.map(() => "?").join(", ");
    const rows = this.#prepare(`SELECT * FROM leases WHERE state IN (${placeholders}) ORDER BY started_at`).all(
      ...states,
    ) as unknown as LeaseRecord[];
    return rows.map(toLease);
  }

  /**
   * Updates some fields of a lease. With `synced: false` the write commits without waiting for the
   * disk (`synchronous=NORMAL` for it alone): it is still whole or absent after a crash of the node,
   * and the next synced write syncs it too, but a power loss before then may take it back. That is
   * for a batch task's own bookkeeping: a task starts every few tens of milliseconds, a sync costs
   * 0.4 ms on an idle disk and several when other processes sync too, on the lease's way from one
   * task to the next, and a machine that lost power loses the task anyway (its lease's heartbeats
   * stop, the tenant gives the task to another lease, and a late duplicate result is discarded).
   */
  updateLease(
    leaseId: bigint,
    patch: Partial<Omit<LeaseRow, "leaseId">>,
    { synced = true }: { synced?: boolean } = {},
  ): void {
    const columns: Record<string, string> = {
      jobId: "job_id",
      tenant: "tenant",
      tenantPeer: "tenant_peer",
      state: "state",
      gpus: "gpus",
      spec: "spec",
      workDir: "work_dir",
      pid: "pid",
      startedAt: "started_at",
      endedAt: "ended_at",
      exitCode: "exit_code",
      reason: "reason",
      chainPeriodS: "chain_period_s",
      lastChainHeartbeat: "last_chain_heartbeat",
      resultCid: "result_cid",
      jobKey: "job_key",
      taskId: "task_id",
      holdKeep: "hold_keep",
    };
    const entries = Object.entries(patch).filter(([key]) => key in columns);
    if (entries.length === 0) return;
    const sets = entries.map(([key]) => `${columns[key]} = ?`).join(", ");
    const values = entries.map(([key, value]) =>
      key === "gpus" || key === "spec" ? JSON.stringify(value) : (value as string | number | null),
    );
    const update = this.#prepare(`UPDATE leases SET ${sets} WHERE lease_id = ?`);
    if (synced) {
      update.run(...values, leaseId.toString());
      return;
    }
    this.#prepare("PRAGMA synchronous = NORMAL").run();
    try {
      update.run(...values, leaseId.toString());
    } finally {
      this.#prepare("PRAGMA synchronous = FULL").run();
    }
  }

  /** Records a checkpoint the holder's lease now pins, as its newest. */
  addHeld(leaseId: bigint, held: HeldCheckpoint): void {
    this.#prepare("INSERT INTO held (lease_id, cid, bytes) VALUES (?, ?, ?)").run(
      leaseId.toString(),
      held.cid,
      held.bytes,
    );
  }

  /** The checkpoints the holder's lease pins, oldest first. */
  held(leaseId: bigint): HeldCheckpoint[] {
    const rows = this.#prepare("SELECT cid, bytes FROM held WHERE lease_id = ? ORDER BY seq").all(
      leaseId.toString(),
    ) as unknown as HeldCheckpoint[];
    return rows.map(({ cid, bytes }) => ({ cid, bytes }));
  }

  /** Forgets that the holder's lease pins these checkpoints (all of them without `cids`); one statement per CID. */
  removeHeld(leaseId: bigint, cids?: readonly string[]): void {
    if (cids === undefined) {
      this.#prepare("DELETE FROM held WHERE lease_id = ?").run(leaseId.toString());
      return;
    }
    const remove = this.#prepare("DELETE FROM held WHERE lease_id = ? AND cid = ?");
    for (const cid of cids) remove.run(leaseId.toString(), cid);
  }

  /**
   * Whether a lease other than `leaseId` pins the checkpoint: a holder's lease that holds it, or a
   * lease whose job published it or resumed from it (a warm standby resumes from what it holds).
   */
  pinnedElsewhere(cid: string, leaseId: bigint): boolean {
    const id = leaseId.toString();
    return (
      this.#prepare(
        "SELECT 1 FROM held WHERE cid = ? AND lease_id != ? UNION ALL SELECT 1 FROM lease_pins WHERE cid = ? AND lease_id != ? LIMIT 1",
      ).get(cid, id, cid, id) !== undefined
    );
  }

  /** Records that the lease's job pins `cid`: a checkpoint (published, or resumed from) or an output. */
  addLeasePin(leaseId: bigint, cid: string, kind: LeasePinKind = "checkpoint", pinnedAt = Date.now()): void {
    this.#prepare("INSERT OR IGNORE INTO lease_pins (lease_id, cid, kind, pinned_at) VALUES (?, ?, ?, ?)").run(
      leaseId.toString(),
      cid,
      kind,
      pinnedAt,
    );
  }

  /** Forgets that the lease's job pins these (all its checkpoints without `cids`). */
  removeLeasePins(leaseId: bigint, cids?: readonly string[]): void {
    if (cids === undefined) {
      this.#prepare("DELETE FROM lease_pins WHERE lease_id = ? AND kind = 'checkpoint'").run(leaseId.toString());
      return;
    }
    const remove = this.#prepare("DELETE FROM lease_pins WHERE lease_id = ? AND cid = ?");
    for (const cid of cids) remove.run(leaseId.toString(), cid);
  }

  /** The checkpoints the lease's job pins, oldest first. */
  leasePins(leaseId: bigint): string[] {
    const rows = this.#prepare(
      "SELECT cid FROM lease_pins WHERE lease_id = ? AND kind = 'checkpoint' ORDER BY rowid",
    ).all(leaseId.toString()) as unknown as { cid: string }[];
    return rows.map(({ cid }) => cid);
  }

  /** The leases, ended or not, whose jobs still pin checkpoints. */
  leasesWithPins(): bigint[] {
    const rows = this.#prepare(
      "SELECT DISTINCT lease_id FROM lease_pins WHERE kind = 'checkpoint'",
    ).all() as unknown as {
      lease_id: string;
    }[];
    return rows.map((r) => BigInt(r.lease_id));
  }

  /** The outputs pinned before `time` (ms since the epoch), oldest first. */
  outputsPinnedBefore(time: number): { leaseId: bigint; cid: string }[] {
    const rows = this.#prepare(
      "SELECT lease_id, cid FROM lease_pins WHERE kind = 'output' AND pinned_at < ? ORDER BY pinned_at",
    ).all(time) as unknown as { lease_id: string; cid: string }[];
    return rows.map((r) => ({ leaseId: BigInt(r.lease_id), cid: r.cid }));
  }

  /** Queues a published checkpoint's CID for the lease's next heartbeats to commit. */
  addPendingCheckpoint(leaseId: bigint, cid: string): void {
    this.#prepare("INSERT INTO pending_checkpoints (lease_id, cid) VALUES (?, ?)").run(leaseId.toString(), cid);
  }

  /** The lease's checkpoints not yet committed on chain, oldest first, at most `limit`. */
  pendingCheckpoints(leaseId: bigint, limit = Number.MAX_SAFE_INTEGER): PendingCheckpoint[] {
    const rows = this.#prepare("SELECT seq, cid FROM pending_checkpoints WHERE lease_id = ? ORDER BY seq LIMIT ?").all(
      leaseId.toString(),
      limit,
    ) as unknown as PendingCheckpoint[];
    return rows.map(({ seq, cid }) => ({ seq, cid }));
  }

  /**
   * Forgets the lease's pending checkpoints up to and including `throughSeq` (those a mined heartbeat
   * committed; any published since stay), or all of them.
   */
  removePendingCheckpoints(leaseId: bigint, throughSeq = Number.MAX_SAFE_INTEGER): void {
    this.#prepare("DELETE FROM pending_checkpoints WHERE lease_id = ? AND seq <= ?").run(
      leaseId.toString(),
      throughSeq,
    );
  }
}
