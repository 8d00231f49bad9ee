import { spawn } from "node:child_process";
import { once } from "node:events";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { multiaddr } from "@multiformats/multiaddr";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";
import { monitorLiveness, type LivenessEvent } from "../../sdk/tenant/liveness.ts";
import { freePort, startLink, type LinkShaper } from "../helpers/link.ts";

/** Keeps this process's event loop busy for `ms`, as decrypting a large checkpoint does. */
function stall(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until);
}

describe("liveness: the tenant's own stalls are not the provider's silence", () => {
  let host: BatonHost;
  let other: BatonHost;

  beforeAll(async () => {
    [host, other] = await Promise.all([
      createBatonHost({ privateKey: await generateKeyPair("Ed25519") }),
      createBatonHost({ privateKey: await generateKeyPair("Ed25519") }),
    ]);
    await host.dial(other.getMultiaddrs()[0]!);
  });

  afterAll(async () => {
    await Promise.all([host?.stop(), other?.stop()]);
  });

  it("a provider heartbeating throughout is not suspected across a 2 s stall of the tenant's event loop", async () => {
    const events: LivenessEvent[] = [];
    // Suspect after 1.5 s of silence: shorter than the stall below, and longer than a loaded
    // machine leaves the heartbeating process unscheduled (at 100 ms heartbeats, a run beside other
    // test files saw 329 ms without one, which is real silence, not the stall's).
    const monitor = monitorLiveness(host, other.peerId, { heartbeatMs: 500 }, (event) => events.push(event));
    // The provider's heartbeats, from another process as over the network: what it sent during the
    // stall waits in the pipe, and is read only after this process's timers have run.
    const provider = spawn(process.execPath, ["-e", "setInterval(() => process.stdout.write('h'), 100)"]);
    provider.stdout.on("data", () => monitor.heard());
    await once(provider.stdout, "data");
    try {
      await new Promise((resolve) => setTimeout(resolve, 300));
      // In the check phase, as work done on data just read: the next loop turn runs timers (the
      // monitor's check) before it reads what arrived meanwhile.
      await new Promise<void>((resolve) =>
        setImmediate(() => {
          stall(2_000);
          resolve();
        }),
      );
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(events).toEqual([]);
      expect(monitor.state).toBe("alive");
    } finally {
      provider.kill();
      monitor.stop();
    }
  });

  it("a provider that goes silent is still suspected after three heartbeats", async () => {
    const events: LivenessEvent[] = [];
    const monitor = monitorLiveness(host, other.peerId, { heartbeatMs: 100 }, (event) => events.push(event));
    try {
      await expect.poll(() => events[0]?.state, { timeout: 5_000, interval: 20 }).toBe("suspect");
      expect(events[0]!.reason).toMatch(/no heartbeat for \d+ ms/);
    } finally {
      monitor.stop();
    }
  });
});

describe("liveness: a silent link whose connection is dropped meanwhile", () => {
  let tenant: BatonHost;
  let provider: BatonHost;
  let link: LinkShaper;

  beforeAll(async () => {
    const port = await freePort();
    link = await startLink(port);
    // The provider announces only the link, so no dial goes around it.
    [tenant, provider] = await Promise.all([
      createBatonHost({ privateKey: await generateKeyPair("Ed25519"), listen: [] }),
      createBatonHost({
        privateKey: await generateKeyPair("Ed25519"),
        listen: [`/ip4/127.0.0.1/tcp/${port}`],
        announce: [link.multiaddr],
      }),
    ]);
    await tenant.dial(multiaddr(`${link.multiaddr}/p2p/${provider.peerId}`));
  });

  afterAll(async () => {
    await Promise.all([tenant?.stop(), provider?.stop()]);
    await link?.close();
  });

  it("a connection aborted under a ping on a silent link is not a refusal: failed only after failAfterMs", async () => {
    const events: LivenessEvent[] = [];
    const failAfterMs = 3_000;
    const monitor = monitorLiveness(tenant, provider.peerId, { heartbeatMs: 200, failAfterMs }, (event) =>
      events.push(event),
    );
    try {
      link.stall();
      await expect.poll(() => events[0]?.state, { timeout: 5_000, interval: 20 }).toBe("suspect");
      const suspectAt = Date.now();
      // What libp2p's connection monitor does to a connection whose ping went unanswered for 5 s,
      // while the monitor's own pings (2 s timeout) are in flight on it.
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const connection of tenant.getConnections(provider.peerId)) connection.abort(new Error("ping timed out"));
      await expect.poll(() => events.at(-1)?.state, { timeout: 10_000, interval: 20 }).toBe("failed");
      expect(events.at(-1)!.reason).toMatch(/^no message for \d+ ms/);
      expect(Date.now() - suspectAt).toBeGreaterThanOrEqual(failAfterMs - 100);
    } finally {
      monitor.stop();
      link.heal();
    }
  });

  it("a peer that refuses the fresh dial too is failed at once", async () => {
    const events: LivenessEvent[] = [];
    const monitor = monitorLiveness(tenant, provider.peerId, { heartbeatMs: 200, failAfterMs: 30_000 }, (event) =>
      events.push(event),
    );
    try {
      await expect.poll(() => tenant.getConnections(provider.peerId).length, { timeout: 10_000 }).toBeGreaterThan(0);
      link.cut();
      monitor.lost("session reset");
      await expect.poll(() => events.at(-1)?.state, { timeout: 10_000, interval: 20 }).toBe("failed");
      expect(events.at(-1)!.reason).toMatch(/^unreachable: /);
    } finally {
      monitor.stop();
      link.heal();
    }
  });
});
