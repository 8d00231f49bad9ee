import { webcrypto } from "node:crypto";
import type { TLSSocket } from "node:tls";

import * as dagPb from "@ipld/dag-pb";
import type { PeerId, Stream, StreamMessageEvent } from "@libp2p/interface";
import type { Multiaddr } from "@multiformats/multiaddr";
import { encode as lpEncode } from "it-length-prefixed";
import { varint } from "multiformats";
import { CID } from "multiformats/cid";
import * as raw from "multiformats/codecs/raw";
import { identity } from "multiformats/hashes/identity";
import { sha256 } from "multiformats/hashes/sha2";
import type { Uint8ArrayList } from "uint8arraylist";

import { BaseError } from "../errors.ts";
import { silentLogger, type Logger } from "../logger.ts";
import type { BatonHost } from "../p2p/host.ts";
import { openStream, peerIdOf } from "../p2p/open-stream.ts";
import { protocols } from "../wire/protocols.ts";
import { serveBlockLanes, type BlockLanes } from "./block-lanes.ts";
import { BufferPool } from "./bytes.ts";
import { BLOCK_SIZE } from "./constants.ts";

/**
 * `/baton/blocks/1.0.0`: a DAG's blocks over one libp2p stream, in the order a reader needs them,
 * each checked against its CID as it arrives. Bitswap asks for blocks by want-lists, a few dozen
 * at a time, and both ends spend most of their CPU on its messages (encoding every block twice to
 * size a message, one stream per message); here the sender just writes the blocks one after
 * another, the receiver hashes each and compares. It is the trustless gateways' CAR stream
 * without the CIDs: the receiver already knows which CID comes next, so a peer cannot choose what
 * it sends, only send it or fail.
 *
 * Request (one length-prefixed frame): `skip` (unsigned varint), the root CID's bytes, and
 * optionally `count` (unsigned varint, at least 1).
 *
 * Response: the blocks of the DAG under the root in *stream order*, each as a length-prefixed
 * frame holding the block's bytes, leaving out the first `skip` and stopping after `count` (at the
 * DAG's end without it); then the sender closes. Stream
 * order is depth-first pre-order (a node, then its links in order), each block once (at its
 * first occurrence; a repeated subtree is not sent again), identity CIDs never (their bytes are in
 * the CID). A UnixFS file's leaves so come in file order, right after the node that links them.
 * Only dag-pb and raw blocks hashed with sha2-256 are walked or accepted; a sender that lacks a
 * block (or meets another codec) resets the stream there.
 *
 * A receiver that loses its sender (a stall, a reset, a truncated stream, a block that does not
 * match its CID, a frame over {@link MAX_BLOCK_BYTES}) asks another holder with `skip` set to the
 * blocks it already verified, and in the end falls back to bitswap (node.ts). Blocks go to the
 * store only once verified, so nothing unverified is ever written or resumed from. With several
 * holders, a receiver fetches from all of them at once, each a stripe of the stream (`skip` and
 * `count`: see {@link StripedFetch}).
 */

export const BLOCKS_PROTOCOL = protocols.blocks;

/** The largest block either side handles: bitswap's message limit, so no block past it is fetchable anyway. */
export const MAX_BLOCK_BYTES = 4 * 1024 * 1024;

const MAX_REQUEST_BYTES = 256;

/** Streams one node serves at once: a fetch uses one, so this bounds the readers, not a reader. */
const MAX_INBOUND_STREAMS = 8;

/** Blocks the sender reads from its store ahead of the one it is sending. */
const SEND_READ_AHEAD = 4;

/** Free send buffers a block lane keeps: the read-ahead and what its socket has not taken yet. */
const SEND_POOL_BUFFERS = 8;

/**
 * Verified-or-arriving bytes the receiver buffers before it pauses the stream (and so, through
 * yamux flow control, the sender): a few blocks, so that hashing and writing overlap the network.
 */
const RECEIVE_HIGH_WATER = 8 * 1024 * 1024;
const RECEIVE_LOW_WATER = 4 * 1024 * 1024;

/**
 * What a paused stream may still buffer: yamux's window (up to 16 MiB once it has grown) is
 * already granted to the sender and still arrives after a pause. libp2p's default, 4 MiB, would
 * reset the stream.
 */
const RECEIVE_MAX_BUFFER = 32 * 1024 * 1024;

/** How long a sender waits for a receiver to take more before it gives up on it. */
const SEND_STALL_MS = 60_000;

/** How long the sender waits for the request. */
const REQUEST_TIMEOUT_MS = 10_000;

const { subtle } = webcrypto;

/** Why a peer's stream was given up; the fetch goes on elsewhere. */
export class BlockStreamError extends BaseError {
  override name = "BlockStreamError";
}

/** The key stream order deduplicates by: the same on both ends. */
const keyOf = (cid: CID): string => cid.toString();

/** Whether stream order can walk and check `cid` (dag-pb or raw, sha2-256 or identity). */
export function streamable(cid: CID): boolean {
  return (
    (cid.code === dagPb.code || cid.code === raw.code) &&
    (cid.multihash.code === sha256.code || cid.multihash.code === identity.code)
  );
}

/** The links of a block in stream order (none for a raw one). */
export function linksOf(cid: CID, bytes: Uint8Array): CID[] {
  if (cid.code === raw.code) return [];
  return dagPb.decode(bytes).Links.map((link) => link.Hash);
}

// ---------------------------------------------------------------------------------------------
// Sending

export interface BlockRequest {
  root: CID;
  skip: number;
  /** How many blocks to send at most; all to the DAG's end when absent. */
  count?: number | undefined;
}

/** Encodes a request (without its length prefix). */
export function encodeRequest({ root, skip, count }: BlockRequest): Uint8Array {
  const skipLength = varint.encodingLength(skip);
  const countLength = count === undefined ? 0 : varint.encodingLength(count);
  const bytes = new Uint8Array(skipLength + root.bytes.byteLength + countLength);
  varint.encodeTo(skip, bytes, 0);
  bytes.set(root.bytes, skipLength);
  if (count !== undefined) varint.encodeTo(count, bytes, skipLength + root.bytes.byteLength);
  return bytes;
}

/** Decodes a request; throws on anything malformed. */
export function decodeRequest(bytes: Uint8Array): BlockRequest {
  const [skip, length] = varint.decode(bytes, 0);
  if (!Number.isSafeInteger(skip) || skip < 0) throw new BlockStreamError("bad skip in a block request");
  const [root, rest] = CID.decodeFirst(bytes.subarray(length));
  if (rest.byteLength === 0) return { root, skip };
  const [count, countLength] = varint.decode(rest, 0);
  if (!Number.isSafeInteger(count) || count < 1 || countLength !== rest.byteLength) {
    throw new BlockStreamError("bad count in a block request");
  }
  return { root, skip, count };
}

/**
 * The blocks of the DAG under `root` in stream order, as `{ cid, bytes }` where `bytes` is read by
 * `read` (ahead of the consumer, a few at once). Raw leaves among the first `skip` are never read.
 */
export async function* streamOrder(
  root: CID,
  read: (cid: CID) => Promise<Uint8Array>,
  { skip = 0, readAhead = SEND_READ_AHEAD }: { skip?: number; readAhead?: number } = {},
): AsyncGenerator<{ cid: CID; bytes: Uint8Array }> {
  const seen = new Set<string>();
  const stack = [root];
  const pending: Array<{ cid: CID; bytes: Promise<Uint8Array> }> = [];
  let index = 0;
  const settle = async () => {
    const head = pending.shift()!;
    return { cid: head.cid, bytes: await head.bytes };
  };
  try {
    for (let cid = stack.pop(); cid !== undefined; cid = stack.pop()) {
      if (!streamable(cid)) throw new BlockStreamError(`cannot stream ${cid}: only dag-pb and raw blocks, sha2-256`);
      if (cid.multihash.code === identity.code) continue;
      const key = keyOf(cid);
      if (seen.has(key)) continue;
      seen.add(key);
      const sent = index++ >= skip;
      if (cid.code === raw.code) {
        if (!sent) continue;
        const bytes = read(cid);
        bytes.catch(() => undefined); // awaited in its turn
        pending.push({ cid, bytes });
      } else {
        const bytes = await read(cid);
        stack.push(...linksOf(cid, bytes).reverse());
        if (sent) pending.push({ cid, bytes: Promise.resolve(bytes) });
      }
      while (pending.length >= readAhead) yield await settle();
    }
    while (pending.length > 0) yield await settle();
  } finally {
    pending.length = 0;
  }
}

export interface ServeBlocksInit {
  host: BatonHost;
  /**
   * Reads a block from the local store only (never the network); throws if it is not there. With
   * `pool`, a block of the pool's size is read into one of its buffers.
   */
  read: (cid: CID, signal: AbortSignal, pool?: BufferPool) => Promise<Uint8Array>;
  /**
   * Also serves block lanes (block-lanes.ts) on this IP and port (0: a free one): where the host's
   * libp2p listens, so that peers reach it at the address they reached libp2p at. None without it.
   */
  lane?: { host: string; port: number };
  log?: Logger;
  /** Told of the block bytes each stream sent, whole or cut short, and whether it went through a relay. */
  onSent?: (sent: BlocksSent) => void;
}

export interface BlocksSent {
  peer: PeerId;
  bytes: number;
  /** Over a relayed connection (a circuit through a third peer), not a direct one. */
  relayed: boolean;
  /** On a block lane (block-lanes.ts), not a libp2p stream. */
  lane: boolean;
}

/**
 * Serves {@link BLOCKS_PROTOCOL} from the local store, over libp2p and on block lanes. Like
 * bitswap, it serves any block it has to any peer that asks by CID.
 *
 * @returns the block lanes' port (where it serves them), and a function that stops serving.
 */
export async function serveBlocks({
  host,
  read,
  lane,
  log = silentLogger,
  onSent,
}: ServeBlocksInit): Promise<{ lanePort: number | undefined; stop: () => Promise<void> }> {
  await host.handle(
    BLOCKS_PROTOCOL,
    (stream, { remotePeer, direct }) => void sendDag(streamPipe(stream), remotePeer, !direct, read, log, onSent),
    { maxInboundStreams: MAX_INBOUND_STREAMS, runOnLimitedConnection: false },
  );
  const lanes =
    lane === undefined
      ? undefined
      : await serveBlockLanes({
          host,
          listenHost: lane.host,
          port: lane.port,
          onConnection: (socket, peer) => void sendDag(socketPipe(socket), peer, false, read, log, onSent),
          log,
        });
  return {
    lanePort: lanes?.port,
    async stop() {
      await host.unhandle(BLOCKS_PROTOCOL);
      await lanes?.stop();
    },
  };
}

async function sendDag(
  pipe: BlockPipe,
  peer: PeerId,
  relayed: boolean,
  read: ServeBlocksInit["read"],
  log: Logger,
  onSent: ServeBlocksInit["onSent"],
): Promise<void> {
  const abort = new AbortController();
  const started = performance.now();
  let sent = 0;
  let bytes = 0;
  let request: BlockRequest | undefined;
  // On a lane, leaves are read into a few buffers reused once TLS took them (inner nodes never:
  // their decoded links point into their bytes).
  const pool = pipe.lane ? new BufferPool(BLOCK_SIZE, SEND_POOL_BUFFERS) : undefined;
  const readBlock = (cid: CID): Promise<Uint8Array> =>
    read(cid, abort.signal, cid.code === raw.code ? pool : undefined);
  try {
    request = await readBlockRequest(pipe);
    const { root, skip, count = Infinity } = request;
    for await (const block of streamOrder(root, readBlock, { skip })) {
      const given = pool?.owns(block.bytes) ? () => pool.give(block.bytes) : undefined;
      // A signal only when the receiver makes us wait, not one per block.
      if (!pipe.send(block.bytes, given)) await pipe.drained(AbortSignal.timeout(SEND_STALL_MS));
      sent++;
      bytes += block.bytes.byteLength;
      if (sent >= count) break;
    }
    await pipe.close(AbortSignal.timeout(SEND_STALL_MS));
    log.debug("sent a DAG", {
      peer: peer.toString(),
      lane: pipe.lane,
      root: request.root.toString(),
      skip,
      count: request.count,
      blocks: sent,
      bytes,
      ms: Math.round(performance.now() - started),
    });
  } catch (error) {
    abort.abort();
    pipe.abort(error as Error);
    log.debug("stopped sending a DAG", {
      peer: peer.toString(),
      lane: pipe.lane,
      root: request?.root.toString(),
      blocks: sent,
      error,
    });
  } finally {
    onSent?.({ peer, bytes, relayed, lane: pipe.lane });
  }
}

/** Reads and decodes the one request of an inbound stream (within {@link REQUEST_TIMEOUT_MS}). */
export async function readBlockRequest(pipe: BlockPipe): Promise<BlockRequest> {
  const frames = new FrameReader(pipe, MAX_REQUEST_BYTES, false);
  try {
    const frame = await frames.next(undefined, REQUEST_TIMEOUT_MS);
    if (frame === undefined) throw new BlockStreamError("the stream ended before its request");
    return decodeRequest(frame);
  } finally {
    frames.detach();
  }
}

/**
 * What a block stream runs on: a libp2p stream, or a block lane's TLS connection (block-lanes.ts).
 * Frames are length-prefixed (an unsigned varint) either way.
 */
export interface BlockPipe {
  /** On a block lane, not a libp2p stream. */
  readonly lane: boolean;
  /**
   * Hands over the bytes as they come, then the end: clean once every byte was handed over, else
   * with the error that broke it. Returns a function that stops listening.
   */
  listen(data: (chunk: Uint8Array | Uint8ArrayList) => void, end: (error?: Error) => void): () => void;
  pause(): void;
  resume(): void;
  /** Neither closed nor cut yet. */
  readonly open: boolean;
  /**
   * Sends one frame; false when the other side makes us wait (see {@link drained}). `sent` runs
   * once the pipe no longer reads `frame`, where it can tell (a block lane); else never.
   */
  send(frame: Uint8Array, sent?: () => void): boolean;
  drained(signal: AbortSignal): Promise<void>;
  /** Ends our side once everything sent went out. */
  close(signal: AbortSignal): Promise<void>;
  /** Cuts it off, both ways. */
  abort(error: Error): void;
}

/** A libp2p stream as a {@link BlockPipe}. */
export function streamPipe(stream: Stream): BlockPipe {
  return {
    lane: false,
    listen(data, end) {
      const onMessage = (event: StreamMessageEvent): void => data(event.data);
      // "end", not "remoteCloseWrite": libp2p fires the latter as soon as the sender's FIN arrives,
      // while data before it may still wait in the stream's buffer (always, while we have it paused),
      // and ending then would drop the last blocks. "end" comes once all of it was handed to us.
      const onEnd = (): void => end();
      const onClose = (event: Event): void => {
        const error = (event as Event & { error?: Error }).error;
        if (error !== undefined) end(error);
        else setImmediate(() => end()); // after any data still being handed over
      };
      stream.addEventListener("message", onMessage);
      stream.addEventListener("close", onClose);
      stream.addEventListener("end", onEnd);
      if (stream.readableEnded || stream.status !== "open") setImmediate(() => end());
      return () => {
        stream.removeEventListener("message", onMessage);
        stream.removeEventListener("close", onClose);
        stream.removeEventListener("end", onEnd);
      };
    },
    pause: () => stream.pause(),
    resume: () => stream.resume(),
    get open() {
      return stream.status === "open";
    },
    send: (frame) => stream.send(lpEncode.single(frame)),
    drained: (signal) => stream.onDrain({ signal }),
    close: (signal) => stream.close({ signal }),
    abort: (error) => stream.abort(error),
  };
}

/** A block lane's connection as a {@link BlockPipe}. */
export function socketPipe(socket: TLSSocket): BlockPipe {
  // Errors come to `listen`'s `end` (or to a send waiting on `drained`); never unhandled.
  socket.on("error", () => undefined);
  const closed = (): BlockStreamError => new BlockStreamError("the block lane's connection closed");
  return {
    lane: true,
    listen(data, end) {
      const onEnd = (): void => end();
      const onError = (error: Error): void => end(error);
      const onClose = (): void => end(closed());
      socket.on("data", data);
      socket.on("end", onEnd);
      socket.on("error", onError);
      socket.on("close", onClose);
      return () => {
        socket.off("data", data);
        socket.off("end", onEnd);
        socket.off("error", onError);
        socket.off("close", onClose);
      };
    },
    pause: () => socket.pause(),
    resume: () => socket.resume(),
    get open() {
      return !socket.destroyed;
    },
    send(frame, sent) {
      socket.cork();
      socket.write(varint.encodeTo(frame.byteLength, new Uint8Array(varint.encodingLength(frame.byteLength))));
      // The callback comes once TLS encrypted the frame (or the socket was destroyed).
      const more = socket.write(frame, sent === undefined ? undefined : () => sent());
      socket.uncork();
      return more;
    },
    drained: (signal) =>
      new Promise<void>((resolve, reject) => {
        const settle = (error?: Error): void => {
          socket.off("drain", onDrain);
          socket.off("close", onClose);
          signal.removeEventListener("abort", onAbort);
          if (error) reject(error);
          else resolve();
        };
        const onDrain = (): void => settle();
        const onClose = (): void => settle(closed());
        const onAbort = (): void => settle(signal.reason as Error);
        socket.once("drain", onDrain);
        socket.once("close", onClose);
        signal.addEventListener("abort", onAbort, { once: true });
      }),
    close: (signal) =>
      new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          socket.destroy();
          reject(signal.reason as Error);
        };
        signal.addEventListener("abort", onAbort, { once: true });
        socket.end(() => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        });
      }),
    abort: () => socket.destroy(),
  };
}

// ---------------------------------------------------------------------------------------------
// Receiving

/**
 * Splits a stream's bytes into length-prefixed frames as they arrive, copying each frame's body
 * once into a buffer of its own (from `pool` when it is the pool's size), and pausing the stream
 * while too much is buffered. With `hash`, each frame's SHA-256 is begun (in the thread pool) as
 * soon as the frame is complete.
 */
class FrameReader {
  readonly #pipe: BlockPipe;
  readonly #maxFrame: number;
  readonly #hash: boolean;
  readonly #pool: BufferPool | undefined;
  readonly #frames: Array<{ bytes: Uint8Array; digest: Promise<Uint8Array> | undefined }> = [];
  #buffered = 0;
  #paused = false;
  #ended: Error | true | undefined;
  #wake: (() => void) | undefined;
  // The frame being read: its length prefix so far, then its body.
  #prefix: number[] = [];
  #body: Uint8Array | undefined;
  #filled = 0;
  readonly #stop: () => void;

  constructor(pipe: BlockPipe, maxFrame: number, hash: boolean, pool?: BufferPool) {
    this.#pipe = pipe;
    this.#maxFrame = maxFrame;
    this.#hash = hash;
    this.#pool = pool;
    this.#stop = pipe.listen(
      (chunk) => this.#push(chunk),
      (error) => this.#end(error ?? true),
    );
  }

  detach(): void {
    this.#stop();
  }

  #end(reason: Error | true): void {
    this.#ended ??= reason;
    this.#wake?.();
  }

  #push(data: Uint8Array | Uint8ArrayList): void {
    if (this.#ended !== undefined) return;
    try {
      const pieces = data instanceof Uint8Array ? [data] : [...data];
      for (const piece of pieces) this.#parse(piece);
    } catch (error) {
      this.#end(error as Error);
      return;
    }
    if (this.#buffered > RECEIVE_HIGH_WATER && !this.#paused && this.#pipe.open) {
      this.#paused = true;
      this.#pipe.pause();
    }
    this.#wake?.();
  }

  #parse(piece: Uint8Array): void {
    let at = 0;
    while (at < piece.byteLength) {
      if (this.#body === undefined) {
        const byte = piece[at++]!;
        this.#prefix.push(byte);
        if (byte & 0x80) {
          if (this.#prefix.length >= 8) throw new BlockStreamError("a frame's length prefix is malformed");
          continue;
        }
        const [length] = varint.decode(Uint8Array.from(this.#prefix));
        this.#prefix = [];
        if (length > this.#maxFrame) {
          throw new BlockStreamError(`a frame of ${length} bytes is over the limit of ${this.#maxFrame}`);
        }
        this.#body = length === this.#pool?.size ? this.#pool.take() : Buffer.allocUnsafe(length);
        this.#filled = 0;
      } else {
        const n = Math.min(piece.byteLength - at, this.#body.byteLength - this.#filled);
        this.#body.set(piece.subarray(at, at + n), this.#filled);
        this.#filled += n;
        at += n;
      }
      if (this.#body !== undefined && this.#filled === this.#body.byteLength) {
        const bytes = this.#body;
        this.#body = undefined;
        // WebCrypto copies its input before it returns: the frame may be reused once taken.
        const digest = this.#hash ? subtle.digest("SHA-256", bytes).then((d) => new Uint8Array(d)) : undefined;
        digest?.catch(() => undefined); // awaited when the frame is taken
        this.#frames.push({ bytes, digest });
        this.#buffered += bytes.byteLength;
      }
    }
  }

  /** The next frame's bytes, or undefined once the stream ended cleanly between frames. */
  async next(signal?: AbortSignal, stallMs?: number): Promise<Uint8Array | undefined> {
    return (await this.nextHashed(signal, stallMs))?.bytes;
  }

  /**
   * The next frame with its SHA-256 (begun when it arrived), or undefined at a clean end. Throws
   * {@link StallError} when no frame completes within `stallMs`. (A timer, not an
   * `AbortSignal.timeout` per frame: those are weak references, and one per block kept the
   * garbage collector busy.)
   */
  async nextHashed(
    signal?: AbortSignal,
    stallMs?: number,
  ): Promise<{ bytes: Uint8Array; digest: Promise<Uint8Array> | undefined } | undefined> {
    let deadline: number | undefined;
    for (;;) {
      const frame = this.#frames.shift();
      if (frame !== undefined) {
        this.#buffered -= frame.bytes.byteLength;
        if (this.#paused && this.#buffered < RECEIVE_LOW_WATER && this.#pipe.open) {
          this.#paused = false;
          this.#pipe.resume();
        }
        return frame;
      }
      if (this.#ended instanceof Error) throw this.#ended;
      if (this.#ended === true) {
        if (this.#body !== undefined || this.#prefix.length > 0)
          throw new BlockStreamError("the stream ended inside a frame");
        return undefined;
      }
      signal?.throwIfAborted();
      if (stallMs !== undefined) deadline ??= performance.now() + stallMs;
      await new Promise<void>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        const onAbort = (): void => {
          clearTimeout(timer);
          this.#wake = undefined;
          reject(signal!.reason as Error);
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        if (deadline !== undefined) {
          timer = setTimeout(
            () => {
              signal?.removeEventListener("abort", onAbort);
              this.#wake = undefined;
              reject(new StallError(`no block for ${stallMs} ms`));
            },
            Math.max(0, deadline - performance.now()),
          );
        }
        this.#wake = () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          this.#wake = undefined;
          resolve();
        };
      });
    }
  }
}

/** A holder sent nothing for the stall timeout. */
class StallError extends BlockStreamError {
  override name = "StallError";
}

export interface BlockStreamSessionInit {
  host: BatonHost;
  root: CID;
  /** Holders to ask, in order, each a multiaddr ending in `/p2p/<peer id>`. */
  peers: Multiaddr[];
  /** The longest wait for the next block from one holder before it is given up. */
  stallTimeoutMs: number;
  /** Where in stream order to start: the blocks before it are not sent (default 0, the root). */
  start?: number;
  /** Where in stream order to stop (that block is not sent); the DAG's end by default. */
  end?: number;
  /** Block lanes to try first (block-lanes.ts); libp2p streams only without. */
  lanes?: BlockLanes;
  /**
   * Where blocks of its size are received into: {@link BlockStreamSession.next} then returns the
   * pool's buffers, which the caller gives back once done with them, or leaves to the GC.
   */
  pool?: BufferPool;
  signal?: AbortSignal;
  log?: Logger;
}

/**
 * Fetches the blocks of one DAG in stream order: {@link next} returns the next block's bytes once
 * they matched the CID the caller expects. A holder that fails is dropped and the next one asked,
 * from where the last one stopped; when none is left, {@link next} throws BlockStreamError.
 */
export class BlockStreamSession {
  readonly #init: BlockStreamSessionInit;
  readonly #log: Logger;
  readonly #peers: Multiaddr[];
  #current: { peer: Multiaddr; pipe: BlockPipe; frames: FrameReader } | undefined;
  /** Where the next holder starts: the blocks verified so far, counted from `start`. */
  #verified: number;
  /** What went wrong with each holder dropped, for the final error. */
  readonly failures: string[] = [];
  /** The holders asked so far (a stream opened), in order. */
  readonly asked: string[] = [];
  /**
   * Where in stream order to stop, as the next holder asked is told (`init.end`). Moved closer by a
   * striped fetch when another stripe takes the rest; a holder asked before sends past it.
   */
  end: number | undefined;

  constructor(init: BlockStreamSessionInit) {
    this.#init = init;
    this.end = init.end;
    this.#log = init.log ?? silentLogger;
    this.#peers = [...init.peers];
    this.#verified = init.start ?? 0;
  }

  /** Blocks verified so far. */
  get verified(): number {
    return this.#verified;
  }

  /**
   * The next block in stream order, which must be `cid`: verified, never unverified. Skips
   * identity CIDs' sending: their bytes are their digest.
   */
  async next(cid: CID): Promise<Uint8Array> {
    if (cid.multihash.code === identity.code) return cid.multihash.digest;
    for (;;) {
      const current = this.#current ?? (await this.#open());
      try {
        const frame = await current.frames.nextHashed(this.#init.signal, this.#init.stallTimeoutMs);
        if (frame === undefined) throw new BlockStreamError(`the stream ended before block ${cid}`);
        const digest = await frame.digest!;
        if (!equalBytes(digest, cid.multihash.digest)) {
          throw new BlockStreamError(`the peer sent a block that does not match ${cid}`);
        }
        this.#verified++;
        return frame.bytes;
      } catch (error) {
        this.#init.signal?.throwIfAborted();
        this.#drop((error as Error).message ?? String(error));
      }
    }
  }

  #drop(reason: string): void {
    const current = this.#current;
    if (current === undefined) return;
    this.#current = undefined;
    this.failures.push(`${current.peer}: ${reason}`);
    this.#log.warn("block stream failed, trying the next holder", {
      peer: current.peer.toString(),
      root: this.#init.root.toString(),
      verified: this.#verified,
      reason,
    });
    current.frames.detach();
    current.pipe.abort(new BlockStreamError(reason));
  }

  async #open(): Promise<{ peer: Multiaddr; pipe: BlockPipe; frames: FrameReader }> {
    for (let peer = this.#peers.shift(); peer !== undefined; peer = this.#peers.shift()) {
      const signal = AbortSignal.any([
        AbortSignal.timeout(this.#init.stallTimeoutMs),
        ...(this.#init.signal ? [this.#init.signal] : []),
      ]);
      let pipe: BlockPipe | undefined;
      try {
        pipe = await this.#pipeTo(peer, signal);
        const frames = new FrameReader(pipe, MAX_BLOCK_BYTES, true, this.#init.pool);
        const count = this.end === undefined ? undefined : this.end - this.#verified;
        if (!pipe.send(encodeRequest({ root: this.#init.root, skip: this.#verified, count })))
          await pipe.drained(signal);
        this.#current = { peer, pipe, frames };
        this.asked.push(peer.toString());
        return this.#current;
      } catch (error) {
        this.#init.signal?.throwIfAborted();
        pipe?.abort(error as Error);
        const reason = (error as Error).message ?? String(error);
        this.failures.push(`${peer}: ${reason}`);
        this.#log.debug("cannot open a block stream", { peer: peer.toString(), reason });
      }
    }
    throw new BlockStreamError(`no holder streamed ${this.#init.root}`, {
      details: this.failures.length > 0 ? this.failures.join("; ") : "no holders to ask",
    });
  }

  /** Closes the stream in use, if any (the fetch is done, or goes on elsewhere). */
  close(): void {
    const current = this.#current;
    this.#current = undefined;
    if (current === undefined) return;
    current.frames.detach();
    // The sender closes once it sent the last block; a fetch that stopped early resets it.
    if (current.pipe.open) current.pipe.abort(new BlockStreamError("fetch finished"));
  }

  /** A block lane to `peer` where it has one this side can reach, else a libp2p stream. */
  async #pipeTo(peer: Multiaddr, signal: AbortSignal): Promise<BlockPipe> {
    const { host, lanes } = this.#init;
    const id = peerIdOf(peer);
    if (lanes !== undefined && id !== undefined) {
      await host.dial(peer, { signal });
      const socket = await lanes.connect(id, signal);
      if (socket !== undefined) return socketPipe(socket);
    }
    const stream = await openStream(host, peer, BLOCKS_PROTOCOL, { signal });
    stream.maxReadBufferLength = RECEIVE_MAX_BUFFER;
    return streamPipe(stream);
  }
}

export interface SampleBlocksParameters {
  host: BatonHost;
  root: CID;
  /** The holder to check, a multiaddr ending in `/p2p/<peer id>`. */
  peer: Multiaddr;
  /** How many leaves to fetch, picked at random (all of them when there are fewer). */
  samples: number;
  stallTimeoutMs: number;
  /** Picks the leaves: `Math.random` by default. */
  random?: () => number;
  signal?: AbortSignal;
}

/**
 * A cheap proof that `peer` holds the DAG under `root` (a proof of retrievability): its root and
 * inner nodes, which say where each leaf is, then `samples` leaves picked at random, each asked for
 * alone (a block stream from its place in stream order) and checked against its CID. A holder that
 * dropped blocks cannot send them; one that sends others is caught by the hash. Nothing is stored.
 *
 * @returns how many leaves the DAG has and how many were checked, and the bytes received.
 * @throws {BlockStreamError} when the peer does not send a block asked for, or sends a wrong one.
 */
export async function sampleBlocks({
  host,
  root,
  peer,
  samples,
  stallTimeoutMs,
  random = Math.random,
  signal,
}: SampleBlocksParameters): Promise<{ leaves: number; sampled: number; bytes: number }> {
  const blockAt = async (start: number, cid: CID): Promise<Uint8Array> => {
    const session = new BlockStreamSession({
      host,
      root,
      peers: [peer],
      stallTimeoutMs,
      start,
      end: start + 1,
      ...(signal ? { signal } : {}),
    });
    try {
      return await session.next(cid);
    } catch (error) {
      throw new BlockStreamError(`${peer} did not send block ${start} (${cid}) of ${root}`, {
        cause: error,
        details: session.failures.join("; "),
      });
    } finally {
      session.close();
    }
  };
  let bytes = 0;
  const placed = await placeBlocks(root, async (cid, at) => {
    const block = await blockAt(at, cid);
    bytes += block.byteLength;
    return block;
  });
  const leaves = placed.filter(({ cid }) => cid.code === raw.code);
  const picked = new Set<number>();
  while (picked.size < Math.min(samples, leaves.length)) picked.add(Math.floor(random() * leaves.length));
  for (const i of picked) bytes += (await blockAt(leaves[i]!.at, leaves[i]!.cid)).byteLength;
  return { leaves: leaves.length, sampled: picked.size, bytes };
}

/** A block of a DAG, and its place in stream order. */
export interface PlacedBlock {
  cid: CID;
  at: number;
}

/**
 * Every block of the DAG under `root` in stream order, as {@link streamOrder} sends them (depth
 * first, each block once, identity CIDs never), each with its place: the inner (dag-pb) nodes are
 * read by `inner(cid, at)` for their links, raw leaves are not read at all.
 */
export async function placeBlocks(
  root: CID,
  inner: (cid: CID, at: number) => Promise<Uint8Array>,
): Promise<PlacedBlock[]> {
  const placed: PlacedBlock[] = [];
  const seen = new Set<string>();
  const stack = [root];
  for (let cid = stack.pop(); cid !== undefined; cid = stack.pop()) {
    if (!streamable(cid)) throw new BlockStreamError(`cannot stream ${cid}: only dag-pb and raw blocks, sha2-256`);
    if (cid.multihash.code === identity.code) continue;
    const key = keyOf(cid);
    if (seen.has(key)) continue;
    seen.add(key);
    const at = placed.length;
    placed.push({ cid, at });
    if (cid.code !== raw.code) stack.push(...linksOf(cid, await inner(cid, at)).reverse());
  }
  return placed;
}

/** Holders one fetch streams from at once, at most. */
const MAX_STRIPES = 4;

/** The fewest blocks a stripe has: a small DAG is fetched from fewer holders (one, under twice this). */
const MIN_STRIPE_BLOCKS = 4;

export interface StripedFetchInit extends Omit<BlockStreamSessionInit, "start" | "end"> {
  /** Stores a verified block; the stripes wait on it, so it paces them. */
  store: (cid: CID, bytes: Uint8Array) => Promise<void>;
}

/**
 * Fetches one DAG from several holders at once. The root comes first, alone, so that the reader
 * can refuse it (by its declared size) before anything else is fetched. Once the reader asks for
 * the next block, the inner nodes are fetched one by one, which places every leaf in stream order
 * ({@link placeBlocks}); then the rest of the stream is cut into one stripe per holder (contiguous,
 * about equal, at most {@link MAX_STRIPES}), each a {@link BlockStreamSession} from its start to
 * its end (`skip` and `count`) that begins at a holder of its own and goes on from the others',
 * where it stopped, if that one fails. A stripe that is done takes over the back of the stripe
 * with the most time left, as much of it as makes both end together at the pace each kept so far,
 * so that a slow holder (a tenant's home uplink) holds the fetch up by a block or so, not by its
 * share. Every block is verified against its CID before it is stored; the reader reads them back
 * from the store in order ({@link ready}).
 */
export class StripedFetch {
  readonly #init: StripedFetchInit;
  readonly #abort = new AbortController();
  readonly #signal: AbortSignal;
  /** Each block's stored-or-failed promise, by CID, once placed. */
  readonly #stored = new Map<string, Promise<void>>();
  /** The leaves not stored yet, by place. */
  readonly #waiting = new Map<number, { resolve: () => void; reject: (error: unknown) => void }>();
  /** The stripes under way: each fetches `[at, session.end)`, and began at `begin` at time `startedAt`. */
  readonly #stripes = new Set<Stripe>();
  readonly #sessions: BlockStreamSession[] = [];
  #root: Uint8Array | undefined;
  #placed: Promise<void> | undefined;

  constructor(init: StripedFetchInit) {
    this.#init = init;
    this.#signal = AbortSignal.any([this.#abort.signal, ...(init.signal ? [init.signal] : [])]);
  }

  /** The holders asked so far (a stream opened), in order, by every stripe. */
  get asked(): string[] {
    return this.#sessions.flatMap((session) => session.asked);
  }

  /** What went wrong with each holder a stripe dropped. */
  get failures(): string[] {
    return this.#sessions.flatMap((session) => session.failures);
  }

  /**
   * Waits until `cid`, the next block the reader needs in stream order (the root first), is
   * verified and stored. Throws BlockStreamError when no holder could deliver it.
   */
  async ready(cid: CID): Promise<void> {
    if (this.#root === undefined) {
      if (!cid.equals(this.#init.root)) throw new BlockStreamError(`the root ${this.#init.root} comes first`);
      this.#root = await this.#one(cid, 0);
      return;
    }
    this.#placed ??= this.#place();
    await this.#placed;
    const stored = this.#stored.get(keyOf(cid));
    if (stored === undefined) throw new BlockStreamError(`${cid} is not in the stream of ${this.#init.root}`);
    await stored;
  }

  /** Stops every stripe (the fetch is done, or goes on elsewhere). */
  close(): void {
    this.#abort.abort(new BlockStreamError("fetch finished"));
    for (const session of this.#sessions) session.close();
  }

  #session(start: number, end: number, peers: Multiaddr[]): BlockStreamSession {
    const session = new BlockStreamSession({ ...this.#init, peers, start, end, signal: this.#signal });
    this.#sessions.push(session);
    return session;
  }

  /** One block at its place, from any holder, stored. */
  async #one(cid: CID, at: number): Promise<Uint8Array> {
    const session = this.#session(at, at + 1, this.#init.peers);
    try {
      const bytes = await session.next(cid);
      await this.#init.store(cid, bytes);
      return bytes;
    } finally {
      session.close();
    }
  }

  async #place(): Promise<void> {
    const root = this.#root!;
    const placed = await placeBlocks(this.#init.root, (cid, at) =>
      at === 0 ? Promise.resolve(root) : this.#one(cid, at),
    );
    for (const { cid, at } of placed) {
      if (cid.code !== raw.code) {
        this.#stored.set(keyOf(cid), Promise.resolve());
        continue;
      }
      const stored = new Promise<void>((resolve, reject) => this.#waiting.set(at, { resolve, reject }));
      stored.catch(() => undefined); // awaited when the reader comes to it, if it does
      this.#stored.set(keyOf(cid), stored);
    }
    const rest = placed.length - 1;
    const { peers } = this.#init;
    const holders = holdersOf(peers);
    const stripes = Math.max(1, Math.min(holders.length, MAX_STRIPES, Math.floor(rest / MIN_STRIPE_BLOCKS)));
    for (let i = 0; i < stripes; i++) {
      const start = 1 + Math.floor((i * rest) / stripes);
      const end = 1 + Math.floor(((i + 1) * rest) / stripes);
      const own = holders[i]!;
      void this.#stripe(placed, start, end, [...own, ...peers.filter((peer) => !own.includes(peer))]);
    }
  }

  /**
   * Fetches `placed[start, end)` from `peers` (the first, then the others) and stores its leaves;
   * then takes over the back of the stripe with the most time left ({@link takeOver}).
   */
  async #stripe(placed: PlacedBlock[], start: number, end: number, peers: Multiaddr[]): Promise<void> {
    const stripe: Stripe = {
      session: this.#session(start, end, peers),
      at: start,
      begin: start,
      startedAt: performance.now(),
    };
    this.#stripes.add(stripe);
    try {
      for (; stripe.at < stripe.session.end!; stripe.at++) {
        const { cid } = placed[stripe.at]!;
        const bytes = await stripe.session.next(cid);
        const waiter = this.#waiting.get(stripe.at);
        if (waiter === undefined) continue; // an inner node, stored already
        this.#waiting.delete(stripe.at);
        await this.#init.store(cid, bytes);
        waiter.resolve();
      }
    } catch (error) {
      for (let at = stripe.at; at < stripe.session.end!; at++) this.#waiting.get(at)?.reject(error);
      return;
    } finally {
      this.#stripes.delete(stripe);
      // A stripe cut short by another's taking over its back stops its holder sending past it.
      stripe.session.close();
    }
    const taken = takeOver(stripe, this.#stripes, performance.now());
    if (taken === undefined) return;
    const to = taken.stripe.session.end!;
    taken.stripe.session.end = taken.from;
    await this.#stripe(placed, taken.from, to, peers);
  }
}

/** Where a stripe is: what {@link takeOver} weighs. */
export interface StripeProgress {
  /** The next block it waits for (on its way, or about to be). */
  at: number;
  /** The block it began at, and when (`performance.now()`). */
  begin: number;
  startedAt: number;
  /** It fetches up to `session.end`, exclusive. */
  session: { end?: number };
}

interface Stripe extends StripeProgress {
  session: BlockStreamSession;
}

/**
 * What a stripe that is `done` takes over from the others at time `at`: the back of the one with
 * the most time left, at the pace it kept so far (ms per block since it began), cut so that it and
 * `done`, at `done`'s pace, end together. The block it waits for stays with it: that one is on its
 * way already. A stripe with no block yet is left alone (its pace is not known: its holder may
 * still be opening the stream), as is one with fewer than {@link MIN_STRIPE_BLOCKS} left (what its
 * holder sent past a cut would be wasted); and nothing is taken that would not save at least one
 * of `done`'s blocks' time (its new stream costs about that).
 */
export function takeOver<S extends StripeProgress>(
  done: StripeProgress,
  stripes: Iterable<S>,
  at: number,
): { stripe: S; from: number } | undefined {
  const pace = (stripe: StripeProgress): number => (at - stripe.startedAt) / (stripe.at - stripe.begin);
  const mine = pace(done);
  let slowest: { stripe: S; left: number; msLeft: number } | undefined;
  for (const stripe of stripes) {
    const left = stripe.session.end! - stripe.at;
    if (left < MIN_STRIPE_BLOCKS || stripe.at === stripe.begin) continue;
    const msLeft = left * pace(stripe);
    if (slowest === undefined || msLeft > slowest.msLeft) slowest = { stripe, left, msLeft };
  }
  if (slowest === undefined) return undefined;
  const theirs = slowest.msLeft / slowest.left;
  const keep = Math.max(1, Math.ceil((slowest.left * mine) / (theirs + mine)));
  const taken = slowest.left - keep;
  if (taken < 1 || slowest.msLeft - Math.max(keep * theirs, taken * mine) < mine) return undefined;
  return { stripe: slowest.stripe, from: slowest.stripe.at + keep };
}

/** Holders' addresses grouped by holder (the peer id each ends in, after any relay's), in the order first listed. */
export function holdersOf(peers: readonly Multiaddr[]): Multiaddr[][] {
  const groups = new Map<string, Multiaddr[]>();
  for (const peer of peers) {
    const id = peerIdOf(peer)?.toString() ?? peer.toString();
    groups.set(id, [...(groups.get(id) ?? []), peer]);
  }
  return [...groups.values()];
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
