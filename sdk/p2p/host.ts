import { readFile, writeFile } from "node:fs/promises";
import { setTimeout } from "node:timers/promises";

import { autoNATv2 } from "@libp2p/autonat-v2";
import { bootstrap } from "@libp2p/bootstrap";
import { circuitRelayServer, circuitRelayTransport, type CircuitRelayService } from "@libp2p/circuit-relay-v2";
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
import { gossipsub, type GossipSub } from "@libp2p/gossipsub";
import { identify, identifyPush, type Identify } from "@libp2p/identify";
import type { Libp2p, PeerId, PrivateKey } from "@libp2p/interface";
import { kadDHT, passthroughMapper, removePrivateAddressesMapper, type KadDHT } from "@libp2p/kad-dht";
import { noise } from "@libp2p/noise";
import { peerIdFromString } from "@libp2p/peer-id";
import { ping, type Ping } from "@libp2p/ping";
import { isPrivate } from "@libp2p/utils";
import { tcp } from "@libp2p/tcp";
import { yamux } from "@libp2p/yamux";
import { multiaddr } from "@multiformats/multiaddr";
import { Circuit } from "@multiformats/multiaddr-matcher";
import { createLibp2p } from "libp2p";

import { UserError } from "../errors.ts";
import { silentLogger, type Logger } from "../logger.ts";
import { PROTOCOL_PREFIX } from "../wire/protocols.ts";
import { isRelayListenAddress, keepLookingForRelays, keepRelayReservations } from "./relay-reservations.ts";
import { sendWindowUpdatesAtHalf } from "./yamux-window.ts";

export type BatonServices = {
  identify: Identify;
  ping: Ping;
  pubsub: GossipSub;
  dht: KadDHT;
  /** Present on a host that relays for peers that cannot be dialled (see {@link CreateBatonHostOptions.relay}). */
  relay?: CircuitRelayService;
};

export type BatonHost = Libp2p<BatonServices>;

export interface CreateBatonHostOptions {
  /** The peer's identity; see {@link loadOrCreatePeerKey}. */
  privateKey: PrivateKey;
  /**
   * Where to listen; loopback with a free port unless told otherwise. `<relay's multiaddr>/p2p-circuit`
   * listens through that relay (a reservation on it): how a peer that cannot be dialled (behind a
   * NAT, no port forwarded) is reached. The reservation is made again whenever it is lost, and the
   * host starts while the relay is down (see {@link keepRelayReservations}). A bare `/p2p-circuit`
   * listens through a relay the host finds among its peers, those that relay (bootstrap peers that
   * do, say), and through another, or the same one back, when it goes; a relay that refused it a
   * slot is asked again (see {@link keepLookingForRelays}).
   */
  listen?: string[];
  /**
   * The addresses to tell peers instead of the listening ones: a router's public address and
   * forwarded port, or a DNS name.
   */
  announce?: string[];
  /**
   * Relays connections for up to `maxReservations` peers that listen through it, with no limit on
   * their time or bytes (libp2p's default, 2 minutes and 128 KiB, would cut a job's session). A
   * relay carries every byte twice: offered by providers that choose to.
   */
  relay?: { maxReservations: number };
  /** Full `/ip4/…/tcp/…/p2p/<id>` multiaddrs of peers to join through. */
  bootstrap?: string[];
  /**
   * Which addresses the DHT keeps. kad-dht's default drops loopback and private ones, which leaves
   * a local or LAN network with empty routing tables: `"all"` keeps them, `"public"` is for the
   * open internet.
   */
  dhtAddresses?: "all" | "public";
  /** Where the host says what it cannot do by itself (a relay it has no reservation on). */
  log?: Logger;
}

/**
 * The libp2p host every Baton peer runs: TCP, Noise, Yamux, identify, ping, gossipsub, and a private
 * kad-dht (`/baton/kad/1.0.0`, so it never mixes with the public IPFS DHT), discovering peers from
 * a bootstrap list. Listens on loopback by default.
 *
 * @example
 * const host = await createBatonHost({ privateKey: await loadOrCreatePeerKey("data/peer.key") });
 */
export async function createBatonHost({
  privateKey,
  listen = ["/ip4/127.0.0.1/tcp/0"],
  announce = [],
  relay,
  bootstrap: bootstrapList = [],
  dhtAddresses = "all",
  log = silentLogger,
}: CreateBatonHostOptions): Promise<BatonHost> {
  for (const address of bootstrapList) parseBootstrapAddress(address);
  for (const address of [...listen, ...announce]) parseAddress(address);
  sendWindowUpdatesAtHalf();
  const throughRelays = listen.filter(isRelayListenAddress);
  const host = await createLibp2p({
    privateKey,
    addresses: {
      listen: listen.filter((address) => !isRelayListenAddress(address)),
      ...(announce.length > 0 ? { announce } : {}),
    },
    // Every host dials relayed addresses (`…/p2p-circuit/p2p/<id>`); one that listens on
    // `/p2p-circuit` also keeps a reservation on a relay it is connected to.
    transports: [tcp(), circuitRelayTransport()],
    // libp2p refuses a sixth new connection within a second from one IP, and more than a few
    // pending at once: limits on remote hosts that would otherwise also throttle every peer of a
    // devnet or test market (all on 127.0.0.1). A process on this machine can flood it anyway.
    connectionManager: { allow: ["/ip4/127.0.0.0/ipcidr/8", "/ip6/::1/ipcidr/128"] },
    connectionEncrypters: [noise()],
    // Streams a peer opens before this side's upgrade has attached its stream handler are held
    // ("early"); past yamux's default of 10 it aborts the whole connection. A tenant's burst of
    // bids, or a flood, on a fresh connection to a loaded node did just that (bad-input.test).
    streamMuxers: [yamux({ maxEarlyStreams: MAX_EARLY_STREAMS })],
    // An empty list makes @libp2p/bootstrap throw; it also dials only once, hence `keepConnected`.
    peerDiscovery: bootstrapList.length > 0 ? [bootstrap({ list: bootstrapList, timeout: 100 })] : [],
    services: {
      identify: identify(),
      // Tells connected peers when the host's addresses change: one AutoNAT confirmed later, say.
      identifyPush: identifyPush(),
      // Confirms the host's public addresses (those of its interfaces, and those peers saw it at) by
      // asking peers to dial them back; libp2p tells peers only confirmed ones, so a host with a
      // public address needs no `announce`, and one behind a NAT announces none it cannot be reached at.
      autoNAT: autoNATv2(),
      // kad-dht checks contacts with the same service, so one outbound ping stream is not enough.
      ping: ping({ maxOutboundStreams: 4 }),
      pubsub: gossipsub({
        allowPublishToZeroTopicPeers: true,
        // Offers, the one topic, are signed envelopes of their own (checked by whoever reads one):
        // gossipsub's signature on each message said the same again, and signing and checking it
        // (libp2p imports the key from a JWK at every call) cost every peer more than the rest of
        // handling an offer. Peers of one topic must agree on this; hence the topic's version 2.
        globalSignaturePolicy: "StrictNoSign",
        // Gossipsub's default marks down every peer past the tenth seen from one IP within the hour
        // (a peer with no positive score is remembered that long): tenants behind one NAT, or every
        // tenant of a local test network on 127.0.0.1, so the fourteenth got no offers at all.
        // Offers are signed, so peers crowding a mesh can withhold them but never forge one.
        scoreParams: { IPColocationFactorWeight: 0 },
      }),
      dht: pauseAfterEmptyWalks(
        kadDHT({
          protocol: `${PROTOCOL_PREFIX}/kad/1.0.0`,
          // Serve the DHT from the start: client mode waits for a public address that a local network never sees.
          clientMode: false,
          peerInfoMapper: dhtAddresses === "all" ? passthroughMapper : removePrivateAddressesMapper,
          allowQueryWithZeroPeers: true,
        }),
      ),
      ...(relay
        ? {
            relay: circuitRelayServer({
              reservations: { maxReservations: relay.maxReservations, applyDefaultLimit: false },
            }),
          }
        : {}),
    },
  });
  await keepRelayReservations(host, throughRelays, log.child("relay"));
  if (listen.includes(ANY_RELAY)) {
    keepLookingForRelays(host, log.child("relay"));
    if (bootstrapList.length > 0) await relayFound(host, log);
  }
  dialDirectlyOnceReachable(host);
  return host;
}

/**
 * Moves a peer reached only through a relay to a direct connection once it tells of a public address
 * (identify, when the relayed connection opens, and identify push, when AutoNAT confirms an address
 * later): dialled from behind a NAT, the connection goes out through it. This is DCUtR's unilateral
 * upgrade without what `@libp2p/dcutr` does next, closing the relayed connection: a lease's start
 * under way on it was cut so (the provider never got the job, and the tenant handed it off). The
 * relayed connection stays; libp2p opens new streams on the direct one. DCUtR's other half, a hole
 * punch between two NATed peers, cannot work over Node's TCP (see the README).
 */
function dialDirectlyOnceReachable(host: Libp2p): void {
  host.addEventListener("peer:identify", ({ detail: { peerId, listenAddrs } }) => {
    const connections = host.getConnections(peerId);
    if (connections.length === 0 || connections.some((c) => !Circuit.matches(c.remoteAddr))) return;
    const reachable = listenAddrs.filter((address) => !Circuit.matches(address) && !isPrivate(address));
    if (reachable.length === 0) return;
    void host.dial(reachable.map((address) => address.encapsulate(`/p2p/${peerId.toString()}`))).catch(() => undefined);
  });
}

/** Streams held until a new connection's handler is attached: more than any protocol lets in at once. */
const MAX_EARLY_STREAMS = 256;

/** A listen address for a relay found among the host's peers, whichever it is. */
const ANY_RELAY = "/p2p-circuit";

/** How long a host that listens through any relay waits at start for one among its bootstrap peers. */
const RELAY_SEARCH_MS = 10_000;

/**
 * Waits (at most {@link RELAY_SEARCH_MS}) until the host listens through a relay: libp2p reserves a
 * slot on a connected peer that speaks the relay protocol, usually within a second of the bootstrap
 * dial. A node that started without one would offer no address anyone can dial. Without one by then
 * it goes on and says so; libp2p keeps looking as peers connect.
 */
async function relayFound(host: Libp2p, log: Logger): Promise<void> {
  const relayed = (): boolean => host.getMultiaddrs().some((address) => Circuit.matches(address));
  if (relayed()) return;
  const found = await new Promise<boolean>((resolve) => {
    const timeout = AbortSignal.timeout(RELAY_SEARCH_MS);
    const done = (value: boolean): void => {
      timeout.removeEventListener("abort", onTimeout);
      host.removeEventListener("self:peer:update", onUpdate);
      resolve(value);
    };
    const onUpdate = (): void => {
      if (relayed()) done(true);
    };
    const onTimeout = (): void => done(false);
    timeout.addEventListener("abort", onTimeout);
    host.addEventListener("self:peer:update", onUpdate);
  });
  if (!found) log.warn("no relay among the peers yet: unreachable behind a NAT until one is found", {});
}

/** How long a DHT search for closest peers waits after one that found none. */
const EMPTY_WALK_PAUSE_MS = 1_000;

/**
 * With an empty routing table, kad-dht answers a search for the closest peers at once, without
 * giving timers a turn. libp2p's random walk (AutoNAT looking for peers to confirm an address, every
 * minute while one is unconfirmed) runs such searches in a loop that only a timer ends: a host with
 * a public address and no peers would hang for good. After a search that found nobody, the next one
 * waits a second first.
 */
function pauseAfterEmptyWalks<C>(factory: (components: C) => KadDHT): (components: C) => KadDHT {
  return (components) => {
    const dht = factory(components);
    const search = dht.getClosestPeers.bind(dht);
    let foundNone = false;
    dht.getClosestPeers = async function* (key, options) {
      if (foundNone) await setTimeout(EMPTY_WALK_PAUSE_MS, undefined, { signal: options?.signal });
      let found = false;
      for await (const event of search(key, options)) {
        found ||= event.name === "FINAL_PEER";
        yield event;
      }
      foundNone = !found;
    };
    return dht;
  };
}

/** Parses a listen or announce multiaddr. */
function parseAddress(address: string): void {
  try {
    multiaddr(address);
  } catch (cause) {
    throw new UserError(`not a multiaddr: ${address}`, { cause });
  }
}

/** Parses a bootstrap multiaddr, which must name the peer (`…/p2p/<id>`). */
export function parseBootstrapAddress(address: string): { peerId: PeerId; address: ReturnType<typeof multiaddr> } {
  let parsed;
  try {
    parsed = multiaddr(address);
  } catch (cause) {
    throw new UserError(`bootstrap address is not a multiaddr: ${address}`, { cause });
  }
  const id = parsed.getComponents().find((c) => c.name === "p2p")?.value;
  if (!id) throw new UserError(`bootstrap address must end in /p2p/<peer id>: ${address}`);
  return { peerId: peerIdFromString(id), address: parsed };
}

/**
 * Keeps dialling the given peers while they are not connected. @libp2p/bootstrap dials each once,
 * at start, so a bootstrap peer that was not up yet would otherwise never be found.
 *
 * @returns a function that stops the loop.
 */
export function keepConnected(host: BatonHost, addresses: string[], intervalMs = 1_000): () => void {
  const targets = addresses.map(parseBootstrapAddress);
  let dialling = false;
  const tick = async (): Promise<void> => {
    if (dialling) return;
    dialling = true;
    try {
      await Promise.all(
        targets
          .filter(({ peerId }) => !peerId.equals(host.peerId) && host.getConnections(peerId).length === 0)
          .map(({ address }) =>
            host.dial(address, { signal: AbortSignal.timeout(intervalMs * 2) }).catch(() => undefined),
          ),
      );
    } finally {
      dialling = false;
    }
  };
  void tick();
  const timer = setInterval(() => void tick(), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * Reads the peer key from `file`, or creates one (Ed25519, mode 0600) when the file does not
 * exist, so a node keeps its peer id across restarts.
 */
export async function loadOrCreatePeerKey(file: string): Promise<PrivateKey> {
  try {
    return privateKeyFromProtobuf(new Uint8Array(await readFile(file)));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new UserError(`cannot read the peer key ${file}`, { cause: error });
    }
  }
  const key = await generateKeyPair("Ed25519");
  await writeFile(file, privateKeyToProtobuf(key), { mode: 0o600, flag: "wx" });
  return key;
}
