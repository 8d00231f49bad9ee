import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { UserError } from "../../sdk/errors.ts";
import { renderSvg, simulationCharts } from "../../sim/charts.ts";
import { Escrow, KEEPER } from "../../sim/escrow.ts";
import { simulateMarket } from "../../sim/market.ts";
import { simulate } from "../../sim/report.ts";
import {
  loadScenario,
  measuredDefaults,
  parseScenario,
  type MeasuredDefaults,
  type ScenarioInput,
} from "../../sim/scenario.ts";
import { spawnScript } from "../helpers/processes.ts";

// The market simulation (`baton simulate`): its invariants on small markets (40 providers, a few
// weeks; a run takes well under a second), the simulated escrow's money rules, scenario files that
// are refused with the field named, and the command's output.

let measured: MeasuredDefaults;
let dir: string;

beforeAll(async () => {
  // Built-in defaults only (an empty bench directory), so that the figures a bench wrote here do not
  // change what the tests see.
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-sim-test-"));
  measured = await measuredDefaults(dir);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A small market; the provider run at the scenario's timeout only, unless the test sweeps. */
const small = (input: ScenarioInput = {}) =>
  parseScenario({ providers: 40, days: 21, ...input, lease: { timeoutSweepS: [], ...input.lease } }, measured);

describe("invariants", () => {
  it("without failures, every model pays for the same compute and every job takes its own length", () => {
    const scenario = small();
    const run = (model: "baton" | "level1" | "level2") =>
      simulateMarket(scenario, { model, failuresPerHour: 0, droppers: false });
    const [baton, level1, level2] = [run("baton"), run("level1"), run("level2")];
    expect(baton.jobs.finished).toBeGreaterThan(500);
    expect(baton.jobs.finished).toBe(baton.jobs.arrived);
    for (const other of [level1, level2]) {
      expect(other.billedHours).toBe(baton.billedHours);
      expect(other.tenant.compute).toBe(baton.tenant.compute);
      expect(other.usefulHours).toBe(baton.usefulHours);
    }
    // Paid whole seconds of useful work, at the GPU price: nothing more.
    expect(Math.abs(baton.billedHours - baton.usefulHours)).toBeLessThan((baton.jobs.finished * 1) / 3600);
    expect(baton.tenant.compute / baton.usefulHours).toBeCloseTo(scenario.prices.gpuUsdPerHour, 4);
    expect(baton.failures + baton.lostHours + baton.tenant.compensation).toBe(0);
    // The queue adds waiting when the market is busy, the same for all.
    expect(level1.slowdowns).toEqual(baton.slowdowns);
  });

  it("adds a resume's fixed restore time (checkpoint.restoreS) to a hand-off", () => {
    const completion = (restoreS: number) =>
      simulateMarket(small({ checkpoint: { intervalMinutes: 1, sizeMiB: 1, restoreS } }), {
        model: "baton",
        failuresPerHour: 0,
        droppers: false,
        trace: {
          jobs: [{ arrivalS: 0, lengthS: 600 }],
          kills: [{ job: 0, atS: 90, downS: Infinity }],
        },
      }).perJob!.completionS[0]!;
    expect(completion(5) - completion(0)).toBeCloseTo(5, 6);
  });

  it("Baton costs the tenant no more than Level 1 at any churn: its compute, and in all with the default collateral", () => {
    for (const seed of [1, 2, 3]) {
      for (const failuresPerHour of [0.001, 0.01, 0.1]) {
        const context = `seed ${seed}, ${failuresPerHour} failures/h`;
        const run = (model: "baton" | "level1", collateralUsd?: number) =>
          simulateMarket(small({ seed, lease: collateralUsd === undefined ? {} : { collateralUsd } }), {
            model,
            failuresPerHour,
            droppers: false,
          });
        // Compute paid, with no compensation to make up for anything.
        const baton = run("baton", 0);
        const level1 = run("level1");
        expect(baton.failures, context).toBeGreaterThan(0);
        expect(baton.tenant.compute / baton.usefulHours, context).toBeLessThanOrEqual(
          level1.tenant.compute / level1.usefulHours,
        );
        expect(baton.lostHours, context).toBeLessThan(level1.lostHours);
        // In all: the tenant's own gas (an openLease per job, a slash per dead provider) less the
        // slashes' compensation.
        const withCollateral = run("baton");
        expect(withCollateral.tenant.total / withCollateral.usefulHours, context).toBeLessThanOrEqual(
          level1.tenant.total / level1.usefulHours,
        );
      }
    }
  });

  it("conserves money in the simulated escrow, with honest providers and droppers", async () => {
    const report = await simulate(small({ failureRatesPerHour: [0.001, 0.03, 0.1], lease: { timeoutSweepS: [900] } }));
    for (const rate of report.rates) {
      expect(rate.providers.map((p) => p.heartbeatTimeoutS)).toEqual([120, 900]);
      expect(rate.escrowProblems, `${rate.failuresPerHour}`).toEqual([]);
      expect(rate.compensation.paidUsd).toBeGreaterThan(0);
      const walkAway = rate.providers[0]!.groups.find((g) => g.kind === "walk-away")!;
      expect(walkAway.dropSlashesPerHour).toBeGreaterThan(0);
    }
  });

  it("is deterministic for a seed, on one thread or several, and differs with the seed", async () => {
    const scenario = small({ failureRatesPerHour: [0.01, 0.1] });
    const strip = (r: Awaited<ReturnType<typeof simulate>>) => JSON.stringify({ ...r, elapsedS: 0 });
    const one = strip(await simulate(scenario, { threads: 1 }));
    const two = strip(await simulate(scenario, { threads: 2 }));
    expect(two).toBe(one);
    expect(strip(await simulate(small({ failureRatesPerHour: [0.01, 0.1], seed: 9 })))).not.toBe(one);
  });

  it("names the collateral that stops a walk-away from paying, and it does", async () => {
    // Cheap collateral and frequent outside offers: walking away pays.
    const input: ScenarioInput = {
      failureRatesPerHour: [0.01],
      lease: { collateralUsd: 0.05 },
      dropping: { outsideOffersPerHour: 0.1, outsidePremium: 2 },
    };
    const [before] = (await simulate(small(input))).rates;
    const verdict = before!.providers[0]!.dropping.find((d) => d.kind === "walk-away")!;
    expect(verdict.pays).toBe(true);
    expect(verdict.breakEvenCollateralUsd).not.toBeNull();
    // The same trace with a little more collateral than that.
    const fixed = { ...input, lease: { collateralUsd: verdict.breakEvenCollateralUsd! * 1.1 } };
    const [after] = (await simulate(small(fixed))).rates;
    expect(after!.providers[0]!.dropping.find((d) => d.kind === "walk-away")!.pays).toBe(false);
    // A hand-back costs no slash, so no collateral changes it: the report says so with null.
    const handBack = after!.providers[0]!.dropping.find((d) => d.kind === "hand-back")!;
    expect(handBack.breakEvenCollateralUsd).toBeNull();
  });
});

describe("the simulated escrow", () => {
  it("splits a slash as LeaseManager._slash does, and pays to the last heartbeat on a close", () => {
    const escrow = new Escrow({ providers: 2, tenantShareBps: 5_000, callerShareBps: 1_000 });
    const a = escrow.open(0, 1_000, 10n, 10_000n, 1_000n);
    escrow.close(a, 1_060);
    expect(escrow.earned[0]).toBe(600n);
    expect(escrow.slash(a, 1_060, "tenant")).toEqual({ tenant: 500n, caller: 100n, treasury: 400n });
    expect(escrow.compensation).toBe(600n);
    const b = escrow.open(1, 2_000, 10n, 10_000n, 1_000n);
    // Active and past its deadline: paid to its last heartbeat, then slashed by a keeper.
    expect(escrow.slash(b, 2_030, KEEPER)).toEqual({ tenant: 500n, caller: 100n, treasury: 400n });
    expect(escrow.earned[1]).toBe(300n);
    expect(escrow.compensation).toBe(1_100n);
    const c = escrow.open(1, 3_000, 10n, 10_000n, 1_000n);
    escrow.finish(c, 3_500);
    expect(escrow.earned[1]).toBe(5_300n);
    escrow.claim(0);
    escrow.claim(1);
    expect(escrow.check()).toEqual([]);
    // Deposits 30,000 less refunds: what the providers earned, and no more.
    expect(escrow.tenantNet).toBe(600n + 300n + 5_000n - 1_100n);
    expect(escrow.slashed).toEqual([1_000n, 1_000n]);
  });

  it("refuses to pay a lease past its deposit", () => {
    const escrow = new Escrow({ providers: 1, tenantShareBps: 5_000, callerShareBps: 1_000 });
    const id = escrow.open(0, 0, 10n, 100n, 0n);
    expect(() => escrow.finish(id, 11)).toThrow(/outran its deposit/);
  });
});

describe("scenario files", () => {
  const load = async (name: string, text: string) => {
    const file = path.join(dir, name);
    await writeFile(file, text);
    return loadScenario(file, measured);
  };
  const refusal = async (text: string): Promise<string> => {
    const error = await load("bad.yaml", text).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(UserError);
    return `${(error as UserError).shortMessage}\n${(error as UserError).details ?? ""}`;
  };

  it("takes every default from an empty file, and a field given", async () => {
    const scenario = await load("ok.yaml", "lease:\n  collateralUsd: 2\n");
    expect(scenario.lease.collateralUsd).toBe(2);
    expect(scenario.lease.heartbeatTimeoutS).toBe(120);
    expect(scenario.gas.heartbeat).toBe(9_090);
    expect((await load("empty.yaml", "")).providers).toBe(1000);
  });

  it("refuses a negative timeout, naming the field", async () => {
    expect(await refusal("lease:\n  heartbeatTimeoutS: -5\n")).toMatch(/lease\.heartbeatTimeoutS/);
  });

  it("refuses a misspelt field, naming it", async () => {
    expect(await refusal("jobs:\n  medianHour: 3\n")).toMatch(/medianHour/);
  });

  it("refuses a heartbeat period over half the timeout, as the contract does", async () => {
    expect(await refusal("lease:\n  heartbeatPeriodS: 100\n")).toMatch(/lease\.heartbeatPeriodS/);
  });

  it("refuses a failure rate over 100 %, naming the list's entry", async () => {
    expect(await refusal("failureRatesPerHour: [0.01, 2]\n")).toMatch(/failureRatesPerHour\[1\]/);
  });

  it("refuses a file that is not YAML", async () => {
    expect(await refusal("lease: [\n")).toMatch(/is not YAML/);
  });
});

describe("baton simulate", () => {
  it("prints the report as JSON and draws the charts as SVG", async () => {
    const file = path.join(dir, "cli.yaml");
    await writeFile(file, "providers: 30\ndays: 14\nfailureRatesPerHour: [0.01, 0.1]\n");
    const out = path.join(dir, "charts");
    const run = spawnScript("cli/baton.ts", ["simulate", file, "--json", "--out", out, "--bench-dir", dir], {});
    const { code } = await run.closed;
    expect(code, run.stderr.join("\n")).toBe(0);
    const report = JSON.parse(run.stdout.join("\n")) as { rates: unknown[]; charts: string[] };
    expect(report.rates).toHaveLength(2);
    expect(report.charts.map((c) => path.basename(c))).toEqual(["tenants.svg", "providers.svg"]);
  });

  it("refuses a bad scenario file with exit code 1 and the field named", async () => {
    const file = path.join(dir, "cli-bad.yaml");
    await writeFile(file, "lease:\n  tenantShareBps: 20000\n");
    const run = spawnScript("cli/baton.ts", ["simulate", file, "--no-charts", "--bench-dir", dir], {});
    const { code } = await run.closed;
    expect(code).toBe(1);
    expect(run.stderr.join("\n")).toMatch(/lease\.tenantShareBps/);
    expect(run.stdout.join("")).toBe("");
  });

  it("renders a chart whose SVG carries its titles and every model", async () => {
    const report = await simulate(small({ failureRatesPerHour: [0.01, 0.1] }));
    const svg = renderSvg(simulationCharts(report).tenants);
    expect(svg).toMatch(/^<svg/);
    expect(svg).toContain("cost per useful GPU-hour");
    for (const label of ["Baton (Level 3)", "Level 1", "Level 2", "hyperscaler"]) expect(svg).toContain(label);
  });
});
