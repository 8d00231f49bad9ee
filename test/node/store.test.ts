import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { migrate, MIGRATIONS, NodeStore, SCHEMA_VERSION, type LeaseRow } from "../../node/store.ts";
import { UserError } from "../../sdk/errors.ts";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-store-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const lease = (leaseId: bigint): LeaseRow => ({
  leaseId,
  jobId: "0x" + "ab".repeat(32),
  tenant: "0x0000000000000000000000000000000000000001",
  tenantPeer: "12D3KooWTenant",
  state: "running",
  gpus: [0, 1],
  spec: { command: ["train"] },
  workDir: "/tmp/w",
  pid: 42,
  startedAt: Number(leaseId),
  endedAt: null,
  exitCode: null,
  reason: null,
  chainPeriodS: 30,
  lastChainHeartbeat: null,
  resultCid: null,
  jobKey: null,
  taskId: null,
  holdKeep: null,
});

/**
 * Runs `loop` (a statement over `store`, a NodeStore on `file`, that writes one line per write it
 * made) in a child process, and SIGKILLs it once it said `count` lines: the lines it said.
 */
async function writeUntilKilled(file: string, loop: string, count: number): Promise<string[]> {
  const script = `
    import { NodeStore } from ${JSON.stringify(path.resolve("node/store.ts"))};
    const store = new NodeStore(${JSON.stringify(file)});
    ${loop}
  `;
  const child = spawn(process.execPath, ["--disable-warning=ExperimentalWarning", "--input-type=module", "-e", script]);
  const said: string[] = [];
  let buffer = "";
  await new Promise<void>((resolve) => {
    child.stdout.on("data", (chunk: Buffer) => {
      buffer += chunk.toString();
      const lines = buffer.split("\n");
      buffer = lines.pop()!;
      said.push(...lines);
      if (said.length >= count && child.exitCode === null) child.kill("SIGKILL");
    });
    child.once("exit", () => resolve());
  });
  return said;
}

describe("node store", () => {
  it("keeps leases, quotes and nonces across reopen", () => {
    const file = path.join(dir, "node.db");
    const store = new NodeStore(file);
    expect([store.nextNonce(), store.nextNonce()]).toEqual([0n, 1n]);
    store.insertLease(lease(7n));
    store.insertLease(lease(8n));
    store.updateLease(8n, { state: "fenced", pid: null, reason: "slashed" });
    store.saveQuote({ nonce: 1n, jobId: "0x01", tenant: "0x02", gpus: [1], expiresAt: 10, hold: false });
    store.saveQuote({ nonce: 2n, jobId: "0x01", tenant: "0x02", gpus: [], expiresAt: 10, hold: true });
    store.close();

    const reopened = new NodeStore(file);
    expect(reopened.nextNonce()).toBe(2n);
    expect(reopened.leases().map((l) => l.leaseId)).toEqual([7n]);
    expect(reopened.getLease(8n)).toMatchObject({ state: "fenced", pid: null, reason: "slashed", gpus: [0, 1] });
    expect(reopened.getQuote(1n)).toMatchObject({ gpus: [1], hold: false });
    expect(reopened.getQuote(2n)).toMatchObject({ gpus: [], hold: true });
    reopened.pruneQuotes(11);
    expect(reopened.getQuote(1n)).toBeUndefined();
    reopened.close();
  });

  it("queues every checkpoint CID in order, and forgets only those a heartbeat committed", () => {
    const file = path.join(dir, "node.db");
    const store = new NodeStore(file);
    store.insertLease(lease(7n));
    store.insertLease(lease(8n));
    store.addPendingCheckpoint(7n, "bafy-a");
    store.addPendingCheckpoint(8n, "bafy-other");
    store.addPendingCheckpoint(7n, "bafy-b");
    const sent = store.pendingCheckpoints(7n);
    expect(sent.map((c) => c.cid)).toEqual(["bafy-a", "bafy-b"]);
    expect(store.pendingCheckpoints(7n, 1).map((c) => c.cid)).toEqual(["bafy-a"]);
    // Published while the heartbeat carrying a and b was pending: it waits for the next one.
    store.addPendingCheckpoint(7n, "bafy-c");
    store.removePendingCheckpoints(7n, sent.at(-1)!.seq);
    store.close();

    const reopened = new NodeStore(file);
    expect(reopened.pendingCheckpoints(7n).map((c) => c.cid)).toEqual(["bafy-c"]);
    expect(reopened.pendingCheckpoints(8n).map((c) => c.cid)).toEqual(["bafy-other"]);
    reopened.removePendingCheckpoints(8n);
    expect(reopened.pendingCheckpoints(8n)).toEqual([]);
    reopened.close();
  });

  it("keeps what a holder's lease holds, in order, across reopen, and who else holds it", () => {
    const file = path.join(dir, "node.db");
    const store = new NodeStore(file);
    store.insertLease({ ...lease(7n), gpus: [], holdKeep: 2 });
    store.insertLease({ ...lease(8n), gpus: [], holdKeep: 3 });
    store.addHeld(7n, { cid: "bafy-a", bytes: 10 });
    store.addHeld(8n, { cid: "bafy-b", bytes: 20 });
    store.addHeld(7n, { cid: "bafy-b", bytes: 20 });
    store.close();

    const reopened = new NodeStore(file);
    expect(reopened.getLease(7n)?.holdKeep).toBe(2);
    expect(reopened.held(7n)).toEqual([
      { cid: "bafy-a", bytes: 10 },
      { cid: "bafy-b", bytes: 20 },
    ]);
    expect(reopened.pinnedElsewhere("bafy-b", 7n)).toBe(true);
    expect(reopened.pinnedElsewhere("bafy-a", 7n)).toBe(false);
    reopened.removeHeld(7n, ["bafy-a"]);
    expect(reopened.held(7n)).toEqual([{ cid: "bafy-b", bytes: 20 }]);
    reopened.removeHeld(8n);
    expect(reopened.held(8n)).toEqual([]);
    expect(reopened.pinnedElsewhere("bafy-b", 7n)).toBe(false);
    reopened.close();
  });

  it("keeps what a job's lease pins across reopen, counts it as pinned beside a holder's, and finds old outputs", () => {
    const file = path.join(dir, "node.db");
    const store = new NodeStore(file);
    store.addLeasePin(5n, "bafy-resume");
    store.addLeasePin(5n, "bafy-resume");
    store.addLeasePin(5n, "bafy-step-10");
    store.addHeld(6n, { cid: "bafy-resume", bytes: 10 });
    store.addLeasePin(5n, "bafy-output", "output", 1_000);
    store.addLeasePin(4n, "bafy-older-output", "output", 500);
    store.close();

    const reopened = new NodeStore(file);
    expect(reopened.leasePins(5n)).toEqual(["bafy-resume", "bafy-step-10"]);
    expect(reopened.leasesWithPins()).toEqual([5n]);
    // A holder's lease and a job's lease on one node (a warm standby) each see the other's pin.
    expect(reopened.pinnedElsewhere("bafy-resume", 6n)).toBe(true);
    expect(reopened.pinnedElsewhere("bafy-resume", 5n)).toBe(true);
    expect(reopened.pinnedElsewhere("bafy-step-10", 5n)).toBe(false);
    reopened.removeLeasePins(5n, ["bafy-resume"]);
    expect(reopened.pinnedElsewhere("bafy-resume", 6n)).toBe(false);
    // Outputs go by age, not with the lease's checkpoints.
    expect(reopened.outputsPinnedBefore(1_000)).toEqual([{ leaseId: 4n, cid: "bafy-older-output" }]);
    reopened.removeLeasePins(5n);
    expect(reopened.leasePins(5n)).toEqual([]);
    expect(reopened.leasesWithPins()).toEqual([]);
    expect(reopened.outputsPinnedBefore(1_001)).toEqual([
      { leaseId: 4n, cid: "bafy-older-output" },
      { leaseId: 5n, cid: "bafy-output" },
    ]);
    reopened.close();
  });

  it("rolls back a failed transaction whole", () => {
    const store = new NodeStore(path.join(dir, "node.db"));
    expect(() =>
      store.transaction(() => {
        store.insertLease(lease(1n));
        store.insertLease(lease(1n));
      }),
    ).toThrow();
    expect(store.getLease(1n)).toBeUndefined();
    store.close();
  });

  it("never hands out a nonce twice, even when the writer is SIGKILLed mid-stream", async () => {
    const file = path.join(dir, "node.db");
    const seen = (
      await writeUntilKilled(file, 'for (;;) { const n = store.nextNonce(); process.stdout.write(n + "\\n"); }', 200)
    ).map(BigInt);
    expect(seen.length).toBeGreaterThanOrEqual(200);
    const store = new NodeStore(file);
    const next = store.nextNonce();
    expect(next).toBeGreaterThan(seen[seen.length - 1]!);
    store.close();
  });

  it("keeps a batch task's unsynced update through a SIGKILL of the writer: whole, and the last one made", async () => {
    const file = path.join(dir, "node.db");
    const store = new NodeStore(file);
    store.insertLease(lease(1n));
    store.close();
    const said = await writeUntilKilled(
      file,
      `for (let i = 0; ; i++) {
        store.updateLease(1n, { state: "preparing", taskId: "task-" + i, pid: i }, { synced: false });
        process.stdout.write(i + "\\n");
      }`,
      500,
    );
    expect(said.length).toBeGreaterThanOrEqual(500);
    const last = Number(said.at(-1));
    const reopened = new NodeStore(file);
    const row = reopened.getLease(1n)!;
    // The last update said, or one made after it that had no time to say so; never half of one.
    const n = Number(row.taskId!.slice("task-".length));
    expect(n).toBeGreaterThanOrEqual(last);
    expect(row).toMatchObject({ state: "preparing", pid: n });
    reopened.close();
  });
});

/** node.db's layout before schema versions were recorded (user_version 0), word for word as that node wrote it. */
const UNVERSIONED_SCHEMA = `
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
`;

const userVersion = (db: DatabaseSync): number =>
  (db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;

/** The tables of a node.db at SCHEMA_VERSION. */
const CURRENT_TABLES = ["held", "lease_pins", "leases", "meta", "pending_checkpoints", "quotes", "sqlite_sequence"];

const tables = (db: DatabaseSync): string[] =>
  (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map(
    (r) => r.name,
  );

describe("node store schema versions", () => {
  it("upgrades a node.db from before schema versions to the current one, keeping every row", () => {
    const file = path.join(dir, "node.db");
    const old = new DatabaseSync(file);
    // As the node of that time opened it, and wrote to it.
    old.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;");
    old.exec(UNVERSIONED_SCHEMA);
    old.exec(`
      INSERT INTO meta (key, value) VALUES ('next_nonce', '17');
      INSERT INTO quotes (nonce, job_id, tenant, gpus, expires_at) VALUES ('16', '0x01', '0x02', '[0]', 1700000000000);
      INSERT INTO leases (lease_id, job_id, tenant, tenant_peer, state, gpus, spec, work_dir, pid, started_at, ended_at,
        exit_code, reason, chain_period_s, last_chain_heartbeat, pending_checkpoint_cid, result_cid, job_key)
      VALUES ('9', '', '0x0000000000000000000000000000000000000001', '12D3KooWTenant', 'running', '[0]',
        '{"command":["train"]}', '/data/jobs/9/work', 4242, 1700000000000, NULL, NULL, NULL, 30, 1700000001,
        'bafycheckpoint', NULL, 'a2V5');
    `);
    expect(userVersion(old)).toBe(0);
    old.close();

    const store = new NodeStore(file);
    expect(store.nextNonce()).toBe(17n);
    expect(store.getQuote(16n)).toEqual({
      nonce: 16n,
      jobId: "0x01",
      tenant: "0x02",
      gpus: [0],
      expiresAt: 1700000000000,
      hold: false,
    });
    expect(store.leases()).toEqual([
      {
        leaseId: 9n,
        jobId: "",
        tenant: "0x0000000000000000000000000000000000000001",
        tenantPeer: "12D3KooWTenant",
        state: "running",
        gpus: [0],
        spec: { command: ["train"] },
        workDir: "/data/jobs/9/work",
        pid: 4242,
        startedAt: 1700000000000,
        endedAt: null,
        exitCode: null,
        reason: null,
        chainPeriodS: 30,
        lastChainHeartbeat: 1700000001,
        resultCid: null,
        jobKey: "a2V5",
        taskId: null,
        holdKeep: null,
      },
    ]);
    // The one CID that waited for a heartbeat still does, now in the queue.
    expect(store.pendingCheckpoints(9n)).toEqual([{ seq: 1, cid: "bafycheckpoint" }]);
    store.close();

    const upgraded = new DatabaseSync(file);
    expect(userVersion(upgraded)).toBe(SCHEMA_VERSION);
    expect(tables(upgraded)).toEqual(CURRENT_TABLES);
    upgraded.close();
  });

  it("creates a new node.db at the current version", () => {
    const file = path.join(dir, "node.db");
    new NodeStore(file).close();
    const db = new DatabaseSync(file);
    expect(userVersion(db)).toBe(SCHEMA_VERSION);
    expect(tables(db)).toEqual(CURRENT_TABLES);
    db.close();
  });

  it("runs the missing steps in one transaction: one that fails leaves the database as it was", () => {
    const file = path.join(dir, "node.db");
    const db = new DatabaseSync(file);
    expect(migrate(db, file)).toBe(0);
    const failing = [...MIGRATIONS, "CREATE TABLE later (x INTEGER);", "INSERT INTO nowhere VALUES (1);"];
    expect(() => migrate(db, file, failing)).toThrow(/no such table: nowhere/);
    expect(userVersion(db)).toBe(MIGRATIONS.length);
    expect(tables(db)).not.toContain("later");

    expect(migrate(db, file, [...MIGRATIONS, "CREATE TABLE later (x INTEGER);"])).toBe(MIGRATIONS.length);
    expect(userVersion(db)).toBe(MIGRATIONS.length + 1);
    expect(tables(db)).toContain("later");
    db.close();
  });

  it("refuses a node.db written by a newer baton, and leaves it untouched", () => {
    const file = path.join(dir, "node.db");
    const newer = new DatabaseSync(file);
    newer.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    newer.close();
    const open = () => new NodeStore(file);
    expect(open).toThrow(UserError);
    expect(open).toThrow(
      `${file} is at schema version ${SCHEMA_VERSION + 1}, newer than this baton reads (${SCHEMA_VERSION}): run the baton that wrote it, or a newer one`,
    );
    const db = new DatabaseSync(file);
    expect(userVersion(db)).toBe(SCHEMA_VERSION + 1);
    expect(tables(db)).toEqual([]);
    db.close();
  });
});
