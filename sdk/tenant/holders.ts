import { multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";
import { zeroHash, type Address, type Hex } from "viem";

import { bid } from "../actions/bid.ts";
import { findOffers, offerMatches, type Requirements } from "../actions/findOffers.ts";
import { openLease } from "../actions/openLease.ts";
import { allowanceKept } from "../actions/signOpening.ts";
import { watchLease, type LeaseWatch } from "../actions/watchLease.ts";
import { holdJobId } from "../chain/job-ids.ts";
import type { BatonClient } from "../client.ts";
import { ProviderFaultError, shortMessageOf } from "../errors.ts";
import { sampleBlocks } from "../ipfs/block-stream.ts";
import { jobDiskGiB, parseJobSpec, type JobSpec } from "../job-spec.ts";
import type { Logger } from "../logger.ts";
import { sleep } from "../utils/retry.ts";
import { MAX_HOLD_PROVIDERS, type TenantMessage } from "../wire/messages.ts";
import { HAND_OFF_SEARCH_PAUSE_MS, leaseDeposit, OFFER_TIMEOUT_MS } from "./hand-off-policy.ts";
import type { JobEvents } from "./job-events.ts";
import { endRecordedLease, type OnSlash } from "./job-settlement.ts";
import type { CheckpointRecord, JobRecord, LeaseRecord } from "./job-store.ts";
import { jobRequirements, openedLease } from "./lease-acquisition.ts";
import { leaseLiveness } from "./lease-session.ts";
import { LeaseTopUps } from "./lease-top-ups.ts";

/**
 * How long a checkpoint waits for the job's holders to be leased (at its start, or after one was
 * lost) before it is held by those there are, and so not safe if they are fewer than asked for.
 */
const HOLDERS_WAIT_MS = 60_000;

/** How many leaves of each checkpoint `tenantCopy: "sample"` fetches from each holder to check it. */
const SAMPLED_LEAVES = 4;

/** How long a sampled block may take to come before its holder counts as not having it. */
const SAMPLE_STALL_MS = 30_000;

/**
 * The longest a holder's lease is asked to run. The chain ends a lease at its quote's duration
 * whatever its deposit, and a job may span several leases of its `maxDurationS`: a holder's lease
 * asks for this much (or the least any offer allows, if less), is given one `maxDurationS` at a
 * time, and is topped up as the job goes on. A job that runs longer has its holder replaced.
 */
const HOLDER_LEASE_S = 24 * 3600;

/** A holder's lease spec: no GPUs, no image, the job's disk quota (or `diskGiB`); its command never runs. */
export function holdSpec(spec: JobSpec, diskGiB = jobDiskGiB(spec)): JobSpec {
  return parseJobSpec({
    name: "hold",
    command: ["hold"],
    resources: { gpus: 0, cpus: 1, memoryMiB: 64, diskGiB },
    maxDurationS: spec.maxDurationS,
  });
}

/** Where a lease's provider serves blocks: its listen addresses, as dialable multiaddrs. */
export function leaseAddresses(lease: Pick<LeaseRecord, "addresses" | "peerId">): string[] {
  return lease.addresses.map((address) => `${address}/p2p/${lease.peerId}`);
}

export interface CheckpointHoldersInit {
  client: BatonClient;
  record: JobRecord;
  events: JobEvents;
  log: Logger;
  onSlash: OnSlash;
  /** A holder lost: its lease was ended, and it waits for its slash if its provider does not acknowledge. */
  onLost: (lease: LeaseRecord) => void;
}

/** One holder as the tenant follows it: its lease, its session, and the holds it has not answered yet. */
interface Holder {
  lease: LeaseRecord;
  watch: LeaseWatch;
  /** Keeps its lease funded while the job runs, as the job's own lease is (the job may span several leases). */
  topUps: LeaseTopUps;
  /** Settles once the holder accepted its lease (or was lost first). */
  accepted: Promise<void>;
  /** The holds sent and not yet answered, by CID, each with the message that asked for it. */
  waiting: Map<string, { hold: TenantMessage<"hold">; resolve: () => void; reject: (error: Error) => void }>;
}

/**
 * A job's holders (`replication.holders`): other providers, each paid through a lease of its own (no
 * GPUs, the node's built-in hold job, the job's escrow, heartbeats and slashing), that pin every
 * checkpoint straight from the provider serving the job. A holder lost (failed, refused) is ended and
 * replaced, and the newest safe checkpoint is pinned on its replacement. Their leases are in the job's
 * record (`holders`), so a tenant that restarts follows them again.
 */
export class CheckpointHolders {
  readonly #init: CheckpointHoldersInit;
  readonly #holders = new Map<string, Holder>();
  readonly #stop = new AbortController();
  /** The opening of missing holders under way, if any. */
  #filling: Promise<void> | undefined;
  #started = false;

  constructor(init: CheckpointHoldersInit) {
    this.#init = init;
  }

  /** How many holders the job asks for. */
  get wanted(): number {
    return this.#init.record.options.replication?.holders ?? 0;
  }

  /** Follows the holders the record has running (after a restart), and leases the missing ones; once. */
  start(): void {
    if (this.wanted === 0 || this.#started) return;
    this.#started = true;
    for (const lease of this.#init.record.holders ?? []) {
      if (lease.state === "starting" || lease.state === "running") this.#follow(lease, undefined);
    }
    this.#fill();
  }

  /** The holders' providers (Ethereum addresses): warm standbys for a hand-off (see `findOffers`' `standby`). */
  providers(): string[] {
    return [...this.#holders.values()].map((h) => h.lease.provider);
  }

  /** Where the holders serve blocks: for a provider that resumes the job, or another holder, to fetch from. */
  addresses(): string[] {
    return [...this.#holders.values()].flatMap((h) => leaseAddresses(h.lease));
  }

  /**
   * Pins a checkpoint on every holder, each fetching it from `from` (the provider that serves it)
   * and from the other holders. Waits (up to a minute) for missing holders to be leased first. With
   * `sample`, each holder that acknowledged it is then checked by a few of its blocks (see
   * `sampleBlocks`); one that fails that is lost (replaced) and does not count.
   *
   * @returns how many holders acknowledged it (and passed the check): all of those asked; and the
   * bytes the checks fetched.
   * @throws {ProviderFaultError} when fewer than {@link wanted} did.
   */
  async hold(
    { cid, sha256 }: Pick<CheckpointRecord, "cid" | "sha256">,
    from: readonly string[],
    signal: AbortSignal,
    { sample = false }: { sample?: boolean } = {},
  ): Promise<{ holders: number; sampledBytes: number }> {
    if (this.#filling) {
      await Promise.race([
        this.#filling,
        sleep(HOLDERS_WAIT_MS, { signal: AbortSignal.any([signal, this.#stop.signal]) }),
      ]);
    }
    const holders = [...this.#holders.values()];
    let sampledBytes = 0;
    const outcomes = await Promise.allSettled(
      holders.map(async (holder) => {
        await this.#holdOn(holder, { cid, sha256 }, from, signal);
        if (sample) sampledBytes += await this.#sample(holder, cid, signal);
      }),
    );
    const failures = outcomes.flatMap((o) => (o.status === "rejected" ? [shortMessageOf(o.reason)] : []));
    const acknowledged = holders.length - failures.length;
    if (acknowledged < this.wanted) {
      throw new ProviderFaultError(`${acknowledged} of ${this.wanted} holder(s) hold it`, {
        details: failures.join("; ") || "no holder is leased",
      });
    }
    return { holders: acknowledged, sampledBytes };
  }

  /**
   * The job's new lease went to a holder's provider (a warm standby: it resumes from what it holds).
   * Once the job started there, that holder's lease is closed (it holds nothing for another) and a
   * holder leased elsewhere in its place; until then it goes on holding the checkpoint resumed from.
   */
  standbyTaken(lease: LeaseRecord): void {
    const holder = [...this.#holders.values()].find((h) => h.lease.provider === lease.provider);
    if (!holder) return;
    const off = this.#init.events.on("started", (event) => {
      if (event.leaseId !== BigInt(lease.leaseId)) return;
      off();
      void this.#retire(holder);
    });
  }

  async #retire(holder: Holder): Promise<void> {
    const { client, record, events } = this.#init;
    const { lease } = holder;
    if (this.#holders.get(lease.leaseId) !== holder) return;
    this.#holders.delete(lease.leaseId);
    await this.#end(holder);
    await client.jobs.save(record);
    events.emit({ type: "holder-retired", leaseId: BigInt(lease.leaseId), provider: lease.provider as Address });
    this.#fill();
  }

  /** Ends every holder's lease (the job ended): closed, its unused deposit refunded. */
  async close(): Promise<void> {
    this.#stop.abort();
    await this.#filling;
    for (const holder of this.#holders.values()) await this.#end(holder);
    this.#holders.clear();
    await this.#init.client.jobs.save(this.#init.record);
  }

  /** Stops following a holder and closes its lease, which served as asked: `completed`. */
  async #end(holder: Holder): Promise<void> {
    const { client, record, log, onSlash } = this.#init;
    await unfollow(holder);
    try {
      await endRecordedLease(client, record, holder.lease, { onSlash });
      holder.lease.state = "completed";
      holder.lease.endedAt = Date.now();
    } catch (error) {
      log.warn("holder's lease not settled", { leaseId: holder.lease.leaseId, error });
    }
  }

  /** Stops following the holders without ending their leases (the tenant detached: the job goes on). */
  async detach(): Promise<void> {
    this.#stop.abort();
    await this.#filling;
    for (const holder of this.#holders.values()) await unfollow(holder);
    this.#holders.clear();
  }

  async #holdOn(
    holder: Holder,
    { cid, sha256 }: Pick<CheckpointRecord, "cid" | "sha256">,
    from: readonly string[],
    signal: AbortSignal,
  ): Promise<void> {
    await holder.accepted;
    if (!this.#holders.has(holder.lease.leaseId)) throw new ProviderFaultError("the holder was lost");
    const others = [...this.#holders.values()].filter((h) => h !== holder).flatMap((h) => leaseAddresses(h.lease));
    const hold = {
      leaseId: BigInt(holder.lease.leaseId),
      cid,
      providers: [...from, ...others].slice(0, MAX_HOLD_PROVIDERS),
      // A holder given the key unpacks it, checked against this; one without it ignores it.
      ...(this.#init.record.options.replication?.unpack ? { sha256 } : {}),
    };
    const acknowledged = new Promise<void>((resolve, reject) => holder.waiting.set(cid, { hold, resolve, reject }));
    const aborted = () => holder.waiting.get(cid)?.reject(new ProviderFaultError("the hold was abandoned"));
    signal.addEventListener("abort", aborted, { once: true });
    try {
      await this.#send(holder, hold);
      await acknowledged;
    } finally {
      signal.removeEventListener("abort", aborted);
      holder.waiting.delete(cid);
    }
  }

  /**
   * Checks that a holder has the checkpoint, by a few of its blocks picked at random; one that fails
   * is lost. Returns the bytes fetched.
   */
  async #sample(holder: Holder, cid: string, signal: AbortSignal): Promise<number> {
    const [address] = leaseAddresses(holder.lease);
    try {
      if (address === undefined) throw new ProviderFaultError("its offer listed no address to fetch from");
      const checked = await sampleBlocks({
        host: this.#init.client.host,
        root: CID.parse(cid),
        peer: multiaddr(address),
        samples: SAMPLED_LEAVES,
        stallTimeoutMs: SAMPLE_STALL_MS,
        signal,
      });
      this.#init.log.debug("holder sampled", { leaseId: holder.lease.leaseId, cid, ...checked });
      return checked.bytes;
    } catch (error) {
      signal.throwIfAborted();
      const reason = `it failed a check of what it holds: ${shortMessageOf(error)}`;
      if (this.#holders.get(holder.lease.leaseId) === holder) await this.#lose(holder, reason);
      throw new ProviderFaultError(reason);
    }
  }

  /**
   * Sends a hold on the holder's session. One that cannot be sent (the session was lost) is not
   * lost: it is sent again once the session is opened again (`reattached`), or its waiter rejected
   * with the holder's loss.
   */
  async #send(holder: Holder, hold: TenantMessage<"hold">): Promise<void> {
    await holder.watch
      .send("hold", hold)
      .catch((error: unknown) =>
        this.#init.log.debug("a hold waits for its holder's session", { leaseId: holder.lease.leaseId, error }),
      );
  }

  /** Opens holders' leases until as many run as asked for, in the background; one try after another until stopped. */
  #fill(): void {
    if (this.#filling) return;
    this.#filling = (async () => {
      while (this.#holders.size < this.wanted && !this.#stop.signal.aborted) {
        try {
          await this.#open();
        } catch (error) {
          if (this.#stop.signal.aborted) break;
          this.#init.log.warn("no holder leased; trying again", { error });
          await sleep(HAND_OFF_SEARCH_PAUSE_MS, { signal: this.#stop.signal }).catch(() => undefined);
        }
      }
    })().finally(() => {
      this.#filling = undefined;
    });
  }

  /** Leases one holder on a provider that neither serves the job nor holds for it already. */
  async #open(): Promise<void> {
    const { client, record, events } = this.#init;
    const replication = record.options.replication!;
    const spec = holdSpec(record.spec, replication.diskGiB);
    const requirements: Requirements = { gpus: 0, diskGiB: jobDiskGiB(spec), runtime: "process", hold: true };
    const maxPricePerSecond = BigInt(record.options.maxPricePerSecond!);
    const jobId = holdJobId(record.jobId as Hex);
    const signal = this.#stop.signal;
    const busy = [
      ...record.leases.filter((l) => l.state === "starting" || l.state === "running").map((l) => l.provider),
      ...[...this.#holders.values()].map((h) => h.lease.provider),
    ];
    const offers = await findOffers(client, {
      requirements,
      maxPricePerSecond,
      exclude: [...record.options.exclude, ...busy],
      timeoutMs: OFFER_TIMEOUT_MS,
      signal,
    });
    const { chosen } = await bid(client, {
      jobId,
      offers,
      requirements,
      image: zeroHash,
      maxPricePerSecond,
      durationS: Math.max(spec.maxDurationS, Math.min(HOLDER_LEASE_S, ...offers.map((o) => o.offer.maxDurationS))),
      signal,
    });
    const price = chosen.quote.pricePerSecond;
    const deposit = leaseDeposit(record, price);
    const { leaseId, receipt } = await openLease(client, {
      quote: chosen.quote,
      signature: chosen.signature,
      deposit,
      keepAllowance: allowanceKept(client),
      signal,
    });
    const lease: LeaseRecord = {
      ...(await openedLease(client, chosen, leaseId, deposit)),
      openingTx: receipt.transactionHash,
    };
    (record.holders ??= []).push(lease);
    record.deposited = (BigInt(record.deposited) + deposit).toString();
    await client.jobs.save(record);
    // Only a holder that could run the job gets its key: the one a hand-off may go to (a warm standby).
    const unpacks =
      replication.unpack === true && offerMatches(chosen.offer, jobRequirements(record.spec), maxPricePerSecond);
    events.emit({
      type: "holder-leased",
      leaseId,
      provider: chosen.quote.provider,
      pricePerSecond: price,
      deposit,
      unpacks,
    });
    const holder = this.#follow(lease, { key: unpacks ? record.key : undefined });
    await holder.accepted;
    // A replacement, or a holder leased after the job's first checkpoints: it holds the newest safe one too.
    const newest = record.safe.at(-1);
    if (newest && this.#holders.has(lease.leaseId)) void this.#catchUp(holder, newest);
  }

  /** Pins the job's newest safe checkpoint on a holder that came late, from the other holders and the job's provider. */
  async #catchUp(holder: Holder, checkpoint: CheckpointRecord): Promise<void> {
    const serving = this.#init.record.leases.filter((l) => l.state === "running").flatMap(leaseAddresses);
    try {
      await this.#holdOn(holder, checkpoint, serving, this.#stop.signal);
    } catch (error) {
      this.#init.log.warn("a new holder did not take the newest safe checkpoint", {
        leaseId: holder.lease.leaseId,
        cid: checkpoint.cid,
        error,
      });
    }
  }

  /**
   * Follows a holder's session (starting its hold, given the job's `key` if it unpacks ahead; or
   * re-attaching): its acknowledgements, and its loss.
   */
  #follow(lease: LeaseRecord, start: { key: string | undefined } | undefined): Holder {
    const { client, record, events, log } = this.#init;
    const watch = watchLease(client, {
      leaseId: BigInt(lease.leaseId),
      peerId: lease.peerId,
      addresses: lease.addresses,
      afterSeq: lease.lastSeq,
      liveness: leaseLiveness(client, lease, { heartbeatWindowMs: undefined, failAfterMs: undefined }),
      ...(start
        ? {
            start: {
              spec: holdSpec(record.spec, record.options.replication?.diskGiB),
              hold: { keep: record.options.keepCheckpoints },
              ...(start.key === undefined ? {} : { key: start.key }),
            },
          }
        : {}),
      signal: this.#stop.signal,
    });
    let accept!: () => void;
    const topUps = new LeaseTopUps({
      client,
      record,
      events,
      log,
      // The job goes on without it: the holder's lease runs out, and a replacement finds no budget either.
      onBudgetSpent: (error) => log.warn("a holder's lease is not topped up", { leaseId: lease.leaseId, error }),
    });
    topUps.schedule(lease);
    const holder: Holder = {
      lease,
      watch,
      topUps,
      accepted: new Promise<void>((resolve) => (accept = resolve)),
      waiting: new Map(),
    };
    if (!start) accept();
    this.#holders.set(lease.leaseId, holder);
    void this.#read(holder, accept);
    return holder;
  }

  async #read(holder: Holder, accept: () => void): Promise<void> {
    const { lease } = holder;
    let lost = "its session ended";
    try {
      for await (const event of holder.watch) {
        if (event.type === "accepted") {
          lease.state = "running";
          lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
          await this.#init.client.jobs.save(this.#init.record);
          accept();
        } else if (event.type === "heartbeat") {
          lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
        } else if (event.type === "reattached") {
          // A hold sent on the lost session may never have arrived: sent again (one the node has
          // already is answered at once, one it is fetching is answered twice).
          for (const { hold } of holder.waiting.values()) void this.#send(holder, hold);
        } else if (event.type === "held" && event.body.unpacked) {
          this.#init.events.emit({
            type: "holder-unpacked",
            leaseId: BigInt(lease.leaseId),
            provider: lease.provider as Address,
            cid: event.body.cid,
          });
        } else if (event.type === "held") {
          const waiter = holder.waiting.get(event.body.cid);
          if (event.body.error === undefined) waiter?.resolve();
          else waiter?.reject(new ProviderFaultError(`holder ${lease.provider}: ${event.body.error}`));
        } else if (event.type === "refused") {
          lost = `it refused: ${event.body.reason}: ${event.body.message}`;
          break;
        } else if (event.type === "liveness" && event.body.state === "failed") {
          lost = event.body.reason;
          break;
        }
      }
    } catch (error) {
      lost = shortMessageOf(error);
    }
    accept();
    if (this.#stop.signal.aborted || this.#holders.get(lease.leaseId) !== holder) return;
    await this.#lose(holder, lost);
  }

  /** A holder failed or refused: its lease ended (slashed later if its provider never acknowledges), and a replacement leased. */
  async #lose(holder: Holder, reason: string): Promise<void> {
    const { client, record, events, log, onSlash, onLost } = this.#init;
    const { lease } = holder;
    this.#holders.delete(lease.leaseId);
    for (const waiter of holder.waiting.values())
      waiter.reject(new ProviderFaultError(`the holder was lost: ${reason}`));
    await unfollow(holder);
    lease.state = "failed";
    lease.endedAt = Date.now();
    log.warn("holder lost", { leaseId: lease.leaseId, provider: lease.provider, reason });
    events.emit({ type: "holder-lost", leaseId: BigInt(lease.leaseId), provider: lease.provider as Address, reason });
    try {
      await endRecordedLease(client, record, lease, { onSlash });
    } catch (error) {
      log.warn("lost holder's lease not ended", { leaseId: lease.leaseId, error });
    }
    await client.jobs.save(record);
    onLost(lease);
    this.#fill();
  }
}

/** Stops following a holder: its session, and its top-ups. */
async function unfollow(holder: Holder): Promise<void> {
  holder.topUps.stop();
  await holder.watch.stop();
}
