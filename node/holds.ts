import { CID } from "multiformats/cid";

import { CheckpointTooLargeError, shortMessageOf } from "../sdk/errors.ts";
import { restoreCheckpoint } from "../sdk/ipfs/checkpoint.ts";
import type { IpfsNode } from "../sdk/ipfs/node.ts";
import type { Logger } from "../sdk/logger.ts";
import type { ProviderMessage, TenantMessage } from "../sdk/wire/messages.ts";
import { unpinUnlessPinnedElsewhere } from "./lease-pins.ts";
import type { NodeStore } from "./store.ts";
import type { UnpackedCheckpoints } from "./unpacked-checkpoints.ts";

/** How long a hold waits for the next block of its checkpoint before it gives up (`held` with an error). */
const HOLD_STALL_MS = 30_000;

/** What a holder's lease tells its tenant of a hold (the body of `held`, less what every message has). */
export type HeldReport = Omit<ProviderMessage<"held">, "leaseId" | "seq">;

export interface HoldQueueInit {
  leaseId: bigint;
  /** How many checkpoints the lease keeps (`start.hold.keep`). */
  keep: number;
  /** The lease's disk quota: the bytes it holds at once, the one being fetched included. */
  quotaBytes: number;
  /** The longest a hold may take, fetch and pin. */
  timeoutMs: number;
  ipfs: IpfsNode;
  store: NodeStore;
  log: Logger;
  /** Tells the tenant how a hold went (a `held` message on the lease's sessions). */
  report: (held: HeldReport) => Promise<void>;
  /**
   * The job's key, when its tenant gave it (`replication.unpack`): then the newest checkpoint held
   * is also kept decrypted and unpacked in `unpacked`, for a job resumed on this node to take.
   */
  key?: Uint8Array | undefined;
  unpacked: UnpackedCheckpoints;
}

/**
 * A holder's lease at work: it pins the checkpoints its tenant names, one at a time in the order
 * named, each fetched from the peers the `hold` lists (verified block by block against the CID, as
 * every fetch is), and keeps the newest `keep`, unpinning the older ones. What it holds is recorded
 * in the node's store, so a restarted node still holds it and releases it at the lease's end. A
 * holder holds ciphertext, and the tenant checks what matters (the digest) when the checkpoint is
 * resumed from. One given the job's key also unpacks the newest checkpoint once it acknowledged it,
 * checking its digest then; a job resumed here takes those files as they are (a warm standby).
 */
export class HoldQueue {
  readonly #init: HoldQueueInit;
  #queue: Promise<void> = Promise.resolve();
  /** Holds named so far; a hold still waiting when a newer one (of another checkpoint) is named is passed over. */
  #named = 0;
  /** The checkpoint the newest hold names: the same one named again (a tenant that re-attached) supersedes nothing. */
  #newest: string | undefined;
  readonly #stopped = new AbortController();
  /** The newest checkpoint's unpacking (with the job's key), beside the holds after it. */
  #unpacking: Promise<void> = Promise.resolve();

  constructor(init: HoldQueueInit) {
    this.#init = init;
  }

  /** Takes a `hold`: done after those named before it, and reported by `held` either way. */
  hold(body: TenantMessage<"hold">): void {
    const turn = ++this.#named;
    this.#newest = body.cid;
    this.#queue = this.#queue.then(async () => {
      if (this.#stopped.signal.aborted) return;
      const report = await this.#take(body, turn).catch((error: unknown): HeldReport => ({
        cid: body.cid,
        error: shortMessageOf(error),
      }));
      if (this.#stopped.signal.aborted) return;
      // Unpacked beside the acknowledgement and the holds after it: the checkpoint is safe once
      // held, and unpacking it only makes a resume here faster. Begun before the acknowledgement
      // goes, so that a resume it leads to finds it (and waits for it); only the newest held, so that
      // a hold sent again (a tenant that re-attached) replaces nothing newer.
      const { store, leaseId } = this.#init;
      if (report.error === undefined && body.sha256 !== undefined && store.held(leaseId).at(-1)?.cid === body.cid) {
        this.#unpacking = this.#unpack(body.cid, body.sha256, report.bytes ?? 0);
      }
      await this.#init.report(report);
    });
  }

  /**
   * Unpacks a checkpoint held, in what is left of the lease's quota beside what it holds, stopping
   * the one under way (see `UnpackedCheckpoints.add`); a failure is only logged.
   */
  async #unpack(cid: string, sha256: string, expectedBytes: number): Promise<void> {
    const { leaseId, key, quotaBytes, ipfs, store, log, unpacked } = this.#init;
    if (!key) return;
    const started = performance.now();
    // What this lease had unpacked goes first: its room is part of what is left.
    const room = quotaBytes - store.held(leaseId).reduce((sum, h) => sum + h.bytes, 0);
    let replaced: AbortSignal | undefined;
    try {
      await unpacked.add(leaseId, { cid, sha256, expectedBytes, quotaBytes }, (dir, signal) => {
        replaced = signal;
        return restoreCheckpoint(ipfs, key, CID.parse(cid), dir, {
          expectedSha256: sha256,
          maxBytes: Math.max(0, room),
          signal: AbortSignal.any([this.#stopped.signal, signal]),
        });
      });
    } catch (error) {
      if (this.#stopped.signal.aborted) return;
      // Stopped by a newer one while it ran, or before it began.
      if (replaced?.aborted || (error as Error).name === "AbortError") {
        log.info("checkpoint's unpacking stopped: a newer one is held", { leaseId, cid });
      } else log.warn("checkpoint not unpacked ahead", { leaseId, cid, error });
      return;
    }
    log.info("checkpoint unpacked ahead", { leaseId, cid, ms: Math.round(performance.now() - started) });
    // The tenant is told: a hand-off here now takes its files as they are.
    if (!this.#stopped.signal.aborted) await this.#init.report({ cid, unpacked: true });
  }

  async #take({ cid, providers }: TenantMessage<"hold">, turn: number): Promise<HeldReport> {
    const { leaseId, keep, quotaBytes, timeoutMs, ipfs, store, log } = this.#init;
    if (turn < this.#named && this.#newest !== cid) {
      return { cid, error: "a newer checkpoint was named before this one was fetched" };
    }
    const held = store.held(leaseId);
    const had = held.find((h) => h.cid === cid);
    if (had) return { cid, bytes: had.bytes };
    // The newest keep - 1 stay beside this one; their bytes, the checkpoint it keeps unpacked (until
    // this one is) and its own share the lease's quota.
    const staying = held.slice(Math.max(0, held.length - (keep - 1)));
    const room = quotaBytes - staying.reduce((sum, h) => sum + h.bytes, 0) - this.#init.unpacked.bytes(leaseId);
    let bytes: number;
    try {
      ({ bytes } = await ipfs.fetchAndPin(CID.parse(cid), {
        providers,
        maxBytes: Math.max(0, room),
        stallTimeoutMs: HOLD_STALL_MS,
        signal: AbortSignal.any([this.#stopped.signal, AbortSignal.timeout(timeoutMs)]),
      }));
    } catch (error) {
      // Whatever arrived before the refusal is unpinned: the next collection takes it.
      ipfs.gcSoon();
      if (error instanceof CheckpointTooLargeError) {
        return { cid, error: `over the lease's disk quota: ${room} bytes left beside the checkpoints kept` };
      }
      throw error;
    }
    const released = held.slice(0, held.length - staying.length).map((h) => h.cid);
    store.transaction(() => {
      store.addHeld(leaseId, { cid, bytes });
      store.removeHeld(leaseId, released);
    });
    await unpinUnlessPinnedElsewhere(this.#init, leaseId, released);
    log.info("checkpoint held", { leaseId, cid, bytes, released });
    return { cid, bytes, released };
  }

  /**
   * The lease ended: a hold under way is abandoned, and everything the lease holds is unpinned and
   * forgotten. Holds named later are ignored.
   */
  async release(): Promise<void> {
    this.#stopped.abort();
    await this.#queue;
    const { leaseId, store, log, unpacked } = this.#init;
    await unpacked.release(leaseId);
    await this.#unpacking;
    const cids = store.held(leaseId).map((h) => h.cid);
    store.removeHeld(leaseId);
    await unpinUnlessPinnedElsewhere(this.#init, leaseId, cids);
    if (cids.length > 0) log.info("holds released", { leaseId, cids });
  }
}
