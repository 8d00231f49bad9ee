import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import type { Command } from "commander";

import type { SimulationReport } from "../sim/report.ts";
import { printJson, table } from "./output.ts";
import { examples, integerIn } from "./program.ts";

interface SimulateOptions {
  out: string;
  threads: number;
  charts: boolean;
  json?: boolean;
  benchDir?: string;
}

const percent = (rate: number): string => `${+(rate * 100).toFixed(2)} %`;
const dollars = (value: number, digits = 3): string => (Number.isFinite(value) ? `$${value.toFixed(digits)}` : "—");
const times = (value: number): string => (Number.isFinite(value) ? `${value.toFixed(2)}×` : "—");

/** The report for people: the tables, where the defaults came from, and what follows. */
export function formatReport(report: SimulationReport, charts: string[]): string {
  const { scenario: s } = report;
  const out: string[] = [];
  out.push(
    `${s.providers} providers, ${s.days} days of arrivals (load ${percent(s.jobs.load)}), seed ${s.seed}; ` +
      `GPU $${s.prices.gpuUsdPerHour}/h, collateral $${s.lease.collateralUsd}, heartbeat ${s.lease.heartbeatPeriodS} s / timeout ${s.lease.heartbeatTimeoutS} s; ` +
      `${report.elapsedS.toFixed(1)} s`,
  );
  out.push("", "Tenants: cost per useful GPU-hour (compute + own gas + storage − slash compensation)", "");
  out.push(
    table([
      [
        "failures/h",
        "Baton",
        "Level 1",
        "Level 2",
        "hyperscaler",
        "p95 slowdown B / L1 / L2",
        "p95 hours B / L1 / L2",
        "L1 finished",
      ],
      ...report.rates.map((r) => {
        const { baton, level1, level2, hyperscaler } = r.models;
        return [
          percent(r.failuresPerHour),
          dollars(baton.costPerUsefulHour),
          dollars(level1.costPerUsefulHour),
          dollars(level2.costPerUsefulHour),
          dollars(hyperscaler.costPerUsefulHour),
          [baton, level1, level2].map((m) => times(m.slowdown.p95)).join(" / "),
          [baton, level1, level2].map((m) => m.completionHours.p95.toFixed(1)).join(" / "),
          percent(level1.jobs.finished / level1.jobs.arrived),
        ];
      }),
    ]),
  );
  out.push("", "Tenants under Baton: per job, slash compensation against the work lost (at the GPU price)", "");
  out.push(
    table([
      ["failures/h", "failures/job", "lost GPU-h/job", "lost work $/job", "compensation $/job"],
      ...report.rates.map((r) => {
        const jobs = r.models.baton.jobs.finished || 1;
        return [
          percent(r.failuresPerHour),
          (r.models.baton.failures / jobs).toFixed(3),
          (r.models.baton.lostHours / jobs).toFixed(3),
          dollars(r.compensation.lostWorkUsd / jobs, 4),
          dollars(r.compensation.paidUsd / jobs, 4),
        ];
      }),
    ]),
  );
  for (const [index, timeout] of [s.lease.heartbeatTimeoutS, ...s.lease.timeoutSweepS].entries()) {
    out.push(
      "",
      `Providers under Baton, heartbeat timeout ${timeout} s, collateral $${s.lease.collateralUsd}: net $ per provider-hour ` +
        "(leases + outside work − power − gas − slashes)",
      "",
    );
    out.push(
      table([
        [
          "failures/h",
          "honest",
          "walk-away",
          "hand-back",
          "honest slashes/day",
          "honest earns up to",
          "walk-away pays?",
          "hand-back pays?",
        ],
        ...report.rates.map((r) => {
          const outcome = r.providers[index]!;
          const group = (kind: string) => outcome.groups.find((g) => g.kind === kind);
          const verdict = (kind: string) => {
            const v = outcome.dropping.find((d) => d.kind === kind);
            if (!v) return "—";
            const at = v.breakEvenCollateralUsd;
            if (!v.pays) return at === null ? "no" : `no (would below $${at.toFixed(2)})`;
            return at === null ? "YES, at any collateral" : `YES, unless collateral ≥ $${at.toFixed(2)}`;
          };
          const ceiling = outcome.honestBreakEvenCollateralUsd;
          return [
            percent(r.failuresPerHour),
            dollars(group("honest")?.net ?? NaN, 4),
            dollars(group("walk-away")?.net ?? NaN, 4),
            dollars(group("hand-back")?.net ?? NaN, 4),
            ((group("honest")?.slashesPerHour ?? NaN) * 24).toFixed(3),
            ceiling === null ? "any collateral" : ceiling < 0 ? "loses at any" : `collateral $${ceiling.toFixed(2)}`,
            verdict("walk-away"),
            verdict("hand-back"),
          ];
        }),
      ]),
    );
  }
  out.push("", "On-chain heartbeat gas per leased GPU-hour (one lease per heartbeat)", "");
  out.push(
    table([
      ["period", "$ per GPU-hour", "share of the GPU price"],
      ...report.heartbeatCost.map((h) => [`${h.periodS} s`, dollars(h.usdPerGpuHour, 4), percent(h.shareOfPrice)]),
    ]),
  );
  const problems = report.rates.flatMap((r) => r.escrowProblems);
  out.push(
    "",
    problems.length
      ? `ESCROW NOT CONSERVED: ${problems.join("; ")}`
      : "Money conserved in the simulated escrow at every rate.",
  );
  out.push("", "Defaults taken from measurements:");
  for (const d of report.defaults) out.push(`  ${d.field} = ${+d.value.toFixed(3)} (${d.from})`);
  if (charts.length) out.push("", `Charts: ${charts.join(", ")}`);
  return out.join("\n");
}

async function simulateAction(file: string | undefined, options: SimulateOptions): Promise<void> {
  const { loadScenario, measuredDefaults } = await import("../sim/scenario.ts");
  const { simulate } = await import("../sim/report.ts");
  const measured = await measuredDefaults(options.benchDir);
  const scenario = await loadScenario(file, measured);
  const report = await simulate(scenario, {
    defaults: measured.sources,
    threads: options.threads,
    ...(options.json || !process.stderr.isTTY
      ? {}
      : { onProgress: (done: number, of: number) => process.stderr.write(`\rsimulating: ${done}/${of} market runs`) }),
  });
  if (!options.json && process.stderr.isTTY) process.stderr.write("\n");
  const charts: string[] = [];
  if (options.charts) {
    const { simulationCharts, renderSvg } = await import("../sim/charts.ts");
    await mkdir(options.out, { recursive: true });
    for (const [name, chart] of Object.entries(simulationCharts(report))) {
      const file = path.join(options.out, `${name}.svg`);
      await writeFile(file, renderSvg(chart));
      charts.push(file);
    }
  }
  if (options.json) printJson({ ...report, charts });
  else console.log(formatReport(report, charts));
}

export function simulateCommands(program: Command): void {
  examples(
    program
      .command("simulate")
      .description(
        "simulate a market under churn: tenants' cost and completion time, providers' earnings, honest or dropping leases",
      )
      .argument("[scenario]", "a scenario YAML file; every field is optional (see sim/scenario.ts)")
      .option("--out <dir>", "where to write the charts (SVG)", "simulation")
      .option("--no-charts", "draw no charts")
      .option(
        "--threads <n>",
        "worker threads for the market runs (default: the machine's cores)",
        integerIn("--threads", 1, 64),
        os.availableParallelism(),
      )
      .option(
        "--bench-dir <dir>",
        "take measured defaults from this directory's bench results (default: bench/results)",
      )
      .option("--json", "print the report as JSON"),
    [
      "baton simulate",
      "baton simulate examples/simulate/small.yaml --out /tmp/charts",
      "baton simulate scenario.yaml --json --no-charts --threads 1",
    ],
  ).action(simulateAction);
}
