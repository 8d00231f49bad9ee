import type { PeerId, Stream, StreamCloseEvent, StreamMessageEvent } from "@libp2p/interface";
import { lpStream } from "@libp2p/utils";
import type { Multiaddr } from "@multiformats/multiaddr";
import { decode as lpDecode, encode as lpEncode } from "it-length-prefixed";
import { pushable } from "it-pushable";
import { Uint8ArrayList } from "uint8arraylist";

import { ProtocolError } from "../errors.ts";
import type { BatonHost } from "../p2p/host.ts";
import { openStream } from "../p2p/open-stream.ts";

/**
 * Length-prefixed framing of Baton messages on libp2p 3 streams, with a size limit on every read.
 * A frame larger than the limit resets the stream before its body is buffered.
 */

export interface RequestOptions {
  maxBytes: number;
  signal?: AbortSignal;
  /** Over a new connection, even if one to the peer is open (which other streams keep using). */
  freshConnection?: boolean;
}

/**
 * Opens a stream, sends one message, reads one reply and closes: the request/response pattern
 * of the bid protocol.
 */
export async function request(
  host: BatonHost,
  peer: PeerId | Multiaddr,
  protocol: string,
  message: Uint8Array,
  { maxBytes, signal, freshConnection }: RequestOptions,
): Promise<Uint8Array> {
  const stream = freshConnection
    ? await host.dialProtocol(peer, protocol, { signal, force: true })
    : await openStream(host, peer, protocol, { signal });
  try {
    const framed = lpStream(stream, { maxDataLength: maxBytes });
    await framed.write(message, { signal });
    const reply = await framed.read({ signal });
    await stream.close({ signal });
    return reply.subarray();
  } catch (error) {
    stream.abort(error as Error);
    throw error;
  }
}

export interface ServeOptions {
  maxBytes: number;
  /** How long a peer may take to send its request, and then to take the reply. */
  timeoutMs: number;
  maxInboundStreams?: number;
  /**
   * Called when a request cannot even be read (too large, truncated, too slow); the bytes it
   * returns, if any, are sent as the reply before the stream closes.
   */
  onUnreadable?: (error: Error, remotePeer: PeerId) => Promise<Uint8Array | undefined>;
}

/**
 * Answers one request per stream with `handler`. A request that cannot be read gets the reply of
 * `onUnreadable`, if any; a handler that throws resets the stream (it decides what a refusal is).
 */
export async function serve(
  host: BatonHost,
  protocol: string,
  handler: (message: Uint8Array, remotePeer: PeerId) => Promise<Uint8Array>,
  { maxBytes, timeoutMs, maxInboundStreams = 64, onUnreadable }: ServeOptions,
): Promise<void> {
  await host.handle(
    protocol,
    async (stream, connection) => {
      const signal = AbortSignal.timeout(timeoutMs);
      const framed = lpStream(stream, { maxDataLength: maxBytes });
      let message: Uint8Array;
      try {
        message = (await framed.read({ signal })).subarray();
      } catch (error) {
        const reply = await onUnreadable?.(error as Error, connection.remotePeer).catch(() => undefined);
        if (!reply) {
          stream.abort(error as Error);
          return;
        }
        // Close (not abort) after the reply, or libp2p would drop it unsent.
        await framed
          .write(reply, { signal })
          .then(() => stream.close({ signal }))
          .catch(() => stream.abort(error as Error));
        return;
      }
      try {
        const reply = await handler(message, connection.remotePeer);
        // The timeout bounds a peer that is slow to send or take data, not the handler: its own
        // time (chain reads, on a loaded node seconds) must not reset the stream under its answer.
        const sending = AbortSignal.timeout(timeoutMs);
        await framed.write(reply, { signal: sending });
        await stream.close({ signal: sending });
      } catch (error) {
        stream.abort(error as Error);
      }
    },
    { maxInboundStreams },
  );
}

/**
 * Reads framed messages from a long-lived stream until the remote closes its side or the stream
 * ends. Call it as soon as the stream exists: libp2p 3's own iterator misses a remote close that
 * happened before iteration began (the remote may even close while the dial is still resolving),
 * and would then wait forever. Here the listeners go on at once, a close seen earlier ends the
 * output after the buffered data, which libp2p delivers on the next tick.
 */
export async function* readMessages(stream: Stream, maxBytes: number): AsyncGenerator<Uint8Array> {
  const chunks = pushable<Uint8Array | Uint8ArrayList>({ objectMode: true });
  const onMessage = (event: StreamMessageEvent): void => void chunks.push(event.data);
  const onClose = (event: StreamCloseEvent): void => void chunks.end(event.error);
  const onRemoteCloseWrite = (): void => void chunks.end();
  stream.addEventListener("message", onMessage);
  stream.addEventListener("close", onClose);
  stream.addEventListener("remoteCloseWrite", onRemoteCloseWrite);
  if (stream.remoteWriteStatus === "closed" || stream.status !== "open") setImmediate(() => chunks.end());
  try {
    for await (const message of lpDecode(chunks, { maxDataLength: maxBytes })) yield message.subarray();
  } catch (error) {
    if ((error as Error).name === "InvalidDataLengthError") {
      throw new ProtocolError("message too large", { details: (error as Error).message, cause: error });
    }
    throw error;
  } finally {
    stream.removeEventListener("message", onMessage);
    stream.removeEventListener("close", onClose);
    stream.removeEventListener("remoteCloseWrite", onRemoteCloseWrite);
  }
}

/**
 * Writes several framed messages in one send: one muxer frame, one encryption and one socket write
 * instead of one each, which is most of the cost of small messages.
 */
export async function writeMessages(stream: Stream, messages: Uint8Array[], signal?: AbortSignal): Promise<void> {
  const framed = new Uint8ArrayList(...messages.map((m) => lpEncode.single(m)));
  if (!stream.send(framed)) await stream.onDrain({ signal });
}

/** Writes one framed message, waiting when the stream asks us to (backpressure). */
export async function writeMessage(stream: Stream, message: Uint8Array, signal?: AbortSignal): Promise<void> {
  if (!stream.send(lpEncode.single(message))) await stream.onDrain({ signal });
}
