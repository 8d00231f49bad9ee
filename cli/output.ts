import { BaseError } from "../sdk/errors.ts";

/** Prints an error for a person: the short message, then details; stack traces only with BATON_DEBUG=1. */
export function printError(error: unknown): void {
  if (error instanceof BaseError) {
    console.error(`error: ${error.shortMessage}`);
    if (error.details) console.error(`  ${error.details.split("\n").join("\n  ")}`);
  } else if (error instanceof Error) {
    console.error(`error: ${error.message}`);
  } else {
    console.error(`error: ${String(error)}`);
  }
  if (process.env.BATON_DEBUG === "1" && error instanceof Error) console.error(error.stack);
}

/** A table with aligned columns, for terminal output. */
export function table(rows: (string | number | bigint)[][]): string {
  const cells = rows.map((row) => row.map(String));
  const widths = cells[0]!.map((_, i) => Math.max(...cells.map((row) => row[i]?.length ?? 0)));
  return cells
    .map((row) =>
      row
        .map((cell, i) => cell.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}
