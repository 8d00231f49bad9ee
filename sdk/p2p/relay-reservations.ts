import type { Libp2p, Listener, PeerId, Transport } from "@libp2p/interface";
import { multiaddr, type Multiaddr } from "@multiformats/multiaddr";
import { Circuit } from "@multiformats/multiaddr-matcher";

import { shortMessageOf } from "../errors.ts";
import type { Logger } from "../logger.ts";

/** What is used here of libp2p's transport manager (`@libp2p/interface-internal`). */
interface TransportManager {
  listen(addresses: Multiaddr[]): Promise<void>;
  getListeners(): Listener[];
  getTransports(): Transport[];
}

/** What is used here of the relay transport's reservation store (circuit-relay-v2 4.2, not exported). */
interface ReservationStore {
  addRelay(peer: PeerId, type: "discovered"): Promise<unknown>;
}

/** The protocol a relay speaks to those that reserve a slot on it. */
const HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop";

/** libp2p's transport manager: not on its public interface, yet the one way to listen after start. */
const transportManagerOf = (host: Libp2p): TransportManager =>
  (host as unknown as { components: { transportManager: TransportManager } }).components.transportManager;

/** How often a reservation that was lost is looked at, and tried again. */
export const RELAY_RESERVATION_CHECK_MS = 2000;

/** Whether `address` listens through one named relay: `<relay's multiaddr, …/p2p/<id>>/p2p-circuit`. */
export const isRelayListenAddress = (address: string): boolean => /\/p2p\/[^/]+\/p2p-circuit$/.test(address);

/**
 * Keeps the host's reservations on the relays its listen addresses name, for as long as it runs.
 *
 * libp2p (circuit-relay-v2 4.2) makes a named relay's reservation once, when the host starts
 * listening, and throws if the relay is down then; when the relay goes away later (a restart, a
 * cut link) it drops the reservation and the address for good. Either way a provider behind a NAT
 * would stay unreachable until it restarts. So the host listens on these addresses here instead:
 * at once, and again every {@link RELAY_RESERVATION_CHECK_MS} while one has no address through its
 * relay, on the same listener (its `listen` reconnects to the relay and makes a new reservation).
 *
 * Resolves once each address had its first try; failures are logged, and tried again.
 */
export async function keepRelayReservations(host: Libp2p, addresses: readonly string[], log: Logger): Promise<void> {
  if (addresses.length === 0) return;
  // Pinned libp2p version; test/sdk/relay.test.ts restarts a relay.
  const transportManager = transportManagerOf(host);
  const kept = addresses.map((address) => ({
    address: multiaddr(address),
    listener: undefined as Listener | undefined,
    trying: false,
    failing: false,
  }));

  const listenOn = async (entry: (typeof kept)[number]): Promise<void> => {
    if (entry.trying) return;
    entry.trying = true;
    try {
      if (entry.listener) {
        await entry.listener.listen(entry.address);
      } else {
        const before = new Set(transportManager.getListeners());
        try {
          await transportManager.listen([entry.address]);
        } finally {
          // A failed listen leaves its listener in the manager: keep it, to try again on it and not add another.
          entry.listener = transportManager.getListeners().find((listener) => !before.has(listener));
        }
      }
      if (entry.failing) log.info("relay reservation made again", { relay: entry.address.toString() });
      entry.failing = false;
    } catch (error) {
      // Once per outage: a relay down for an hour would otherwise log every 2 s.
      if (!entry.failing) {
        log.warn("no reservation on a relay; trying again", {
          relay: entry.address.toString(),
          error: shortMessageOf(error),
        });
      }
      entry.failing = true;
    } finally {
      entry.trying = false;
    }
  };

  await Promise.all(kept.map(listenOn));
  const timer = setInterval(() => {
    for (const entry of kept) {
      if (!entry.listener || entry.listener.getAddrs().length === 0) void listenOn(entry);
    }
  }, RELAY_RESERVATION_CHECK_MS);
  timer.unref();
  host.addEventListener("stop", () => clearInterval(timer), { once: true });
}

/**
 * Keeps a host that listens through any relay (a bare `/p2p-circuit`) asking its relays for a slot
 * while it has none.
 *
 * libp2p asks a connected relay for a slot once, when identify tells it the peer relays; an answer
 * that fails (the relay is full, or too slow under load) is not asked again for as long as that
 * connection lasts, and the host stays unreachable behind its NAT. So every
 * {@link RELAY_RESERVATION_CHECK_MS} while the host has no relayed address, each relay it is
 * connected to directly is asked again (libp2p's own queue joins an ask already under way).
 */
export function keepLookingForRelays(host: Libp2p, log: Logger): void {
  const transport = transportManagerOf(host)
    .getTransports()
    .find((t) => t[Symbol.toStringTag] === "@libp2p/circuit-relay-v2-transport");
  const store = (transport as unknown as { reservationStore?: ReservationStore } | undefined)?.reservationStore;
  if (!store) throw new Error("no circuit relay transport to listen through");
  const relayed = (): boolean => host.getMultiaddrs().some((address) => Circuit.matches(address));
  let asked = false;
  const ask = async (): Promise<void> => {
    if (relayed()) {
      if (asked) log.info("relay reservation made again", {});
      asked = false;
      return;
    }
    for (const connection of host.getConnections()) {
      if (Circuit.matches(connection.remoteAddr)) continue;
      const peer = await host.peerStore.get(connection.remotePeer).catch(() => undefined);
      if (!peer?.protocols.includes(HOP_PROTOCOL)) continue;
      asked = true;
      // Refused again, or enough relays already: the next round asks again while there is no address.
      void store.addRelay(connection.remotePeer, "discovered").catch(() => undefined);
    }
  };
  const timer = setInterval(() => void ask(), RELAY_RESERVATION_CHECK_MS);
  timer.unref();
  host.addEventListener("stop", () => clearInterval(timer), { once: true });
}
