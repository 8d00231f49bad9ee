import { MODEL_LABELS, MODEL_NAMES, type SimulationReport } from "./report.ts";

/**
 * The simulation's charts, drawn by Vega-Lite and rendered to SVG by Vega in Node: no browser, no
 * canvas (text is measured by Vega's estimate). Each chart has the failure rate on a log axis.
 */

type Spec = Record<string, unknown>;

const rateAxis = {
  field: "rate",
  type: "quantitative",
  title: "provider failures per hour (crashes and hangs)",
  scale: { type: "log" },
  axis: { format: "%" },
};

function lines(title: string, yTitle: string, values: Record<string, unknown>[], logY = false): Spec {
  return {
    title,
    width: 340,
    height: 240,
    data: { values },
    mark: { type: "line", point: true },
    encoding: {
      x: rateAxis,
      y: { field: "value", type: "quantitative", title: yTitle, ...(logY ? { scale: { type: "log" } } : {}) },
      color: {
        field: "series",
        type: "nominal",
        // In the order of the data (models as listed, timeouts shortest first), not alphabetical.
        sort: null,
        title: null,
        legend: { orient: "bottom", direction: "vertical", labelLimit: 0 },
      },
    },
  };
}

/** Vega-Lite specs of the tenant chart (cost and completion time) and the provider chart. */
export function chartSpecs(report: SimulationReport): { tenants: Spec; providers: Spec } {
  const cost: Record<string, unknown>[] = [];
  const slowdown: Record<string, unknown>[] = [];
  for (const rate of report.rates) {
    for (const name of MODEL_NAMES) {
      const summary = rate.models[name];
      cost.push({ rate: rate.failuresPerHour, series: MODEL_LABELS[name], value: summary.costPerUsefulHour });
      slowdown.push({ rate: rate.failuresPerHour, series: MODEL_LABELS[name], value: summary.slowdown.p95 });
    }
  }
  const earnings: Record<string, unknown>[] = [];
  const byTimeout: Record<string, unknown>[] = [];
  const compensation: Record<string, unknown>[] = [];
  for (const rate of report.rates) {
    for (const group of rate.providers[0]!.groups) {
      earnings.push({ rate: rate.failuresPerHour, series: `${group.kind} provider`, value: group.net });
    }
    for (const outcome of rate.providers) {
      const honest = outcome.groups.find((g) => g.kind === "honest");
      if (honest) {
        byTimeout.push({
          rate: rate.failuresPerHour,
          series: `timeout ${outcome.heartbeatTimeoutS} s`,
          value: honest.net,
        });
      }
    }
    const jobs = rate.models.baton.jobs.finished || 1;
    compensation.push({
      rate: rate.failuresPerHour,
      series: "compensation from slashes",
      value: rate.compensation.paidUsd / jobs,
    });
    compensation.push({
      rate: rate.failuresPerHour,
      series: "work lost (at the GPU price)",
      value: rate.compensation.lostWorkUsd / jobs,
    });
  }
  const { lease } = report.scenario;
  const config = { font: "sans-serif", title: { anchor: "start" } };
  return {
    tenants: {
      $schema: "https://vega.github.io/schema/vega-lite/v6.json",
      config,
      resolve: { scale: { color: "shared" } },
      hconcat: [
        lines("Tenant: cost per useful GPU-hour ($)", "$ per useful GPU-hour", cost),
        lines("Tenant: completion time / job length, p95", "slowdown (p95)", slowdown, true),
      ],
    },
    providers: {
      $schema: "https://vega.github.io/schema/vega-lite/v6.json",
      config,
      resolve: { scale: { color: "independent" } },
      hconcat: [
        lines(
          `Provider net $/h: collateral $${lease.collateralUsd}, timeout ${lease.heartbeatTimeoutS} s`,
          "$ per provider-hour",
          earnings,
        ),
        lines("Honest provider net $/h, by heartbeat timeout", "$ per provider-hour", byTimeout),
        lines("Baton tenant: compensation vs work lost", "$ per job", compensation),
      ],
    },
  };
}

/** Renders a Vega-Lite spec to an SVG document. */
export async function renderSvg(spec: Spec): Promise<string> {
  const [vega, vegaLite] = await Promise.all([import("vega"), import("vega-lite")]);
  const compiled = vegaLite.compile(spec as unknown as Parameters<typeof vegaLite.compile>[0]).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
