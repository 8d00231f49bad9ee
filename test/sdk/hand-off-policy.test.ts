import { describe, expect, it } from "vitest";

import { BudgetExhaustedError, JobFailedError } from "../../sdk/errors.ts";
import { parseJobSpec } from "../../sdk/job-spec.ts";
import {
  countHandOff,
  isProviderRefusal,
  leaseCost,
  leaseDeposit,
  providersToAvoid,
  refusalFault,
  refusalHandOffReason,
  TOP_UP_MARGIN_MS,
  topUpAmount,
  topUpAt,
} from "../../sdk/tenant/hand-off-policy.ts";
import type { JobRecord, LeaseRecord } from "../../sdk/tenant/job-store.ts";
import { sessionRefusalReasons } from "../../sdk/wire/messages.ts";

/** The parts of a job's record the policy reads: a 100 s job, 3 hand-offs allowed, `budget` if given. */
function jobRecord(
  budget?: bigint,
  deposited = 0n,
): Pick<JobRecord, "options" | "spec" | "deposited" | "handOffs" | "leases"> {
  return {
    spec: parseJobSpec({ command: ["true"], maxDurationS: 100 }),
    options: {
      maxPricePerSecond: "10",
      ...(budget === undefined ? {} : { budget: budget.toString() }),
      retryLimit: 3,
      keepCheckpoints: 3,
      exclude: ["0xuser-excluded"],
    },
    deposited: deposited.toString(),
    handOffs: 0,
    leases: [],
  };
}

/** A lease of the job's record with `provider`, ended in `state`. */
function lease(provider: string, state: LeaseRecord["state"]): LeaseRecord {
  return {
    leaseId: "1",
    provider,
    peerId: "12D3KooW",
    addresses: [],
    pricePerSecond: "1",
    deposit: "1",
    openedAt: 0,
    lastSeq: 0,
    state,
  };
}

describe("refusals", () => {
  it("classifies every session refusal reason the wire protocol has", () => {
    expect(Object.keys(refusalFault).sort()).toEqual([...sessionRefusalReasons].sort());
  });

  it("hands the job on for the provider's refusals and fails it for the tenant's", () => {
    const providers = ["timeout", "draining", "unknown-lease", "lease-not-active", "no-capacity"] as const;
    for (const reason of [...providers, "inputs-failed", "resume-failed", "internal"] as const) {
      expect(isProviderRefusal(reason), reason).toBe(true);
    }
    for (const reason of ["not-our-lease", "not-your-lease", "spec-mismatch", "bad-request"] as const) {
      expect(isProviderRefusal(reason), reason).toBe(false);
    }
  });

  it("says a draining provider gave the lease back, and any other provider refused", () => {
    expect(refusalHandOffReason("draining", "the node is shutting down")).toBe(
      "provider draining: the node is shutting down",
    );
    expect(refusalHandOffReason("resume-failed", "cannot resume from bafy")).toBe("refused: cannot resume from bafy");
  });
});

describe("exclusion and the retry limit", () => {
  it("avoids the user's list, the provider that failed the job last, and the others asked for", () => {
    const record = jobRecord();
    record.leases.push(lease("0xfailed", "failed"), lease("0xdone", "completed"), lease("0xnow", "running"));
    expect(providersToAvoid(record, ["0xreplica"])).toEqual({
      exclude: ["0xuser-excluded", "0xfailed", "0xreplica"],
      lastResort: [],
    });
    expect(providersToAvoid(record).exclude).toEqual(["0xuser-excluded", "0xfailed"]);
  });

  it("asks the providers that failed the job before only as a last resort", () => {
    const record = jobRecord();
    record.leases.push(lease("0xfirst", "failed"), lease("0xsecond", "failed"), lease("0xreplica", "failed"));
    record.leases.push(lease("0xfirst", "failed"), lease("0xthird", "failed"));
    expect(providersToAvoid(record, ["0xreplica"])).toEqual({
      exclude: ["0xuser-excluded", "0xthird", "0xreplica"],
      lastResort: ["0xfirst", "0xsecond"],
    });
  });

  it("allows as many hand-offs as the retry limit, and fails the job at the next one", () => {
    const record = jobRecord();
    for (let i = 1; i <= 3; i++) {
      expect(countHandOff(record, "gone")).toBeUndefined();
      expect(record.handOffs).toBe(i);
    }
    const tooMany = countHandOff(record, "connection refused");
    expect(tooMany).toBeInstanceOf(JobFailedError);
    expect(tooMany?.shortMessage).toBe("4 providers failed this job; its retry limit is 3");
    expect(tooMany?.details).toBe("last: connection refused");
  });
});

describe("deposits and the budget", () => {
  it("deposits the whole maximum duration without a budget, or while the budget covers it", () => {
    expect(leaseDeposit(jobRecord(), 7n)).toBe(700n);
    expect(leaseDeposit(jobRecord(10_000n, 9_000n), 7n)).toBe(700n);
  });

  it("deposits what is left of the budget when that is less, down to one second", () => {
    expect(leaseDeposit(jobRecord(1_000n, 900n), 7n)).toBe(100n);
    expect(leaseDeposit(jobRecord(1_000n, 993n), 7n)).toBe(7n);
  });

  it("refuses a new lease once the budget cannot pay one second", () => {
    expect(() => leaseDeposit(jobRecord(1_000n, 994n), 7n)).toThrow(BudgetExhaustedError);
  });

  it("tops up by the maximum duration, or what is left, and by nothing once the budget cannot pay a second", () => {
    expect(topUpAmount(jobRecord(), { pricePerSecond: "7" })).toBe(700n);
    expect(topUpAmount(jobRecord(1_000n, 900n), { pricePerSecond: "7" })).toBe(100n);
    expect(topUpAmount(jobRecord(1_000n, 994n), { pricePerSecond: "7" })).toBeUndefined();
  });

  it("funds a batch lease for longer, giving each lease that runs at once its share of the budget, never under one run", () => {
    const batch = { seconds: 600, shares: 4 };
    // No budget, or one whose share covers it: the whole 600 s.
    expect(leaseDeposit(jobRecord(), 7n, batch)).toBe(4_200n);
    expect(topUpAmount(jobRecord(), { pricePerSecond: "7" }, batch)).toBe(4_200n);
    expect(leaseDeposit(jobRecord(100_000n, 0n), 7n, batch)).toBe(4_200n);
    // A quarter of what is left, where that is less, so that the other three leases get theirs too.
    expect(leaseDeposit(jobRecord(10_000n, 0n), 7n, batch)).toBe(2_500n);
    expect(topUpAmount(jobRecord(10_000n, 2_000n), { pricePerSecond: "7" }, batch)).toBe(2_000n);
    // But at least one maxDurationS (100 s here), as a job's lease, while the budget has it…
    expect(leaseDeposit(jobRecord(10_000n, 8_000n), 7n, batch)).toBe(700n);
    // …then what is left, then nothing.
    expect(topUpAmount(jobRecord(10_000n, 9_600n), { pricePerSecond: "7" }, batch)).toBe(400n);
    expect(topUpAmount(jobRecord(10_000n, 9_994n), { pricePerSecond: "7" }, batch)).toBeUndefined();
    expect(() => leaseDeposit(jobRecord(10_000n, 9_994n), 7n, batch)).toThrow(BudgetExhaustedError);
  });

  it("tops a lease up a margin before its deposit runs out", () => {
    const lease = { deposit: "700", pricePerSecond: "7", openedAt: 1_000_000 };
    expect(topUpAt(lease)).toBe(1_000_000 + 100_000 - TOP_UP_MARGIN_MS);
  });

  it("counts a lease's cost by whole seconds until it ended, at most its deposit", () => {
    const lease = { pricePerSecond: "7", deposit: "700", openedAt: 1_000_000 };
    expect(leaseCost(lease, 1_000_000 + 2_999)).toBe(14n);
    expect(leaseCost({ ...lease, endedAt: 1_000_000 + 10_000 }, 1_000_000 + 50_000)).toBe(70n);
    expect(leaseCost(lease, 1_000_000 + 500_000)).toBe(700n);
    expect(leaseCost(lease, 999_000)).toBe(0n);
  });
});
