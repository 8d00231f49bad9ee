import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import type { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { contracts, writeContract } from "../../sdk/chain/client.ts";
import { publishCheckpoint } from "../../sdk/ipfs/checkpoint.ts";
import { generateJobKey } from "../../sdk/ipfs/crypto.ts";
import type { IpfsNode } from "../../sdk/ipfs/node.ts";
import { MIN_JOB_DISK_GIB, type JobSpec } from "../../sdk/job-spec.ts";
import type { LeaseSession } from "../../sdk/wire/clients.ts";
import type { ProviderMessage, TenantMessage } from "../../sdk/wire/messages.ts";
import { signTenantAuth } from "../../sdk/wire/tenant-auth.ts";
import { bidTo, chainStatusOf, openSession, quoteAndOpenLease, readUntil } from "../helpers/leases.ts";
import { startMarket, type Market, type ProviderHandle, type Tenant } from "../helpers/market.ts";

/*
 * A holder's lease on a real provider node process, real chain, loopback libp2p: the node runs no
 * job, pins the checkpoints its tenant names (fetched from the peers the tenant names, here the
 * tenant's own IPFS store), keeps the newest `keep` within its disk quota, serves them once the
 * tenant's copies are gone, still holds them after a SIGKILL and restart, and lets them go when the
 * tenant closes the lease.
 */

const LEASE_S = 600;
const MiB = 2 ** 20;

let market: Market;
let holder: ProviderHandle;
let tenant: Tenant;
let ipfs: IpfsNode;
let tenantDir: string | undefined;
let leaseId: bigint;
let session: LeaseSession;

/** A holder's lease spec: no GPUs, the smallest disk quota (64 MiB); its command never runs. */
const holdSpec: JobSpec = {
  name: "hold",
  command: ["true"],
  env: {},
  inputs: [],
  resources: { gpus: 0, cpus: 1, memoryMiB: 64, diskGiB: MIN_JOB_DISK_GIB },
  network: false,
  maxDurationS: LEASE_S,
};

const open = (
  first: { type: "start"; body: TenantMessage<"start"> } | { type: "attach"; body: TenantMessage<"attach"> },
): Promise<LeaseSession> => openSession(tenant, holder, first);

/** A checkpoint's ciphertext as a holder sees it: `mib` MiB of random bytes, added and pinned in the tenant's store. */
async function checkpointOf(mib: number): Promise<{ cid: CID; bytes: Buffer }> {
  const bytes = randomBytes(mib * MiB);
  return { cid: await ipfs.add([bytes], { pin: true }), bytes };
}

/** Where the tenant's store serves blocks. */
const tenantAddresses = (): string[] => tenant.host.getMultiaddrs().map((a) => a.toString());

/** Names a checkpoint to hold, fetched from the tenant, and waits for its `held`. */
async function hold(cid: CID, on: LeaseSession = session): Promise<ProviderMessage<"held">> {
  await on.send("hold", { leaseId, cid: cid.toString(), providers: tenantAddresses() });
  const events = await readUntil(on, (e) => e.type === "held" && e.body.cid === cid.toString());
  return events.at(-1)!.body as ProviderMessage<"held">;
}

/** Forgets the tenant's own copy, so that only the holder has it. */
async function dropTenantCopy(cid: CID): Promise<void> {
  await ipfs.unpin(cid);
  await ipfs.gc();
  expect(await ipfs.has(cid)).toBe(false);
}

const chainStatus = (): Promise<string> => chainStatusOf(market, leaseId);

const auth = () => signTenantAuth(tenant.account, leaseId, tenant.host.peerId.toString());

beforeAll(async () => {
  market = await startMarket({
    providers: 1,
    // A GPU node with one lease slot that takes no CPU jobs: it holds all the same, apart from its slot.
    configFor: () => ({
      cpuJobs: false,
      maxLeases: 1,
      price: { basePerSecond: "1000000000", perGpuPerSecond: "1000000000000" },
    }),
  });
  holder = market.providers[0]!;
  tenantDir = await mkdtemp(path.join(os.tmpdir(), "baton-hold-lease-"));
  tenant = await market.tenant(0, { ipfsDir: path.join(tenantDir, "ipfs") });
  ipfs = tenant.ipfs!;
  leaseId = await quoteAndOpenLease(tenant, market.deployment, holder, {
    jobName: "hold-lease",
    requirements: { gpus: 0, diskGiB: holdSpec.resources.diskGiB, hold: true },
    durationS: LEASE_S,
  });
});

afterAll(async () => {
  await session?.close().catch(() => undefined);
  await market?.stop();
  if (tenantDir) await rm(tenantDir, { recursive: true, force: true });
}, 60_000);

describe("a holder's lease (real node process, real chain, loopback libp2p)", () => {
  let a: { cid: CID; bytes: Buffer };
  let b: { cid: CID; bytes: Buffer };
  let c: { cid: CID; bytes: Buffer };

  it("refuses a holder's start that asks for GPUs or a task, and takes a well-formed one, running no job", async () => {
    const start = async (body: Partial<TenantMessage<"start">>) =>
      open({ type: "start", body: { leaseId, auth: await auth(), spec: holdSpec, hold: { keep: 2 }, ...body } });
    const refusal = async (s: LeaseSession) => (await readUntil(s, (e) => e.type === "refused")).at(-1)!.body;

    const withGpu = await start({ spec: { ...holdSpec, resources: { ...holdSpec.resources, gpus: 1 } } });
    expect(await refusal(withGpu)).toMatchObject({ reason: "spec-mismatch", message: /takes no GPUs/ });
    const withTask = await start({ taskId: "t1" });
    expect(await refusal(withTask)).toMatchObject({ reason: "bad-request", message: /no task/ });
    // Quoted for a holder: it runs no job instead, nor would a job's quote start a hold.
    const job = await open({ type: "start", body: { leaseId, auth: await auth(), spec: holdSpec } });
    expect(await refusal(job)).toMatchObject({ reason: "spec-mismatch", message: /quote was for a holder's lease/ });

    session = await start({});
    const events = await readUntil(session, (e) => e.type === "heartbeat");
    expect(events.map((e) => e.type)).toEqual(["accepted", "heartbeat"]);
    expect(events[1]!.body).toMatchObject({ state: "running" });
    // No job: nothing is launched, nothing logged.
    expect(
      holder.process!.lines.some((l) => /job started|launch/i.test(l) && l.includes(`"leaseId":"${leaseId}"`)),
    ).toBe(false);
    expect(await chainStatus()).toBe("Active");
  });

  it("quotes a GPU job beside the holder's lease in its one lease slot, another holder's too, and no CPU job", async () => {
    const bid = (requirements: Parameters<typeof bidTo>[3]["requirements"]) =>
      bidTo(tenant, market.deployment, holder, { jobName: "beside-hold", requirements, durationS: LEASE_S });
    expect(await bid({ gpus: 1 })).toMatchObject({ kind: "quote" });
    expect(await bid({ gpus: 0, hold: true })).toMatchObject({ kind: "quote" });
    expect(await bid({ gpus: 0 })).toMatchObject({ kind: "refusal", reason: "requirements-not-met" });
    expect(await bid({ gpus: 1, hold: true })).toMatchObject({ kind: "refusal", reason: "bad-request" });
  });

  it("pins each checkpoint named, keeps the newest two, and serves them once the tenant's copies are gone", async () => {
    [a, b, c] = [await checkpointOf(1), await checkpointOf(1), await checkpointOf(1)];
    expect(await hold(a.cid)).toMatchObject({ cid: a.cid.toString(), bytes: MiB, released: [] });
    expect(await hold(b.cid)).toMatchObject({ bytes: MiB, released: [] });
    expect(await hold(c.cid)).toMatchObject({ bytes: MiB, released: [a.cid.toString()] });
    // One held already is acknowledged again at once, nothing released.
    const again = await hold(b.cid);
    expect(again).toMatchObject({ bytes: MiB });
    expect(again.released).toBeUndefined();

    for (const { cid } of [a, b, c]) await dropTenantCopy(cid);
    const chunks: Uint8Array[] = [];
    for await (const chunk of ipfs.cat(c.cid, { providers: [holder.address!], stallTimeoutMs: 10_000 }))
      chunks.push(chunk);
    expect(Buffer.concat(chunks).equals(c.bytes)).toBe(true);
    await ipfs.unpin(c.cid).catch(() => undefined);
    await ipfs.gc();
  });

  it("refuses a checkpoint over its disk quota beside those it keeps", async () => {
    // 64 MiB of quota, 1 MiB kept beside the new one: 63.5 MiB does not fit.
    const big = await checkpointOf(63.5);
    const tooBig = await hold(big.cid);
    expect(tooBig.error).toMatch(/over the lease's disk quota/);
    expect(tooBig.bytes).toBeUndefined();
    await ipfs.unpin(big.cid);
  });

  it("still holds what it held after a SIGKILL and restart of the node, and keeps counting from there", async () => {
    const old = holder.process!;
    old.child.kill("SIGKILL");
    await old.exited;
    await holder.start();
    session = await open({ type: "attach", body: { leaseId, auth: await auth(), afterSeq: 0 } });
    const d = await checkpointOf(1);
    // b and c were held before the restart: d pushes b out.
    expect(await hold(d.cid)).toMatchObject({ bytes: MiB, released: [b.cid.toString()] });
    const chunks: Uint8Array[] = [];
    for await (const chunk of ipfs.cat(c.cid, { providers: [holder.address!], stallTimeoutMs: 10_000 }))
      chunks.push(chunk);
    expect(Buffer.concat(chunks).equals(c.bytes)).toBe(true);
    await ipfs.unpin(c.cid).catch(() => undefined);
  });

  it("answers the same hold sent twice (a tenant that re-attached sends its holds again) twice, neither passed over", async () => {
    const e = await checkpointOf(1);
    const body = { leaseId, cid: e.cid.toString(), providers: tenantAddresses() };
    await session.send("hold", body);
    await session.send("hold", body);
    let answers = 0;
    const events = await readUntil(session, (ev) => ev.type === "held" && ev.body.cid === body.cid && ++answers === 2);
    const held = events.flatMap((ev) => (ev.type === "held" && ev.body.cid === body.cid ? [ev.body] : []));
    expect(held.map((h) => [h.bytes, h.error])).toEqual([
      [MiB, undefined],
      [MiB, undefined],
    ]);
  });

  it("refuses a hold on a lease that is not a holder's", async () => {
    const body = { leaseId: leaseId + 1000n, cid: a.cid.toString(), providers: [] };
    await session.send("hold", body);
    const refused = (await readUntil(session, (e) => e.type === "refused")).at(-1)!.body;
    expect(refused).toMatchObject({ reason: "bad-request", message: /not a holder's lease of this session/ });
    session = await open({ type: "attach", body: { leaseId, auth: await auth(), afterSeq: 0 } });
  });

  it("a lease given the job's key unpacks the newest checkpoint it holds once it acknowledged it, and nothing that fails its digest", async () => {
    const jobKey = generateJobKey();
    const keyed = await quoteAndOpenLease(tenant, market.deployment, holder, {
      jobName: "hold-lease-unpack",
      requirements: { gpus: 0, diskGiB: holdSpec.resources.diskGiB, hold: true },
      durationS: LEASE_S,
    });
    const on = await openSession(tenant, holder, {
      type: "start",
      body: {
        leaseId: keyed,
        auth: await signTenantAuth(tenant.account, keyed, tenant.host.peerId.toString()),
        spec: holdSpec,
        hold: { keep: 1 },
        key: Buffer.from(jobKey).toString("base64"),
      },
    });
    onTestFinished(() => on.close().catch(() => undefined));
    await readUntil(on, (e) => e.type === "accepted");
    const dir = await mkdtemp(path.join(os.tmpdir(), "baton-unpack-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    await writeFile(path.join(dir, "state.json"), JSON.stringify({ step: 7 }));
    const published = await publishCheckpoint(ipfs, jobKey, dir, { maxBytes: MiB });
    const holdOn = async (sha256: string): Promise<ProviderMessage<"held">> => {
      const cid = published.cid.toString();
      await on.send("hold", { leaseId: keyed, cid, providers: tenantAddresses(), sha256 });
      return (await readUntil(on, (e) => e.type === "held" && e.body.cid === cid)).at(-1)!
        .body as ProviderMessage<"held">;
    };
    const line = (pattern: RegExp) => holder.process!.waitFor(pattern, 30_000);
    const bad = line(/checkpoint not unpacked ahead/);
    // A digest that is not the plaintext's: held (the ciphertext is what it is), never unpacked.
    expect(await holdOn("0".repeat(64))).toMatchObject({ cid: published.cid.toString() });
    expect(await bad).toMatch(/does not match its announced digest/);
    const good = line(new RegExp(`checkpoint unpacked ahead.*"leaseId":"${keyed}"`));
    const acked = await holdOn(published.plaintextSha256);
    expect(acked.error).toBeUndefined();
    expect(acked.unpacked).toBeUndefined();
    await good;
    // Then the tenant is told: a hand-off to this node now takes the files as they are.
    const warm = (await readUntil(on, (e) => e.type === "held" && e.body.unpacked === true)).at(-1)!;
    expect(warm.body).toMatchObject({ cid: published.cid.toString(), unpacked: true });
    // The lease without the key never unpacks.
    expect(
      holder.process!.lines.some((l) => /checkpoint unpacked ahead/.test(l) && l.includes(`"leaseId":"${leaseId}"`)),
    ).toBe(false);
    const released = line(new RegExp(`holds released.*"leaseId":"${keyed}"`));
    await writeContract(tenant.chain, {
      ...contracts(market.deployment).leaseManager,
      functionName: "close",
      args: [keyed],
    });
    await released;
  });

  it("lets everything go once the tenant closes the lease", async () => {
    const { leaseManager } = contracts(market.deployment);
    const released = holder.process!.waitFor(new RegExp(`holds released.*"leaseId":"${leaseId}"`), 60_000);
    await writeContract(tenant.chain, { ...leaseManager, functionName: "close", args: [leaseId] });
    expect(await released).toContain(`"leaseId":"${leaseId}"`);
    expect(await chainStatus()).toBe("Closed");
  });
});
