import { CID } from "multiformats/cid";

import type { IpfsNode } from "../sdk/ipfs/node.ts";
import type { NodeStore } from "./store.ts";

/**
 * The checkpoints one lease's job pins on this node: those it published and still keeps, and the
 * one it resumed from (its outputs are recorded too, and go by age: {@link releaseExpiredOutputs}).
 * Recorded in the store, so that they are let go when the lease ends, even when the node was down
 * then; and shared with the node's other leases (a warm standby's job
 * resumes from what its holder's lease holds), so that neither unpins what the other still needs.
 */
export interface LeasePins {
  /**
   * Records a checkpoint the lease's job pinned, once the pin is in (a node killed in between leaks
   * that one pin, as a holder's does between its pin and its record).
   */
  add(cid: string): void;
  /** The lease no longer needs these: each is unpinned unless another lease of the node pins it. */
  release(cids: readonly string[]): Promise<void>;
}

export interface LeasePinsInit {
  store: NodeStore;
  ipfs: IpfsNode;
}

export function leasePins(init: LeasePinsInit, leaseId: bigint): LeasePins {
  return {
    add: (cid) => init.store.addLeasePin(leaseId, cid),
    release: (cids) => releasePins(init, leaseId, cids),
  };
}

/** Lets go of every checkpoint the lease's job pinned (its lease ended); resolves with their CIDs. */
export async function releaseLeasePins(init: LeasePinsInit, leaseId: bigint): Promise<string[]> {
  const cids = init.store.leasePins(leaseId);
  await releasePins(init, leaseId, cids);
  return cids;
}

/**
 * Lets go of the outputs published more than `retentionMs` ago (their tenants had that long to
 * fetch them); resolves with those let go.
 */
export async function releaseExpiredOutputs(
  init: LeasePinsInit,
  retentionMs: number,
  now = Date.now(),
): Promise<{ leaseId: bigint; cid: string }[]> {
  const expired = init.store.outputsPinnedBefore(now - retentionMs);
  for (const { leaseId, cid } of expired) await releasePins(init, leaseId, [cid]);
  return expired;
}

async function releasePins(init: LeasePinsInit, leaseId: bigint, cids: readonly string[]): Promise<void> {
  init.store.removeLeasePins(leaseId, cids);
  await unpinUnlessPinnedElsewhere(init, leaseId, cids);
}

/**
 * Unpins those of `cids` that no lease of the node but `leaseId` pins (a holder's or a job's), and has
 * the store collect them. Called right after the lease's own record of them is forgotten, with no
 * await between: two leases letting go of one CID at once then never both see the other's record and
 * both keep it. A node killed before the unpins leaks those pins (no lease names them any more).
 */
export async function unpinUnlessPinnedElsewhere(
  { store, ipfs }: LeasePinsInit,
  leaseId: bigint,
  cids: readonly string[],
): Promise<void> {
  const unpinned = cids.filter((cid) => !store.pinnedElsewhere(cid, leaseId));
  for (const cid of unpinned) await ipfs.unpin(CID.parse(cid)).catch(() => undefined);
  // Unpinned is not deleted: the store collects them, or the disk fills up.
  if (unpinned.length > 0) ipfs.gcSoon();
}
