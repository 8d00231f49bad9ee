import { once } from "node:events";
import type http from "node:http";
import https from "node:https";

import type { PeerId } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";

import { BaseError, ProtocolError, ProviderFaultError, RequestNotSentError, shortMessageOf } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { request } from "../wire/framing.ts";
import { forwardable, headerPairs, HTTP_LANE_CIPHERS, httpLaneSchema, PROXY_HEADER } from "../wire/http.ts";
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
   * Connections open on lanes, carrying a request or idle (kept alive for the next), and how many
   * were closed under a response that was let go before its end (a client gone, a hedge's loser).
   */
  connections(): { active: number; idle: number; cut: number };
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

interface Lane {
  host: string;
  port: number;
  agent: https.Agent;
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
      const agent = new https.Agent({
        keepAlive: true,
        timeout: IDLE_MS,
        ciphers: HTTP_LANE_CIPHERS,
        minVersion: "TLSv1.2",
        maxVersion: "TLSv1.2",
        // The node resumes no session (it would not know the lease): none is kept.
        maxCachedSessions: 0,
        pskCallback: () => ({ psk, identity: lane.identity }),
        // No certificate: the key proves the node, as it proves the tenant.
        checkServerIdentity: () => undefined,
      });
      const opening = { host: address, port: lane.port, agent };
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
    lane.agent.destroy();
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
      const count = (sockets: NodeJS.ReadOnlyDict<unknown[]>): number =>
        Object.values(sockets).reduce((total, list) => total + (list?.length ?? 0), 0);
      let active = 0;
      let idle = 0;
      for (const { agent } of opened) {
        active += count(agent.sockets);
        idle += count(agent.freeSockets);
      }
      return { active, idle, cut };
    },
    close() {
      closed = true;
      opened.clear();
      for (const pending of lanes.values()) void pending.then((lane) => lane?.agent.destroy());
      lanes.clear();
    },
  };
}

/**
 * One exchange on a lane; `broken` is called when the lane itself failed (it is not used again),
 * `cut` when the response was let go before its end (its connection closed).
 */
async function send(lane: Lane, req: LaneRequest, broken: () => void, cut: () => void): Promise<LaneResponse> {
  const { signal, maxBodyBytes } = req;
  // As the node's own proxy sends it: the job listens on a socket, it has no name.
  const raw: string[] = ["host", "localhost"];
  for (const [name, value] of forwardable(req.headers)) raw.push(name, value);
  const outgoing = https.request({
    agent: lane.agent,
    host: lane.host,
    port: lane.port,
    method: req.method,
    path: req.path,
    headers: raw,
    signal,
  });
  let connected = false;
  outgoing.once("socket", (socket) => {
    if (outgoing.reusedSocket) connected = true;
    else socket.once("secureConnect", () => (connected = true));
  });
  let bodyError: unknown;
  const writing = (async () => {
    if (req.body) {
      let size = 0;
      for await (const chunk of req.body) {
        size += chunk.byteLength;
        if (size > maxBodyBytes) throw new ProtocolError(`body larger than ${maxBodyBytes} bytes`);
        if (!outgoing.write(chunk)) await once(outgoing, "drain", { signal });
      }
    }
    outgoing.end();
  })().catch((error: unknown) => {
    bodyError = error;
    outgoing.destroy(error as Error);
  });
  let response: http.IncomingMessage;
  try {
    [response] = (await once(outgoing, "response")) as [http.IncomingMessage];
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    if (!connected) {
      broken();
      throw new RequestNotSentError(`cannot open the lane to ${lane.host}:${lane.port}`, { cause: error });
    }
    throw new ProviderFaultError("the request broke off on its lane", {
      cause: bodyError ?? error,
      details: shortMessageOf(bodyError ?? error),
    });
  }
  // The request's body failed (too large, its client gone) and the lane was cut under it: whatever
  // the job made of the cut request is not the answer; the failure is, as on the libp2p path.
  const bodyFailed = (): ProviderFaultError =>
    new ProviderFaultError("the request body failed on its lane", {
      cause: bodyError,
      details: shortMessageOf(bodyError),
    });
  if (bodyError !== undefined) {
    response.destroy();
    throw bodyFailed();
  }
  const headers = headerPairs(response.rawHeaders);
  const proxied = headers.find(([name]) => name.toLowerCase() === PROXY_HEADER)?.[1];
  if (proxied) {
    const text: string[] = [];
    for await (const piece of response) text.push(String(piece));
    const message = `the provider answered ${response.statusCode} on the lane: ${text.join("")}`;
    throw proxied === "not-delivered" ? new RequestNotSentError(message) : new ProviderFaultError(message);
  }
  return {
    status: response.statusCode ?? 502,
    headers: forwardable(headers),
    body: (async function* () {
      let size = 0;
      try {
        for await (const chunk of response) {
          size += (chunk as Buffer).byteLength;
          if (size > maxBodyBytes) throw new ProtocolError(`body larger than ${maxBodyBytes} bytes`);
          yield chunk as Buffer;
        }
        await writing;
        if (bodyError !== undefined) throw bodyFailed();
      } catch (error) {
        if (error instanceof BaseError) throw error;
        throw new ProviderFaultError("the response broke off on its lane", {
          cause: error,
          details: shortMessageOf(error),
        });
      } finally {
        // Let go before its end (a client gone, a hedge's loser): the connection is not reused.
        if (!response.complete) {
          response.destroy();
          cut();
        }
      }
    })(),
  };
}
