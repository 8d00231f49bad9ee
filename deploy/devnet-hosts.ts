import path from "node:path";

import type { NodeConfigInput } from "../node/config.ts";
import { forwardFromHost, startNetwork, type Host, type NetworkOfHosts } from "./netns.ts";

/** The port every host's libp2p listens on (each host has its own ports). */
export const HOST_P2P_PORT = 4001;
/** The port on each host's 127.0.0.1 that reaches the devnet's chain. */
export const HOST_RPC_PORT = 8545;

/**
 * A devnet's providers and tenants on separate hosts (issue 21): `p1`…`pN` for the providers, the
 * last `behindNat` of them behind NATs of their own, and `tenant` for tenants, all on one internet
 * (see {@link startNetwork}). Provider 1 is public and relays for the NATed ones, which find it
 * among their bootstrap peers and listen through it (a bare `/p2p-circuit`). The chain stays in this
 * machine's namespace; each host reaches it at `http://127.0.0.1:8545`.
 */
export interface DevnetHosts {
  network: NetworkOfHosts;
  /** Where tenants run: `tenant.command(argv)`. */
  tenant: Host;
  /** The chain's URL on every host. */
  rpcUrl: string;
  provider(index: number): Host;
  behindNat(index: number): boolean;
  /** The node config that puts provider `index` on its host. */
  configFor(index: number): Partial<NodeConfigInput>;
  /** Provider `index`'s address as the other hosts dial it. */
  addressOf(index: number, peerIds: readonly string[]): string;
  /** Stops the chain forwarders and removes every namespace. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Makes the hosts for `providers` providers and a tenant, each able to reach the chain listening on
 * this namespace's `127.0.0.1:<chainPort>`; its forwarders' sockets go in `dir`.
 *
 * @throws {Error} without root, `ip` or `iptables`; or when no provider would be public to relay.
 */
export async function startDevnetHosts({
  providers,
  behindNat,
  dir,
  chainPort,
}: {
  providers: number;
  behindNat: number;
  dir: string;
  chainPort: number;
}): Promise<DevnetHosts> {
  if (!Number.isInteger(behindNat) || behindNat < 0 || behindNat >= providers) {
    throw new Error(`${behindNat} of ${providers} providers behind NATs: provider 1 must be public, to relay`);
  }
  const natted = (index: number): boolean => index >= providers - behindNat;
  const names = Array.from({ length: providers }, (_, index) => `p${index + 1}`);
  const network = await startNetwork([
    ...names.map((name, index) => ({ name, behindNat: natted(index) })),
    { name: "tenant" },
  ]);
  const forwards: { close(): Promise<void> }[] = [];
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      await Promise.all(forwards.map((f) => f.close()));
      await network.close();
    })());
  try {
    for (const host of network.hosts.values()) {
      forwards.push(
        await forwardFromHost(host, {
          port: HOST_RPC_PORT,
          target: chainPort,
          socket: path.join(dir, `.chain-${host.name}.sock`),
        }),
      );
    }
  } catch (error) {
    await close();
    throw error;
  }
  const provider = (index: number): Host => network.hosts.get(names[index]!)!;
  const direct = (index: number, peerId: string): string =>
    `/ip4/${provider(index).address}/tcp/${HOST_P2P_PORT}/p2p/${peerId}`;
  // Provider 1 is the one relay: where a NATed provider's reservation is.
  const relayListen = (peerIds: readonly string[]): string => `${direct(0, peerIds[0]!)}/p2p-circuit`;
  const rpcUrl = `http://127.0.0.1:${HOST_RPC_PORT}`;
  return {
    network,
    tenant: network.hosts.get("tenant")!,
    rpcUrl,
    provider,
    behindNat: natted,
    configFor(index) {
      const listen = [`/ip4/0.0.0.0/tcp/${HOST_P2P_PORT}`];
      const base = { rpcUrl, dhtAddresses: "all" as const };
      // As a provider at home does: through whichever relay it finds among its peers (provider 1).
      if (natted(index)) return { ...base, listen: [...listen, "/p2p-circuit"] };
      // No `announce`: AutoNAT confirms the public address once a peer has dialled it back.
      return { ...base, listen, ...(index === 0 && behindNat > 0 ? { relayReservations: 4 * behindNat } : {}) };
    },
    addressOf(index, peerIds) {
      const peerId = peerIds[index]!;
      return natted(index) ? `${relayListen(peerIds)}/p2p/${peerId}` : direct(index, peerId);
    },
    close,
  };
}
