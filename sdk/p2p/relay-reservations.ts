import type { Libp2p, Listener } from "@libp2p/interface";
import { multiaddr, type Multiaddr } from "@multiformats/multiaddr";

import { shortMessageOf } from "../errors.ts";
import type { Logger } from "../logger.ts";

/** What is used here of libp2p's transport manager (`@libp2p/interface-internal`). */
interface TransportManager {
  listen(addresses: Multiaddr[]): Promise<void>;
  getListeners(): Listener[];
}

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
  // The transport manager is not on libp2p's public interface; it is the one way to listen on an
  // address after start. (Pinned libp2p version; test/sdk/relay.test.ts restarts a relay.)
  const { transportManager } = (host as unknown as { components: { transportManager: TransportManager } }).components;
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
