import { gossipsub } from "@libp2p/gossipsub";
import { identify } from "@libp2p/identify";
import { noise } from "@libp2p/noise";
import { tcp } from "@libp2p/tcp";
import { yamux } from "@libp2p/yamux";
import { createLibp2p } from "libp2p";
import { formatEther, parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { contracts, writeContract } from "../../sdk/chain/client.ts";
import type { BatonHost } from "../../sdk/p2p/host.ts";
import { watchOffers } from "../../sdk/p2p/offers.ts";
import { signTenantAuth } from "../../sdk/wire/tenant-auth.ts";
import { openLeaseSession, releaseQuotes, type ProviderEvent } from "../../sdk/wire/clients.ts";
import type { Offer, ProviderMessage } from "../../sdk/wire/messages.ts";
import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import path from "node:path";

import { NodeStore } from "../../node/store.ts";
import { bidTo, openQuotedLease } from "../helpers/leases.ts";
import { isAlive, until } from "../helpers/processes.ts";
import { startMarket, type Market, type ProviderHandle, type Tenant } from "../helpers/market.ts";

let market: Market;
let tenant: Tenant;
const offers = new Map<string, Offer>();

/** Provider 2 warns of a low gas balance below a million ETH: more than any dev account holds. */
const LOW_GAS_BALANCE = parseEther("1000000");

beforeAll(async () => {
  market = await startMarket({
    providers: 2,
    configFor: (index) => (index === 1 ? { lowGasBalance: LOW_GAS_BALANCE.toString() } : {}),
  });
  tenant = await market.tenant(0);
  watchOffers({ host: tenant.host, chain: tenant.chain, onOffer: (offer) => offers.set(offer.peerId, offer) });
  await until(() => offers.size === 2, 30_000, "offers from both providers");
}, 180_000);

afterAll(async () => {
  await market?.stop();
});

/** `who`'s bid to `provider` for one GPU, for the job `jobName`. */
const bidFor = (who: Tenant, provider: ProviderHandle, jobName: string, durationS = 600) =>
  bidTo(who, market.deployment, provider, { jobName, requirements: { gpus: 1 }, durationS }, 10_000);

async function openLease(providerIndex: number, jobName: string, durationS = 600) {
  const provider = market.providers[providerIndex]!;
  const bid = () => bidFor(tenant, provider, jobName, durationS);
  // The provider's one GPU may still be held by the previous test's lease: the node frees it once
  // that lease's work dir is gone, after its finish is mined (seconds on a loaded machine).
  let response = await bid();
  await until(
    async () => {
      if (response.kind === "quote" || response.reason !== "no-capacity") return true;
      response = await bid();
      return false;
    },
    30_000,
    `a free GPU on provider ${providerIndex}`,
  );
  if (response.kind !== "quote") throw new Error(`refused: ${response.reason}: ${response.message}`);
  const leaseId = await openQuotedLease(tenant, market.deployment, response, durationS);
  return { leaseId, provider, quote: response.quote };
}

describe("provider node (two processes, real chain, loopback libp2p)", () => {
  it("announces signed offers that the registry binds, labelled with fake GPUs", () => {
    for (const provider of market.providers) {
      const offer = offers.get(provider.peerId)!;
      expect(offer.provider).toBe(provider.account.address);
      expect(offer.gpus).toEqual([{ index: 0, model: "FakeGPU", vramMiB: 24576, fake: true }]);
      expect(offer.gpusFree).toBe(1);
    }
  });

  it("relays the offers of other providers, with where they listen: a peer joined through one provider finds and dials the other", async () => {
    const [through, other] = market.providers as [ProviderHandle, ProviderHandle];
    // Gossip and nothing else (no DHT, no bootstrap list): the only way this peer can hear of the
    // other provider is an offer relayed by the one it dialled. Offers' gossip is unsigned by
    // gossipsub (they are signed envelopes of their own): a peer must take it so.
    const peer = await createLibp2p({
      addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      services: { identify: identify(), pubsub: gossipsub({ globalSignaturePolicy: "StrictNoSign" }) },
    });
    try {
      const heard = new Promise<Offer>((resolve) => {
        const unwatch = watchOffers({
          host: peer as unknown as BatonHost,
          chain: tenant.chain,
          onOffer: (offer) => {
            if (offer.peerId !== other.peerId) return;
            unwatch();
            resolve(offer);
          },
        });
      });
      await peer.dial(multiaddr(through.address!));
      const offer = await heard;
      const otherId = peerIdFromString(other.peerId);
      expect(peer.getConnections(otherId)).toHaveLength(0);
      expect(offer.addresses).toContain(other.address!.split("/p2p/")[0]);
      // Dialled by peer id alone: the addresses come from the offer.
      await peer.dial(otherId, { signal: AbortSignal.timeout(10_000) });
      expect(peer.getConnections(otherId).length).toBeGreaterThan(0);
    } finally {
      await peer.stop();
    }
  });

  it("quotes a bid, runs the job in the sandbox, streams heartbeats, progress, logs and the result, then finishes and claims on chain", async () => {
    const { leaseId, provider } = await openLease(0, "job-happy");
    const auth = await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString());
    const session = await openLeaseSession(
      tenant.host,
      peerIdFromString(provider.peerId),
      tenant.key,
      {
        type: "start",
        body: {
          leaseId,
          auth,
          spec: {
            name: "hello",
            command: [
              "sh",
              "-c",
              'echo hello from $BATON_LEASE_ID; for i in 1 2 3; do echo "BATON_PROGRESS {\\"step\\":$i,\\"total\\":3}"; sleep 1.5; done; echo done',
            ],
            env: {},
            inputs: [],
            resources: { gpus: 1, cpus: 1, memoryMiB: 256 },
            network: false,
            maxDurationS: 60,
          },
        },
      },
      { address: multiaddr(provider.address!), signal: AbortSignal.timeout(10_000) },
    );
    const events: ProviderEvent[] = [];
    for await (const event of session.messages) {
      events.push(event);
      if (event.type === "result" || event.type === "refused") break;
    }
    await session.close();
    const types = events.map((e) => e.type);
    const refused = events.filter((e) => e.type === "refused");
    if (refused.length > 0) console.error(provider.process!.lines.filter((l) => l.includes("warn")).join("\n"));
    expect(refused).toEqual([]);
    expect(types[0]).toBe("accepted");
    expect(types.at(-1)).toBe("result");
    const lines = events.flatMap((e) => (e.type === "log" ? [e.body.line] : []));
    expect(lines).toEqual([`hello from ${leaseId}`, "done"]);
    const beats = events.flatMap((e) => (e.type === "heartbeat" ? [e.body] : []));
    expect(beats.length).toBeGreaterThanOrEqual(3);
    expect(beats.some((b) => b.progress?.step === 2 && b.progress.total === 3)).toBe(true);
    const seqs = events.flatMap((e) => ("seq" in e.body ? [e.body.seq] : []));
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
    const result = events.at(-1)!;
    expect(result.type === "result" && result.body.exitCode).toBe(0);

    const { leaseManager } = contracts(market.deployment);
    await until(
      async () => {
        const lease = await tenant.chain.publicClient.readContract({
          ...leaseManager,
          functionName: "getLease",
          args: [leaseId],
        });
        return lease.status === 3;
      },
      20_000,
      "lease completed on chain",
    );
    const heartbeats = await tenant.chain.publicClient.getContractEvents({
      ...leaseManager,
      eventName: "HeartbeatRecorded",
      args: { leaseId },
      fromBlock: 0n,
    });
    expect(heartbeats.length).toBeGreaterThanOrEqual(1);
    await until(
      async () => {
        const claims = await tenant.chain.publicClient.getContractEvents({
          ...leaseManager,
          eventName: "EarningsClaimed",
          args: { provider: provider.account.address },
          fromBlock: 0n,
        });
        return claims.some((c) => c.args.amount! > 0n);
      },
      20_000,
      "a claim with earnings",
    );
    expect(isAlive(provider.process!.pid)).toBe(true);
  });

  it("warns in its log when its gas balance is below lowGasBalance, naming the account and the balance", async () => {
    const [enough, low] = market.providers;
    const line = await low!.process!.waitFor(/"msg":"gas balance low/, 20_000);
    const balance = await market.admin.publicClient.getBalance({ address: low!.account.address });
    expect(JSON.parse(line)).toMatchObject({
      level: "warn",
      address: low!.account.address,
      balanceEth: formatEther(balance),
      lowGasBalanceEth: "1000000",
    });
    expect(enough!.process!.lines.some((l) => l.includes("gas balance low"))).toBe(false);
  });

  it("kills the job at once when the chain says its lease was slashed", async () => {
    const { leaseId, provider } = await openLease(0, "job-fenced");
    const session = await startJob(provider, leaseId, LONG_JOB);
    await firstLog(session.messages, /^tick/);
    const node = provider.process!;
    const store = new NodeStore(path.join(provider.dataDir, "node.db"));
    const pid = store.getLease(leaseId)!.pid!;
    expect(isAlive(pid)).toBe(true);

    // Freeze the node so it misses its on-chain heartbeats, move chain time past the timeout, slash.
    node.child.kill("SIGSTOP");
    try {
      await market.test.increaseTime({ seconds: 30 });
      await market.test.mine({ blocks: 1 });
      const { leaseManager } = contracts(market.deployment);
      await writeContract(market.admin, { ...leaseManager, functionName: "slashMissedHeartbeat", args: [leaseId] });
    } finally {
      node.child.kill("SIGCONT");
    }
    await node.waitFor(new RegExp(`"msg":"lease ended on chain; job stopped","leaseId":"${leaseId}"`), 20_000);
    await until(() => store.getLease(leaseId)!.state === "fenced", 10_000, "lease fenced in the node's store");
    await until(() => !isAlive(pid), 15_000, "job process gone");
    store.close();
    await session.close();
  });

  it("frees a quote's GPU when the peer that bid for it gives it back, and for no other peer", async () => {
    const provider = market.providers[1]!;
    const peer = peerIdFromString(provider.peerId);
    const other = await market.tenant(1);
    const bidFrom = (who: Tenant, jobName: string) => bidFor(who, provider, jobName);
    // Before provider 1 runs the next test's lease; its one GPU may still be held by a quote.
    let first = await bidFrom(tenant, "release-a");
    await until(
      async () => {
        if (first.kind === "quote") return true;
        first = await bidFrom(tenant, "release-a");
        return false;
      },
      30_000,
      "a free GPU on provider 1",
    );
    if (first.kind !== "quote") throw new Error(`refused: ${first.reason}`);
    const { nonce } = first.quote;
    expect(await bidFrom(other, "release-b")).toMatchObject({ kind: "refusal", reason: "no-capacity" });
    expect(await releaseQuotes(other.host, peer, other.key, [nonce])).toEqual([]);
    expect(await bidFrom(other, "release-b")).toMatchObject({ kind: "refusal", reason: "no-capacity" });

    expect(await releaseQuotes(tenant.host, peer, tenant.key, [nonce])).toEqual([nonce]);
    const second = await bidFrom(other, "release-b");
    if (second.kind !== "quote") throw new Error(`refused after the release: ${second.reason}`);
    expect(await releaseQuotes(tenant.host, peer, tenant.key, [nonce])).toEqual([]);
    expect(await releaseQuotes(other.host, peer, other.key, [second.quote.nonce])).toEqual([second.quote.nonce]);
    await provider.process!.waitFor(/quotes released/, 10_000);
  });

  it("keeps its lease and its duties across SIGKILL and restart, and lets the tenant re-attach", async () => {
    const { leaseId, provider } = await openLease(1, "job-restart");
    const session = await startJob(provider, leaseId, LONG_JOB);
    const seen = await firstLog(session.messages, /^tick/);
    await session.close();

    const old = provider.process!;
    old.child.kill("SIGKILL");
    await old.exited;
    const killedAt = (await tenant.chain.publicClient.getBlock()).timestamp;

    await provider.start();
    const auth = await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString());
    const again = await openLeaseSession(
      tenant.host,
      peerIdFromString(provider.peerId),
      tenant.key,
      // As a tenant re-attaches: past what it saw. The restarted node numbers its messages past
      // anything it sent before, which it does not remember, so none of them reads as seen.
      { type: "attach", body: { leaseId, auth, afterSeq: seen.seq } },
      { address: multiaddr(provider.address!), signal: AbortSignal.timeout(10_000) },
    );
    expect((await firstLog(again.messages, /the provider node restarted; the job was relaunched/)).seq).toBeGreaterThan(
      seen.seq,
    );
    await firstLog(again.messages, /^tick/);
    await again.close();

    const { leaseManager } = contracts(market.deployment);
    await until(
      async () => {
        const beats = await tenant.chain.publicClient.getContractEvents({
          ...leaseManager,
          eventName: "HeartbeatRecorded",
          args: { leaseId },
          fromBlock: 0n,
        });
        return beats.some((b) => b.args.timestamp! > killedAt);
      },
      20_000,
      "an on-chain heartbeat after the restart",
    );
    const lease = await tenant.chain.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [leaseId],
    });
    expect(lease.status).toBe(1);
  });

  it("frees the GPU of a job that exited just before a SIGKILL, once its lease is finished", async () => {
    const { leaseId, provider } = await openLease(0, "job-exited-restart");
    const store = new NodeStore(path.join(provider.dataDir, "node.db"));
    const { leaseManager } = contracts(market.deployment);
    // Nothing mined meanwhile: the node is killed with its job exited and its lease not finished on
    // chain. Its finish is then pending (and mined while the node is down) or not sent yet (a
    // heartbeat ahead of it waits to be mined; it is sent after the restart). Either way, the GPU
    // the restarted node adopts for the exited lease must go once the lease is finished.
    await market.test.setAutomine(false);
    try {
      const session = await startJob(provider, leaseId, ["sh", "-c", "echo done"]);
      await until(() => store.getLease(leaseId)?.state === "exited", 30_000, "the job's exit in the node's store");
      await session.close();
      const old = provider.process!;
      old.child.kill("SIGKILL");
      await old.exited;
      await market.test.mine({ blocks: 1 });
    } finally {
      await market.test.setAutomine(true);
    }
    store.close();

    await provider.start();
    await until(
      async () =>
        (await tenant.chain.publicClient.readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] }))
          .status === 3,
      30_000,
      "the lease completed on chain",
    );
    // Its only GPU quotes again.
    const next = await openLease(0, "job-after-exited-restart");
    expect(next.quote.provider).toBe(provider.account.address);
  });
});

const LONG_JOB = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"];

async function startJob(provider: Market["providers"][number], leaseId: bigint, command: string[]) {
  const auth = await signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString());
  return openLeaseSession(
    tenant.host,
    peerIdFromString(provider.peerId),
    tenant.key,
    {
      type: "start",
      body: {
        leaseId,
        auth,
        spec: {
          name: "long",
          command,
          env: {},
          inputs: [],
          resources: { gpus: 1, cpus: 1, memoryMiB: 256 },
          network: false,
          maxDurationS: 300,
        },
      },
    },
    { address: multiaddr(provider.address!), signal: AbortSignal.timeout(10_000) },
  );
}

/** Reads a session until a log line matches (a refusal or the end fails the test). */
async function firstLog(messages: AsyncGenerator<ProviderEvent>, pattern: RegExp): Promise<ProviderMessage<"log">> {
  for (;;) {
    const next = await Promise.race([
      messages.next(),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no log line ${pattern} in time`)), 30_000)),
    ]);
    if (next.done) throw new Error(`session ended before a log line ${pattern}`);
    if (next.value.type === "refused") throw new Error(`refused: ${next.value.body.reason} ${next.value.body.message}`);
    if (next.value.type === "log" && pattern.test(next.value.body.line)) return next.value.body;
  }
}
