/**
 * One Baton libp2p host (`createBatonHost`, as every peer runs it) for the network-namespace tests,
 * run as its own process inside a host's namespace (`nsenter --net`). Its argument is a JSON
 * {@link PeerRole}; it prints `ready {"peerId", "addresses"}` once listening, and lines of JSON as
 * it goes:
 *
 * - `relay`: relays for peers that listen through it; runs until killed.
 * - `listener`: listens through the relay (and on its own interface) and answers the echo protocol
 *   on any connection, relayed or direct; runs until killed.
 * - `dialler`: dials `target` (a relayed address), echoes once over that connection, then waits
 *   `waitMs` for a lasting direct connection to the same peer, echoes over a new stream (which
 *   libp2p puts on the best connection), prints `{"relayed", "direct", "echoConnection"}` and exits.
 */
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { Connection } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { Circuit } from "@multiformats/multiaddr-matcher";

import { createBatonHost } from "../../sdk/p2p/host.ts";

export type PeerRole = { listen: string[]; announce?: string[] } & (
  { role: "relay" } | { role: "listener" } | { role: "dialler"; target: string; waitMs: number }
);

const ECHO = "/baton-test/echo/1.0.0";
/** How long a direct connection must have lasted to be taken for the one the NATed peer dialled. */
const SETTLED_MS = 1_000;

const role = JSON.parse(process.argv[2]!) as PeerRole;
const host = await createBatonHost({
  privateKey: await generateKeyPair("Ed25519"),
  listen: role.listen,
  announce: role.announce ?? [],
  ...(role.role === "relay" ? { relay: { maxReservations: 8 } } : {}),
});
await host.handle(
  ECHO,
  async (stream) => {
    for await (const chunk of stream) stream.send(chunk);
    await stream.close();
  },
  { runOnLimitedConnection: true },
);

/**
 * Sends `text` on a new echo stream (on `connection`, else where libp2p puts a new stream to `peer`)
 * and reads it back; says which connection carried it.
 */
async function echo(peer: ReturnType<typeof peerIdFromString>, text: string, on?: Connection): Promise<string> {
  const stream = on ? await on.newStream(ECHO, { runOnLimitedConnection: true }) : await host.dialProtocol(peer, ECHO);
  const connection = on ?? host.getConnections(peer).find((c) => c.streams.includes(stream));
  const reading = (async () => {
    let back = "";
    for await (const chunk of stream) back += new TextDecoder().decode(chunk.subarray());
    return back;
  })();
  stream.send(new TextEncoder().encode(text));
  await stream.close();
  const back = await reading;
  if (back !== text) throw new Error(`echo returned ${JSON.stringify(back)}`);
  return connection?.remoteAddr.toString() ?? "unknown";
}

const waitForRelayAddress = async (): Promise<void> => {
  while (!host.getMultiaddrs().some((ma) => Circuit.matches(ma))) await new Promise((r) => setTimeout(r, 100));
};
if (role.role === "listener") await waitForRelayAddress();
console.log(`ready ${JSON.stringify({ peerId: host.peerId.toString(), addresses: host.getMultiaddrs().map(String) })}`);

if (role.role === "dialler") {
  const target = multiaddr(role.target);
  const peer = peerIdFromString(target.getComponents().findLast((c) => c.name === "p2p")!.value!);
  const relayedConnection = await host.dial(target);
  const relayed = relayedConnection.remoteAddr.toString();
  await echo(peer, "through the relay", relayedConnection);
  // The direct connection the NATed peer dialled, once every direct one has lasted a second.
  // AutoNAT v2's dial-backs (the NATed peer checking this host's address for it) are direct
  // connections from the same peer too, closed a moment after they open: a stream libp2p puts on
  // one dies with it (the README's known limits).
  const until = Date.now() + role.waitMs;
  let direct: string | undefined;
  while (!direct && Date.now() < until) {
    const directs = host.getConnections(peer).filter((c) => !Circuit.matches(c.remoteAddr));
    const settled = directs.filter((c) => Date.now() - c.timeline.open >= SETTLED_MS);
    if (settled.length > 0 && settled.length === directs.length) direct = settled[0]!.remoteAddr.toString();
    else await new Promise((r) => setTimeout(r, 100));
  }
  const echoConnection = await echo(peer, "after the upgrade");
  console.log(JSON.stringify({ relayed, direct: direct ?? null, echoConnection }));
  await host.stop();
  process.exit(0);
}
