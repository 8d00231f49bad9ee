import { mkdir, rm } from "node:fs/promises";
import path from "node:path";

import { CID } from "multiformats/cid";

import type { LeaseWatch } from "../actions/watchLease.ts";
import type { BatonClient } from "../client.ts";
import { shortMessageOf } from "../errors.ts";
import { restoreCheckpoint, verifyCheckpoint } from "../ipfs/checkpoint.ts";
import { MAX_CHECKPOINT_BYTES } from "../ipfs/constants.ts";
import type { Logger } from "../logger.ts";
import type { ProviderMessage } from "../wire/messages.ts";
import { leaseAddresses, type CheckpointHolders } from "./holders.ts";
import type { JobEvents } from "./job-events.ts";
import type { CheckpointRecord, JobRecord, LeaseRecord } from "./job-store.ts";

/** Safe checkpoints a job keeps pinned unless its options say otherwise; older ones are unpinned. */
export const DEFAULT_KEEP_CHECKPOINTS = 3;

/** How long to wait for the next block of a checkpoint before giving up on it (the job goes on). */
const CHECKPOINT_STALL_MS = 30_000;

export interface CheckpointReplicatorInit {
  client: BatonClient;
  record: JobRecord;
  events: JobEvents;
  log: Logger;
  /** The job's holders, if it has any: each checkpoint is safe only once they pin it too. */
  holders?: CheckpointHolders;
}

/** A job's or task's output as its result announces it: by CID and plaintext digest, or also inline (base64 pieces). */
export interface OutputAnnounced {
  cid: string;
  sha256: string;
  inline?: readonly string[] | undefined;
}

/**
 * What makes a verified checkpoint safe, once it is pinned in the tenant's store: by default it is
 * recorded as the job's newest (and the oldest beyond `keepCheckpoints` unpinned); a batch holds one
 * per task instead. Resolves with how many checkpoints are held.
 */
export type CheckpointHold = (lease: LeaseRecord, body: ProviderMessage<"checkpoint">) => Promise<number>;

/**
 * Copies a job's checkpoints off its provider as they are announced: each is fetched into the
 * tenant's own IPFS store, verified against its announced digest (which decrypts it with the job's
 * key) and pinned, and pinned by every holder the job has (see `holders.ts`), or by the holders
 * alone when the tenant keeps no copy (`replication.tenantCopy`: `"none"`, or `"sample"`, which
 * checks each holder by a few of its blocks instead); then it is *safe*:
 * recorded, acknowledged to the provider, and what a hand-off resumes from. Only the newest `keepCheckpoints` stay pinned. One checkpoint at a time, in the
 * order announced; one still waiting when a newer one is announced is skipped. The job's output
 * comes the same way, once, at its end.
 */
export class CheckpointReplicator {
  readonly #client: BatonClient;
  readonly #record: JobRecord;
  readonly #events: JobEvents;
  readonly #log: Logger;
  readonly #holders: CheckpointHolders | undefined;
  /** The job's checkpoint key. */
  readonly #key: Uint8Array;
  /** The replications started so far, one after another. */
  #queue: Promise<void> = Promise.resolve();
  /** Per lease, the sequence number of the newest checkpoint announced. */
  readonly #newest = new Map<string, number>();

  constructor({ client, record, events, log, holders }: CheckpointReplicatorInit) {
    this.#client = client;
    this.#record = record;
    this.#events = events;
    this.#log = log;
    this.#holders = holders;
    this.#key = Buffer.from(record.key, "base64");
  }

  /**
   * Makes an announced checkpoint safe, after those announced before it; `signal` abandons it (the
   * tenant left the lease). A checkpoint that cannot be made safe is reported and skipped.
   */
  replicate(
    lease: LeaseRecord,
    body: ProviderMessage<"checkpoint">,
    watch: LeaseWatch,
    signal: AbortSignal,
    hold: CheckpointHold = (held, announced) => this.#hold(held, announced),
  ): void {
    const leaseId = BigInt(lease.leaseId);
    this.#newest.set(lease.leaseId, Math.max(this.#newest.get(lease.leaseId) ?? 0, body.seq));
    this.#queue = this.#queue.then(async () => {
      if (signal.aborted) return;
      // A newer one was announced while this one waited: fetching this one would only delay it.
      if (body.seq < this.#newest.get(lease.leaseId)!) {
        this.#log.info("checkpoint superseded before it was fetched", { leaseId, cid: body.cid });
        return;
      }
      try {
        const tenantCopy = this.#record.options.replication?.tenantCopy ?? "full";
        const [{ holders, sampledBytes }] = await Promise.all([
          this.#holders && this.#holders.wanted > 0
            ? this.#holders.hold(body, leaseAddresses(lease), signal, { sample: tenantCopy === "sample" })
            : { holders: 0, sampledBytes: 0 },
          tenantCopy !== "full"
            ? undefined
            : verifyCheckpoint(this.#client.ipfs, this.#key, CID.parse(body.cid), {
                expectedSha256: body.sha256,
                maxBytes: MAX_CHECKPOINT_BYTES,
                providers: leaseAddresses(lease),
                stallTimeoutMs: CHECKPOINT_STALL_MS,
                signal,
              }),
        ]);
        const held = await hold(lease, body);
        await watch.send("checkpoint-ack", { leaseId, cid: body.cid }).catch(() => undefined);
        this.#events.emit({
          type: "checkpoint-safe",
          leaseId,
          cid: body.cid,
          step: body.step,
          size: body.size,
          held,
          holders,
          ...(tenantCopy === "sample" ? { sampledBytes } : {}),
        });
      } catch (error) {
        if (signal.aborted) return;
        this.#log.warn("checkpoint not safe", { leaseId, cid: body.cid, error });
        this.#events.emit({ type: "checkpoint-rejected", leaseId, cid: body.cid, reason: shortMessageOf(error) });
      }
    });
  }

  /** Resolves once every replication started so far has ended. */
  drained(): Promise<void> {
    return this.#queue;
  }

  /**
   * Fetches the job's output, announced in its result, into `outputDir` (replacing what is there),
   * verified against its digest and pinned; one sent inline is checked against its CID and digest
   * and unpacked, and nothing is fetched or stored.
   */
  async fetchOutput(
    lease: LeaseRecord,
    output: OutputAnnounced,
    outputDir: string,
    { signal }: { signal?: AbortSignal } = {},
  ): Promise<void> {
    await rm(outputDir, { recursive: true, force: true });
    await mkdir(path.dirname(outputDir), { recursive: true });
    await restoreCheckpoint(this.#client.ipfs, this.#key, CID.parse(output.cid), outputDir, {
      expectedSha256: output.sha256,
      maxBytes: MAX_CHECKPOINT_BYTES,
      ...(output.inline
        ? { pieces: output.inline.map((piece) => Buffer.from(piece, "base64")) }
        : { providers: leaseAddresses(lease), stallTimeoutMs: CHECKPOINT_STALL_MS, pin: true }),
      signal,
    });
  }

  /** Records a verified checkpoint as safe and unpins those past the newest `keepCheckpoints`; returns how many are held. */
  async #hold(lease: LeaseRecord, body: ProviderMessage<"checkpoint">): Promise<number> {
    const safe: CheckpointRecord = {
      cid: body.cid,
      sha256: body.sha256,
      name: body.name,
      ...(body.step === undefined ? {} : { step: body.step }),
      size: body.size,
      leaseId: lease.leaseId,
      at: Date.now(),
    };
    this.#record.safe.push(safe);
    const keep = this.#record.options.keepCheckpoints;
    const dropped = this.#record.safe.splice(0, Math.max(0, this.#record.safe.length - keep));
    lease.lastSeq = Math.max(lease.lastSeq, body.seq);
    await this.#client.jobs.save(this.#record);
    for (const old of dropped) await this.#client.ipfs.unpin(CID.parse(old.cid)).catch(() => undefined);
    // Unpinned is not deleted: the store collects them, or a long job fills the tenant's disk.
    if (dropped.length > 0) this.#client.ipfs.gcSoon();
    return this.#record.safe.length;
  }
}
