import { mkdir, open, readFile } from "node:fs/promises";
import path from "node:path";

import { withBitswap } from "@helia/bitswap";
import { unixfs, type CatOptions } from "@helia/unixfs";
import { multiaddr, type Multiaddr } from "@multiformats/multiaddr";
import { FsBlockstore } from "blockstore-fs";
import { NextToLast } from "blockstore-fs/sharding";
import type { Helia, HeliaInit } from "helia";
import type { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { identity } from "multiformats/hashes/identity";

import { bitswapResendFix } from "./bitswap-resend.ts";
import { BlockLanes } from "./block-lanes.ts";
import { BaseError, CheckpointCorruptError, CheckpointTooLargeError, CheckpointUnavailableError } from "../errors.ts";
import { silentLogger, type Logger } from "../logger.ts";
import type { BatonHost } from "../p2p/host.ts";
import { BufferPool, Lending, type ByteSource } from "./bytes.ts";
import { BLOCK_SIZE, DEFAULT_STALL_TIMEOUT_MS, FETCH_BLOCK_CONCURRENCY } from "./constants.ts";
import {
  BlockStreamError,
  BlockStreamSession,
  holdersOf,
  serveBlocks,
  streamable,
  StripedFetch,
  type BlocksSent,
} from "./block-stream.ts";
import { hasLocalDag, leafSkippingWalker } from "./dag.ts";
import { SqliteDatastore } from "./datastore.ts";
import { importOptions } from "./importer.ts";
import { readUnixfsFile } from "./unixfs-file.ts";

export interface CreateIpfsNodeParameters {
  /** Our libp2p host: the IPFS node adds bitswap to it and leaves it running when it stops. */
  host: BatonHost;
  /** Where blocks (`blocks/`) and pins and other records (`datastore.sqlite`) live. One process per dir. */
  dir: string;
  log?: Logger;
  /** Told of the bytes each block stream this node served sent (see {@link serveBlocks}). */
  onBlocksSent?: (sent: BlocksSent) => void;
  /**
   * Serves block lanes (block-lanes.ts) on this IP and port (0: a free one): where the host's
   * libp2p listens. None without it (the node still streams from other peers' lanes).
   */
  blockLane?: { host: string; port: number };
}

export interface FetchOptions {
  signal?: AbortSignal;
  /**
   * Peers known to hold the DAG, as full `/ip4/…/tcp/…/p2p/<id>` multiaddrs. There are no content
   * routers, so without them only already-connected peers are asked.
   */
  providers?: Array<Multiaddr | string>;
  /** The longest wait for the next block before giving up with CheckpointUnavailableError. */
  stallTimeoutMs?: number;
  /** Refuse (CheckpointTooLargeError) a file that declares or delivers more bytes than this. */
  maxBytes?: number;
  /**
   * How to fetch what is not here: `"stream"` (the default) asks each of `providers` in turn for
   * the whole DAG over `/baton/blocks/1.0.0` (block-stream.ts), then falls back to bitswap for what they did not
   * deliver; `"bitswap"` uses bitswap alone, as any IPFS peer would.
   */
  via?: "stream" | "bitswap";
  /**
   * Lets the fetch lend its pieces: a piece fetched by block stream, or read from the local store,
   * is then in a buffer that is reused once the reader told `lending` it is done with the piece's
   * bytes (and the block is written). A reader that keeps a piece, or a part of one, past saying
   * so must copy it.
   */
  lending?: Lending;
}

/** A file to import into a UnixFS directory: where it goes in the directory, and its bytes. */
export interface DirectoryFile {
  path: string;
  content: ByteSource;
}

export interface IpfsNode {
  /** The Helia node underneath, for what this interface does not cover. */
  readonly helia: Helia;
  readonly host: BatonHost;
  /** The port of its block lanes (block-lanes.ts), where it serves them. */
  readonly blockLanePort: number | undefined;
  /**
   * Imports a byte stream as a UnixFS file (CIDv1, raw 1 MiB leaves) into the local store; with
   * `pin`, also pins it before a {@link gc} can get in between. With `leaves: "pieces"` each piece
   * of the source becomes one leaf as it is (at most 1 MiB; see {@link pieceLeaves}), for a
   * producer that cuts its output into leaves itself (an encrypted checkpoint: a chunk a leaf).
   */
  add(source: ByteSource, options?: { signal?: AbortSignal; pin?: boolean; leaves?: "fixed" | "pieces" }): Promise<CID>;
  /**
   * Imports files as one UnixFS directory (each file chunked as {@link add} does; `path`s relative,
   * `/`-separated, parents made as needed) and returns the directory's CID; with `pin`, also pins
   * it before a {@link gc} can get in between.
   */
  addDirectory(
    files: Iterable<DirectoryFile> | AsyncIterable<DirectoryFile>,
    options?: { signal?: AbortSignal; pin?: boolean },
  ): Promise<CID>;
  /**
   * Pins a DAG that is already in the local store (it never fetches: see {@link fetchAndPin});
   * CheckpointUnavailableError if a block is missing. Pinning twice is a no-op.
   */
  pin(cid: CID, options?: { signal?: AbortSignal }): Promise<void>;
  /** Removes the pin, if any; the blocks go at the next {@link gc}. */
  unpin(cid: CID, options?: { signal?: AbortSignal }): Promise<void>;
  /** Whether `cid` has a pin of its own (not merely a pinned parent). */
  isPinned(cid: CID, options?: { signal?: AbortSignal }): Promise<boolean>;
  /** Whether the whole DAG is in the local store (no network). */
  has(cid: CID, options?: { signal?: AbortSignal }): Promise<boolean>;
  /**
   * Streams a UnixFS file, fetching missing blocks from `providers` (or connected peers) by
   * bitswap and keeping them in the local store (unpinned).
   */
  cat(cid: CID, options?: FetchOptions): AsyncGenerator<Uint8Array>;
  /**
   * Fetches the whole file into the local store, refusing it past `maxBytes`, then pins it; a
   * {@link gc} waits until it is done, so it cannot delete fetched blocks before the pin.
   */
  fetchAndPin(cid: CID, options: Omit<FetchOptions, "lending"> & { maxBytes: number }): Promise<{ bytes: number }>;
  /**
   * Deletes every unpinned block, fetched ones included. It waits for running `add({ pin })`,
   * `fetchAndPin` and {@link withGcPaused} work, and holds off new work until it is done.
   */
  gc(options?: { signal?: AbortSignal }): Promise<void>;
  /**
   * Asks for a {@link gc} without waiting for it: after unpinning, so that what was unpinned leaves
   * the disk. Requests made while one runs are served by one more gc after it; failures are logged.
   */
  gcSoon(): void;
  /**
   * Runs `work` with {@link gc} held off: for fetching something and then pinning it. `work` must
   * not call `add({ pin })`, `fetchAndPin` or `withGcPaused` itself: with a gc waiting, it would wait
   * for itself.
   */
  withGcPaused<T>(work: () => Promise<T>): Promise<T>;
  /** Stops the IPFS node (bitswap, stores); the host keeps running. */
  stop(): Promise<void>;
}

/**
 * What `createHeliaLight` constructs, loaded without the package index that exports it: the index
 * also imports `@helia/libp2p` and `@helia/http` (WebRTC, UPnP, TLS, HTTP: about 800 modules and
 * 0.7 s of CPU at every process start) though Baton uses neither. The class and its version stamp
 * are modules beside the index; the package's exports map hides them, so they are found from where
 * the index resolves (helia's version is pinned, and `test/ipfs` would fail if they moved).
 */
const heliaLight = Promise.all([
  import(new URL("helia.js", import.meta.resolve("helia")).href),
  import(new URL("version.js", import.meta.resolve("helia")).href),
]).then(([classModule, versionModule]) => ({
  Helia: (classModule as { Helia: new (init: HeliaInit & { name: string; version: string }) => Helia }).Helia,
  ...(versionModule as { name: string; version: string }),
}));

/**
 * Starts an embedded IPFS node (Helia) with file-system stores under `dir`, on the given Baton
 * host: bitswap only, no public bootstrap, no content routers, no gateways, no WebRTC. Helia 7
 * cannot take an existing libp2p instance, so a mixin hands it ours (as in the libp2p spike, §6).
 * One IPFS node per host: bitswap's protocol handlers can be registered once.
 *
 * @example
 * const ipfs = await createIpfsNode({ host, dir: "data/ipfs" });
 * try { const cid = await ipfs.add(stream, { pin: true }); } finally { await ipfs.stop(); }
 */
export async function createIpfsNode({
  host,
  dir,
  log = silentLogger,
  onBlocksSent,
  blockLane,
}: CreateIpfsNodeParameters): Promise<IpfsNode> {
  const [{ Helia: HeliaLight, name, version }] = await Promise.all([heliaLight, bitswapResendFix]);
  const blockstore = new WholeReadFsBlockstore(path.join(dir, "blocks"));
  await mkdir(dir, { recursive: true });
  // Where an older version kept its records (FsDatastore): moved in on the first start.
  const datastore = await SqliteDatastore.open(path.join(dir, "datastore.sqlite"), path.join(dir, "datastore"));
  const helia: Helia = new HeliaLight({
    name,
    version,
    blockstore,
    datastore,
  });
  Object.defineProperty(helia, "libp2p", { value: host, enumerable: true, configurable: true });
  // Marks the host as ours: Helia neither starts nor stops it.
  helia.addMixin({ name: "existing-libp2p" });
  withBitswap(helia as Helia & { libp2p: BatonHost });
  try {
    await helia.start();
  } catch (error) {
    datastore.close();
    throw error;
  }
  const fs = unixfs(helia);
  const gate = gcGate();
  let stopped: Promise<void> | undefined;
  let gcState: "idle" | "running" | "again" = "idle";

  // A pin of its own for `cid`. (Helia's `pins.isPinned` also says yes for a block that is only
  // part of another pinned DAG.)
  const hasPin = (cid: CID, signal: AbortSignal | undefined): Promise<boolean> =>
    helia.pins.get(cid, { signal }).then(
      () => true,
      (error: Error) => {
        if (error.name === "NotFoundError") return false;
        throw error;
      },
    );

  /** A block of the local store, whole; CheckpointUnavailableError if it is not there. */
  const readLocal = async (cid: CID, signal?: AbortSignal, pool?: BufferPool): Promise<Uint8Array> => {
    if (cid.multihash.code === identity.code) return cid.multihash.digest;
    try {
      return await blockstore.readWhole(cid, signal, pool);
    } catch (cause) {
      signal?.throwIfAborted();
      throw new CheckpointUnavailableError(`block ${cid} is not in the local store`, { cause });
    }
  };

  const serving = await serveBlocks({
    host,
    read: readLocal,
    ...(blockLane ? { lane: blockLane } : {}),
    log: log.child("blocks"),
    onSent: onBlocksSent,
  });
  const lanes = new BlockLanes(host, log.child("lanes"));

  async function* cat(cid: CID, options: FetchOptions = {}): AsyncGenerator<Uint8Array> {
    const { signal, maxBytes, stallTimeoutMs = DEFAULT_STALL_TIMEOUT_MS, via = "stream" } = options;
    signal?.throwIfAborted();
    const providers = (options.providers ?? []).map((p) => (typeof p === "string" ? multiaddr(p) : p));
    const started = performance.now();
    // With `lending`, leaves are read or received into reused buffers and lent to the reader. Inner
    // nodes never are: their decoded links point into their bytes.
    const { lending } = options;
    const pool = lending === undefined ? undefined : new BufferPool(BLOCK_SIZE, RECEIVE_POOL_BUFFERS);
    const poolFor = (block: CID): BufferPool | undefined => (block.code === raw.code ? pool : undefined);
    /** Whether `bytes`, the block `block`, may go back to the pool once nobody reads it. */
    const reusable = (block: CID, bytes: Uint8Array): boolean => poolFor(block)?.owns(bytes) === true;

    // All of it here already: read it from the store, no network.
    if (await hasLocalDag(helia, cid, signal)) {
      // A few blocks read ahead of the one in use, so that the disk is never waited on.
      const ahead = new Map<string, Promise<Uint8Array>>();
      const upcoming = (cids: CID[]): void => {
        for (const next of cids) {
          const key = next.toString();
          if (ahead.has(key)) continue;
          const reading = readLocal(next, signal, poolFor(next));
          reading.catch(() => undefined); // awaited when its turn comes
          ahead.set(key, reading);
        }
      };
      const getBlock = (block: CID): Promise<Uint8Array> => {
        const key = block.toString();
        const reading = ahead.get(key);
        ahead.delete(key);
        return reading ?? readLocal(block, signal, poolFor(block));
      };
      let position = 0;
      for await (const piece of readUnixfsFile(cid, getBlock, { maxBytes, upcoming })) {
        position += piece.byteLength;
        if (pool?.owns(piece)) lending!.lend(position, () => pool.give(piece));
        yield piece;
      }
      return;
    }

    // Streamed from the holders (block-stream.ts): from one in one stream, from several at once
    // in stripes, each block verified before it is stored or used; what they could not deliver
    // comes by bitswap from where they stopped.
    let delivered = 0;
    const holders = providers.filter((address) => address.getComponents().some((c) => c.name === "p2p"));
    if (via === "stream" && holders.length > 0 && streamable(cid)) {
      // A leaf in the pool's buffers (received, or read back from the store) goes back once written
      // (if received) and once the reader is done with it (if handed to the reader).
      const lent = new Map<Uint8Array, () => void>();
      const init = { host, root: cid, peers: holders, lanes, stallTimeoutMs, signal, log, ...(pool ? { pool } : {}) };
      const writes = new BlockWrites(helia);
      const store = (block: CID, bytes: Uint8Array): Promise<void> =>
        writes.put(block, bytes, reusable(block, bytes) ? () => pool!.give(bytes) : undefined);
      const session =
        holdersOf(holders).length > 1 ? new StripedFetch({ ...init, store }) : new BlockStreamSession(init);
      const getBlock = async (block: CID, first: boolean): Promise<Uint8Array> => {
        if (first && session instanceof BlockStreamSession) {
          const bytes = await session.next(block);
          if (reusable(block, bytes)) {
            // Two readers of the buffer: the block's write and the fetch's reader.
            let readers = 2;
            const release = (): void => void (--readers === 0 && pool!.give(bytes));
            lent.set(bytes, release);
            await writes.put(block, bytes, release);
          } else await writes.put(block, bytes);
          return bytes;
        }
        // From several holders at once, the stripes store what they fetch ahead of the reader.
        if (first && session instanceof StripedFetch) await session.ready(block);
        const bytes = await writes.read(block, () => readLocal(block, signal, poolFor(block)));
        if (reusable(block, bytes)) lent.set(bytes, () => pool!.give(bytes));
        return bytes;
      };
      try {
        for await (const piece of readUnixfsFile(cid, getBlock, { maxBytes })) {
          delivered += piece.byteLength;
          const release = lent.get(piece);
          if (release !== undefined) {
            lent.delete(piece);
            lending!.lend(delivered, release);
          }
          yield piece;
        }
        await writes.settle();
        log.debug("fetched by block stream", {
          cid: cid.toString(),
          bytes: delivered,
          from: session.asked,
          ms: Math.round(performance.now() - started),
        });
        return;
      } catch (error) {
        // Whatever was verified stays (and the bitswap fetch below finds it here).
        await writes.settle().catch(() => undefined);
        if (!(error instanceof BlockStreamError)) throw error;
        log.warn("no holder could stream the rest; fetching it by bitswap", {
          cid: cid.toString(),
          delivered,
          reasons: session.failures,
        });
      } finally {
        session.close();
      }
    }
    yield* catByBitswap(cid, providers, delivered, options);
  }

  /** The UnixFS exporter over bitswap, from byte `offset` on. */
  async function* catByBitswap(
    cid: CID,
    providers: Multiaddr[],
    offset: number,
    options: FetchOptions,
  ): AsyncGenerator<Uint8Array> {
    const { signal, maxBytes, stallTimeoutMs = DEFAULT_STALL_TIMEOUT_MS } = options;
    const guard = stallGuard(stallTimeoutMs, signal);
    // Progress is any block that arrives, not only the next chunk in order: with
    // FETCH_BLOCK_CONCURRENCY leaves in flight, the first of them can take longer than the stall
    // timeout on a slow or loaded link while the others keep arriving.
    const fetchOptions = {
      signal: guard.signal,
      providers,
      onProgress: (event: { type: string }) => {
        if (event.type === "blocks:get:blockstore:put") guard.progressed();
      },
    };
    let bytes = offset;
    try {
      guard.arm();
      if (maxBytes !== undefined) {
        // The root declares the file size: refuse before fetching a single leaf.
        const stats = await fs.stat(cid, fetchOptions);
        if (stats.type === "directory") throw new CheckpointCorruptError(`${cid} is a directory, not a checkpoint`);
        if (stats.size > BigInt(maxBytes)) {
          throw new CheckpointTooLargeError(`checkpoint ${cid} is ${stats.size} bytes, more than ${maxBytes}`);
        }
      }
      // blockReadConcurrency: an ipfs-unixfs-exporter option that @helia/unixfs hands through
      // without declaring it; see FETCH_BLOCK_CONCURRENCY.
      const catOptions: CatOptions & { blockReadConcurrency: number } = {
        ...fetchOptions,
        ...(offset > 0 ? { offset } : {}),
        blockReadConcurrency: FETCH_BLOCK_CONCURRENCY,
      };
      for await (const chunk of fs.cat(cid, catOptions)) {
        guard.disarm();
        bytes += chunk.byteLength;
        if (maxBytes !== undefined && bytes > maxBytes) {
          throw new CheckpointTooLargeError(`checkpoint ${cid} delivered more than ${maxBytes} bytes`);
        }
        yield chunk;
        guard.arm();
      }
      guard.disarm();
    } catch (error) {
      throw guard.translate(error, cid, providers);
    } finally {
      guard.release();
    }
  }

  const node: IpfsNode = {
    helia,
    host,
    blockLanePort: serving.lanePort,
    add(source, { signal, pin = false, leaves = "fixed" } = {}) {
      return gate.shared(async () => {
        const started = performance.now();
        const cid = await fs.addByteStream(source, { signal, ...importOptions(leaves) });
        log.debug("added", { cid: cid.toString(), ms: Math.round(performance.now() - started) });
        if (pin) await node.pin(cid, { signal });
        return cid;
      });
    },
    addDirectory(files, { signal, pin = false } = {}) {
      return gate.shared(async () => {
        const started = performance.now();
        let root: CID | undefined;
        const entries = fs.addAll(files, { signal, ...importOptions("fixed"), wrapWithDirectory: true });
        // The wrapping directory comes last, with the empty path.
        for await (const entry of entries) if (entry.path === "") root = entry.cid;
        if (!root) throw new BaseError("the UnixFS importer made no directory");
        log.debug("added directory", { cid: root.toString(), ms: Math.round(performance.now() - started) });
        if (pin) await node.pin(root, { signal });
        return root;
      });
    },
    async pin(cid, { signal } = {}) {
      if (await hasPin(cid, signal)) return;
      // Helia counts a block as pinned as it walks, and writes the pin record only at the end:
      // a walk that fails half-way would leave blocks that gc never frees. So check first.
      if (!(await hasLocalDag(helia, cid, signal))) {
        throw new CheckpointUnavailableError(`cannot pin ${cid}: not all of it is in the local store`);
      }
      const started = performance.now();
      try {
        // offline: pins.add would otherwise fetch missing blocks, slowly and without a stall timeout.
        const options = { signal, offline: true, walker: leafSkippingWalker };
        for await (const pinned of helia.pins.add(cid, options)) void pinned;
      } catch (error) {
        if ((error as Error).name !== "AlreadyPinnedError") throw error;
      }
      log.debug("pinned", { cid: cid.toString(), ms: Math.round(performance.now() - started) });
    },
    async unpin(cid, { signal } = {}) {
      if (!(await hasPin(cid, signal))) return;
      const options = { signal, offline: true, walker: leafSkippingWalker };
      for await (const unpinned of helia.pins.rm(cid, options)) void unpinned;
      log.debug("unpinned", { cid: cid.toString() });
    },
    isPinned: (cid, { signal } = {}) => hasPin(cid, signal),
    has: (cid, { signal } = {}) => hasLocalDag(helia, cid, signal),
    cat,
    fetchAndPin(cid, options) {
      return gate.shared(async () => {
        const started = performance.now();
        let bytes = 0;
        const lending = new Lending();
        for await (const chunk of cat(cid, { ...options, lending })) {
          bytes += chunk.byteLength;
          lending.done(bytes);
        }
        await node.pin(cid, { signal: options.signal });
        log.info("fetched and pinned", { cid: cid.toString(), bytes, ms: Math.round(performance.now() - started) });
        return { bytes };
      });
    },
    gc({ signal } = {}) {
      return gate.exclusive(async () => {
        const started = performance.now();
        await helia.gc({ signal });
        log.debug("gc done", { ms: Math.round(performance.now() - started) });
      });
    },
    gcSoon() {
      if (gcState === "idle") {
        gcState = "running";
        const run = (): void => {
          void node
            .gc()
            .catch((error: unknown) => log.warn("gc failed", { error }))
            .then(() => {
              if (gcState === "again" && !stopped) {
                gcState = "running";
                run();
              } else gcState = "idle";
            });
        };
        run();
      } else gcState = "again";
    },
    withGcPaused: (work) => gate.shared(work),
    stop() {
      stopped ??= serving
        .stop()
        .catch(() => undefined)
        .then(() => helia.stop())
        .then(() => undefined);
      return stopped;
    },
  };
  return node;
}

/**
 * FsBlockstore whose `get` reads a block with one `readFile` call. FsBlockstore streams a block
 * through a 64 KiB `createReadStream`, and its readers (bitswap serving a peer, the UnixFS
 * exporter) join the pieces with it-to-buffer, which concatenates the whole buffer so far with
 * each new piece: for a 1 MiB leaf, 16 reads and about 8.5 MiB copied. It was half of a
 * provider's CPU while it served a fetch (bench/checkpoint.ts). Same files, same sharding
 * (NextToLast, FsBlockstore's default); any failure falls back to FsBlockstore's own `get`, so
 * errors (NotFoundError) stay exactly as they were.
 */
class WholeReadFsBlockstore extends FsBlockstore {
  readonly #sharding: NextToLast;

  constructor(location: string) {
    const sharding = new NextToLast();
    super(location, { shardingStrategy: sharding });
    this.#sharding = sharding;
  }

  /**
   * The block's bytes in one read; throws (ENOENT) if it is not here. With `pool`, a block of the
   * pool's size is read into one of its buffers.
   */
  async readWhole(key: CID, signal?: AbortSignal, pool?: BufferPool): Promise<Uint8Array> {
    const { dir, file } = this.#sharding.encode(key);
    const where = path.join(this.path, dir, file);
    if (pool === undefined) return readFile(where, { signal });
    signal?.throwIfAborted();
    const handle = await open(where, "r");
    try {
      const { size } = await handle.stat();
      if (size !== pool.size) return await handle.readFile({ signal });
      const buffer = pool.take();
      for (let filled = 0; filled < size;) {
        const { bytesRead } = await handle.read(buffer, filled, size - filled, filled);
        if (bytesRead === 0) throw new BaseError(`block ${key} was cut short while it was read`);
        filled += bytesRead;
      }
      return buffer;
    } finally {
      await handle.close();
    }
  }

  override async *get(key: CID, options?: { signal?: AbortSignal }): AsyncGenerator<Uint8Array> {
    const { dir, file } = this.#sharding.encode(key);
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path.join(this.path, dir, file), { signal: options?.signal });
    } catch {
      yield* super.get(key, options);
      return;
    }
    yield bytes;
  }
}

/** Verified blocks written to the store while a fetch goes on: a few at once, in any order. */
class BlockWrites {
  readonly #helia: Helia;
  readonly #pending = new Map<string, Promise<void>>();
  #failed: unknown;

  constructor(helia: Helia) {
    this.#helia = helia;
  }

  /**
   * Begins writing a (verified) block; waits only while {@link MAX_PENDING_WRITES} are under way.
   * `done` runs once the write no longer reads `bytes`, whether it succeeded or not.
   */
  async put(cid: CID, bytes: Uint8Array, done?: () => void): Promise<void> {
    if (this.#failed !== undefined) throw this.#failed;
    while (this.#pending.size >= MAX_PENDING_WRITES) await Promise.race(this.#pending.values());
    const key = cid.toString();
    const written = Promise.resolve(this.#helia.blockstore.put(cid, bytes))
      .then(
        () => undefined,
        (error: unknown) => void (this.#failed ??= error),
      )
      .finally(() => {
        this.#pending.delete(key);
        done?.();
      });
    this.#pending.set(key, written);
  }

  /** A block written before (a repeat in the DAG): once its write is done, by `read`. */
  async read(cid: CID, read: () => Promise<Uint8Array>): Promise<Uint8Array> {
    await this.#pending.get(cid.toString());
    return read();
  }

  /** Waits for every write; throws if one failed. */
  async settle(): Promise<void> {
    await Promise.all(this.#pending.values());
    if (this.#failed !== undefined) throw this.#failed;
  }
}

/** Verified blocks a fetch writes at once. */
const MAX_PENDING_WRITES = 8;

/**
 * Free receive buffers a lending fetch keeps: about what is in flight at once (the receive
 * window, the writes, the reader's decryption), so that a steady fetch allocates none.
 */
const RECEIVE_POOL_BUFFERS = 24;

/**
 * Keeps gc away from blocks that are fetched or added but not pinned yet: Helia's gc deletes every
 * unpinned block, and a DAG is pinned only once all of it is here. Work holds the gate shared, gc
 * exclusively; a waiting gc goes before new work, so a stream of fetches cannot starve it.
 */
function gcGate() {
  let holders = 0;
  let exclusive: Promise<void> | undefined;
  const drained: Array<() => void> = [];
  return {
    async shared<T>(work: () => Promise<T>): Promise<T> {
      while (exclusive) await exclusive;
      holders++;
      try {
        return await work();
      } finally {
        if (--holders === 0) for (const wake of drained.splice(0)) wake();
      }
    },
    async exclusive<T>(work: () => Promise<T>): Promise<T> {
      while (exclusive) await exclusive;
      let release!: () => void;
      exclusive = new Promise<void>((resolve) => (release = resolve));
      try {
        while (holders > 0) await new Promise<void>((resolve) => drained.push(resolve));
        return await work();
      } finally {
        exclusive = undefined;
        release();
      }
    },
  };
}

/**
 * A timer that aborts a fetch when no block arrives for `ms`: armed while we wait on the network,
 * disarmed while the consumer works on what it got. `translate` turns what the fetch threw into
 * the error the caller should see: its own abort reason, CheckpointUnavailableError on a stall.
 */
function stallGuard(ms: number, outer: AbortSignal | undefined) {
  const stall = new AbortController();
  // Aborted when the consumer stops early, so bitswap drops wants it no longer needs.
  const done = new AbortController();
  const signal = AbortSignal.any([stall.signal, done.signal, ...(outer ? [outer] : [])]);
  let timer: NodeJS.Timeout | undefined;
  let armed = false;
  const arm = (): void => {
    clearTimeout(timer);
    armed = true;
    timer = setTimeout(() => stall.abort(new BaseError("stalled")), ms);
  };
  return {
    signal,
    arm,
    /** Something arrived: the wait starts over, if one is under way (not while the consumer holds a chunk). */
    progressed() {
      if (armed) arm();
    },
    disarm() {
      armed = false;
      clearTimeout(timer);
    },
    release() {
      armed = false;
      clearTimeout(timer);
      done.abort(new BaseError("fetch finished"));
    },
    translate(error: unknown, cid: CID, providers: Multiaddr[]): unknown {
      if (outer?.aborted) return outer.reason;
      if (stall.signal.aborted) {
        return new CheckpointUnavailableError(`no peer delivered checkpoint ${cid} (stalled for ${ms} ms)`, {
          details: providers.length > 0 ? `providers: ${providers.join(", ")}` : "no providers were given",
          cause: error,
        });
      }
      const name = (error as Error).name;
      if (["NotUnixFSError", "NotAFileError", "NoContentError", "OverReadError", "UnderReadError"].includes(name)) {
        return new CheckpointCorruptError(`${cid} is not a well-formed checkpoint file`, { cause: error });
      }
      return error;
    },
  };
}
