import type * as Sqlite from "node:sqlite";

/**
 * node:sqlite, loaded without the ExperimentalWarning Node 22 prints the first time it is loaded: a
 * tenant's script using the SDK, or `baton` run by plain `node` (installed as a package), should not
 * warn about the files Baton keeps its records in. Every other warning passes. Baton's modules take
 * `DatabaseSync` from here, never from node:sqlite itself, or the warning comes back.
 */
const sqlite = await (async (): Promise<typeof Sqlite> => {
  const emitWarning = process.emitWarning;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const text = typeof warning === "string" ? warning : warning.message;
    if (text.startsWith("SQLite is an experimental feature")) return;
    (emitWarning as (...args: unknown[]) => void).call(process, warning, ...rest);
  }) as typeof process.emitWarning;
  try {
    return await import("node:sqlite");
  } finally {
    process.emitWarning = emitWarning;
  }
})();

export const { DatabaseSync } = sqlite;
export type DatabaseSync = Sqlite.DatabaseSync;
export type { SQLInputValue, StatementSync } from "node:sqlite";
