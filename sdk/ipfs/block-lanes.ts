import { randomBytes } from "node:crypto";
import tls from "node:tls";

import type { PeerId } from "@libp2p/interface";
import { z } from "zod";

import { shortMessageOf } from "../errors.ts";
import { silentLogger, type Logger } from "../logger.ts";
import type { BatonHost } from "../p2p/host.ts";
import { tcpHostOf } from "../p2p/http-lanes.ts";
import { request, serve } from "../wire/framing.ts";
import { laneClientOptions, laneGrantSchema, laneServerOptions } from "../wire/http.ts";
import { maxMessageBytes, protocols } from "../wire/protocols.ts";

/**
 * Block lanes: `/baton/blocks/1.0.0` on a TLS connection of its own, beside libp2p. A block stream
 * over libp2p pays for Noise and yamux in JavaScript: a bare stream between two processes here cost
 * the receiver 4.6-4.9 ms of CPU per MiB and the sender 1.9-2.1 (229 MB/s at most), where Node's
 * TLS costs 1.6 and 0.85 (680 MB/s). A peer asks a holder for a lane over libp2p once (a port and a
 * pre-shared key, as for an HTTP lane: sdk/p2p/http-lanes.ts), then opens a TLS connection to that
 * port at the holder's IP (`directHost`), one per block stream, and speaks the same
 * protocol on it: the same request, the same frames, each block verified against its CID as it
 * arrives. A holder that serves no lanes, cannot be reached at that address (a NAT, a relay), or
 * refuses, is streamed from over libp2p as before.
 */

/**
 * Where a host with these `listen` addresses serves block lanes: the host of the first direct TCP
 * one, at `port` (0: a free port); none with `port` null, or without such an address (a host that
 * listens only through a relay, or nowhere).
 */
export function blockLaneOf(
  listen: readonly string[],
  port: number | null,
): { host: string; port: number } | undefined {
  if (port === null) return undefined;
  const host = listen.map(tcpHostOf).find((at) => at !== undefined);
  return host === undefined ? undefined : { host, port };
}

export const blockLaneSchema = z.discriminatedUnion("kind", [
  laneGrantSchema,
  z.object({ kind: z.literal("refusal"), message: z.string().max(512) }).strict(),
]);

/** Keys given out and kept, one per peer that asked: the oldest goes past this. */
const MAX_TICKETS = 1024;
/** A peer's lane connections open at once, at most (as libp2p bounds its block streams per connection). */
const MAX_CONNECTIONS_PER_PEER = 8;
/** How long a peer's lane that failed (refused, unreachable) is not asked for again. */
const NO_LANE_MS = 60_000;
/**
 * A lane connection not made within this is given up, and the block stream goes over libp2p: not
 * long, as a port that drops what comes (a firewall) costs the fetch this, twice a minute at most.
 */
const CONNECT_MS = 5_000;
/** The longest a lane's ask over libp2p may take, and a lane connection's handshake on the serving side. */
const ASK_MS = 5_000;

export interface ServeBlockLanesInit {
  host: BatonHost;
  /** The IP to listen on: where this host's libp2p listens, so peers reach it at the same address. */
  listenHost: string;
  /** The port; 0 picks a free one. */
  port?: number;
  /** Takes each lane connection once its handshake proved it holds `peer`'s key. */
  onConnection: (socket: tls.TLSSocket, peer: PeerId) => void;
  log?: Logger;
}

/**
 * Serves block lanes: answers `/baton/blocks-lane/1.0.0` with a port and a key for the asking peer
 * (the same one on each ask), and hands each TLS connection made with a key given out to
 * `onConnection`. Like the block stream itself, any peer may ask.
 *
 * @returns the port it listens on, and a function that stops serving and closes the lanes' connections.
 */
export async function serveBlockLanes({
  host,
  listenHost,
  port: listenPort = 0,
  onConnection,
  log = silentLogger,
}: ServeBlockLanesInit): Promise<{ port: number; stop: () => Promise<void> }> {
  /** Keys by identity, in the order given out: the oldest is the first to go. */
  const tickets = new Map<string, { peer: PeerId; key: Buffer }>();
  const byPeer = new Map<string, string>();
  const peers = new WeakMap<tls.TLSSocket, PeerId>();
  const sockets = new Set<tls.TLSSocket>();
  const perPeer = new Map<string, number>();
  const server = tls.createServer(
    {
      ...laneServerOptions((socket, identity) => {
        const ticket = tickets.get(identity);
        if (ticket === undefined) return null;
        peers.set(socket, ticket.peer);
        return ticket.key;
      }),
      handshakeTimeout: ASK_MS,
    },
    (socket) => {
      const peer = peers.get(socket);
      const id = peer?.toString() ?? "";
      const open = perPeer.get(id) ?? 0;
      if (peer === undefined || open >= MAX_CONNECTIONS_PER_PEER) return void socket.destroy();
      perPeer.set(id, open + 1);
      sockets.add(socket);
      socket.once("close", () => {
        sockets.delete(socket);
        const left = (perPeer.get(id) ?? 1) - 1;
        if (left > 0) perPeer.set(id, left);
        else perPeer.delete(id);
      });
      socket.setNoDelay(true);
      onConnection(socket, peer);
    },
  );
  server.on("tlsClientError", (error) => log.debug("block lane refused", { error: shortMessageOf(error) }));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(listenPort, listenHost.replace(/^\[|\]$/g, ""), () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as { port: number };
  const encoder = new TextEncoder();
  await serve(
    host,
    protocols.blocksLane,
    async (_message, peer) => {
      let identity = byPeer.get(peer.toString());
      if (identity === undefined) {
        identity = randomBytes(16).toString("hex");
        tickets.set(identity, { peer, key: randomBytes(32) });
        byPeer.set(peer.toString(), identity);
        if (tickets.size > MAX_TICKETS) {
          const [oldest, { peer: gone }] = tickets.entries().next().value!;
          tickets.delete(oldest);
          byPeer.delete(gone.toString());
        }
      }
      const key = tickets.get(identity)!.key.toString("hex");
      return encoder.encode(JSON.stringify({ kind: "lane", port, identity, key }));
    },
    { maxBytes: maxMessageBytes.blocksLane, timeoutMs: ASK_MS },
  );
  log.debug("serving block lanes", { host: listenHost, port });
  return {
    port,
    async stop() {
      await host.unhandle(protocols.blocksLane);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Connections still sending are cut: their receivers go on from another holder.
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

/** A peer's lane: where and with which key. */
interface Lane {
  host: string;
  port: number;
  identity: string;
  key: Buffer;
}

/** The asking side of block lanes: a lane per peer, asked for once, and a connection per block stream. */
export class BlockLanes {
  readonly #host: BatonHost;
  readonly #log: Logger;
  readonly #lanes = new Map<string, Promise<Lane | undefined>>();
  /** Peers whose lane, as last given, could not be connected to: asked once more, then left a while. */
  readonly #failedOnce = new Set<string>();

  constructor(host: BatonHost, log: Logger = silentLogger) {
    this.#host = host;
    this.#log = log;
  }

  /**
   * A TLS connection to `peer`'s block lane, or undefined when it has none this side can reach (no
   * direct TCP connection to it, no lane served, a refusal, a failed handshake): then the block
   * stream goes over libp2p. The peer must be connected already.
   */
  async connect(peer: PeerId, signal?: AbortSignal): Promise<tls.TLSSocket | undefined> {
    const id = peer.toString();
    let pending = this.#lanes.get(id);
    if (pending === undefined) {
      // Not the caller's signal: the answer serves every block stream to this peer. An ask that
      // leaves the peer on libp2p replaces this entry itself (it awaits before it can).
      pending = this.#ask(peer);
      this.#lanes.set(id, pending);
    }
    const lane = await pending;
    if (lane === undefined) return undefined;
    try {
      const socket = await dial(lane, signal);
      this.#failedOnce.delete(id);
      return socket;
    } catch (error) {
      signal?.throwIfAborted();
      this.#log.debug("block lane not connected; streaming over libp2p", { peer: id, error: shortMessageOf(error) });
      // The peer may have restarted, with a lane of another port and key: it is asked again once.
      if (this.#failedOnce.has(id)) {
        this.#failedOnce.delete(id);
        this.#forget(id);
      } else {
        this.#failedOnce.add(id);
        if (this.#lanes.get(id) === pending) this.#lanes.delete(id);
      }
      return undefined;
    }
  }

  async #ask(peer: PeerId): Promise<Lane | undefined> {
    const id = peer.toString();
    const at = await directHost(this.#host, peer);
    if (at === undefined) {
      this.#forget(id);
      return undefined;
    }
    try {
      const reply = await request(this.#host, peer, protocols.blocksLane, new Uint8Array(), {
        maxBytes: maxMessageBytes.blocksLane,
        signal: AbortSignal.timeout(ASK_MS),
      });
      const lane = blockLaneSchema.parse(JSON.parse(new TextDecoder().decode(reply)) as unknown);
      if (lane.kind === "refusal") throw new Error(lane.message);
      return { host: at, port: lane.port, identity: lane.identity, key: Buffer.from(lane.key, "hex") };
    } catch (error) {
      // A peer from before lanes, or serving none, does not speak the protocol.
      this.#log.debug("no block lane", { peer: id, error: shortMessageOf(error) });
      this.#forget(id);
      return undefined;
    }
  }

  /** Leaves `id` on libp2p: its lane is asked for again only after {@link NO_LANE_MS}. */
  #forget(id: string): void {
    const none = Promise.resolve(undefined);
    this.#lanes.set(id, none);
    setTimeout(() => {
      if (this.#lanes.get(id) === none) this.#lanes.delete(id);
    }, NO_LANE_MS).unref();
  }
}

/**
 * The IP where `peer` can be reached directly, if any: that of an open direct TCP connection this
 * side dialled to it, or else that of one it dialled to us, when it also listens at that IP (as its
 * identify told us). The second is how a new provider restoring a checkpoint from its tenant, which
 * dialled it, reaches the tenant's lane. An IP the peer dialled from but does not listen at may be a
 * NAT's, where a lane connection would only time out.
 */
async function directHost(host: BatonHost, peer: PeerId): Promise<string | undefined> {
  const open = host.getConnections(peer).filter((connection) => connection.status === "open");
  for (const connection of open) {
    const at = connection.direction === "outbound" ? tcpHostOf(connection.remoteAddr.toString()) : undefined;
    if (at !== undefined) return at;
  }
  const dialledFrom = new Set(
    open.map((connection) => tcpHostOf(connection.remoteAddr.toString())).filter((at) => at !== undefined),
  );
  if (dialledFrom.size === 0) return undefined;
  const known = await host.peerStore.get(peer).catch(() => undefined);
  return known?.addresses
    .map((address) => tcpHostOf(address.multiaddr.toString()))
    .find((at) => at !== undefined && dialledFrom.has(at));
}

function dial(lane: Lane, signal: AbortSignal | undefined): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    // No certificate: the key proves the holder, as it proves us.
    const socket = tls.connect({
      host: lane.host.replace(/^\[|\]$/g, ""),
      port: lane.port,
      ...laneClientOptions(lane.key, lane.identity),
    });
    // Checked after the I/O the loop has waiting: on a loaded machine the timer can come due while
    // the loop is busy elsewhere, and would fire before the handshake's own events are handled.
    const timer = setTimeout(
      () => setImmediate(() => fail(new Error(`no lane connection in ${CONNECT_MS} ms`))),
      CONNECT_MS,
    );
    let settled = false;
    const onAbort = (): void => fail(signal!.reason as Error);
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      socket.destroy();
      reject(error);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    socket.once("error", fail);
    socket.once("secureConnect", () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      socket.off("error", fail);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}
