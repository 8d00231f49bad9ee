/**
 * Event fetching and decoding shared by the audit actions (`auditLease`, `auditJob`,
 * `auditProvider`). Everything here is rebuilt from the contracts' logs and views alone, read
 * at one pinned block so that every event type and view describes the same moment.
 */
import {
  decodeEventLog,
  type Abi,
  type Address,
  type ContractEventArgs,
  type ContractEventName,
  type GetContractEventsReturnType,
  type Hex,
} from "viem";

import { BaseError, UserError } from "../errors.ts";
import type { leaseManagerAbi, providerRegistryAbi } from "../generated/abis.ts";
import { imageDigestFromBytes32 } from "../images/digest.ts";
import type { ImageDigest } from "../images/reference.ts";
import { contracts, leaseStatus, type ChainClient, type ChainLeaseStatus } from "./client.ts";
import { checkConfirmations, confirmedBlock, confirmedBlockNumber } from "./confirmations.ts";
import { scanLogs, type LogScanProgress } from "./logs.ts";

/** A lease's state, as `Lease.Status` names it (lower case); `None` never appears in an audit. */
export type LeaseStatus = Lowercase<Exclude<ChainLeaseStatus, "None">>;

const leaseStatuses = leaseStatus.filter((s) => s !== "None").map((s) => s.toLowerCase() as LeaseStatus);

/** The block an audit reads at: every event up to it, every view at it. */
export interface AuditSnapshot {
  blockNumber: bigint;
  /** Unix seconds. */
  timestamp: bigint;
  /**
   * How many blocks below the chain's head it lies: the audit's confirmation depth. Nothing younger
   * than this many blocks is in the audit, so a reorg no deeper cannot change it.
   */
  confirmations: number;
}

/** Where and when an event was emitted. */
export interface EventTime {
  /** The block's time, unix seconds. */
  timestamp: bigint;
  blockNumber: bigint;
  logIndex: number;
  txHash: Hex;
}

export interface StatusChange {
  status: LeaseStatus;
  at: EventTime;
  /** Payment tokens refunded to the tenant by this transition (0 for `active` and `closed`). */
  refund: bigint;
}

export interface TopUp {
  amount: bigint;
  /** The deposit after the top-up (what is left unsettled plus `amount`). */
  deposit: bigint;
  /** Unix seconds the lease is funded until after the top-up. */
  endsAt: bigint;
  at: EventTime;
}

export interface CheckpointCommit {
  cid: string;
  at: EventTime;
}

export interface LeaseSlash {
  /** Whoever called `slashMissedHeartbeat`. */
  caller: Address;
  /** Staking tokens taken from the provider: compensation + reward + treasury share. */
  collateral: bigint;
  /** Staking tokens paid to the tenant. */
  compensation: bigint;
  /** Staking tokens paid to the caller (0 when the provider slashed itself). */
  reward: bigint;
  /** Staking tokens sent to the treasury. */
  treasuryAmount: bigint;
  treasury: Address;
  /** Whether the treasury is the burn address, i.e. the treasury share was burned. */
  burned: boolean;
  /** Payment tokens refunded by the slash itself (0 when a close had refunded already). */
  refund: bigint;
  at: EventTime;
}

/** The transition an active or closing lease is due as of the audit's block, that nobody has made yet. */
export type PendingTransition = "slashable" | "expired";

/** A lease rebuilt from its events. Amounts of the payment token unless said otherwise. */
export interface LeaseAudit {
  leaseId: bigint;
  jobId: Hex;
  tenant: Address;
  provider: Address;
  /** The ended lease of the same job this one continues, or 0n. */
  predecessor: bigint;
  /** Hash of the canonical resource description the quote priced. */
  resources: Hex;
  /**
   * The image the provider signed to run: the SHA-256 digest of its manifest (`sha256:…`, a
   * registry reference's `@sha256:` or an OCI layout's `index.json` entry); undefined for a job that
   * runs no image.
   */
  image: ImageDigest | undefined;
  pricePerSecond: bigint;
  /** The deposit at opening. */
  deposit: bigint;
  /** The deposit at opening plus every top-up. */
  deposited: bigint;
  /** Staking tokens locked from the provider's stake for the lease's life. */
  collateral: bigint;
  heartbeatPeriod: bigint;
  heartbeatTimeout: bigint;
  maxDuration: bigint;
  opened: EventTime;
  /** The latest status. */
  status: LeaseStatus;
  /** Every status the lease went through, starting with `active` at its opening. */
  history: StatusChange[];
  /**
   * Unix seconds at which the lease stopped running for its tenant: its first transition out of
   * `active`, or the end of its funding if that came first (an expired lease is only settled at
   * the next transaction that touches it). Undefined while it is still active.
   */
  endedAt: bigint | undefined;
  /** Unix seconds the deposit (or the maximum duration) funds the lease until. */
  endsAt: bigint;
  /** The last heartbeat's time (the opening counts as one), unix seconds. */
  lastHeartbeat: bigint;
  /** Past this time, unix seconds, anyone may slash an active or closing lease. */
  deadline: bigint;
  /** What an active or closing lease is due as of the audit's block, if anything. */
  pending: PendingTransition | undefined;
  heartbeats: number;
  /** Seconds of service settled to the provider. */
  secondsPaid: bigint;
  /** Settled into the provider's claimable balance (providers claim per account, not per lease). */
  paidToProvider: bigint;
  refundedToTenant: bigint;
  /** Still held in escrow: `deposited - paidToProvider - refundedToTenant` (0 once ended). */
  escrowed: bigint;
  topUps: TopUp[];
  /** Checkpoint CIDs the provider committed with its heartbeats, oldest first. */
  checkpoints: CheckpointCommit[];
  slash: LeaseSlash | undefined;
  /** The CID the provider finished the lease with. */
  resultCid: string | undefined;
}

/** Money of a set of leases, added up. Slash amounts are in the staking token. */
export interface LeaseTotals {
  deposited: bigint;
  paidToProviders: bigint;
  secondsPaid: bigint;
  refundedToTenant: bigint;
  escrowed: bigint;
  slashedCollateral: bigint;
  compensationToTenant: bigint;
  callerRewards: bigint;
  toTreasury: bigint;
}

/**
 * Where an audit may read events instead of the chain's logs: an index of them (the explorer's,
 * sdk/indexer/store.ts). Declared here so that the SDK's audit loads no database code.
 */
export interface AuditEventSource {
  /** The block the index holds every event up to, and its hash when indexed; undefined before its first page. */
  cursor(): Promise<{ blockNumber: number; blockHash: string } | undefined>;
  /** Raw logs of some event types in a block range, in chain order, optionally only those of some leases, jobs or providers. */
  logs(query: IndexLogQuery): Promise<AuditLogRow[]>;
}

/** What {@link AuditEventSource.logs} reads. */
export interface IndexLogQuery {
  contract: "LeaseManager" | "ProviderRegistry";
  /** Event types, one or more (an audit reads a lease's nine kinds of event in one query). */
  names: readonly string[];
  fromBlock: bigint;
  toBlock: bigint;
  /** Only events whose lease id, job id or provider is one of `values`. */
  where?: { column: "lease_id" | "job_id" | "provider"; values: readonly string[] };
}

/** A log as an index keeps it. */
export interface AuditLogRow {
  blockNumber: number;
  logIndex: number;
  blockHash: string;
  txHash: string;
  timestamp: number;
  name: string;
  topics: string[];
  data: string;
}

/**
 * `source` with the reads made in one turn of the event loop coalesced: reads that differ only in
 * their event types become one read of all those types. An audit asks for a lease's nine kinds of
 * event at once, and one query instead of nine is most of the difference between a sub-millisecond
 * indexed audit and a millisecond one: each query's fixed cost outweighs its rows.
 */
function coalescing(source: AuditEventSource): AuditEventSource {
  type Waiting = { names: readonly string[]; resolve: (rows: AuditLogRow[]) => void; reject: (error: unknown) => void };
  let pending: Map<string, { query: IndexLogQuery; waiting: Waiting[] }> | undefined;
  const flush = (batch: NonNullable<typeof pending>) => {
    for (const { query, waiting } of batch.values()) {
      const names = [...new Set(waiting.flatMap((w) => w.names))];
      source.logs({ ...query, names }).then(
        (rows) => {
          for (const w of waiting) w.resolve(rows.filter((row) => w.names.includes(row.name)));
        },
        (error: unknown) => {
          for (const w of waiting) w.reject(error);
        },
      );
    }
  };
  return {
    cursor: () => source.cursor(),
    logs(query) {
      return new Promise((resolve, reject) => {
        let batch = pending;
        if (batch === undefined) {
          const started = new Map<string, { query: IndexLogQuery; waiting: Waiting[] }>();
          batch = pending = started;
          queueMicrotask(() => {
            pending = undefined;
            flush(started);
          });
        }
        const { contract, fromBlock, toBlock, where } = query;
        const key = JSON.stringify([contract, String(fromBlock), String(toBlock), where ?? null]);
        let group = batch.get(key);
        if (group === undefined) batch.set(key, (group = { query, waiting: [] }));
        group.waiting.push({ names: query.names, resolve, reject });
      });
    },
  };
}

/** Reads shared by the steps of one audit: the pinned block, and block times fetched once each. */
export interface AuditScope {
  chain: ChainClient;
  asOf: AuditSnapshot;
  signal: AbortSignal | undefined;
  /** Block timestamps by block number, filled by {@link loadBlockTimes}. */
  blockTimes: Map<bigint, bigint>;
  /** Told after each page of blocks an event scan reads (a scan of a long chain takes many). */
  onProgress: ((progress: LogScanProgress) => void) | undefined;
  /** The index events are read from instead of the chain's logs, if any. */
  events: AuditEventSource | undefined;
}

/** Which leases to audit: indexed topics of `LeaseOpened`, so the node filters them. */
export type LeaseSelector = { leaseId: bigint } | { jobId: Hex } | { provider: Address };

/**
 * Public RPC nodes refuse filters with very many topics; a provider with thousands of leases is
 * read in slices of this many lease ids per request.
 */
const LEASE_IDS_PER_QUERY = 500;

/** Parallel `eth_getBlockByNumber` requests; enough for loopback and polite to public nodes. */
const BLOCKS_IN_FLIGHT = 16;

/** `LeaseManager` replaces a zero treasury with this address and burns what it sends there. */
export const BURN_ADDRESS: Address = "0x000000000000000000000000000000000000dEaD";

type ManagerAbi = typeof leaseManagerAbi;
type RegistryAbi = typeof providerRegistryAbi;
type ManagerEventName = ContractEventName<ManagerAbi>;
type RegistryEventName = ContractEventName<RegistryAbi>;

/** Decoded logs of one event type, mined (so with block numbers), strictly matching the ABI. */
export type ManagerLogs<name extends ManagerEventName> = GetContractEventsReturnType<
  ManagerAbi,
  name,
  true,
  bigint,
  bigint
>;
export type RegistryLogs<name extends RegistryEventName> = GetContractEventsReturnType<
  RegistryAbi,
  name,
  true,
  bigint,
  bigint
>;

/**
 * Pins the audit to the newest block `confirmations` deep (by default the client's: see
 * sdk/chain/confirmations.ts): every event up to it, every view at it, nothing younger.
 *
 * @example
 * const scope = await openAuditScope(client.chain, { signal, confirmations: 12 });
 */
export async function openAuditScope(
  chain: ChainClient,
  {
    signal,
    onProgress,
    confirmations = chain.confirmations,
    events,
  }: {
    signal?: AbortSignal | undefined;
    onProgress?: ((progress: LogScanProgress) => void) | undefined;
    confirmations?: number | undefined;
    events?: AuditEventSource | undefined;
  } = {},
): Promise<AuditScope> {
  signal?.throwIfAborted();
  const depth = checkConfirmations(confirmations);
  const block =
    events === undefined
      ? await confirmedBlock({ publicClient: chain.publicClient, confirmations: depth })
      : await indexedBlock(chain, events, depth);
  signal?.throwIfAborted();
  if (block.number < chain.deployment.deployBlock) {
    throw new UserError(
      `the deployment (block ${chain.deployment.deployBlock}) is not ${confirmations} block(s) deep yet: nothing to audit as of block ${block.number}`,
    );
  }
  const asOf = { blockNumber: block.number, timestamp: block.timestamp, confirmations };
  return {
    chain,
    asOf,
    signal,
    blockTimes: new Map([[asOf.blockNumber, asOf.timestamp]]),
    onProgress,
    events: events === undefined ? undefined : coalescing(events),
  };
}

/** A block of the chain, as an audit pins it. */
type PinnedBlock = { number: bigint; hash: Hex; timestamp: bigint };

/**
 * The last index cursor each chain client checked against its chain, with how deep it lay then.
 * Once a block is as deep as an audit's confirmations, that audit assumes no reorg can replace it:
 * the next audit at the same cursor, at no more confirmations, need not ask the chain again.
 */
const checkedCursors = new WeakMap<ChainClient["publicClient"], PinnedBlock & { depth: bigint }>();

/**
 * The block an audit from an index reads at: the index's cursor, or the confirmed block if the
 * index holds younger blocks than the audit trusts. A cursor at or below the confirmed block must
 * still be the chain's: an index a reorg went under would audit events the chain no longer has.
 * That is checked once per cursor and client (see `checkedCursors`); with 0 confirmations an audit
 * trusts no depth, so it checks every time.
 */
async function indexedBlock(chain: ChainClient, events: AuditEventSource, confirmations: number): Promise<PinnedBlock> {
  const cursor = await events.cursor();
  if (cursor === undefined) throw new UserError("the index holds no block yet: let the explorer index first");
  const number = BigInt(cursor.blockNumber);
  const checked = checkedCursors.get(chain.publicClient);
  if (
    confirmations > 0 &&
    checked?.number === number &&
    checked.hash === cursor.blockHash &&
    checked.depth >= BigInt(confirmations)
  ) {
    return checked;
  }
  // Both at once; the cursor's block is needed only if it is confirmed, and may not exist if it is not.
  const [head, read] = await Promise.all([
    chain.publicClient.getBlockNumber({ cacheTime: 0 }),
    chain.publicClient.getBlock({ blockNumber: number }).then(
      (block) => ({ block }),
      (error: unknown) => ({ error }),
    ),
  ]);
  const confirmed = confirmedBlockNumber(head, confirmations);
  if (number > confirmed) {
    const at = await chain.publicClient.getBlock({ blockNumber: confirmed });
    return { number: at.number, hash: at.hash, timestamp: at.timestamp };
  }
  if ("error" in read) throw read.error;
  const { block } = read;
  if (block.hash.toLowerCase() !== cursor.blockHash) {
    throw new UserError(
      `the index's block ${cursor.blockNumber} is no longer the chain's (a reorg): let the explorer index again`,
    );
  }
  const pinned = { number: block.number, hash: cursor.blockHash as Hex, timestamp: block.timestamp };
  checkedCursors.set(chain.publicClient, { ...pinned, depth: head - number });
  return pinned;
}

/** Which column of an index a filter on an event's indexed argument reads. */
const INDEXED_COLUMNS = { leaseId: "lease_id", jobId: "job_id", provider: "provider" } as const;

/**
 * Logs of one event from the scope's index, decoded as `getContractEvents` decodes them, with their
 * blocks' times remembered (the index has them).
 */
async function indexedEvents(
  scope: AuditScope & { events: AuditEventSource },
  contract: "leaseManager" | "registry",
  eventName: string,
  args: unknown,
  fromBlock: bigint,
): Promise<unknown[]> {
  const filters = Object.entries((args ?? {}) as Record<string, unknown>);
  if (filters.length > 1) throw new BaseError(`an index filters ${eventName} on one argument, not ${filters.length}`);
  let where: IndexLogQuery["where"];
  const [filter] = filters;
  if (filter !== undefined) {
    const [name, value] = filter;
    const column = INDEXED_COLUMNS[name as keyof typeof INDEXED_COLUMNS] as
      (typeof INDEXED_COLUMNS)[keyof typeof INDEXED_COLUMNS] | undefined;
    if (column === undefined) throw new BaseError(`an index cannot filter ${eventName} on ${name}`);
    const values = (Array.isArray(value) ? value : [value]) as (bigint | string)[];
    where = {
      column,
      values: values.map((v) => (typeof v === "bigint" ? v.toString() : v.toLowerCase())),
    };
  }
  const { abi, address } = contracts(scope.chain.deployment)[contract];
  // Only this event's ABI item: given the whole ABI, decodeEventLog hashes every event's signature
  // for each log to find the one that matches, which was most of an indexed audit's time.
  const eventAbi = (abi as Abi).filter((item) => item.type === "event" && item.name === eventName);
  const rows = await scope.events.logs({
    contract: contract === "leaseManager" ? "LeaseManager" : "ProviderRegistry",
    names: [eventName],
    fromBlock,
    toBlock: scope.asOf.blockNumber,
    ...(where ? { where } : {}),
  });
  return rows.map((row) => {
    const blockNumber = BigInt(row.blockNumber);
    scope.blockTimes.set(blockNumber, BigInt(row.timestamp));
    const topics = row.topics as [Hex, ...Hex[]];
    const decoded = decodeEventLog({ abi: eventAbi, topics, data: row.data as Hex, strict: true });
    return {
      ...decoded,
      address,
      topics,
      data: row.data,
      blockNumber,
      blockHash: row.blockHash,
      logIndex: row.logIndex,
      transactionHash: row.txHash,
      removed: false,
    };
  });
}

/**
 * Where an audit read, for its messages: `as of block 120`, and at a depth, that younger blocks were
 * not read (`as of block 120, 12 blocks below the head: younger events are not shown`).
 */
export function asOfText(asOf: AuditSnapshot): string {
  if (asOf.confirmations === 0) return `as of block ${asOf.blockNumber}`;
  return `as of block ${asOf.blockNumber}, ${asOf.confirmations} block(s) below the head: younger events are not shown`;
}

/** Logs of one event of `contract`, from `fromBlock` (by default the deployment's) to the audit's block. */
async function contractEvents(
  scope: AuditScope,
  contract: "leaseManager" | "registry",
  eventName: string,
  args: unknown,
  fromBlock = scope.chain.deployment.deployBlock,
): Promise<unknown> {
  if (scope.events !== undefined) {
    return indexedEvents({ ...scope, events: scope.events }, contract, eventName, args, fromBlock);
  }
  // Typed by the two wrappers below: viem cannot resolve an event name generic over two ABIs.
  return scanLogs(
    (range) =>
      scope.chain.publicClient.getContractEvents({
        ...contracts(scope.chain.deployment)[contract],
        eventName,
        args,
        ...range,
        strict: true,
      } as never),
    {
      what: eventName,
      fromBlock,
      toBlock: scope.asOf.blockNumber,
      maxRange: scope.chain.maxLogRange,
      ...(scope.signal ? { signal: scope.signal } : {}),
      ...(scope.onProgress ? { onProgress: scope.onProgress } : {}),
    },
  );
}

/** Logs of one `LeaseManager` event, filtered on its indexed `args`. */
export async function managerEvents<const name extends ManagerEventName>(
  scope: AuditScope,
  eventName: name,
  args?: ContractEventArgs<ManagerAbi, name>,
  fromBlock?: bigint,
): Promise<ManagerLogs<name>> {
  return (await contractEvents(scope, "leaseManager", eventName, args, fromBlock)) as ManagerLogs<name>;
}

/** Logs of one `ProviderRegistry` event, filtered on its indexed `args`. */
export async function registryEvents<const name extends RegistryEventName>(
  scope: AuditScope,
  eventName: name,
  args?: ContractEventArgs<RegistryAbi, name>,
): Promise<RegistryLogs<name>> {
  return (await contractEvents(scope, "registry", eventName, args)) as RegistryLogs<name>;
}

/** The `LeaseManager` events whose first indexed argument is the lease id. */
type PerLeaseEventName =
  | "HeartbeatRecorded"
  | "CheckpointCommitted"
  | "EarningsSettled"
  | "LeaseToppedUp"
  | "LeaseCloseRequested"
  | "LeaseClosed"
  | "LeaseCompleted"
  | "LeaseExpired"
  | "LeaseSlashed";

/**
 * Logs of one per-lease event for the given leases, filtered by the node on the lease-id topic,
 * from `fromBlock` (the first of those leases' openings: none of their events is older).
 */
async function perLeaseEvents<const name extends PerLeaseEventName>(
  scope: AuditScope,
  eventName: name,
  leaseIds: readonly bigint[],
  fromBlock: bigint,
): Promise<ManagerLogs<name>> {
  const slices: bigint[][] = [];
  for (let i = 0; i < leaseIds.length; i += LEASE_IDS_PER_QUERY) {
    slices.push(leaseIds.slice(i, i + LEASE_IDS_PER_QUERY));
  }
  const results = await Promise.all(
    slices.map((slice) =>
      managerEvents(scope, eventName, { leaseId: slice } as ContractEventArgs<ManagerAbi, name>, fromBlock),
    ),
  );
  return results.flat() as ManagerLogs<name>;
}

/** Fetches the timestamps of the blocks not known yet, a bounded number at a time. */
export async function loadBlockTimes(scope: AuditScope, blockNumbers: Iterable<bigint>): Promise<void> {
  const missing = [...new Set(blockNumbers)].filter((n) => !scope.blockTimes.has(n));
  for (let i = 0; i < missing.length; i += BLOCKS_IN_FLIGHT) {
    scope.signal?.throwIfAborted();
    const blocks = await Promise.all(
      missing.slice(i, i + BLOCKS_IN_FLIGHT).map((blockNumber) => scope.chain.publicClient.getBlock({ blockNumber })),
    );
    for (const block of blocks) scope.blockTimes.set(block.number, block.timestamp);
  }
}

interface ChainPosition {
  blockNumber: bigint;
  logIndex: number;
}

interface MinedLog extends ChainPosition {
  transactionHash: Hex;
}

/** The time of a log whose block time {@link loadBlockTimes} has fetched. */
export function eventTime(scope: AuditScope, log: MinedLog): EventTime {
  const timestamp = scope.blockTimes.get(log.blockNumber);
  if (timestamp === undefined) throw new BaseError(`block ${log.blockNumber} was not loaded before use`);
  return { timestamp, blockNumber: log.blockNumber, logIndex: log.logIndex, txHash: log.transactionHash };
}

/** Chain order: by block, then position in the block. */
export function byChainOrder(a: ChainPosition, b: ChainPosition): number {
  if (a.blockNumber !== b.blockNumber) return a.blockNumber < b.blockNumber ? -1 : 1;
  return a.logIndex - b.logIndex;
}

function groupByLease<log extends { args: { leaseId: bigint } }>(logs: readonly log[]): Map<bigint, log[]> {
  const groups = new Map<bigint, log[]>();
  for (const log of logs) {
    const group = groups.get(log.args.leaseId);
    if (group) group.push(log);
    else groups.set(log.args.leaseId, [log]);
  }
  return groups;
}

/** The sum of some token amounts. */
export function sumAmounts(values: Iterable<bigint>): bigint {
  let total = 0n;
  for (const value of values) total += value;
  return total;
}

/** The largest of `times`, or `from` when none is later. */
function latest(from: bigint, times: readonly bigint[]): bigint {
  return times.reduce((max, t) => (t > max ? t : max), from);
}

/**
 * Rebuilds every lease `selector` picks from its events: one `LeaseOpened` query with the
 * selector's topic, then one query per other event type for all those leases at once, then the
 * timestamps of the blocks they sit in. Sorted by lease id, i.e. by opening.
 *
 * @example
 * const scope = await openAuditScope(client.chain);
 * const leases = await auditLeases(scope, { jobId });
 */
export async function auditLeases(scope: AuditScope, selector: LeaseSelector): Promise<LeaseAudit[]> {
  const openings = await managerEvents(scope, "LeaseOpened", selector);
  if (openings.length === 0) return [];
  const ids = openings.map((log) => log.args.leaseId);
  const first = openings.reduce((min, log) => (log.blockNumber < min ? log.blockNumber : min), scope.asOf.blockNumber);

  const [heartbeats, commits, settlements, topUps, closeRequests, closes, completions, expiries, slashes] =
    await Promise.all([
      perLeaseEvents(scope, "HeartbeatRecorded", ids, first),
      perLeaseEvents(scope, "CheckpointCommitted", ids, first),
      perLeaseEvents(scope, "EarningsSettled", ids, first),
      perLeaseEvents(scope, "LeaseToppedUp", ids, first),
      perLeaseEvents(scope, "LeaseCloseRequested", ids, first),
      perLeaseEvents(scope, "LeaseClosed", ids, first),
      perLeaseEvents(scope, "LeaseCompleted", ids, first),
      perLeaseEvents(scope, "LeaseExpired", ids, first),
      perLeaseEvents(scope, "LeaseSlashed", ids, first),
    ]);
  scope.signal?.throwIfAborted();

  // A heartbeat records `uint32(block.timestamp)`: its own block's time, for free.
  for (const log of heartbeats) scope.blockTimes.set(log.blockNumber, log.args.timestamp);
  await loadBlockTimes(
    scope,
    [openings, commits, topUps, closeRequests, closes, completions, expiries, slashes].flatMap((logs) =>
      logs.map((log) => log.blockNumber),
    ),
  );
  const treasury =
    slashes.length > 0
      ? await scope.chain.publicClient.readContract({
          ...contracts(scope.chain.deployment).leaseManager,
          functionName: "treasury",
          blockNumber: scope.asOf.blockNumber,
        })
      : BURN_ADDRESS;
  scope.signal?.throwIfAborted();

  const heartbeatsOf = groupByLease(heartbeats);
  const commitsOf = groupByLease(commits);
  const settlementsOf = groupByLease(settlements);
  const topUpsOf = groupByLease(topUps);
  const closeRequestOf = groupByLease(closeRequests);
  const closeOf = groupByLease(closes);
  const completionOf = groupByLease(completions);
  const expiryOf = groupByLease(expiries);
  const slashOf = groupByLease(slashes);

  return openings
    .map((opening): LeaseAudit => {
      const { leaseId, jobId, provider, tenant, predecessor, deposit, terms } = opening.args;
      const opened = eventTime(scope, opening);
      const leaseTopUps = (topUpsOf.get(leaseId) ?? []).sort(byChainOrder).map((log): TopUp => ({
        amount: log.args.amount,
        deposit: log.args.deposit,
        endsAt: log.args.endsAt,
        at: eventTime(scope, log),
      }));
      const endsAt = leaseTopUps.at(-1)?.endsAt ?? opening.args.endsAt;

      const transitions = [
        ...(closeRequestOf.get(leaseId) ?? []).map((log) => ({
          log,
          status: "closing" as const,
          refund: log.args.refund,
        })),
        ...(closeOf.get(leaseId) ?? []).map((log) => ({ log, status: "closed" as const, refund: 0n })),
        ...(completionOf.get(leaseId) ?? []).map((log) => ({
          log,
          status: "completed" as const,
          refund: log.args.refund,
        })),
        ...(expiryOf.get(leaseId) ?? []).map((log) => ({ log, status: "expired" as const, refund: log.args.refund })),
        ...(slashOf.get(leaseId) ?? []).map((log) => ({ log, status: "slashed" as const, refund: log.args.refund })),
      ].sort((a, b) => byChainOrder(a.log, b.log));
      const history: StatusChange[] = [
        { status: "active", at: opened, refund: 0n },
        ...transitions.map(({ log, status, refund }) => ({ status, at: eventTime(scope, log), refund })),
      ];
      const status = history.at(-1)!.status;
      const leftActive = history[1];
      const endedAt =
        leftActive === undefined ? undefined : leftActive.at.timestamp < endsAt ? leftActive.at.timestamp : endsAt;

      const beats = heartbeatsOf.get(leaseId) ?? [];
      const lastHeartbeat = latest(
        opened.timestamp,
        beats.map((log) => log.args.timestamp),
      );
      // A closed lease's provider has a whole timeout from the close to acknowledge it (the
      // contract's rule); a running one, from its last heartbeat.
      const closedAt = history.find((change) => change.status === "closing")?.at.timestamp;
      const deadline = (closedAt ?? lastHeartbeat) + terms.heartbeatTimeout;

      const leaseSettlements = settlementsOf.get(leaseId) ?? [];
      const paidToProvider = sumAmounts(leaseSettlements.map((log) => log.args.amount));
      // Settlement starts at the opening's block time, like the contract's `settledUntil`.
      const settledUntil = latest(
        opened.timestamp,
        leaseSettlements.map((log) => log.args.settledUntil),
      );
      const refundedToTenant = sumAmounts(history.map((change) => change.refund));
      const deposited = deposit + sumAmounts(leaseTopUps.map((topUp) => topUp.amount));

      const slashLog = slashOf.get(leaseId)?.[0];
      const slash: LeaseSlash | undefined = slashLog && {
        caller: slashLog.args.caller,
        collateral: slashLog.args.compensation + slashLog.args.reward + slashLog.args.treasuryAmount,
        compensation: slashLog.args.compensation,
        reward: slashLog.args.reward,
        treasuryAmount: slashLog.args.treasuryAmount,
        treasury,
        burned: treasury.toLowerCase() === BURN_ADDRESS.toLowerCase(),
        refund: slashLog.args.refund,
        at: eventTime(scope, slashLog),
      };

      return {
        leaseId,
        jobId,
        tenant,
        provider,
        predecessor,
        resources: terms.resources,
        image: imageDigestFromBytes32(terms.image),
        pricePerSecond: terms.pricePerSecond,
        deposit,
        deposited,
        collateral: terms.collateral,
        heartbeatPeriod: terms.heartbeatPeriod,
        heartbeatTimeout: terms.heartbeatTimeout,
        maxDuration: terms.maxDuration,
        opened,
        status,
        history,
        endedAt,
        endsAt,
        lastHeartbeat,
        deadline,
        pending: pendingTransition(status, deadline, endsAt, scope.asOf.timestamp),
        heartbeats: beats.length,
        secondsPaid: settledUntil - opened.timestamp,
        paidToProvider,
        refundedToTenant,
        escrowed: deposited - paidToProvider - refundedToTenant,
        topUps: leaseTopUps,
        checkpoints: (commitsOf.get(leaseId) ?? [])
          .sort(byChainOrder)
          .map((log) => ({ cid: log.args.cid, at: eventTime(scope, log) })),
        slash,
        resultCid: completionOf.get(leaseId)?.[0]?.args.resultCid,
      };
    })
    .sort((a, b) => (a.leaseId < b.leaseId ? -1 : a.leaseId > b.leaseId ? 1 : 0));
}

/** The contract's `_isSlashable` and `_isExpired`, evaluated at the audit's block time. */
function pendingTransition(
  status: LeaseStatus,
  deadline: bigint,
  endsAt: bigint,
  now: bigint,
): PendingTransition | undefined {
  if (status === "active") {
    if (now > deadline && deadline < endsAt) return "slashable";
    if (now >= endsAt && deadline >= endsAt) return "expired";
  }
  if (status === "closing" && now > deadline) return "slashable";
  return undefined;
}

/** Adds up the money of `leases`. */
export function leaseTotals(leases: readonly LeaseAudit[]): LeaseTotals {
  return {
    deposited: sumAmounts(leases.map((l) => l.deposited)),
    paidToProviders: sumAmounts(leases.map((l) => l.paidToProvider)),
    secondsPaid: sumAmounts(leases.map((l) => l.secondsPaid)),
    refundedToTenant: sumAmounts(leases.map((l) => l.refundedToTenant)),
    escrowed: sumAmounts(leases.map((l) => l.escrowed)),
    slashedCollateral: sumAmounts(leases.map((l) => l.slash?.collateral ?? 0n)),
    compensationToTenant: sumAmounts(leases.map((l) => l.slash?.compensation ?? 0n)),
    callerRewards: sumAmounts(leases.map((l) => l.slash?.reward ?? 0n)),
    toTreasury: sumAmounts(leases.map((l) => l.slash?.treasuryAmount ?? 0n)),
  };
}

/** How many leases ended (or stand) in each status. */
export function countOutcomes(leases: readonly LeaseAudit[]): Record<LeaseStatus, number> {
  const counts = Object.fromEntries(leaseStatuses.map((s) => [s, 0])) as Record<LeaseStatus, number>;
  for (const lease of leases) counts[lease.status] += 1;
  return counts;
}
