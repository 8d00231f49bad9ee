/** What `baton audit …` prints for people (and the demo, for its job): tables of what the chain says. */
import { formatEther } from "viem";

import type { AuditJobReturnType } from "../sdk/actions/auditJob.ts";
import type { AuditLeaseReturnType } from "../sdk/actions/auditLease.ts";
import type { AuditProviderReturnType } from "../sdk/actions/auditProvider.ts";
import type { AuditSnapshot, LeaseAudit } from "../sdk/chain/audit-events.ts";
import { table } from "./output.ts";

const tokens = (amount: bigint): string => formatEther(amount);
const time = (unixSeconds: bigint): string => new Date(Number(unixSeconds) * 1000).toISOString();

function duration(seconds: bigint): string {
  const s = Number(seconds);
  const parts: [number, string][] = [
    [Math.floor(s / 86_400), "d"],
    [Math.floor(s / 3_600) % 24, "h"],
    [Math.floor(s / 60) % 60, "m"],
    [s % 60, "s"],
  ];
  const first = parts.findIndex(([n]) => n > 0);
  return first === -1
    ? "0s"
    : parts
        .slice(first)
        .map(([n, unit]) => `${n}${unit}`)
        .join(" ");
}

const asOf = (snapshot: AuditSnapshot): string =>
  `block ${snapshot.blockNumber}, ${time(snapshot.timestamp)}` +
  (snapshot.confirmations > 0 ? ` (${snapshot.confirmations} confirmations: younger blocks not read)` : "");

/** A lease's image: its manifest digest, or that it ran none. */
const imageOf = (lease: LeaseAudit): string => lease.image ?? "none (a process job)";

/** How a lease ended, through its transitions: `completed`, `closing→slashed`, `active (slashable)`. */
function how(lease: LeaseAudit): string {
  const path = lease.history.slice(1).map((change) => change.status);
  if (path.length === 0) return lease.pending ? `active (${lease.pending})` : "active";
  return path.join("→") + (lease.pending ? ` (${lease.pending})` : "");
}

function leaseRow(lease: LeaseAudit, now: bigint, who: string): string[] {
  return [
    String(lease.leaseId),
    who,
    time(lease.opened.timestamp),
    lease.endedAt === undefined ? "-" : time(lease.endedAt),
    how(lease),
    duration((lease.endedAt ?? now) - lease.opened.timestamp),
    tokens(lease.paidToProvider),
    tokens(lease.refundedToTenant),
    lease.slash ? tokens(lease.slash.collateral) : "-",
    String(lease.checkpoints.length),
  ];
}

const leaseHeader = (who: string): string[] => [
  "lease",
  who,
  "opened",
  "ended",
  "how",
  "duration",
  "paid",
  "refunded",
  "slashed",
  "checkpoints",
];

export function printJob(job: AuditJobReturnType): void {
  const leases = [...job.lineage, ...job.others];
  // One image for the whole job is what the SDK leases; several are shown lease by lease.
  const images = new Set(leases.map(imageOf));
  const [image] = images;
  console.log(
    table([
      ["job", job.jobId],
      ["tenant", job.tenant],
      ...(job.otherTenants.length > 0 ? [["other tenants using the id (ignored)", job.otherTenants.join(", ")]] : []),
      ["as of", asOf(job.asOf)],
      ["lineage", `${job.lineage.length} lease(s), ${job.handOffs} hand-off(s)`],
      ["off the lineage", job.others.length > 0 ? job.others.map((l) => l.leaseId).join(", ") : "none"],
      ["image", images.size === 1 ? `${image!} (every lease)` : `${images.size} different ones (below)`],
    ]),
  );
  console.log("");
  console.log(
    table([leaseHeader("provider"), ...leases.map((lease) => leaseRow(lease, job.asOf.timestamp, lease.provider))]),
  );
  if (images.size > 1) {
    console.log("");
    console.log(table([["lease", "image"], ...leases.map((lease) => [String(lease.leaseId), imageOf(lease)])]));
  }
  if (job.holders.length > 0) {
    const h = job.holderTotals;
    console.log("");
    console.log(
      `holders (leases that pinned the job's checkpoints; paid ${tokens(h.paidToProviders)}, refunded ${tokens(h.refundedToTenant)}):`,
    );
    console.log(
      table([
        leaseHeader("holder"),
        ...job.holders.map((lease) => leaseRow(lease, job.asOf.timestamp, lease.provider)),
      ]),
    );
  }
  const t = job.totals;
  const burned = job.lineage.concat(job.others).some((lease) => lease.slash?.burned);
  console.log("");
  console.log(
    table([
      ["started", time(job.startedAt.timestamp)],
      ["ended", job.endedAt === undefined ? "still running" : time(job.endedAt)],
      ["wall duration", duration(job.wallSeconds)],
      ["deposited", tokens(t.deposited)],
      ["paid to providers", `${tokens(t.paidToProviders)} (${t.secondsPaid} s of service)`],
      ["refunded to tenant", tokens(t.refundedToTenant)],
      ["still in escrow", tokens(t.escrowed)],
      ["slashed collateral", tokens(t.slashedCollateral)],
      ["  compensation to tenant", tokens(t.compensationToTenant)],
      ["  rewards to slash callers", tokens(t.callerRewards)],
      [burned ? "  burned" : "  to treasury", tokens(t.toTreasury)],
      ["result", job.resultCid ?? "-"],
    ]),
  );
  if (job.checkpoints.length > 0) {
    console.log("");
    console.log(
      table([
        ["checkpoint", "lease", "committed"],
        ...job.checkpoints.map((c) => [c.cid, String(c.leaseId), time(c.at.timestamp)]),
      ]),
    );
  }
}

export function printLease(lease: AuditLeaseReturnType): void {
  console.log(
    table([
      ["lease", String(lease.leaseId)],
      ["job", lease.jobId],
      ["tenant", lease.tenant],
      ["provider", lease.provider],
      ["predecessor", lease.predecessor === 0n ? "none" : String(lease.predecessor)],
      ["image", imageOf(lease)],
      ["as of", asOf(lease.asOf)],
      ["opened", `${time(lease.opened.timestamp)} (block ${lease.opened.blockNumber}, tx ${lease.opened.txHash})`],
      ["status", how(lease)],
      ["ended", lease.endedAt === undefined ? "-" : time(lease.endedAt)],
      ["price per second", tokens(lease.pricePerSecond)],
      ["deposited", `${tokens(lease.deposited)} (${lease.topUps.length} top-up(s))`],
      ["collateral", tokens(lease.collateral)],
      ["heartbeat period / timeout", `${lease.heartbeatPeriod} s / ${lease.heartbeatTimeout} s`],
      ["heartbeats", lease.heartbeats === 0 ? "0" : `${lease.heartbeats}, last at ${time(lease.lastHeartbeat)}`],
      ["paid to provider", `${tokens(lease.paidToProvider)} (${lease.secondsPaid} s)`],
      ["refunded to tenant", tokens(lease.refundedToTenant)],
      ["still in escrow", tokens(lease.escrowed)],
      ["result", lease.resultCid ?? "-"],
    ]),
  );
  console.log("");
  console.log(
    table([
      ["status", "at", "block", "refund", "tx"],
      ...lease.history.map((c) => [
        c.status,
        time(c.at.timestamp),
        String(c.at.blockNumber),
        tokens(c.refund),
        c.at.txHash,
      ]),
    ]),
  );
  if (lease.slash) {
    const s = lease.slash;
    console.log("");
    console.log(
      table([
        ["slashed by", s.caller],
        ["collateral taken", tokens(s.collateral)],
        ["  compensation to tenant", tokens(s.compensation)],
        ["  reward to caller", tokens(s.reward)],
        [s.burned ? "  burned" : `  to treasury ${s.treasury}`, tokens(s.treasuryAmount)],
      ]),
    );
  }
  if (lease.topUps.length > 0) {
    console.log("");
    console.log(
      table([
        ["top-up", "deposit after", "funded until", "at"],
        ...lease.topUps.map((u) => [tokens(u.amount), tokens(u.deposit), time(u.endsAt), time(u.at.timestamp)]),
      ]),
    );
  }
  if (lease.checkpoints.length > 0) {
    console.log("");
    console.log(table([["checkpoint", "committed"], ...lease.checkpoints.map((c) => [c.cid, time(c.at.timestamp)])]));
  }
}

export function printProvider(record: AuditProviderReturnType): void {
  const o = record.outcomes;
  const s = record.stake;
  const registered = record.profile[0];
  console.log(
    table([
      ["provider", record.provider],
      ["peer id", record.peerId],
      ["registered", registered ? time(registered.at.timestamp) : "-"],
      ["as of", asOf(record.asOf)],
      ["eligible", record.eligible ? "yes" : "no (stake below minimum)"],
      ["stake", `${tokens(s.current)} (by events: ${tokens(s.fromEvents)})`],
      ["  locked as collateral", tokens(s.locked)],
      ["  unbonding", s.unbonding > 0n ? `${tokens(s.unbonding)} until ${time(s.unbondingEndsAt)}` : "0"],
      ["  staked / withdrawn / slashed", `${tokens(s.staked)} / ${tokens(s.withdrawn)} / ${tokens(s.slashed)}`],
      [
        "leases",
        `${record.leases.length}: ${o.completed} completed, ${o.closed} closed, ${o.expired} expired, ${o.slashed} slashed, ${o.active} active, ${o.closing} closing`,
      ],
      [
        "registry counters",
        `opened ${record.counters.leasesOpened}, completed ${record.counters.leasesCompleted}, slashed ${record.counters.leasesSlashed}, ${record.counters.secondsServed} s served`,
      ],
      ["earnings settled", tokens(record.earnings.settled)],
      ["earnings claimed", `${tokens(record.earnings.claimed)} in ${record.earnings.claims.length} claim(s)`],
      ["claimable now", tokens(record.earnings.claimableNow)],
    ]),
  );
  if (record.leases.length > 0) {
    console.log("");
    console.log(
      table([leaseHeader("job"), ...record.leases.map((lease) => leaseRow(lease, record.asOf.timestamp, lease.jobId))]),
    );
  }
  if (record.slashes.length > 0) {
    console.log("");
    console.log(
      table([
        ["slashed lease", "at", "collateral", "to tenant", "to caller", "to treasury", "caller"],
        ...record.slashes.map((slash) => [
          String(slash.leaseId),
          time(slash.at.timestamp),
          tokens(slash.collateral),
          tokens(slash.compensation),
          tokens(slash.reward),
          tokens(slash.treasuryAmount),
          slash.caller,
        ]),
      ]),
    );
  }
}
