import { constants } from "node:crypto";
import type { ConnectionOptions, TLSSocket, TlsOptions } from "node:tls";

import type { Stream } from "@libp2p/interface";
import { z } from "zod";

import { ProtocolError } from "../errors.ts";
import { readMessages, writeMessages } from "./framing.ts";
import { maxMessageBytes } from "./protocols.ts";

/**
 * HTTP over a libp2p stream (`/baton/http/1.1.0`), both ways the same: a JSON head, then the body in
 * pieces of at most {@link BODY_PIECE_BYTES}, then an empty message. Bodies stream: neither side
 * holds a whole body, and each stops a body past its configured maximum. A stream carries one
 * exchange after another (request, then its whole response, then the next request), as an HTTP/1.1
 * keep-alive connection does: opening a stream costs a muxer round and protocol negotiation, which
 * was most of a small request's time.
 */

const BODY_PIECE_BYTES = 32 * 1024;

const headersSchema = z.array(z.tuple([z.string().max(256), z.string().max(8192)])).max(128);

export const httpRequestHeadSchema = z.object({
  leaseId: z.string().regex(/^\d+$/),
  method: z.string().regex(/^[A-Z]{1,16}$/),
  path: z.string().startsWith("/").max(8192),
  headers: headersSchema,
});
export type HttpRequestHead = z.output<typeof httpRequestHeadSchema>;

export const httpResponseHeadSchema = z.object({
  status: z.number().int().min(100).max(599),
  headers: headersSchema,
});
export type HttpResponseHead = z.output<typeof httpResponseHeadSchema>;

/** A tenant's request for a lane to the server job of its lease (`protocols.httpLane`). */
export const httpLaneRequestSchema = z.object({ leaseId: z.string().regex(/^\d{1,78}$/) }).strict();
export type HttpLaneRequest = z.output<typeof httpLaneRequestSchema>;

/**
 * The node's answer: a lane is a TLS 1.2 connection to `port` on the address the tenant reached the
 * node at, with the pre-shared key `key` (hex, 32 bytes) under `identity`. Both ends prove they hold
 * the key, which only the node and the lease's tenant know (it came over the Noise session); the
 * node then joins the connection to the job's socket, bytes as they are.
 */
export const httpLaneSchema = z.discriminatedUnion("kind", [
  z
    .object({
      kind: z.literal("lane"),
      port: z.number().int().min(1).max(65_535),
      identity: z.string().regex(/^[0-9a-f]{32}$/),
      key: z.string().regex(/^[0-9a-f]{64}$/),
    })
    .strict(),
  z
    .object({ kind: z.literal("refusal"), status: z.number().int().min(400).max(599), message: z.string().max(512) })
    .strict(),
]);
export type HttpLane = z.output<typeof httpLaneSchema>;

/** A lane granted: where, and with which key (HTTP lanes, and block lanes: sdk/ipfs/block-lanes.ts). */
export const laneGrantSchema = httpLaneSchema.options[0];

/** The TLS suite of a lane: ECDHE for forward secrecy, the pre-shared key for authentication both ways. */
export const HTTP_LANE_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305";

/**
 * A lane server's TLS options (HTTP lanes and block lanes): TLS 1.2 with {@link HTTP_LANE_CIPHERS},
 * the key of each connection from `keyOf` (null refuses it).
 */
export function laneServerOptions(keyOf: (socket: TLSSocket, identity: string) => Buffer | null): TlsOptions {
  return {
    ciphers: HTTP_LANE_CIPHERS,
    minVersion: "TLSv1.2",
    maxVersion: "TLSv1.2",
    // A resumed session skips the key callback, so it would name no key's holder: every lane shakes hands in full.
    secureOptions: constants.SSL_OP_NO_TICKET,
    pskCallback: keyOf,
  };
}

/** A lane client's TLS options: the key `key` under `identity`, and no certificate (the key proves the server). */
export function laneClientOptions(key: Buffer, identity: string): ConnectionOptions {
  return {
    ciphers: HTTP_LANE_CIPHERS,
    minVersion: "TLSv1.2",
    maxVersion: "TLSv1.2",
    pskCallback: () => ({ psk: key, identity }),
    checkServerIdentity: () => undefined,
  };
}

/**
 * Set on a response the provider node wrote itself (no job, job not listening, job's server
 * failed), never on the job's own: `not-delivered` means the job never saw the request, so it may
 * be sent anywhere again; `maybe-delivered` means it may have.
 */
export const PROXY_HEADER = "x-baton-proxy";

/** Headers that describe one hop, not the message: never forwarded (RFC 9110 §7.6.1). */
export const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "host",
  "content-length",
]);

/** A Node message's `rawHeaders` (name, value, name, value, …) as pairs, as sent. */
export function headerPairs(rawHeaders: readonly string[]): [string, string][] {
  const pairs: [string, string][] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) pairs.push([rawHeaders[i]!, rawHeaders[i + 1]!]);
  return pairs;
}

export function forwardable(headers: Iterable<[string, string]>): [string, string][] {
  return [...headers].filter(([name]) => !HOP_BY_HOP.has(name.toLowerCase()));
}

/**
 * Whether a request asks to switch protocols (`Upgrade`, e.g. a WebSocket handshake). Its
 * exchange then carries the upgraded connection: the request's body is what the client sends
 * after the handshake, the 101 response's body what the server sends, each until its side ends,
 * with no size limit; the stream carries nothing after it.
 */
export const isUpgrade = (head: { headers: [string, string][] }): boolean =>
  head.headers.some(([name]) => name.toLowerCase() === "upgrade");

/** The body limit of an upgraded connection's two directions: none a session could reach. */
export const UPGRADED_BODY_BYTES = Number.MAX_SAFE_INTEGER;

/** Writes a head, then the body (if any), then the end marker. */
export async function writeHttpMessage(
  stream: Stream,
  head: HttpRequestHead | HttpResponseHead,
  body: AsyncIterable<Uint8Array> | undefined,
  { maxBodyBytes, signal }: { maxBodyBytes: number; signal?: AbortSignal },
): Promise<void> {
  // What is at hand goes out together (head, body pieces, end), at most about BODY_PIECE_BYTES at
  // a time: one frame for a small message. What is not at hand is not waited for: a body that comes
  // slowly (server-sent events, tokens as a model makes them) goes out piece by piece as it comes.
  let pending: Uint8Array[] = [new TextEncoder().encode(JSON.stringify(head))];
  let pendingBytes = 0;
  const flush = async (): Promise<void> => {
    if (pending.length > 0) await writeMessages(stream, pending, signal);
    pending = [];
    pendingBytes = 0;
  };
  let total = 0;
  if (body) {
    const iterator = body[Symbol.asyncIterator]();
    let ended = false;
    try {
      for (;;) {
        const next = iterator.next();
        let result = await Promise.race([next, nextTurn()]);
        if (result === NOT_YET) {
          await flush();
          result = await next;
        }
        if (result.done) break;
        const chunk = result.value;
        total += chunk.byteLength;
        if (total > maxBodyBytes) throw new ProtocolError(`body larger than ${maxBodyBytes} bytes`);
        for (let offset = 0; offset < chunk.byteLength; offset += BODY_PIECE_BYTES) {
          const piece = chunk.subarray(offset, offset + BODY_PIECE_BYTES);
          pending.push(piece);
          pendingBytes += piece.byteLength;
          if (pendingBytes >= BODY_PIECE_BYTES) await flush();
        }
      }
      ended = true;
    } finally {
      // Given up half-way (too large, the stream broke): the source is told, as `for await` would,
      // without waiting on it (a read it has pending may never end).
      if (!ended) void Promise.resolve(iterator.return?.()).catch(() => undefined);
    }
  }
  pending.push(new Uint8Array(0));
  await flush();
}

const NOT_YET = Symbol("not yet");
/** Resolves after the I/O already received has been handled: what a body has at hand is in by then. */
const nextTurn = (): Promise<typeof NOT_YET> => new Promise((resolve) => setImmediate(() => resolve(NOT_YET)));

export interface HttpMessage<Head> {
  head: Head;
  body: AsyncGenerator<Uint8Array>;
}

/**
 * Reads HTTP messages one after another from a stream that carries many (keep-alive): one reader
 * for the stream's whole life, since libp2p hands a stream's data to whoever listens at the time
 * and a reader started afresh for each message could miss the start of the next one.
 */
export interface HttpReader {
  /**
   * The next message: its head (checked against `schema`) and its body as a stream that ends at
   * the end marker, refusing more than `maxBodyBytes` (given, or told by the head), or a stream
   * that ends without the marker.
   * `undefined` when the stream ends cleanly between messages. The previous body must be over
   * (read to its end, or {@link HttpReader.skipBody}).
   */
  next<T extends z.ZodType>(
    schema: T,
    options: { maxBodyBytes: number | ((head: z.output<T>) => number) },
  ): Promise<HttpMessage<z.output<T>> | undefined>;
  /** Reads and drops what is left of the current body, so that the stream can carry another message. */
  skipBody(): Promise<void>;
  /** True between messages: the last body was read to its end marker and nothing failed. */
  readonly idle: boolean;
}

export function httpReader(stream: Stream): HttpReader {
  const messages = readMessages(stream, maxMessageBytes.http);
  let inBody = false;
  let broken = false;
  let total = 0;
  let limit = 0;
  // Body reads go one at a time (the body's consumer and `skipBody` may both ask), and none reads
  // past the end marker: what follows it is the next message's head.
  let queue: Promise<unknown> = Promise.resolve();
  const piece = (): Promise<Uint8Array | undefined> => {
    const read = queue.then(async () => {
      if (!inBody) return undefined;
      try {
        const next = await messages.next();
        if (next.done) throw new ProtocolError("the stream ended in the middle of a body");
        if (next.value.byteLength === 0) {
          inBody = false;
          return undefined;
        }
        total += next.value.byteLength;
        if (total > limit) throw new ProtocolError(`body larger than ${limit} bytes`);
        return next.value;
      } catch (error) {
        broken = true;
        throw error;
      }
    });
    queue = read.catch(() => undefined);
    return read;
  };
  return {
    get idle() {
      return !inBody && !broken;
    },
    async next(schema, { maxBodyBytes }) {
      if (inBody || broken) throw new ProtocolError("the previous HTTP message is not over");
      const first = await messages.next().catch((error: unknown) => {
        broken = true;
        throw error;
      });
      if (first.done) return undefined;
      let head;
      try {
        head = schema.parse(JSON.parse(new TextDecoder().decode(first.value)));
      } catch (cause) {
        broken = true;
        throw new ProtocolError("malformed HTTP head", { cause });
      }
      inBody = true;
      total = 0;
      limit = typeof maxBodyBytes === "number" ? maxBodyBytes : maxBodyBytes(head);
      async function* body(): AsyncGenerator<Uint8Array> {
        for (;;) {
          const next = await piece();
          if (!next) return;
          yield next;
        }
      }
      return { head, body: body() };
    },
    async skipBody() {
      while (await piece());
      if (broken) throw new ProtocolError("the HTTP message could not be read to its end");
    },
  };
}
