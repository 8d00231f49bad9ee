import { isAddressEqual } from "viem";

import { nextBlockTime } from "../chain/block-time.ts";
import { contracts, leaseStatus } from "../chain/client.ts";
import type { BatonClient } from "../client.ts";
import { poll, type Look } from "../utils/retry.ts";

/**
 * A provider cut off from the chain but not from its tenant keeps answering the session's pings
 * while its heartbeat transactions stop: liveness sees nothing wrong, and its lease turns slashable
 * at its deadline. Anyone may slash it then; its provider, once it reaches the chain again and sees
 * the slash, stops the job, and the tenant learns of that only when the session ends, at no time of
 * its choosing. So the tenant watches the deadline of the lease it follows, and leaves the lease
 * (handing the job off, whose opening ends it, or slashes it) just before anyone else could.
 */

/** How long before a lease's deadline the tenant leaves it: a tenth of its timeout, at least 1 s. */
export function deadlineMarginS(heartbeatTimeoutS: bigint): bigint {
  const tenth = heartbeatTimeoutS / 10n;
  return tenth > 1n ? tenth : 1n;
}

/** The longest pause between two reads of the lease: a heartbeat moves the deadline, not this watch. */
const MAX_POLL_MS = 15_000;

/** The shortest: whole-second deadlines, and no busier than the pings that watch the session. */
const MIN_POLL_MS = 500;

/** How often a lease set to run out before its deadline is read: a top-up may change that any moment. */
const UNFUNDED_POLL_MS = 2_000;

/**
 * Watches `leaseId`'s on-chain heartbeat deadline until it is {@link deadlineMarginS} away (by the
 * next block's time) or past, and says so in words. Reads are timed by the deadline: one at most
 * every {@link MAX_POLL_MS}, sooner only as the deadline nears. A lease set to run out before its
 * deadline cannot be slashed and is only watched, until a top-up changes that. A lease that is no
 * longer `Active` (or not this tenant's: a reorg can give its id to another) ends the watch with
 * `undefined`, as does `signal`. A read that fails is tried again: a tenant that cannot read the
 * chain takes no action on it.
 *
 * @example
 * const reason = await watchChainDeadline(client, { leaseId: 7n, signal });
 * if (reason) leaveLease(reason);
 */
export async function watchChainDeadline(
  client: Pick<BatonClient, "chain" | "account" | "log">,
  { leaseId, signal }: { leaseId: bigint; signal: AbortSignal },
): Promise<string | undefined> {
  const look = async (): Promise<Look<string | undefined>> => {
    let view;
    try {
      view = await readDeadline(client, leaseId);
    } catch (error) {
      if (signal.aborted) throw error;
      client.log.debug("lease deadline not read; trying again", { leaseId, error });
      return { done: false, waitMs: MIN_POLL_MS * 2 };
    }
    if (view.kind === "ended") return { done: true, value: undefined };
    // A lease whose deposit runs out before its deadline expires cleanly, unslashable, until a
    // top-up (due a few seconds before its end) moves its end past the deadline: looked at again soon.
    if (view.kind === "unfunded") return { done: false, waitMs: UNFUNDED_POLL_MS };
    const { now, leaveAt, deadline, lastHeartbeat, heartbeatTimeout } = view;
    if (now >= leaveAt) {
      const silentS = now - lastHeartbeat;
      const reason =
        now > deadline
          ? `its lease is slashable: no heartbeat on chain for ${silentS} s (timeout ${heartbeatTimeout} s)`
          : `no heartbeat on chain for ${silentS} s: its lease turns slashable in ${deadline - now} s`;
      return { done: true, value: reason };
    }
    return { done: false, waitMs: Math.max(MIN_POLL_MS, Math.min(MAX_POLL_MS, Number(leaveAt - now) * 1000)) };
  };
  try {
    return await poll(look, { signal, unref: true });
  } catch (error) {
    if (signal.aborted) return undefined;
    throw error;
  }
}

/**
 * Whether the heartbeats of `leaseId`'s provider are current on chain: its lease is `Active`, this
 * tenant's, and {@link watchChainDeadline} would leave it no sooner than a margin from now (or it
 * runs out unslashable before its deadline). A provider frozen past that point answers its session
 * again before its next heartbeat transaction lands, and its tenant then leaves the lease a moment
 * later, cutting whatever it sent there meanwhile. Throws when the chain cannot be read.
 */
export async function chainHeartbeatsCurrent(
  client: Pick<BatonClient, "chain" | "account">,
  leaseId: bigint,
): Promise<boolean> {
  const view = await readDeadline(client, leaseId);
  if (view.kind !== "active") return view.kind === "unfunded";
  return view.now + deadlineMarginS(view.heartbeatTimeout) < view.leaveAt;
}

type DeadlineView =
  | { kind: "ended" }
  | { kind: "unfunded" }
  | { kind: "active"; now: bigint; leaveAt: bigint; deadline: bigint; lastHeartbeat: bigint; heartbeatTimeout: bigint };

/**
 * `leaseId` by its deadline, read at the next block's time: `ended` once it is no longer `Active` or
 * not this tenant's (a reorg can give its id to another), `unfunded` while its deposit runs out
 * before its deadline, else when the tenant leaves it ({@link deadlineMarginS} before the deadline).
 */
async function readDeadline(client: Pick<BatonClient, "chain" | "account">, leaseId: bigint): Promise<DeadlineView> {
  const { leaseManager } = contracts(client.chain.deployment);
  const [view, now] = await Promise.all([
    client.chain.publicClient.readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] }),
    nextBlockTime(client.chain),
  ]);
  if (leaseStatus[view.status] !== "Active" || !isAddressEqual(view.tenant, client.account.address)) {
    return { kind: "ended" };
  }
  if (view.deadline >= view.endsAt) return { kind: "unfunded" };
  const heartbeatTimeout = BigInt(view.heartbeatTimeout);
  return {
    kind: "active",
    now,
    leaveAt: view.deadline - deadlineMarginS(heartbeatTimeout),
    deadline: view.deadline,
    lastHeartbeat: BigInt(view.lastHeartbeat),
    heartbeatTimeout,
  };
}
