import { scaleLinear, scaleLog } from "d3-scale";
import { line } from "d3-shape";

import { MODEL_LABELS, MODEL_NAMES, type SimulationReport } from "./report.ts";

/**
 * The simulation's charts: panels of lines side by side, as SVG, with D3's scales (domains, ticks,
 * tick labels) and line generator (d3-scale, d3-shape: 2 MB). Each panel has the failure rate on
 * a log axis. Vega and Vega-Lite, which drew them before, were 25 MB of dependencies.
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

const escape = (text: string): string =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
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
  const x = scaleLog().domain([xMin, xMax]).range([0, PLOT.width]).nice();
  // A linear axis starts at zero, as Vega's did, so that lines compare by height.
  const y = (
    panel.logY ? scaleLog().domain([yMin, yMax]) : scaleLinear().domain([Math.min(yMin, 0), Math.max(yMax, 0)])
  )
    .range([PLOT.height, 0])
    .nice();
  // A log axis has a grid line at every 1–9 × 10^k and labels where they fit.
  const xLabel = x.tickFormat(5, "~%");
  const yLabel = panel.logY ? y.tickFormat(6, ",~r") : y.tickFormat(6);
  const parts: string[] = [
    text(0, -14, panel.title, 'font-size="13" font-weight="bold"'),
    `<rect width="${PLOT.width}" height="${PLOT.height}" fill="none" stroke="#ddd"/>`,
  ];
  for (const tick of x.ticks()) {
    const at = x(tick).toFixed(1);
    parts.push(`<line x1="${at}" x2="${at}" y2="${PLOT.height}" stroke="#eee"/>`);
    if (xLabel(tick)) parts.push(text(x(tick), PLOT.height + 15, xLabel(tick), 'text-anchor="middle"'));
  }
  for (const tick of y.ticks(6)) {
    const at = y(tick).toFixed(1);
    parts.push(`<line y1="${at}" y2="${at}" x2="${PLOT.width}" stroke="#eee"/>`);
    if (yLabel(tick)) parts.push(text(-6, y(tick) + 3.5, yLabel(tick), 'text-anchor="end"'));
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
  const draw = line<[number, number]>()
    .x(([px]) => x(px))
    .y(([, py]) => y(py));
  for (const series of shown) {
    if (series.points.length === 0) continue;
    const points = series.points.toSorted((a, b) => a[0] - b[0]);
    parts.push(`<path d="${draw(points)}" fill="none" stroke="${colour(series.name)}" stroke-width="2"/>`);
    for (const [px, py] of points) {
      parts.push(`<circle cx="${x(px).toFixed(1)}" cy="${y(py).toFixed(1)}" r="3" fill="${colour(series.name)}"/>`);
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
