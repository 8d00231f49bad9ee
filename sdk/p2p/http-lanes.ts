import type { Readable } from "node:stream";
import tls from "node:tls";

import type { PeerId } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { Pool, type Dispatcher } from "undici";

import { BaseError, ProtocolError, ProviderFaultError, RequestNotSentError, shortMessageOf } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { request } from "../wire/framing.ts";
import { forwardable, headerPairs, httpLaneSchema, laneClientOptions, PROXY_HEADER } from "../wire/http.ts";
import { maxMessageBytes, protocols } from "../wire/protocols.ts";
import type { BatonHost } from "./host.ts";

export interface LaneRequest {
  method: string;
  /** Path and query. */
  path: string;
  headers: [string, string][];
  body?: AsyncIterable<Uint8Array>;
  /** Largest body accepted either way. */
  maxBodyBytes: number;
  signal: AbortSignal;
}

export interface LaneResponse {
  status: number;
  headers: [string, string][];
  body: AsyncGenerator<Uint8Array>;
}

export interface HttpLanes {
  /**
   * Sends a request to the server job of `leaseId` on `peer` over its lane, or resolves undefined
   * when that lease has none (the node serves no lanes, is reached through a relay, or refused):
   * then `/baton/http/1.1.0` carries it. Throws as `leaseFetch` does: {@link RequestNotSentError}
   * when the job never saw the request, {@link ProviderFaultError} when it may have.
   */
  fetch(peer: string, leaseId: bigint, request: LaneRequest): Promise<LaneResponse | undefined>;
  /**
   * Connections open on lanes, carrying a request or idle (kept alive for the next), how many
   * were closed under a response that was let go before its end (a client gone, a hedge's loser),
   * and the leases that have a lane.
   */
  connections(): { active: number; idle: number; cut: number; leases: number };
  /** Closes the lanes of a lease the tenant left (its replica moved or ended). */
  forget(leaseId: bigint): void;
  /** Closes every lane. */
  close(): void;
}

/** How long a lease that got no lane is served over libp2p before its node is asked again. */
const NO_LANE_MS = 10_000;
/** The same for a lease whose job was not running yet: it may be in a moment (its readiness probes ask). */
const NOT_YET_MS = 500;
/**
 * Idle lane connections close after this: before a job's server closes them itself (Node's closes
 * after 5 s), which would race a request sent on them just then.
 */
const IDLE_MS = 4_000;
/** A lane connection whose TLS handshake takes longer than this is given up. */
const HANDSHAKE_MS = 5_000;
/** A response's bytes read ahead of its reader before the lane connection is paused. */
const READ_AHEAD_BYTES = 64 * 1024;

interface Lane {
  /** host:port, for messages. */
  address: string;
  /** HTTP/1.1 keep-alive connections to the lane, opened as requests need them (undici's pool). */
  pool: Pool;
  /** The errors of this lane's own connection attempts: a request failed by one was never sent. */
  connectErrors: WeakSet<Error>;
}

/** The IP of a direct TCP multiaddr (`/ip4/…/tcp/…`, `/ip6/…`, with or without `/p2p/…`); else undefined. */
export function tcpHostOf(address: string): string | undefined {
  return /^\/ip[46]\/([^/]+)\/tcp\/\d+(\/p2p\/[^/]+)?$/.exec(address)?.[1];
}

/**
 * The tenant's lanes to its server jobs (see node/http-lanes.ts): one per lease, asked for over
 * libp2p once, then HTTP/1.1 keep-alive over TLS with the lease's pre-shared key, straight to the
 * job through its node. A request on a lane costs the node a copy of its bytes and no more.
 */
export function httpLanes(host: BatonHost, log: Logger): HttpLanes {
  const lanes = new Map<string, Promise<Lane | undefined>>();
  /** The lanes opened, for counting their connections without waiting. */
  const opened = new Set<Lane>();
  let cut = 0;
  let closed = false;

  const directHost = (peer: PeerId): string | undefined => {
    for (const connection of host.getConnections(peer)) {
      if (connection.status !== "open") continue;
      const at = tcpHostOf(connection.remoteAddr.toString());
      if (at !== undefined) return at;
    }
    return undefined;
  };

  const ask = async (peerIdText: string, leaseId: bigint, key: string): Promise<Lane | undefined> => {
    const peer = peerIdFromString(peerIdText);
    let askAgainMs = NO_LANE_MS;
    try {
      const address = directHost(peer);
      if (address === undefined) return undefined;
      const reply = await request(
        host,
        peer,
        protocols.httpLane,
        new TextEncoder().encode(JSON.stringify({ leaseId: leaseId.toString() })),
        { maxBytes: maxMessageBytes.httpLane, signal: AbortSignal.timeout(5_000) },
      );
      const lane = httpLaneSchema.parse(JSON.parse(new TextDecoder().decode(reply)) as unknown);
      if (lane.kind === "refusal") {
        if (lane.status === 503) askAgainMs = NOT_YET_MS;
        log.debug("no lane", { peer: peer.toString(), leaseId, status: lane.status, message: lane.message });
        return undefined;
      }
      const psk = Buffer.from(lane.key, "hex");
      const connectErrors = new WeakSet<Error>();
      // undici rather than Node's https.Agent: about a third less CPU per request for the tenant.
      const pool = new Pool(`https://${address.includes(":") ? `[${address}]` : address}:${lane.port}`, {
        keepAliveTimeout: IDLE_MS,
        keepAliveMaxTimeout: IDLE_MS,
        // The caller's deadline bounds a request; a stream of events may be quiet for long.
        headersTimeout: 0,
        bodyTimeout: 0,
        connect: (_options, done) => {
          // No certificate: the key proves the node, as it proves the tenant.
          const socket = tls.connect({ host: address, port: lane.port, ...laneClientOptions(psk, lane.identity) });
          let settled = false;
          const fail = (error: Error): void => {
            if (settled) return;
            settled = true;
            connectErrors.add(error);
            socket.destroy();
            done(error, null);
          };
          socket.setTimeout(HANDSHAKE_MS, () => fail(new Error(`no TLS handshake in ${HANDSHAKE_MS} ms`)));
          socket.once("error", fail);
          socket.once("secureConnect", () => {
            if (settled) return;
            settled = true;
            socket.setTimeout(0);
            socket.off("error", fail);
            // As undici's own connector does: a small request goes out at once, not after Nagle's wait.
            socket.setNoDelay(true);
            done(null, socket);
          });
        },
      });
      const opening = { address: `${address}:${lane.port}`, pool, connectErrors };
      opened.add(opening);
      return opening;
    } catch (error) {
      // A node from before lanes does not speak the protocol: its requests go over libp2p.
      log.debug("lane not opened", { peer: peer.toString(), leaseId, error: shortMessageOf(error) });
      return undefined;
    } finally {
      setTimeout(() => {
        void lanes.get(key)?.then((lane) => {
          if (!lane) lanes.delete(key);
        });
      }, askAgainMs).unref();
    }
  };

  const drop = (key: string, lane: Lane): void => {
    void lanes.get(key)?.then((current) => {
      if (current === lane) lanes.delete(key);
    });
    opened.delete(lane);
    void lane.pool.destroy();
  };

  return {
    async fetch(peer, leaseId, req) {
      if (closed) return undefined;
      const key = `${peer}/${leaseId}`;
      let pending = lanes.get(key);
      if (!pending) {
        pending = ask(peer, leaseId, key);
        lanes.set(key, pending);
      }
      const lane = await pending;
      if (!lane) return undefined;
      return send(
        lane,
        req,
        () => drop(key, lane),
        () => cut++,
      );
    },
    connections() {
      let active = 0;
      let idle = 0;
      for (const { pool } of opened) {
        active += pool.stats.connected - pool.stats.free;
        idle += pool.stats.free;
      }
      return { active, idle, cut, leases: opened.size };
    },
    forget(leaseId) {
      for (const [key, pending] of lanes) {
        if (!key.endsWith(`/${leaseId}`)) continue;
        lanes.delete(key);
        void pending.then((lane) => {
          if (!lane) return;
          opened.delete(lane);
          void lane.pool.destroy();
        });
      }
    },
    close() {
      closed = true;
      opened.clear();
      for (const pending of lanes.values()) void pending.then((lane) => lane?.pool.destroy());
      lanes.clear();
    },
  };
}

/** A response head's name/value pairs as they came, from undici's raw header list. */
function rawPairs(raw: Dispatcher.DispatchController["rawHeaders"]): [string, string][] {
  if (Array.isArray(raw)) return headerPairs(raw.map(String));
  const pairs: [string, string][] = [];
  if (raw) {
    for (const [name, value] of Object.entries(raw)) {
      for (const one of Array.isArray(value) ? value : [value]) if (one !== undefined) pairs.push([name, one]);
    }
  }
  return pairs;
}

/**
 * One exchange on a lane; `broken` is called when the lane itself failed (it is not used again),
 * `cut` when the response was let go before its end (its connection closed).
 */
function send(lane: Lane, req: LaneRequest, broken: () => void, cut: () => void): Promise<LaneResponse> {
  const { signal, maxBodyBytes } = req;
  signal.throwIfAborted();
  // As the node's own proxy sends it: the job listens on a socket, it has no name.
  const headers: string[] = ["host", "localhost"];
  for (const [name, value] of forwardable(req.headers)) headers.push(name, value);
  let bodyError: unknown;
  const source = req.body;
  const body =
    source &&
    (async function* () {
      let size = 0;
      try {
        for await (const chunk of source) {
          size += chunk.byteLength;
          if (size > maxBodyBytes) throw new ProtocolError(`body larger than ${maxBodyBytes} bytes`);
          yield chunk;
        }
      } catch (error) {
        bodyError = error;
        throw error;
      }
    })();
  // The request's body failed (too large, its client gone) and the lane was cut under it: whatever
  // the job made of the cut request is not the answer; the failure is, as on the libp2p path.
  const bodyFailed = (): ProviderFaultError =>
    new ProviderFaultError("the request body failed on its lane", {
      cause: bodyError,
      details: shortMessageOf(bodyError),
    });
  /** What a lane's failure is to the caller: its own abort, a failed body, or the provider's fault. */
  const brokeOff = (error: Error, part: "request" | "response"): Error => {
    if (signal.aborted) return signal.reason as Error;
    if (bodyError !== undefined) return bodyFailed();
    if (error instanceof BaseError) return error;
    return new ProviderFaultError(`the ${part} broke off on its lane`, {
      cause: error,
      details: shortMessageOf(error),
    });
  };

  return new Promise<LaneResponse>((resolve, reject) => {
    let controller: Dispatcher.DispatchController | undefined;
    const onAbort = (): void => controller?.abort(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    const settle = (): void => signal.removeEventListener("abort", onAbort);
    /** Set once the final head came: the promise is then settled, the body's reader takes over. */
    let answered = false;
    /** The `x-baton-proxy` mark of an answer the node made itself: its body says why. */
    let proxied: string | undefined;
    let status = 502;
    const chunks: Buffer[] = [];
    let buffered = 0;
    let size = 0;
    let ended = false;
    let failure: Error | undefined;
    let wake: (() => void) | undefined;
    const woken = (): void => {
      wake?.();
      wake = undefined;
    };
    const reader = async function* (): AsyncGenerator<Uint8Array> {
      try {
        for (;;) {
          const chunk = chunks.shift();
          if (chunk) {
            buffered -= chunk.byteLength;
            if (buffered === 0) controller?.resume();
            yield chunk;
          } else if (failure) throw brokeOff(failure, "response");
          else if (ended) return;
          else await new Promise<void>((resolve) => (wake = resolve));
        }
      } finally {
        settle();
        // Let go before its end (a client gone, a hedge's loser): the connection is not reused.
        if (!ended && !failure) {
          controller?.abort(new Error("the response was let go"));
          cut();
        }
      }
    };
    lane.pool.dispatch(
      // undici takes an async iterable as a body (lib/core/request.js); its types list streams only.
      { path: req.path, method: req.method, headers, ...(body ? { body: body as unknown as Readable } : {}) },
      {
        onRequestStart(c) {
          controller = c;
          if (signal.aborted) c.abort(signal.reason as Error);
        },
        onResponseStart(c, statusCode, parsed) {
          // A 1xx informational head: the final one follows.
          if (statusCode < 200) return;
          status = statusCode;
          const pairs = rawPairs(c.rawHeaders ?? parsed);
          proxied = pairs.find(([name]) => name.toLowerCase() === PROXY_HEADER)?.[1];
          if (proxied) return;
          if (bodyError !== undefined) {
            c.abort(bodyFailed());
            return;
          }
          answered = true;
          resolve({ status, headers: forwardable(pairs), body: reader() });
        },
        onResponseData(c, chunk) {
          size += chunk.byteLength;
          if (size > maxBodyBytes) {
            c.abort(new ProtocolError(`body larger than ${maxBodyBytes} bytes`));
            return;
          }
          chunks.push(chunk);
          buffered += chunk.byteLength;
          // Only a reader resumes it: a node's own answer (proxied) is read whole, and is small.
          if (answered && buffered > READ_AHEAD_BYTES) c.pause();
          woken();
        },
        onResponseEnd() {
          ended = true;
          if (answered) {
            woken();
            return;
          }
          settle();
          const message = `the provider answered ${status} on the lane: ${Buffer.concat(chunks).toString()}`;
          reject(proxied === "not-delivered" ? new RequestNotSentError(message) : new ProviderFaultError(message));
        },
        onResponseError(_c, error) {
          failure = error;
          if (answered) {
            woken();
            return;
          }
          settle();
          if (lane.connectErrors.has(error) && !signal.aborted) {
            broken();
            reject(new RequestNotSentError(`cannot open the lane to ${lane.address}`, { cause: error }));
          } else reject(brokeOff(error, "request"));
        },
      },
    );
  });
}
