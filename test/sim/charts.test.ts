import { describe, expect, it } from "vitest";

import { renderSvg, type Chart } from "../../sim/charts.ts";

const labels = (svg: string): string[] => [...svg.matchAll(/<text [^>]*>([^<]*)<\/text>/g)].map((m) => m[1]!);
/** The y axis's tick labels: the texts anchored at their end. */
const yLabels = (svg: string): string[] =>
  [...svg.matchAll(/<text [^>]*text-anchor="end"[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]!);

describe("simulation charts", () => {
  it("labels a linear axis across zero in round numbers", () => {
    const chart: Chart = {
      panels: [
        {
          title: "net",
          yTitle: "$",
          logY: false,
          series: [
            {
              name: "a",
              points: [
                [0.001, 0.06],
                [0.01, -0.03],
                [0.1, -0.29],
              ],
            },
          ],
        },
      ],
    };
    const svg = renderSvg(chart);
    expect(labels(svg).filter((t) => t.endsWith("%"))).toEqual(["0.1%", "0.2%", "1%", "2%", "10%"]);
    const y = yLabels(svg).map((t) => Number(t.replace("−", "-")));
    expect(y).toContain(0);
    expect(Math.min(...y)).toBeLessThanOrEqual(-0.29);
    expect(Math.max(...y)).toBeGreaterThanOrEqual(0.06);
    // Round steps: every label a whole number of the first step.
    const step = Math.abs(y[1]! - y[0]!);
    for (const value of y) expect(Math.abs(value / step - Math.round(value / step))).toBeLessThan(1e-9);
  });

  it("leaves out of a log axis the points it cannot show, and draws the rest", () => {
    const chart: Chart = {
      panels: [
        {
          title: "slowdown",
          yTitle: "x",
          logY: true,
          series: [
            {
              name: "a",
              points: [
                [0, 5],
                [0.001, 1],
                [0.01, 0],
                [0.1, 2000],
              ],
            },
          ],
        },
      ],
    };
    const svg = renderSvg(chart);
    expect(svg.match(/<circle cx/g)).toHaveLength(2 + 1); // two points and the legend's swatch
    expect(labels(svg)).toEqual(expect.arrayContaining(["1", "10", "100", "1,000", "10,000"]));
  });

  it("escapes text, and gives each series one colour across panels", () => {
    const panel = (title: string) => ({
      title,
      yTitle: "y",
      logY: false,
      series: [
        { name: "<b> & c", points: [[0.01, 1]] as [number, number][] },
        { name: "d", points: [[0.01, 2]] as [number, number][] },
      ],
    });
    const svg = renderSvg({ panels: [panel("one"), panel("two")] });
    expect(svg).toContain("&lt;b&gt; &amp; c");
    expect(svg).not.toContain("<b>");
    const fills = [...svg.matchAll(/<path d="[^"]*" fill="none" stroke="(#[0-9a-f]+)"/g)].map((m) => m[1]);
    expect(fills).toHaveLength(4);
    expect(fills[0]).toBe(fills[2]);
    expect(fills[1]).toBe(fills[3]);
    expect(fills[0]).not.toBe(fills[1]);
  });
});
