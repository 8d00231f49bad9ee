import type { Connection, NewStreamOptions, PeerId, Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import type { Multiaddr } from "@multiformats/multiaddr";
import { Circuit } from "@multiformats/multiaddr-matcher";

import type { BatonHost } from "./host.ts";

/** AutoNAT v2's dial-back protocol: a connection that carries it is closed a moment later. */
const DIAL_BACK_PROTOCOL = /\/autonat\/2\/dial-back$/;

/**
 * Opens a stream to `peer` on the connection to it that lasts. libp2p puts a new stream on the
 * newest direct connection, and so on the connection an AutoNAT v2 check dialled back (or was
 * dialled back) on, which its checker closes once the checked peer answered: the stream dies with it.
 * Here a stream goes on an open connection without limits that carries no dial-back stream, a
 * direct one before a relayed one (a relayed peer's direct connection, once it has one, takes the
 * bulk), then the oldest. With none, or only a relayed one where `peer` is a direct address to
 * try, libp2p dials as it would. What is left: a dial-back connection that is the only direct one
 * is taken for the round trip before its dial-back stream shows.
 */
export async function openStream(
  host: BatonHost,
  peer: PeerId | Multiaddr,
  protocol: string,
  options: Omit<NewStreamOptions, "onProgress"> = {},
): Promise<Stream> {
  const connection = lastingConnection(host, peer);
  return connection ? connection.newStream(protocol, options) : host.dialProtocol(peer, protocol, options);
}

/** The connection {@link openStream} puts a stream on, if one is open. */
function lastingConnection(host: BatonHost, peer: PeerId | Multiaddr): Connection | undefined {
  const peerId = "getComponents" in peer ? peerIdOf(peer) : peer;
  if (peerId === undefined) return undefined;
  const [best] = host
    .getConnections(peerId)
    .filter((c) => c.status === "open" && c.limits === undefined && !carriesDialBack(c))
    .sort((a, b) => Number(b.direct) - Number(a.direct) || a.timeline.open - b.timeline.open);
  if (best === undefined) return undefined;
  // A relayed connection where a direct address is given: libp2p dials it, to go direct.
  if (!best.direct && "getComponents" in peer && !Circuit.matches(peer)) return undefined;
  return best;
}

function carriesDialBack(connection: Connection): boolean {
  return connection.streams.some((stream) => DIAL_BACK_PROTOCOL.test(stream.protocol ?? ""));
}

/** The peer id a multiaddr ends in (after any relay's), if it is a valid one. */
export function peerIdOf(address: Multiaddr): PeerId | undefined {
  const id = address.getComponents().findLast((c) => c.name === "p2p")?.value;
  if (id === undefined) return undefined;
  try {
    return peerIdFromString(id);
  } catch {
    return undefined;
  }
}
