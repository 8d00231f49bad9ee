import { rm, stat } from "node:fs/promises";

import { BaseDatastore } from "datastore-core";
import { FsDatastore } from "datastore-fs";
import { Key, type Pair, type Query, type KeyQuery } from "interface-datastore";
import { NotFoundError } from "interface-store";

import { BaseError, shortMessageOf } from "../errors.ts";
import { DatabaseSync, type StatementSync } from "../utils/sqlite.ts";

interface AbortOptions {
  signal?: AbortSignal;
}

/**
 * Helia's records (its pins above all) in one SQLite file, not a file each. Helia writes a record
 * per block it pins (`/pinned-block/…`, its pin count) and reads one per block it unpins or
 * collects. In `FsDatastore` each was a file of its own, written to a temp file and renamed: pinning
 * a 256 MiB checkpoint wrote 256 of them and took 430-510 ms here (a fifth of the publish), most of
 * it the kernel's creating files; 65-75 ms with this store. Here a record is a row, written in WAL mode
 * with `synchronous=NORMAL`: whole or absent after a crash, as a renamed file was, and, as with
 * those unsynced files, a power loss may take back the last few. Two processes on one store (two
 * tenant commands on one data dir) take turns writing: each waits up to 5 s for the other's write.
 */
export class SqliteDatastore extends BaseDatastore {
  readonly #db: DatabaseSync;
  readonly #put: StatementSync;
  readonly #get: StatementSync;
  readonly #has: StatementSync;
  readonly #delete: StatementSync;
  readonly #range: StatementSync;
  readonly #rangeKeys: StatementSync;

  /**
   * Opens (or creates) the datastore in `file`. Records of an `FsDatastore` left in `legacyDir` by
   * an older version are moved in first, in one transaction, and the directory removed after.
   */
  static async open(file: string, legacyDir?: string): Promise<SqliteDatastore> {
    const store = new SqliteDatastore(file);
    try {
      if (legacyDir !== undefined && (await stat(legacyDir).catch(() => undefined))?.isDirectory()) {
        await store.#import(new FsDatastore(legacyDir)).catch((cause: unknown) => {
          throw new BaseError(`cannot move the IPFS store's records from ${legacyDir} into ${file}`, {
            details: `${shortMessageOf(cause)}; ${legacyDir} is left as it was`,
            cause,
          });
        });
        // Only once they are committed here: a crash before this imports them again, the same records.
        await rm(legacyDir, { recursive: true, force: true });
      }
    } catch (error) {
      store.close();
      throw error;
    }
    return store;
  }

  private constructor(file: string) {
    super();
    this.#db = new DatabaseSync(file);
    // The busy timeout first: switching a fresh file to WAL takes a lock, and processes that open
    // one data dir at once (three `baton image add`s in a test) got "database is locked" at once.
    this.#db.exec(`
      PRAGMA busy_timeout = 5000;
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = NORMAL;
      CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID;
    `);
    this.#put = this.#db.prepare("INSERT OR REPLACE INTO records (key, value) VALUES (?, ?)");
    this.#get = this.#db.prepare("SELECT value FROM records WHERE key = ?");
    this.#has = this.#db.prepare("SELECT 1 FROM records WHERE key = ?");
    this.#delete = this.#db.prepare("DELETE FROM records WHERE key = ?");
    // Keys are ASCII (Helia's and libp2p's encodings), so every key under a prefix sorts before
    // the prefix followed by the highest code point.
    this.#range = this.#db.prepare("SELECT key, value FROM records WHERE key >= ? AND key < ? ORDER BY key");
    this.#rangeKeys = this.#db.prepare("SELECT key FROM records WHERE key >= ? AND key < ? ORDER BY key");
  }

  async #import(legacy: FsDatastore): Promise<void> {
    const records: Pair[] = [];
    for await (const record of legacy.query({})) records.push(record);
    this.#db.exec("BEGIN");
    try {
      for (const { key, value } of records) this.#put.run(key.toString(), value);
      this.#db.exec("COMMIT");
    } catch (error) {
      this.#db.exec("ROLLBACK");
      throw error;
    }
  }

  override put(key: Key, value: Uint8Array, options?: AbortOptions): Key {
    options?.signal?.throwIfAborted();
    this.#put.run(key.toString(), value);
    return key;
  }

  override get(key: Key, options?: AbortOptions): Uint8Array {
    options?.signal?.throwIfAborted();
    const row = this.#get.get(key.toString()) as Row | undefined;
    if (row === undefined) throw new NotFoundError(`no record ${key.toString()}`);
    return valueOf(row);
  }

  override has(key: Key, options?: AbortOptions): boolean {
    options?.signal?.throwIfAborted();
    return this.#has.get(key.toString()) !== undefined;
  }

  override delete(key: Key, options?: AbortOptions): void {
    options?.signal?.throwIfAborted();
    this.#delete.run(key.toString());
  }

  // Read whole before the first is yielded: a caller may write while it iterates.
  override *_all(query: Query, options?: AbortOptions): Generator<Pair> {
    options?.signal?.throwIfAborted();
    const rows = this.#range.all(...bounds(query.prefix)) as unknown as Array<Row & { key: string }>;
    for (const row of rows) yield { key: new Key(row.key), value: valueOf(row) };
  }

  override *_allKeys(query: KeyQuery, options?: AbortOptions): Generator<Key> {
    options?.signal?.throwIfAborted();
    const rows = this.#rangeKeys.all(...bounds(query.prefix)) as Array<{ key: string }>;
    for (const { key } of rows) yield new Key(key);
  }

  /** Closes the database; called by Helia's `stop` (a Startable's). */
  stop(): void {
    this.close();
  }

  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }
}

/** A record's row: SQLite stores an empty value as NULL. */
interface Row {
  value: Uint8Array | null;
}

function valueOf(row: Row): Uint8Array {
  return row.value ?? new Uint8Array(0);
}

/** The key range under `prefix` (all keys without one). */
function bounds(prefix = ""): [string, string] {
  return [prefix, `${prefix}\u{10FFFF}`];
}
