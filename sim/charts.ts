import { MODEL_LABELS, MODEL_NAMES, type SimulationReport } from "./report.ts";

/**
 * The simulation's charts: panels of lines side by side, written straight to SVG. Each panel has
 * the failure rate on a log axis. No chart library: a few lines a panel do not need one, and Vega,
 * which drew them before, was 25 MB of dependencies.
 */

export interface Series {
  name: string;
  /** [failures per hour, value]; points that a log axis cannot show (≤ 0) are left out. */
  points: [number, number][];
}

export interface Panel {
  title: string;
  yTitle: string;
  logY: boolean;
  series: Series[];
}

export interface Chart {
  panels: Panel[];
}

const X_TITLE = "provider failures per hour (crashes and hangs)";
const PLOT = { width: 340, height: 240 };
const MARGIN = { top: 34, right: 24, bottom: 46, left: 64 };
const LEGEND_ROW = 17;
// Tableau 10, as Vega draws categories; in the order of the data.
const COLOURS = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6"];

interface Row {
  rate: number;
  series: string;
  value: number;
}

function lines(title: string, yTitle: string, rows: Row[], logY = false): Panel {
  const series = new Map<string, Series>();
  for (const { rate, series: name, value } of rows) {
    const entry = series.get(name) ?? { name, points: [] };
    entry.points.push([rate, value]);
    series.set(name, entry);
  }
  return { title, yTitle, logY, series: [...series.values()] };
}

/** The tenant chart (cost and completion time) and the provider chart. */
export function simulationCharts(report: SimulationReport): { tenants: Chart; providers: Chart } {
  const cost: Row[] = [];
  const slowdown: Row[] = [];
  for (const rate of report.rates) {
    for (const name of MODEL_NAMES) {
      const summary = rate.models[name];
      cost.push({ rate: rate.failuresPerHour, series: MODEL_LABELS[name], value: summary.costPerUsefulHour });
      slowdown.push({ rate: rate.failuresPerHour, series: MODEL_LABELS[name], value: summary.slowdown.p95 });
    }
  }
  const earnings: Row[] = [];
  const byTimeout: Row[] = [];
  const compensation: Row[] = [];
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
  return {
    tenants: {
      panels: [
        lines("Tenant: cost per useful GPU-hour ($)", "$ per useful GPU-hour", cost),
        lines("Tenant: completion time / job length, p95", "slowdown (p95)", slowdown, true),
      ],
    },
    providers: {
      panels: [
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

interface Scale {
  at: (value: number) => number;
  ticks: number[];
}

/** A linear scale over [min, max] widened to round ticks (steps of 1, 2 or 5 × 10^k). */
function linear(min: number, max: number, length: number, flip: boolean): Scale {
  if (min === max) [min, max] = min === 0 ? [0, 1] : [Math.min(0, min * 2), Math.max(0, max * 2)];
  const rough = (max - min) / 5;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = power * ([1, 2, 5, 10].find((m) => m * power >= rough) ?? 10);
  const low = Math.floor(min / step) * step;
  const high = Math.ceil(max / step) * step;
  // Counted in whole steps and rounded to the step's decimals, so that no tick reads 2.8e-17.
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const ticks: number[] = [];
  for (let i = 0; i <= Math.round((high - low) / step); i++)
    ticks.push(Number((low + i * step).toFixed(decimals)) || 0);
  const at = (value: number): number => ((flip ? high - value : value - low) / (high - low)) * length;
  return { at, ticks };
}

/** A log scale over [min, max] widened to powers of ten; 2× and 5× ticks too when it spans few decades. */
function log(min: number, max: number, length: number, flip: boolean): Scale {
  const low = Math.floor(Math.log10(min));
  const high = Math.max(Math.ceil(Math.log10(max)), low + 1);
  const multiples = high - low <= 2 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let power = low; power <= high; power++) {
    for (const m of multiples) if (m === 1 || power < high) ticks.push(Number((m * 10 ** power).toPrecision(12)));
  }
  const at = (value: number): number => {
    const share = (Math.log10(value) - low) / (high - low);
    return (flip ? 1 - share : share) * length;
  };
  return { at, ticks };
}

const escape = (text: string): string =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const number = (value: number): string => value.toLocaleString("en-US", { maximumSignificantDigits: 4 });
const percent = (value: number): string => `${number(value * 100)}%`;
const extent = (values: number[], empty: [number, number]): [number, number] =>
  values.length ? [Math.min(...values), Math.max(...values)] : empty;
const text = (x: number, y: number, content: string, attributes = ""): string =>
  `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attributes}>${escape(content)}</text>`;

/** One panel, its plot's top left at (0, 0) of its group; returns the SVG and the height it takes. */
function drawPanel(panel: Panel, colour: (name: string) => string): { svg: string; height: number } {
  const shown = panel.series.map((s) => ({
    ...s,
    points: s.points.filter(([x, y]) => x > 0 && (!panel.logY || y > 0) && Number.isFinite(y)),
  }));
  const [xMin, xMax] = extent(
    shown.flatMap((s) => s.points.map(([x]) => x)),
    [0.001, 0.1],
  );
  const [yMin, yMax] = extent(
    shown.flatMap((s) => s.points.map(([, y]) => y)),
    [1, 10],
  );
  const x = log(xMin, xMax, PLOT.width, false);
  // A linear axis starts at zero, so that lines compare by height.
  const y = panel.logY
    ? log(yMin, yMax, PLOT.height, true)
    : linear(Math.min(yMin, 0), Math.max(yMax, 0), PLOT.height, true);
  const parts: string[] = [
    text(0, -14, panel.title, 'font-size="13" font-weight="bold"'),
    `<rect width="${PLOT.width}" height="${PLOT.height}" fill="none" stroke="#ddd"/>`,
  ];
  for (const tick of x.ticks) {
    const at = x.at(tick);
    parts.push(`<line x1="${at.toFixed(1)}" x2="${at.toFixed(1)}" y2="${PLOT.height}" stroke="#eee"/>`);
    parts.push(text(at, PLOT.height + 15, percent(tick), 'text-anchor="middle"'));
  }
  for (const tick of y.ticks) {
    const at = y.at(tick);
    parts.push(`<line y1="${at.toFixed(1)}" y2="${at.toFixed(1)}" x2="${PLOT.width}" stroke="#eee"/>`);
    parts.push(text(-6, at + 3.5, number(tick), 'text-anchor="end"'));
  }
  parts.push(text(PLOT.width / 2, PLOT.height + 34, X_TITLE, 'text-anchor="middle" font-weight="bold"'));
  const yTitleAt = { x: -MARGIN.left + 14, y: PLOT.height / 2 };
  parts.push(
    text(
      yTitleAt.x,
      yTitleAt.y,
      panel.yTitle,
      `text-anchor="middle" font-weight="bold" transform="rotate(-90 ${yTitleAt.x} ${yTitleAt.y})"`,
    ),
  );
  for (const series of shown) {
    const points = series.points.map(([px, py]) => [x.at(px), y.at(py)] as const).sort((a, b) => a[0] - b[0]);
    if (points.length === 0) continue;
    const path = points.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
    parts.push(`<path d="${path}" fill="none" stroke="${colour(series.name)}" stroke-width="2"/>`);
    for (const [px, py] of points) {
      parts.push(`<circle cx="${px.toFixed(1)}" cy="${py.toFixed(1)}" r="3" fill="${colour(series.name)}"/>`);
    }
  }
  const legendTop = PLOT.height + MARGIN.bottom;
  panel.series.forEach((series, i) => {
    const top = legendTop + i * LEGEND_ROW;
    parts.push(`<circle cx="6" cy="${top + 6}" r="5" fill="${colour(series.name)}"/>`);
    parts.push(text(16, top + 10, series.name));
  });
  return { svg: parts.join(""), height: legendTop + panel.series.length * LEGEND_ROW };
}

/** A chart as an SVG document: its panels side by side, each with its legend below it. */
export function renderSvg(chart: Chart): string {
  const names = [...new Set(chart.panels.flatMap((p) => p.series.map((s) => s.name)))];
  const colour = (name: string): string => COLOURS[names.indexOf(name) % COLOURS.length]!;
  const panelWidth = MARGIN.left + PLOT.width + MARGIN.right;
  const drawn = chart.panels.map((panel) => drawPanel(panel, colour));
  const width = panelWidth * chart.panels.length;
  const height = MARGIN.top + Math.max(...drawn.map((d) => d.height)) + 8;
  const body = drawn
    .map((d, i) => `<g transform="translate(${i * panelWidth + MARGIN.left},${MARGIN.top})">${d.svg}</g>`)
    .join("");
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}"` +
    ` font-family="sans-serif" font-size="11" fill="#333"><rect width="${width}" height="${height}" fill="white"/>` +
    `${body}</svg>\n`
  );
}
