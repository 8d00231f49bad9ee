import type { PeerId, Stream } from "@libp2p/interface";

import { httpReader, type HttpReader } from "../wire/http.ts";
import { protocols } from "../wire/protocols.ts";
import type { BatonHost } from "./host.ts";
import { openStream } from "./open-stream.ts";

/** A stream of `/baton/http/1.1.0` with its reader, carrying one exchange at a time. */
export interface HttpChannel {
  peer: string;
  stream: Stream;
  reader: HttpReader;
}

export interface HttpStreams {
  /** An idle stream to `peer`, or a new one when none is idle. */
  acquire(peer: PeerId, options?: { signal?: AbortSignal }): Promise<HttpChannel>;
  /**
   * Hands a channel back after its exchange. `reusable`: the response was read to its end and the
   * request written whole; the channel is then kept for the next request, if it is still open both
   * ways. Otherwise it is reset: what is left on it (a cut body) must not be read as the next message.
   */
  release(channel: HttpChannel, reusable: boolean): void;
  /** Idle streams to `peer` now (for tests and the gateway's status). */
  idle(peer: PeerId): number;
  /** Resets every idle stream; later releases reset theirs too. */
  close(): void;
}

export interface HttpStreamsInit {
  /**
   * Idle streams kept per peer. A stream carries one request at a time, so this is the
   * concurrency per provider that pays no stream set-up; 0 makes every stream one-shot.
   */
  maxIdlePerPeer?: number;
}

/**
 * The tenant's pool of HTTP streams to providers, as an HTTP client keeps keep-alive connections:
 * a request takes an idle stream to its provider or opens one, and gives it back when its
 * response is over. A stream whose connection died closes with it and leaves the pool, so a
 * dead provider's streams are never handed out; a request on a stream that breaks mid-way is the
 * caller's to judge (it may have been delivered).
 */
export function httpStreams(host: BatonHost, { maxIdlePerPeer = 64 }: HttpStreamsInit = {}): HttpStreams {
  const pools = new Map<string, HttpChannel[]>();
  let closed = false;

  const open = (stream: Stream): boolean =>
    stream.status === "open" && stream.writeStatus === "writable" && stream.remoteWriteStatus === "writable";
  const remove = (channel: HttpChannel): void => {
    const pool = pools.get(channel.peer);
    const at = pool?.indexOf(channel) ?? -1;
    if (at >= 0) pool!.splice(at, 1);
    if (pool?.length === 0) pools.delete(channel.peer);
  };

  return {
    async acquire(peer, { signal } = {}) {
      const pool = pools.get(peer.toString());
      for (let channel = pool?.pop(); channel; channel = pool?.pop()) {
        if (open(channel.stream) && channel.reader.idle) return channel;
        channel.stream.abort(new Error("stale HTTP stream"));
      }
      // negotiateFully: false sends the protocol id with the first request head: one round trip less.
      const stream = await openStream(host, peer, protocols.http, {
        negotiateFully: false,
        ...(signal ? { signal } : {}),
      });
      const channel: HttpChannel = { peer: peer.toString(), stream, reader: httpReader(stream) };
      // Its connection died, or the node ended it: it leaves the pool, if it was there.
      stream.addEventListener("close", () => remove(channel), { once: true });
      return channel;
    },
    release(channel, reusable) {
      const { stream, reader } = channel;
      const pool = pools.get(channel.peer) ?? [];
      if (!reusable || closed || !open(stream) || !reader.idle || pool.length >= maxIdlePerPeer) {
        // A clean exchange ends its stream politely; a cut one is reset, for the node to stop reading.
        if (reusable && open(stream) && reader.idle) void stream.close().catch(() => undefined);
        else stream.abort(new Error("HTTP stream not reusable"));
        return;
      }
      pool.push(channel);
      pools.set(channel.peer, pool);
    },
    idle: (peer) => pools.get(peer.toString())?.length ?? 0,
    close() {
      closed = true;
      // Copied first: an aborted stream's close event takes it out of its pool at once.
      const idle = [...pools.values()].flat();
      pools.clear();
      for (const channel of idle) channel.stream.abort(new Error("HTTP streams closed"));
    },
  };
}
