import { getAddress, isAddress, type Address } from "viem";

import {
  asOfText,
  auditLeases,
  byChainOrder,
  countOutcomes,
  eventTime,
  leaseTotals,
  loadBlockTimes,
  managerEvents,
  openAuditScope,
  registryEvents,
  sumAmounts,
  type AuditSnapshot,
  type EventTime,
  type LeaseAudit,
  type LeaseSlash,
  type LeaseStatus,
  type LeaseTotals,
  type AuditEventSource,
} from "../chain/audit-events.ts";
import type { LogScanProgress } from "../chain/logs.ts";
import { contracts, type ChainClient } from "../chain/client.ts";
import { UserError } from "../errors.ts";

export interface AuditProviderParameters {
  provider: Address;
  signal?: AbortSignal;
  /** Told after each page of blocks read: an audit of a long chain reads many (sdk/chain/logs.ts). */
  onProgress?: (progress: LogScanProgress) => void;
  /**
   * Read at the newest block this many blocks deep, so that nothing a reorg of up to that many
   * blocks could undo is shown. Default: the client's (sdk/chain/confirmations.ts).
   */
  confirmations?: number;
}

/** A registration or profile update. */
export interface ProfileChange {
  peerId: string;
  metadata: string;
  at: EventTime;
}

export interface StakeChange {
  kind: "staked" | "unstake-requested" | "withdrawn" | "slashed";
  /** Staking tokens. An unstake request moves `amount` into unbonding; it stays in the stake until withdrawn. */
  amount: bigint;
  /** The lease whose collateral a slash took. */
  leaseId: bigint | undefined;
  at: EventTime;
}

export interface EarningsClaim {
  amount: bigint;
  at: EventTime;
}

export interface AuditProviderReturnType {
  provider: Address;
  /** The block the audit read at. */
  asOf: AuditSnapshot;
  /** Whether its active stake reaches the registry's minimum, so it may take new leases. */
  eligible: boolean;
  /** The current peer id and metadata. */
  peerId: string;
  metadata: string;
  /** The registration, then every profile update. */
  profile: ProfileChange[];
  /** Staking tokens. */
  stake: {
    /** The registry's view: stake including what is unbonding. */
    current: bigint;
    locked: bigint;
    unbonding: bigint;
    /** Unix seconds; 0 when nothing is unbonding. */
    unbondingEndsAt: bigint;
    staked: bigint;
    withdrawn: bigint;
    slashed: bigint;
    /** `staked - withdrawn - slashed`: equals `current` unless the events and the view disagree. */
    fromEvents: bigint;
    /**
     * Collateral locked (each lease's, from its `LeaseOpened`) minus released minus slashed (the
     * registry's events): equals `locked`.
     */
    lockedFromEvents: bigint;
    changes: StakeChange[];
  };
  /** Every lease it served, by id. */
  leases: LeaseAudit[];
  outcomes: Record<LeaseStatus, number>;
  totals: LeaseTotals;
  /** Payment tokens. */
  earnings: {
    /** Settled into its claimable balance, over all its leases. */
    settled: bigint;
    /** Paid out by its claims. */
    claimed: bigint;
    /** The lease manager's view: `settled - claimed`. */
    claimableNow: bigint;
    claims: EarningsClaim[];
  };
  slashes: (LeaseSlash & { leaseId: bigint })[];
  /** The reputation counters the registry keeps (seconds served come from the lease manager). */
  counters: {
    leasesOpened: bigint;
    leasesCompleted: bigint;
    leasesSlashed: bigint;
    secondsServed: bigint;
  };
}

/**
 * Rebuilds a provider's record from chain events, next to the registry's view of it: its
 * registration and profile changes, its stake's history, every lease it served and how each
 * ended, what it earned and claimed, and its slashes.
 *
 * @throws {UserError} when `provider` is not an address or never registered.
 * @example
 * const record = await auditProvider(client, { provider: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8" });
 * console.log(record.outcomes.completed, record.outcomes.slashed, record.earnings.claimed);
 */
export async function auditProvider(
  client: { chain: ChainClient; events?: AuditEventSource },
  { provider: given, signal, onProgress, confirmations }: AuditProviderParameters,
): Promise<AuditProviderReturnType> {
  if (!isAddress(given)) throw new UserError(`not an address: ${given}`);
  const provider = getAddress(given);
  const scope = await openAuditScope(client.chain, { signal, onProgress, confirmations, events: client.events });
  const { registry, leaseManager } = contracts(client.chain.deployment);
  const at = { blockNumber: scope.asOf.blockNumber };

  const view = await client.chain.publicClient.readContract({
    ...registry,
    functionName: "getProvider",
    args: [provider],
    ...at,
  });
  if (!view.registered) {
    throw new UserError(`${provider} is not a registered provider (${asOfText(scope.asOf)})`);
  }
  signal?.throwIfAborted();

  const [leases, claimableNow, registrations, updates, stakes, unstakes, withdrawals, releases, slashes, claims] =
    await Promise.all([
      auditLeases(scope, { provider }),
      client.chain.publicClient.readContract({ ...leaseManager, functionName: "claimable", args: [provider], ...at }),
      registryEvents(scope, "ProviderRegistered", { provider }),
      registryEvents(scope, "ProfileUpdated", { provider }),
      registryEvents(scope, "Staked", { provider }),
      registryEvents(scope, "UnstakeRequested", { provider }),
      registryEvents(scope, "Withdrawn", { provider }),
      registryEvents(scope, "CollateralReleased", { provider }),
      registryEvents(scope, "CollateralSlashed", { provider }),
      managerEvents(scope, "EarningsClaimed", { provider }),
    ]);
  await loadBlockTimes(
    scope,
    [registrations, updates, stakes, unstakes, withdrawals, slashes, claims].flatMap((logs) =>
      logs.map((log) => log.blockNumber),
    ),
  );

  const profile = [...registrations, ...updates]
    .sort(byChainOrder)
    .map((log) => ({ peerId: log.args.peerId, metadata: log.args.metadata, at: eventTime(scope, log) }));
  const changes: StakeChange[] = [
    ...stakes.map((log) => ({ kind: "staked" as const, amount: log.args.amount, leaseId: undefined, log })),
    ...unstakes.map((log) => ({
      kind: "unstake-requested" as const,
      amount: log.args.amount,
      leaseId: undefined,
      log,
    })),
    ...withdrawals.map((log) => ({ kind: "withdrawn" as const, amount: log.args.amount, leaseId: undefined, log })),
    ...slashes.map((log) => ({ kind: "slashed" as const, amount: log.args.amount, leaseId: log.args.leaseId, log })),
  ]
    .sort((a, b) => byChainOrder(a.log, b.log))
    .map(({ kind, amount, leaseId, log }) => ({ kind, amount, leaseId, at: eventTime(scope, log) }));
  const staked = sumAmounts(stakes.map((log) => log.args.amount));
  const withdrawn = sumAmounts(withdrawals.map((log) => log.args.amount));
  const slashed = sumAmounts(slashes.map((log) => log.args.amount));
  const totals = leaseTotals(leases);

  return {
    provider,
    asOf: scope.asOf,
    eligible: view.eligible,
    peerId: view.peerId,
    metadata: view.metadata,
    profile,
    stake: {
      current: view.stake,
      locked: view.locked,
      unbonding: view.unbonding,
      unbondingEndsAt: view.unbondingEndsAt,
      staked,
      withdrawn,
      slashed,
      fromEvents: staked - withdrawn - slashed,
      lockedFromEvents:
        sumAmounts(leases.map((lease) => lease.collateral)) -
        sumAmounts(releases.map((log) => log.args.amount)) -
        slashed,
      changes,
    },
    leases,
    outcomes: countOutcomes(leases),
    totals,
    earnings: {
      settled: totals.paidToProviders,
      claimed: sumAmounts(claims.map((log) => log.args.amount)),
      claimableNow,
      claims: claims.sort(byChainOrder).map((log) => ({ amount: log.args.amount, at: eventTime(scope, log) })),
    },
    slashes: leases.flatMap((lease) => (lease.slash ? [{ ...lease.slash, leaseId: lease.leaseId }] : [])),
    counters: {
      leasesOpened: view.leasesOpened,
      leasesCompleted: view.leasesCompleted,
      leasesSlashed: view.leasesSlashed,
      secondsServed: view.secondsServed,
    },
  };
}
