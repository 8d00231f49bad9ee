import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";

/** One measured figure, with the reference it is compared to and the target it should meet. */
export interface Figure {
  name: string;
  value: number;
  unit: string;
  /** A published figure from another system, for comparison only. */
  reference?: { value: number; label: string };
  /** Our own goal; `met` says whether the value reached it. */
  target?: { value: number; atMost: boolean };
  note?: string;
}

const resultsDir = path.resolve(import.meta.dirname, "results");

function format(value: number): string {
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return value.toLocaleString("en-US", { maximumFractionDigits: 3 });
}

export function targetMet(figure: Figure): boolean | undefined {
  if (!figure.target) return undefined;
  return figure.target.atMost ? figure.value <= figure.target.value : figure.value >= figure.target.value;
}

/** Prints figures as an aligned table: value, reference, ratio to the reference, target and verdict. */
export function printTable(title: string, figures: Figure[]): void {
  const rows = figures.map((f) => {
    const met = targetMet(f);
    return [
      f.name,
      `${format(f.value)} ${f.unit}`,
      f.reference ? `${format(f.reference.value)} (${f.reference.label})` : "",
      f.reference && f.reference.value !== 0 ? `${(f.value / f.reference.value).toFixed(2)}×` : "",
      f.target ? `${f.target.atMost ? "≤" : "≥"} ${format(f.target.value)}` : "",
      met === undefined ? "" : met ? "met" : "MISSED",
    ];
  });
  const header = ["figure", "value", "reference", "ratio", "target", ""];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join("  ")
      .trimEnd();
  console.log(`\n${title}\n`);
  console.log(line(header));
  console.log(line(widths.map((w) => "-".repeat(w))));
  for (const row of rows) console.log(line(row));
  for (const f of figures.filter((f) => f.note)) console.log(`  * ${f.name}: ${f.note}`);
}

/** Writes `bench/results/<name>.json` and returns its path. */
export async function writeResults(name: string, data: Record<string, unknown>): Promise<string> {
  await mkdir(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `${name}.json`);
  await writeFile(file, JSON.stringify({ measuredAt: new Date().toISOString(), ...data }, null, 2) + "\n");
  return file;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}
