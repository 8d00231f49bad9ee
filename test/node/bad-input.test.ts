import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromPrivateKey, peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { keccak256, parseEther, toHex, zeroHash, type Address } from "viem";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

import { BID_RATE_LIMIT, MAX_JOB_DISK_GIB, SESSION_OPEN_TIMEOUT_MS } from "../../node/constants.ts";
import { contracts } from "../../sdk/chain/client.ts";
import type { JobSpec } from "../../sdk/job-spec.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";
import { openLeaseSession, requestQuote, type LeaseSession, type ProviderEvent } from "../../sdk/wire/clients.ts";
import { openMessage, parseBody, sealMessage } from "../../sdk/wire/envelope.ts";
import { readMessages, request, writeMessage } from "../../sdk/wire/framing.ts";
import {
  bidResponseSchema,
  providerMessageSchemas,
  type Bid,
  type BidResponse,
  type ProviderMessage,
  type ProviderMessageType,
} from "../../sdk/wire/messages.ts";
import { maxMessageBytes, protocols } from "../../sdk/wire/protocols.ts";
import { signTenantAuth, type TenantAuth } from "../../sdk/wire/tenant-auth.ts";
import { openQuotedLease } from "../helpers/leases.ts";
import { startMarket, type Market, type ProviderHandle, type Tenant } from "../helpers/market.ts";
import { isAlive, until } from "../helpers/processes.ts";

/*
 * Bad input against real provider node processes on a real chain, over loopback libp2p. Provider 0
 * is GPU-only with one fake GPU, which tenant A's long-running lease holds for the whole file;
 * provider 1 also takes CPU jobs, so tenant B can hold a lease there. Every bad bid, flood and bad
 * session must get a clear refusal on the wire and exactly one log line, while A's job keeps
 * running, streaming and heartbeating on chain (checked after every test and at the end).
 */

const GPU_PRICE = 1_000_000_000_000n; // per GPU per second on both providers
const CPU_BASE_PRICE = 1_000_000_000n; // provider 1's base price, so CPU quotes are not free
const MAX_DURATION_S = 1_800;
const GPU_NODE_HEARTBEAT_TIMEOUT_S = 30;
const LEASE_S = 900;
const SOMEONE = "0x00000000000000000000000000000000000000aa" as Address;

interface Peer {
  host: BatonHost;
  key: PrivateKey;
  id: string;
}

type Refused = ProviderMessage<"refused">;
type LogKind = "bid refused" | "session refused";
interface LogEntry {
  msg?: string;
  level?: string;
  peer?: string;
  reason?: string;
  message?: string;
}

let market: Market;
let gpuNode: ProviderHandle;
let cpuNode: ProviderHandle;
let tenantA: Tenant;
let tenantB: Tenant;
let peerA: Peer;
let peerB: Peer;
const rawHosts: BatonHost[] = [];

let aLeaseId: bigint;
let aSession: LeaseSession | undefined;
const aEvents: { at: number; event: ProviderEvent }[] = [];
let aEnded = false;
let aError: unknown;
let aInitialChainHeartbeat = 0n;
let bLeaseId: bigint;

/** Refusal reasons each peer got from each provider, in the order received: the log must match. */
const expectedLog = new Map<string, string[]>();

const addressOf = (provider: ProviderHandle) => multiaddr(provider.address!);
const peerOf = (tenant: Tenant): Peer => ({ host: tenant.host, key: tenant.key, id: tenant.host.peerId.toString() });
const utf8 = (text: string) => new TextEncoder().encode(text);
let jobCounter = 0;

/** A libp2p peer that no tenant account stands behind: the "unknown peer" of the issue. */
async function rawPeer(): Promise<Peer> {
  const key = await generateKeyPair("Ed25519");
  const host = await createBatonHost({ privateKey: key });
  rawHosts.push(host);
  return { host, key, id: host.peerId.toString() };
}

function bidFor(tenant: Address, overrides: Partial<Bid> = {}): Bid {
  return {
    chainId: market.deployment.chainId,
    leaseManager: contracts(market.deployment).leaseManager.address,
    jobId: keccak256(toHex(`bad-input-${++jobCounter}`)),
    tenant,
    requirements: { gpus: 1 },
    image: zeroHash,
    maxPricePerSecond: parseEther("0.001"),
    durationS: LEASE_S,
    ...overrides,
  };
}

function jobSpec(script: string, gpus: number, maxDurationS = 120): JobSpec {
  return {
    name: "bad-input",
    command: ["sh", "-c", script],
    env: {},
    inputs: [],
    resources: { gpus, cpus: 1, memoryMiB: 256 },
    network: false,
    maxDurationS,
  };
}

async function openLease(tenant: Tenant, provider: ProviderHandle, gpus: number, jobName: string): Promise<bigint> {
  const response = await requestQuote(
    tenant.host,
    peerIdFromString(provider.peerId),
    tenant.key,
    bidFor(tenant.account.address, { jobId: keccak256(toHex(jobName)), requirements: { gpus } }),
    { address: addressOf(provider), signal: AbortSignal.timeout(30_000) },
  );
  return openQuotedLease(tenant, market.deployment, response, LEASE_S);
}

async function getLease(leaseId: bigint) {
  const { leaseManager } = contracts(market.deployment);
  return market.admin.publicClient.readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] });
}

/*//////////////////////////////////////////////////////////////
                         NODE LOG LINES
//////////////////////////////////////////////////////////////*/

function logEntries(provider: ProviderHandle): LogEntry[] {
  return provider.process!.lines.flatMap((line) => {
    if (!line.startsWith("{")) return [];
    try {
      return [JSON.parse(line) as LogEntry];
    } catch {
      return [];
    }
  });
}

const logged = (provider: ProviderHandle, kind: LogKind, peer?: string): LogEntry[] =>
  logEntries(provider).filter((e) => e.msg === kind && (peer === undefined || e.peer === peer));

const ledgerKey = (provider: ProviderHandle, kind: LogKind, peer: string) => `${provider.index}|${kind}|${peer}`;

/** Records a refusal and checks that it produced exactly one node log line with the same reason. */
async function expectLogged(provider: ProviderHandle, kind: LogKind, peer: string, reason: string): Promise<void> {
  const key = ledgerKey(provider, kind, peer);
  const reasons = [...(expectedLog.get(key) ?? []), reason];
  expectedLog.set(key, reasons);
  await until(() => logged(provider, kind, peer).length >= reasons.length, 15_000, `"${kind}" log line (${reason})`);
  const lines = logged(provider, kind, peer);
  expect(lines.map((l) => l.reason)).toEqual(reasons);
}

/*//////////////////////////////////////////////////////////////
                              BIDS
//////////////////////////////////////////////////////////////*/

const sealBid = (from: Peer, body: unknown, type = "bid"): Promise<Uint8Array> =>
  sealMessage(from.key, from.id, type, body);

/** Sends raw bytes on the bid protocol and opens the provider's signed answer. */
async function sendBidBytes(from: Peer, provider: ProviderHandle, bytes: Uint8Array): Promise<BidResponse> {
  const reply = await request(from.host, addressOf(provider), protocols.bid, bytes, {
    maxBytes: maxMessageBytes.quote,
    signal: AbortSignal.timeout(30_000),
  });
  const opened = await openMessage(reply, {
    maxBytes: maxMessageBytes.quote,
    types: ["bid-response"],
    from: provider.peerId,
  });
  return parseBody(bidResponseSchema, opened);
}

async function expectBidRefused(
  from: Peer,
  provider: ProviderHandle,
  bytes: Uint8Array | Promise<Uint8Array>,
  reason: string,
  message?: RegExp,
): Promise<void> {
  const response = await sendBidBytes(from, provider, await bytes);
  // The log must match what the peer was told, whatever that was; then the reason is checked.
  if (response.kind === "refusal") await expectLogged(provider, "bid refused", from.id, response.reason);
  expect(response).toMatchObject({ kind: "refusal", reason });
  if (message && response.kind === "refusal") expect(response.message).toMatch(message);
}

/*//////////////////////////////////////////////////////////////
                          LEASE SESSIONS
//////////////////////////////////////////////////////////////*/

async function* decodeEvents(raw: AsyncGenerator<Uint8Array>, provider: ProviderHandle): AsyncGenerator<ProviderEvent> {
  for await (const bytes of raw) {
    const opened = await openMessage(bytes, {
      maxBytes: maxMessageBytes.lease,
      types: Object.keys(providerMessageSchemas),
      from: provider.peerId,
    });
    const type = opened.type as ProviderMessageType;
    yield { type, body: parseBody(providerMessageSchemas[type], opened) } as ProviderEvent;
  }
}

/** A lease-session stream on which the test writes whatever bytes it likes. */
async function rawSession(from: Peer, provider: ProviderHandle) {
  const stream = await from.host.dialProtocol(addressOf(provider), protocols.lease, {
    signal: AbortSignal.timeout(30_000),
  });
  return { stream, events: decodeEvents(readMessages(stream, maxMessageBytes.lease), provider) };
}

/** Reads a session's messages until the provider ends it, or `timeoutMs` passes. */
async function readToEnd(
  events: AsyncIterator<ProviderEvent>,
  timeoutMs: number,
): Promise<{ events: ProviderEvent[]; ended: boolean; error?: unknown }> {
  const out: ProviderEvent[] = [];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  try {
    for (;;) {
      const next = await Promise.race([events.next(), timeout]);
      if (next === "timeout") return { events: out, ended: false };
      if (next.done) return { events: out, ended: true };
      out.push(next.value);
    }
  } catch (error) {
    return { events: out, ended: true, error };
  } finally {
    clearTimeout(timer);
  }
}

/** Expects the session to get one signed `refused` (with one of `reasons`) and then to end. */
async function expectSessionRefused(
  events: AsyncIterator<ProviderEvent>,
  from: Peer,
  provider: ProviderHandle,
  reasons: string[],
  message?: RegExp,
  timeoutMs = 30_000,
): Promise<Refused> {
  const result = await readToEnd(events, timeoutMs);
  expect(result.error).toBeUndefined();
  expect(result.events.map((e) => e.type)).toEqual(["refused"]);
  expect(result.ended).toBe(true);
  const body = result.events[0]!.body as Refused;
  await expectLogged(provider, "session refused", from.id, body.reason);
  expect(reasons).toContain(body.reason);
  if (message) expect(body.message).toMatch(message);
  return body;
}

async function startSession(
  from: Tenant,
  provider: ProviderHandle,
  leaseId: bigint,
  auth: TenantAuth,
  spec: JobSpec,
): Promise<LeaseSession> {
  return openLeaseSession(
    from.host,
    peerIdFromString(provider.peerId),
    from.key,
    { type: "start", body: { leaseId, auth, spec } },
    { address: addressOf(provider), signal: AbortSignal.timeout(30_000) },
  );
}

async function attachSession(
  from: Tenant,
  provider: ProviderHandle,
  leaseId: bigint,
  auth: TenantAuth,
): Promise<LeaseSession> {
  return openLeaseSession(
    from.host,
    peerIdFromString(provider.peerId),
    from.key,
    { type: "attach", body: { leaseId, auth, afterSeq: 0 } },
    { address: addressOf(provider), signal: AbortSignal.timeout(30_000) },
  );
}

/** Anything on tenant A's session that should never happen while its job runs. */
function aTrouble(): string[] {
  const trouble = aEvents.filter((e) => e.event.type === "refused" || e.event.type === "result");
  return [
    ...trouble.map((e) => `${e.event.type}: ${JSON.stringify(e.event.body, (_k, v: unknown) => String(v))}`),
    ...(aEnded ? [`session ended${aError ? `: ${String(aError)}` : ""}`] : []),
  ];
}

/*//////////////////////////////////////////////////////////////
                             SET-UP
//////////////////////////////////////////////////////////////*/

beforeAll(async () => {
  market = await startMarket({
    providers: 2,
    config: { maxDurationS: MAX_DURATION_S, chainHeartbeatTimeoutS: GPU_NODE_HEARTBEAT_TIMEOUT_S },
    configFor: (index) =>
      index === 1
        ? {
            cpuJobs: true,
            price: { basePerSecond: CPU_BASE_PRICE.toString(), perGpuPerSecond: GPU_PRICE.toString() },
            // B's lease there waits unstarted through several tests: it must not become slashable.
            chainHeartbeatTimeoutS: 300,
          }
        : {},
  });
  [gpuNode, cpuNode] = [market.providers[0]!, market.providers[1]!];
  tenantA = await market.tenant(0);
  tenantB = await market.tenant(1);
  peerA = peerOf(tenantA);
  peerB = peerOf(tenantB);

  // Tenant A: a long job on provider 0's only GPU, watched for the whole file.
  aLeaseId = await openLease(tenantA, gpuNode, 1, "bad-input-tenant-a");
  const auth = await signTenantAuth(tenantA.account, aLeaseId, peerA.id);
  aSession = await startSession(
    tenantA,
    gpuNode,
    aLeaseId,
    auth,
    jobSpec("while true; do echo tick; sleep 0.5; done", 1, 600),
  );
  const session = aSession;
  void (async () => {
    try {
      for await (const event of session.messages) aEvents.push({ at: Date.now(), event });
    } catch (error) {
      aError = error;
    } finally {
      aEnded = true;
    }
  })();
  await until(
    () =>
      aEnded ||
      (aEvents.filter((e) => e.event.type === "heartbeat").length >= 2 &&
        aEvents.filter((e) => e.event.type === "log").length >= 2),
    60_000,
    "tenant A's job streaming heartbeats and log lines",
  );
  expect(aTrouble()).toEqual([]);
  expect(aEvents[0]!.event.type).toBe("accepted");
  aInitialChainHeartbeat = (await getLease(aLeaseId)).lastHeartbeat;

  // Tenant B: a CPU lease on provider 1, not started yet.
  bLeaseId = await openLease(tenantB, cpuNode, 0, "bad-input-tenant-b");
}, 240_000);

afterAll(async () => {
  await aSession?.close();
  await Promise.all(rawHosts.map((h) => h.stop()));
  await market?.stop();
}, 60_000);

// Whatever the last test sent, A's job keeps streaming and the node keeps running.
afterEach(async () => {
  if (!aSession) return;
  const seen = aEvents.length;
  await until(
    () => aEnded || aEvents.slice(seen).some((e) => e.event.type === "heartbeat"),
    15_000,
    "a new heartbeat on tenant A's session",
  );
  expect(aTrouble()).toEqual([]);
  expect(isAlive(gpuNode.process!.pid)).toBe(true);
  expect(isAlive(cpuNode.process!.pid)).toBe(true);
});

/*//////////////////////////////////////////////////////////////
                              TESTS
//////////////////////////////////////////////////////////////*/

describe("bad bids (real node processes, real chain, loopback libp2p)", () => {
  it("refuses bytes that are not JSON, and JSON that is not an envelope, with bad-request", async () => {
    const mallory = await rawPeer();
    await expectBidRefused(mallory, gpuNode, utf8("GET / HTTP/1.1\r\n\r\nnot json at all"), "bad-request", /malformed/);
    await expectBidRefused(mallory, gpuNode, utf8('{"hello":"world"}'), "bad-request", /malformed/);
    await expectBidRefused(mallory, gpuNode, new Uint8Array([0xff, 0xfe, 0x00, 0x7b]), "bad-request", /malformed/);
  }, 60_000);

  it("refuses a frame larger than the bid limit without reading it, then answers the same peer normally", async () => {
    const mallory = await rawPeer();
    const huge = utf8(JSON.stringify({ junk: "x".repeat(maxMessageBytes.bid + 1024) }));
    await expectBidRefused(mallory, gpuNode, huge, "bad-request", /bid too large/);
    // The same peer is still served: its next, well-formed bid gets an answer.
    await expectBidRefused(mallory, gpuNode, sealBid(mallory, bidFor(SOMEONE)), "no-capacity");
  }, 60_000);

  it("refuses an envelope whose body was changed after signing, and one with no signature", async () => {
    const mallory = await rawPeer();
    const sealed = JSON.parse(new TextDecoder().decode(await sealBid(mallory, bidFor(SOMEONE)))) as {
      b: string;
      s: string;
    };
    const tampered = { ...sealed, b: sealed.b.replace(`"durationS":${LEASE_S}`, `"durationS":${LEASE_S + 1}`) };
    expect(tampered.b).not.toBe(sealed.b);
    await expectBidRefused(mallory, gpuNode, utf8(JSON.stringify(tampered)), "bad-request", /bad message signature/);
    await expectBidRefused(
      mallory,
      gpuNode,
      utf8(JSON.stringify({ ...sealed, s: "" })),
      "bad-request",
      /bad message signature/,
    );
  }, 60_000);

  it("refuses an envelope signed by another key than the connection's peer", async () => {
    const mallory = await rawPeer();
    const otherKey = await generateKeyPair("Ed25519");
    const other: Peer = { ...mallory, key: otherKey, id: peerIdFromPrivateKey(otherKey).toString() };
    await expectBidRefused(mallory, gpuNode, sealBid(other, bidFor(SOMEONE)), "bad-request", /signed by another peer/);
    // Claiming the connection's peer id while signing with another key is a bad signature.
    await expectBidRefused(
      mallory,
      gpuNode,
      sealMessage(otherKey, mallory.id, "bid", bidFor(SOMEONE)),
      "bad-request",
      /bad message signature/,
    );
  }, 60_000);

  it("refuses a message of another type on the bid protocol", async () => {
    const mallory = await rawPeer();
    await expectBidRefused(
      mallory,
      gpuNode,
      sealBid(mallory, bidFor(SOMEONE), "quote"),
      "bad-request",
      /unexpected message type/,
    );
  }, 60_000);

  it("refuses a bid whose body fails the schema", async () => {
    const tenant = tenantB.account.address;
    await expectBidRefused(
      peerB,
      gpuNode,
      sealBid(peerB, { ...bidFor(tenant), jobId: "nope" }),
      "bad-request",
      /invalid bid message/,
    );
    await expectBidRefused(
      peerB,
      gpuNode,
      sealBid(peerB, { ...bidFor(tenant), maxPricePerSecond: "-5", requirements: { gpus: 65 } }),
      "bad-request",
      /invalid bid message/,
    );
  }, 60_000);

  it("refuses a bid for another chain id or another lease manager", async () => {
    const tenant = tenantB.account.address;
    await expectBidRefused(
      peerB,
      gpuNode,
      sealBid(peerB, bidFor(tenant, { chainId: market.deployment.chainId + 1 })),
      "bad-request",
      /this node serves chain/,
    );
    await expectBidRefused(
      peerB,
      gpuNode,
      sealBid(peerB, bidFor(tenant, { leaseManager: "0x1111111111111111111111111111111111111111" })),
      "bad-request",
      /this node serves chain/,
    );
  }, 60_000);

  it("refuses requirements beyond the node: more GPUs, a model or VRAM it lacks, a CPU job on a GPU-only node, a disk quota over its cap", async () => {
    const tenant = tenantB.account.address;
    const cases: { requirements: Bid["requirements"]; message: RegExp }[] = [
      { requirements: { gpus: 8 }, message: /no 8 GPU/ },
      { requirements: { gpus: 1, gpuModel: "H100" }, message: /no 1 GPU/ },
      { requirements: { gpus: 1, minVramMiB: 1_000_000 }, message: /no 1 GPU/ },
      { requirements: { gpus: 0 }, message: /GPU jobs only/ },
      {
        requirements: { gpus: 1, diskGiB: MAX_JOB_DISK_GIB + 1 },
        message: new RegExp(
          `a ${MAX_JOB_DISK_GIB + 1} GiB disk quota; this node gives a job at most ${MAX_JOB_DISK_GIB} GiB`,
        ),
      },
    ];
    for (const { requirements, message } of cases) {
      await expectBidRefused(
        peerB,
        gpuNode,
        sealBid(peerB, bidFor(tenant, { requirements })),
        "requirements-not-met",
        message,
      );
    }
  }, 60_000);

  it("refuses a duration above maxDurationS, or not above the heartbeat timeout", async () => {
    const tenant = tenantB.account.address;
    await expectBidRefused(
      peerB,
      gpuNode,
      sealBid(peerB, bidFor(tenant, { durationS: MAX_DURATION_S + 1 })),
      "requirements-not-met",
      /longest lease/,
    );
    await expectBidRefused(
      peerB,
      gpuNode,
      sealBid(peerB, bidFor(tenant, { durationS: GPU_NODE_HEARTBEAT_TIMEOUT_S })),
      "requirements-not-met",
      /heartbeat timeout/,
    );
  }, 60_000);

  it("refuses a max price below the node's price", async () => {
    await expectBidRefused(
      peerB,
      gpuNode,
      sealBid(peerB, bidFor(tenantB.account.address, { maxPricePerSecond: GPU_PRICE - 1n })),
      "price-below-floor",
      new RegExp(`${GPU_PRICE}`),
    );
  }, 60_000);

  it("answers no-capacity to a valid bid while its only GPU runs tenant A's lease", async () => {
    await expectBidRefused(peerB, gpuNode, sealBid(peerB, bidFor(tenantB.account.address)), "no-capacity");
  }, 60_000);

  it("rate-limits a bid flood from an unknown peer with one log line per window, and keeps answering others", async () => {
    const flooder = await rawPeer();
    await flooder.host.dial(addressOf(gpuNode), { signal: AbortSignal.timeout(30_000) });
    const bytes = await sealBid(flooder, bidFor(SOMEONE));
    const burst = BID_RATE_LIMIT.count + 10;
    const responses = await Promise.all(Array.from({ length: burst }, () => sendBidBytes(flooder, gpuNode, bytes)));
    const reasons = responses.map((r) => (r.kind === "refusal" ? r.reason : "quote"));
    expect(reasons.filter((r) => r === "no-capacity")).toHaveLength(BID_RATE_LIMIT.count);
    expect(reasons.filter((r) => r === "rate-limited")).toHaveLength(burst - BID_RATE_LIMIT.count);
    const limited = responses.find((r) => r.kind === "refusal" && r.reason === "rate-limited");
    expect(limited?.kind === "refusal" && limited.message).toMatch(/too many bids/);

    // Another peer is answered on its merits meanwhile.
    await expectBidRefused(peerB, gpuNode, sealBid(peerB, bidFor(tenantB.account.address)), "no-capacity");

    // The flood goes on within the same window: still refused, still no more log lines.
    for (let i = 0; i < 5; i++) {
      const response = await sendBidBytes(flooder, gpuNode, bytes);
      expect(response).toMatchObject({ kind: "refusal", reason: "rate-limited" });
    }
    await until(
      () => logged(gpuNode, "bid refused", flooder.id).length >= BID_RATE_LIMIT.count + 1,
      15_000,
      "the flood's log lines",
    );
    const lines = logged(gpuNode, "bid refused", flooder.id);
    expect(lines.filter((l) => l.reason === "rate-limited")).toHaveLength(1);
    expect(lines.filter((l) => l.reason === "no-capacity")).toHaveLength(BID_RATE_LIMIT.count);
    expect(lines).toHaveLength(BID_RATE_LIMIT.count + 1);
    expectedLog.set(ledgerKey(gpuNode, "bid refused", flooder.id), [
      ...Array<string>(BID_RATE_LIMIT.count).fill("no-capacity"),
      "rate-limited",
    ]);
  }, 90_000);
});

describe("bad lease sessions (real node processes, real chain, loopback libp2p)", () => {
  it("refuses a start for a lease id that is not on chain", async () => {
    const leaseId = 1_000_000n;
    const auth = await signTenantAuth(tenantB.account, leaseId, peerB.id);
    const session = await startSession(tenantB, gpuNode, leaseId, auth, jobSpec("echo never", 1));
    const refused = await expectSessionRefused(session.messages, peerB, gpuNode, [
      "lease-not-active",
      "unknown-lease",
      "not-our-lease",
    ]);
    expect(refused.leaseId).toBe(leaseId);
  }, 60_000);

  it("refuses tenant A's lease to tenant B proving its own address: not-your-lease, for start and attach", async () => {
    const auth = await signTenantAuth(tenantB.account, aLeaseId, peerB.id);
    const start = await startSession(tenantB, gpuNode, aLeaseId, auth, jobSpec("echo hijack", 1));
    await expectSessionRefused(start.messages, peerB, gpuNode, ["not-your-lease"], /another tenant/);
    const attach = await attachSession(tenantB, gpuNode, aLeaseId, auth);
    await expectSessionRefused(attach.messages, peerB, gpuNode, ["not-your-lease"], /another tenant/);
  }, 60_000);

  it("refuses proofs made for another peer id: A's proof replayed by B, and B's own proof for A's peer", async () => {
    const replayed = await signTenantAuth(tenantA.account, aLeaseId, peerA.id);
    const attach = await attachSession(tenantB, gpuNode, aLeaseId, replayed);
    await expectSessionRefused(attach.messages, peerB, gpuNode, ["bad-request"], /tenant proof/);

    const forOtherPeer = await signTenantAuth(tenantB.account, bLeaseId, peerA.id);
    const start = await startSession(tenantB, cpuNode, bLeaseId, forOtherPeer, jobSpec("echo never", 0));
    await expectSessionRefused(start.messages, peerB, cpuNode, ["bad-request"], /tenant proof/);

    const stale = await signTenantAuth(tenantB.account, bLeaseId, peerB.id, Date.now() - 10 * 60_000);
    const late = await startSession(tenantB, cpuNode, bLeaseId, stale, jobSpec("echo never", 0));
    await expectSessionRefused(late.messages, peerB, cpuNode, ["bad-request"], /stale/);
  }, 60_000);

  it("refuses a lease that another provider serves: not-our-lease", async () => {
    const auth = await signTenantAuth(tenantB.account, bLeaseId, peerB.id);
    const session = await startSession(tenantB, gpuNode, bLeaseId, auth, jobSpec("echo never", 0));
    await expectSessionRefused(session.messages, peerB, gpuNode, ["not-our-lease"]);
  }, 60_000);

  it("refuses to attach to a lease that has no job on the node: unknown-lease", async () => {
    const auth = await signTenantAuth(tenantB.account, bLeaseId, peerB.id);
    const session = await attachSession(tenantB, cpuNode, bLeaseId, auth);
    await expectSessionRefused(session.messages, peerB, cpuNode, ["unknown-lease"]);
  }, 60_000);

  it("refuses a spec asking for more GPUs than the quote reserved, or than the node has", async () => {
    const auth = await signTenantAuth(tenantB.account, bLeaseId, peerB.id);
    const one = await startSession(tenantB, cpuNode, bLeaseId, auth, jobSpec("echo greedy", 1));
    await expectSessionRefused(one.messages, peerB, cpuNode, ["spec-mismatch", "no-capacity"]);
    const eight = await startSession(tenantB, cpuNode, bLeaseId, auth, jobSpec("echo greedier", 8));
    await expectSessionRefused(eight.messages, peerB, cpuNode, ["spec-mismatch", "no-capacity"]);
  }, 60_000);

  it("refuses a spec asking for a larger disk quota than the node gives a job: spec-mismatch", async () => {
    const auth = await signTenantAuth(tenantB.account, bLeaseId, peerB.id);
    const spec = jobSpec("echo roomy", 0);
    const roomy = await startSession(tenantB, cpuNode, bLeaseId, auth, {
      ...spec,
      resources: { ...spec.resources, diskGiB: MAX_JOB_DISK_GIB * 2 },
    });
    await expectSessionRefused(
      roomy.messages,
      peerB,
      cpuNode,
      ["spec-mismatch"],
      new RegExp(`this provider gives a job at most ${MAX_JOB_DISK_GIB} GiB`),
    );
  }, 60_000);

  it("refuses a spec that runs an image on a lease whose quote named none, before pulling anything", async () => {
    const auth = await signTenantAuth(tenantB.account, bLeaseId, peerB.id);
    const image = `127.0.0.1:5000/baton/busybox@sha256:${"ab".repeat(32)}`;
    const session = await startSession(tenantB, cpuNode, bLeaseId, auth, { ...jobSpec("echo boxed", 0), image });
    await expectSessionRefused(
      session.messages,
      peerB,
      cpuNode,
      ["spec-mismatch"],
      new RegExp(`the spec runs image ${image}; the lease was opened for a job without one`),
    );
  }, 60_000);

  it("refuses malformed, tampered, misattributed, wrongly typed, schema-failing and oversized session messages", async () => {
    const mallory = await rawPeer();
    const otherKey = await generateKeyPair("Ed25519");
    const otherId = peerIdFromPrivateKey(otherKey).toString();
    const auth = await signTenantAuth(tenantB.account, aLeaseId, mallory.id);
    const validStart = await sealMessage(mallory.key, mallory.id, "start", {
      leaseId: aLeaseId,
      auth,
      spec: jobSpec("echo hi", 1),
    });
    const envelope = JSON.parse(new TextDecoder().decode(validStart)) as { b: string };
    const tampered = utf8(JSON.stringify({ ...envelope, b: envelope.b.replace("echo hi", "echo pwned") }));
    const cases: { frame: Uint8Array; message: RegExp }[] = [
      { frame: utf8("not an envelope"), message: /malformed/ },
      { frame: tampered, message: /bad message signature/ },
      {
        frame: await sealMessage(otherKey, otherId, "attach", { leaseId: aLeaseId, auth, afterSeq: 0 }),
        message: /signed by another peer/,
      },
      {
        frame: await sealMessage(mallory.key, mallory.id, "checkpoint-ack", { leaseId: aLeaseId, cid: "bafy" }),
        message: /unexpected message type/,
      },
      {
        frame: await sealMessage(mallory.key, mallory.id, "start", { leaseId: "abc", auth: {}, spec: {} }),
        message: /invalid start message/,
      },
      { frame: new Uint8Array(maxMessageBytes.lease + 1024), message: /too large/ },
      { frame: utf8(JSON.stringify({ ...envelope, s: "" })), message: /bad message signature/ },
    ];
    for (const { frame, message } of cases) {
      const { stream, events } = await rawSession(mallory, gpuNode);
      await writeMessage(stream, frame, AbortSignal.timeout(30_000));
      await expectSessionRefused(events, mallory, gpuNode, ["bad-request"], message);
      await stream.close().catch(() => stream.abort(new Error("done")));
    }
  }, 120_000);

  it(
    "closes a session that sends nothing once the open timeout passes",
    async () => {
      const mallory = await rawPeer();
      const started = Date.now();
      const { stream, events } = await rawSession(mallory, gpuNode);
      await expectSessionRefused(events, mallory, gpuNode, ["timeout"], /in time/, SESSION_OPEN_TIMEOUT_MS + 30_000);
      expect(Date.now() - started).toBeGreaterThanOrEqual(SESSION_OPEN_TIMEOUT_MS - 1_000);
      await stream.close().catch(() => stream.abort(new Error("done")));
    },
    SESSION_OPEN_TIMEOUT_MS + 60_000,
  );

  it("after all its bad starts, still runs tenant B's lease with the right spec", async () => {
    const auth = await signTenantAuth(tenantB.account, bLeaseId, peerB.id);
    const session = await startSession(tenantB, cpuNode, bLeaseId, auth, jobSpec("echo ok from $BATON_LEASE_ID", 0));
    const result = await readToEnd(
      (async function* () {
        for await (const event of session.messages) {
          yield event;
          if (event.type === "result" || event.type === "refused") return;
        }
      })(),
      60_000,
    );
    await session.close();
    expect(result.error).toBeUndefined();
    const types = result.events.map((e) => e.type);
    // A refusal names its cause only in the node's log: the assertion shows it.
    const why = logEntries(cpuNode)
      .filter((e) => e.msg === "session failed")
      .map((e) => JSON.stringify(e));
    expect(types[0], `refused; the node logged ${why.join("\n") || "no failure"}`).toBe("accepted");
    expect(types.at(-1)).toBe("result");
    expect(result.events.flatMap((e) => (e.type === "log" ? [e.body.line] : []))).toEqual([`ok from ${bLeaseId}`]);
    const last = result.events.at(-1)!;
    expect(last.type === "result" && last.body.exitCode).toBe(0);
  }, 90_000);
});

describe("the node keeps serving everyone else", () => {
  it("tenant A's job streamed heartbeats and logs throughout, and its lease is still active and heartbeating on chain", async () => {
    // Fresh output from A's job, after every bad input above.
    const now = Date.now();
    await until(
      () =>
        aEnded ||
        (aEvents.some((e) => e.at > now && e.event.type === "heartbeat") &&
          aEvents.some((e) => e.at > now && e.event.type === "log")),
      20_000,
      "new heartbeats and log lines from tenant A's job",
    );
    expect(aTrouble()).toEqual([]);
    const events = aEvents.map((e) => e.event);
    expect(events[0]!.type).toBe("accepted");
    const beats = events.flatMap((e) => (e.type === "heartbeat" ? [e.body] : []));
    for (let i = 1; i < beats.length; i++) {
      expect(beats[i]!.seq).toBeGreaterThan(beats[i - 1]!.seq);
      // The node's own clock: no bad input stalled it for long.
      expect(beats[i]!.at - beats[i - 1]!.at).toBeLessThan(5_000);
    }
    // The runtime exists (and heartbeats) from acceptance; its job may take a beat or two to start on
    // a loaded machine. Once running, it never reports anything else.
    const states = beats.map((b) => b.state);
    const running = states.indexOf("running");
    expect(running).toBeGreaterThanOrEqual(0);
    expect(states.slice(0, running).every((state) => state === "starting")).toBe(true);
    expect(states.slice(running).every((state) => state === "running")).toBe(true);
    const seqs = events.flatMap((e) => ("seq" in e.body ? [e.body.seq] : []));
    expect(new Set(seqs).size).toBe(seqs.length);
    const lines = events.flatMap((e) => (e.type === "log" ? [e.body.line] : []));
    expect(lines.length).toBeGreaterThan(10);
    expect(new Set(lines)).toEqual(new Set(["tick"]));

    // On chain: still active, and the node kept heartbeating it.
    await until(
      async () => (await getLease(aLeaseId)).lastHeartbeat > aInitialChainHeartbeat,
      30_000,
      "a newer on-chain heartbeat for A's lease",
    );
    const lease = await getLease(aLeaseId);
    expect(lease.status).toBe(1);
    expect(lease.slashable).toBe(false);
    expect(lease.expired).toBe(false);
    expect(lease.tenant).toBe(tenantA.account.address);
    for (const provider of [gpuNode, cpuNode]) expect(isAlive(provider.process!.pid)).toBe(true);
  }, 90_000);

  it("logged every refusal exactly once, with the reason the peer was given, and nothing as an internal failure", () => {
    // Exactly one log line per refusal, with the reason the peer was given, and nothing else refused.
    for (const provider of [gpuNode, cpuNode]) {
      for (const kind of ["bid refused", "session refused"] as const) {
        const expected = [...expectedLog.entries()]
          .filter(([key]) => key.startsWith(`${provider.index}|${kind}|`))
          .flatMap(([key, reasons]) => reasons.map((reason) => `${key.split("|")[2]} ${reason}`));
        const actual = logged(provider, kind).map((e) => `${e.peer} ${e.reason}`);
        expect(actual.sort()).toEqual(expected.sort());
      }
      const failures = logEntries(provider).filter(
        (e) => e.msg === "session failed" || e.level === "error" || e.reason === "internal",
      );
      expect(failures).toEqual([]);
    }
  });
});
