import { readFile } from "node:fs/promises";
import path from "node:path";

import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { parseEther } from "viem";
import { describe, expect, it, onTestFinished } from "vitest";

import { runJob } from "../../sdk/actions/runJob.ts";
import { freePort } from "../helpers/processes.ts";
import { recorder, SCRIPT, serving, trainSpec, useRunJobMarket } from "../helpers/run-job.ts";

// Providers nobody can dial (listening only through a relay, as behind a NAT with no port
// forwarded) serve jobs through a relay: provider 0, which relays and is too dear to be leased.
const relayPort = await freePort();
const fixture = useRunJobMarket({
  chainHeartbeatTimeoutS: 20,
  configFor: (index, { peerIds }) =>
    index === 0
      ? {
          listen: [`/ip4/127.0.0.1/tcp/${relayPort}`],
          relayReservations: 4,
          price: { basePerSecond: "2000000000000000", perGpuPerSecond: "0" },
        }
      : { listen: [`/ip4/127.0.0.1/tcp/${relayPort}/p2p/${peerIds[0]}/p2p-circuit`] },
});

describe("providers reached through a relay", () => {
  it("run a job end to end, and hand it off to another relayed provider when one is killed", async () => {
    const [relay, ...relayed] = fixture.market.providers;
    // Nothing to dial directly: the two providers' addresses are the relay's.
    for (const provider of relayed) expect(provider.address).toContain(`/p2p/${relay!.peerId}/p2p-circuit/p2p/`);
    const client = await fixture.market.client(0, path.join(fixture.dir, "tenant-relayed"));
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const { when } = recorder(job);
    await when("checkpoint-safe", (e) => (e.step ?? 0) >= 100);
    const first = serving(fixture.market, job);
    expect(relayed).toContain(first);
    // The tenant knows it only through the relay: no address of its own to dial. (It may still
    // dial out to the tenant, as a provider behind a NAT can.)
    const known = await client.host.peerStore.get(peerIdFromString(first.peerId));
    expect(known.addresses.length).toBeGreaterThan(0);
    for (const { multiaddr } of known.addresses) {
      expect(multiaddr.toString()).toContain(`/p2p/${relay!.peerId}/p2p-circuit`);
    }

    first.process!.child.kill("SIGKILL");
    onTestFinished(() => first.start());
    const failed = await when("provider-failed");
    const restarted = await when("started", (e) => e.leaseId !== failed.leaseId);
    expect(restarted.resumed).toBe(true);
    const result = await job.result();
    expect(result.handOffs).toBe(1);
    const second = fixture.market.providers.find((p) => p.account.address === result.leases.at(-1)!.provider);
    expect(relayed).toContain(second);
    expect(second).not.toBe(first);
    // The checkpoint it resumed from came through the relay too; the result is the uninterrupted run's.
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
  });

  it("make their reservations again when the relay restarts, and a new job runs through it", async () => {
    const [relay, ...relayed] = fixture.market.providers;
    relay!.process!.child.kill("SIGKILL");
    await relay!.process!.exited;
    await relay!.start();
    // libp2p alone drops a named relay's reservation for good when the relay goes away: the
    // providers would stay unreachable. Each one is reached through the restarted relay again.
    const client = await fixture.market.client(0, path.join(fixture.dir, "tenant-relay-restart"));
    for (const provider of relayed) {
      const through = multiaddr(
        `/ip4/127.0.0.1/tcp/${relayPort}/p2p/${relay!.peerId}/p2p-circuit/p2p/${provider.peerId}`,
      );
      await expect
        .poll(
          () =>
            client.host.services.ping.ping(through).then(
              () => true,
              () => false,
            ),
          { timeout: 60_000, interval: 1000 },
        )
        .toBe(true);
    }
    const job = await runJob(client, trainSpec("20"), {
      maxPricePerSecond: parseEther("0.001"),
      files: { "train.mjs": SCRIPT },
    });
    const result = await job.result();
    const served = fixture.market.providers.find((p) => p.account.address === result.leases.at(-1)!.provider);
    expect(relayed).toContain(served);
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(fixture.reference);
  });
});
