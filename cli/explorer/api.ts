/**
 * What the explorer's pages show, read from the index (sdk/indexer/store.ts, either backend): the
 * network, a provider, a lease, a job. Every figure comes with the transaction and block it came
 * from, so that a page can link each one to its source. Amounts are decimal strings of the token's
 * smallest unit (JSON has no bigint), added up here with bigint. The server reads each view from
 * one snapshot of the index (`IndexStore.snapshot`), so that its figures are all as of one cursor.
 */
import type { IndexedEvent, IndexReader, LeaseRow, ProviderRow } from "../../sdk/indexer/store.ts";

/** Where a figure came from. */
export interface Source {
  blockNumber: number;
  txHash: string;
  /** Unix seconds. */
  timestamp: number;
}

/** One event, as pages list it. */
export interface EventItem extends Source {
  name: string;
  leaseId: string | null;
  args: Record<string, unknown>;
}

const source = (e: IndexedEvent): Source => ({ blockNumber: e.blockNumber, txHash: e.txHash, timestamp: e.timestamp });
const item = (e: IndexedEvent): EventItem => ({ ...source(e), name: e.name, leaseId: e.leaseId, args: e.args });
const amount = (e: IndexedEvent, key: string): bigint => BigInt(e.args[key] as string);
const sum = (events: readonly IndexedEvent[], key: string): string =>
  events.reduce((total, e) => total + amount(e, key), 0n).toString();

const lease = (row: LeaseRow) => ({
  leaseId: row.lease_id,
  jobId: row.job_id,
  provider: row.provider,
  tenant: row.tenant,
  predecessor: row.predecessor,
  deposit: row.deposit,
  status: row.status,
  heartbeats: row.heartbeats,
  checkpoints: row.checkpoints,
  opened: { blockNumber: row.opened_block, txHash: row.opened_tx, timestamp: row.opened_at },
});

/** The block the index holds everything up to: what every answer is as of. */
async function asOf(store: IndexReader): Promise<number | null> {
  return (await store.cursor())?.blockNumber ?? null;
}

/** Bonded stake from the registry's events: staked, less what started unbonding, less what was slashed. */
async function bondedStake(store: IndexReader, provider: string): Promise<{ stake: string; events: IndexedEvent[] }> {
  const events = (await store.events({ provider })).filter(
    (e) => e.name === "Staked" || e.name === "UnstakeRequested" || e.name === "CollateralSlashed",
  );
  let stake = 0n;
  for (const e of events) stake += e.name === "Staked" ? amount(e, "amount") : -amount(e, "amount");
  return { stake: stake.toString(), events };
}

/** The network at a glance: providers, stake, leases by state, slashes and openings over time. */
export async function networkView(store: IndexReader) {
  const providers = await store.providers();
  const byStatus = await store.leaseCounts();
  const slashes = (await store.events({ name: "LeaseSlashed" })).map(item);
  const openings = (await store.events({ name: "LeaseOpened" })).map(source);
  const withStake: (ReturnType<typeof providerSummary> & { stake: string })[] = [];
  for (const p of providers) {
    withStake.push({ ...providerSummary(p), stake: (await bondedStake(store, p.provider)).stake });
  }
  return {
    asOf: await asOf(store),
    providers: withStake,
    totalStake: withStake.reduce((total, p) => total + BigInt(p.stake), 0n).toString(),
    leases: { total: Object.values(byStatus).reduce((a, b) => a + b, 0), byStatus },
    liveLeases: (byStatus.active ?? 0) + (byStatus.closing ?? 0),
    slashes,
    openings,
  };
}

const providerSummary = (p: ProviderRow) => ({
  provider: p.provider,
  peerId: p.peer_id,
  registeredBlock: p.registered_block,
  counters: { leasesOpened: p.leases, leasesCompleted: p.completed, leasesSlashed: p.slashed },
});

/** A provider's counters, history, uptime, earnings and slash record; undefined when it never registered. */
export async function providerView(store: IndexReader, address: string) {
  const provider = address.toLowerCase();
  const [row] = await store.providers({ provider });
  if (row === undefined) return undefined;
  const history = await store.events({ provider });
  const leases = await store.leases({ provider });
  const settled = history.filter((e) => e.name === "EarningsSettled");
  const claimed = history.filter((e) => e.name === "EarningsClaimed");
  const slashes = await store.slashes({ provider });
  const { stake } = await bondedStake(store, provider);
  const ended = leases.filter((l) => l.status !== "active" && l.status !== "closing");
  return {
    asOf: await asOf(store),
    ...providerSummary(row),
    stake,
    // Uptime as the share of ended leases the provider saw through without a slash.
    uptime: ended.length === 0 ? null : ended.filter((l) => l.status !== "slashed").length / ended.length,
    earnings: { settled: sum(settled, "amount"), claimed: sum(claimed, "amount"), settlements: settled.map(item) },
    leases: leases.map(lease),
    slashes,
    history: history.map(item),
  };
}

/** A lease's state machine as a timeline of its events, with payments; undefined when no such lease. */
export async function leaseView(store: IndexReader, leaseId: string) {
  const [row] = await store.leases({ leaseId });
  if (row === undefined) return undefined;
  const events = await store.events({ leaseId });
  const settled = events.filter((e) => e.name === "EarningsSettled");
  const [successor] = await store.leases({ predecessor: leaseId });
  return {
    asOf: await asOf(store),
    ...lease(row),
    successor: successor?.lease_id ?? null,
    paidToProvider: sum(settled, "amount"),
    timeline: events.filter((e) => e.contract === "LeaseManager").map(item),
  };
}

/**
 * A job's leases and its lineage: each hand-off from a lease to the one that names it as
 * predecessor, with the checkpoint the successor resumed from (the last one its predecessor
 * committed before the successor opened). Undefined when no lease carries the job id.
 */
export async function jobView(store: IndexReader, jobId: string) {
  const rows = await store.leases({ jobId });
  if (rows.length === 0) return undefined;
  const checkpoints = new Map<string, IndexedEvent[]>();
  for (const r of rows) {
    checkpoints.set(
      r.lease_id,
      (await store.events({ leaseId: r.lease_id })).filter((e) => e.name === "CheckpointCommitted"),
    );
  }
  const handOffs = rows
    .filter((r) => r.predecessor !== "0" && checkpoints.has(r.predecessor))
    .map((r) => {
      const resumed = checkpoints
        .get(r.predecessor)!
        .filter((c) => c.blockNumber <= r.opened_block)
        .at(-1);
      return {
        from: r.predecessor,
        to: r.lease_id,
        opened: { blockNumber: r.opened_block, txHash: r.opened_tx, timestamp: r.opened_at },
        checkpoint: resumed === undefined ? null : { cid: resumed.args.cid as string, ...source(resumed) },
      };
    });
  const slashes = await store.slashes({ jobId });
  return {
    asOf: await asOf(store),
    jobId: jobId.toLowerCase(),
    leases: rows.map((r) => ({ ...lease(r), checkpoints: checkpoints.get(r.lease_id)!.map(item) })),
    handOffs,
    slashes,
  };
}

/** The events of one transaction: where a figure's link leads. */
export async function transactionView(store: IndexReader, txHash: string) {
  const events = await store.events({ txHash });
  const first = events[0];
  if (first === undefined) return undefined;
  return { txHash: first.txHash, blockNumber: first.blockNumber, timestamp: first.timestamp, events: events.map(item) };
}
