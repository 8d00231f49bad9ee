import type { Stream } from "@libp2p/interface";
import { z } from "zod";

import { ProtocolError } from "../errors.ts";
import { readMessages, writeMessages } from "./framing.ts";
import { maxMessageBytes } from "./protocols.ts";

/**
 * HTTP over a libp2p stream (`/baton/http/1.0.0`), both ways the same: a JSON head, then the body in
 * pieces of at most {@link BODY_PIECE_BYTES}, then an empty message. Bodies stream: neither side
 * holds a whole body, and each stops a body past its configured maximum.
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

export function forwardable(headers: Iterable<[string, string]>): [string, string][] {
  return [...headers].filter(([name]) => !HOP_BY_HOP.has(name.toLowerCase()));
}

/** Writes a head, then the body (if any), then the end marker. */
export async function writeHttpMessage(
  stream: Stream,
  head: HttpRequestHead | HttpResponseHead,
  body: AsyncIterable<Uint8Array> | undefined,
  { maxBodyBytes, signal }: { maxBodyBytes: number; signal?: AbortSignal },
): Promise<void> {
  // Small messages go out together (head, body pieces, end), flushed every BODY_PIECE_BYTES or so.
  let pending: Uint8Array[] = [new TextEncoder().encode(JSON.stringify(head))];
  let pendingBytes = 0;
  const flush = async (): Promise<void> => {
    if (pending.length > 0) await writeMessages(stream, pending, signal);
    pending = [];
    pendingBytes = 0;
  };
  let total = 0;
  if (body) {
    for await (const chunk of body) {
      total += chunk.byteLength;
      if (total > maxBodyBytes) throw new ProtocolError(`body larger than ${maxBodyBytes} bytes`);
      for (let offset = 0; offset < chunk.byteLength; offset += BODY_PIECE_BYTES) {
        const piece = chunk.subarray(offset, offset + BODY_PIECE_BYTES);
        pending.push(piece);
        pendingBytes += piece.byteLength;
        if (pendingBytes >= BODY_PIECE_BYTES) await flush();
      }
    }
  }
  pending.push(new Uint8Array(0));
  await flush();
}

/**
 * Reads a head (checked against `schema`) and returns it with the body as a stream that ends at the
 * end marker, refusing more than `maxBodyBytes`, or a stream that ends without the marker.
 */
export async function readHttpMessage<T extends z.ZodType>(
  stream: Stream,
  schema: T,
  { maxBodyBytes }: { maxBodyBytes: number },
): Promise<{ head: z.output<T>; body: AsyncGenerator<Uint8Array> }> {
  const messages = readMessages(stream, maxMessageBytes.http);
  const first = await messages.next();
  if (first.done) throw new ProtocolError("the stream ended before an HTTP head");
  let head: z.output<T>;
  try {
    head = schema.parse(JSON.parse(new TextDecoder().decode(first.value)));
  } catch (cause) {
    throw new ProtocolError("malformed HTTP head", { cause });
  }
  async function* body(): AsyncGenerator<Uint8Array> {
    let total = 0;
    for await (const piece of messages) {
      if (piece.byteLength === 0) return;
      total += piece.byteLength;
      if (total > maxBodyBytes) throw new ProtocolError(`body larger than ${maxBodyBytes} bytes`);
      yield piece;
    }
    throw new ProtocolError("the stream ended in the middle of a body");
  }
  return { head, body: body() };
}
