import { BaseError, oneLineOf, walk } from "../sdk/errors.ts";
import type { Logger } from "../sdk/logger.ts";

/** JSON for machines: bigints as decimal strings, errors as their messages, absent values as null. */
export function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof BaseError) return { name: value.name, message: value.shortMessage, details: value.details };
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value === undefined ? null : value;
}

/** What `--json` prints for a command's report: one JSON document on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, jsonReplacer, 2) + "\n");
}

/** One JSON object on one line, for a stream of events (JSON Lines). */
export function jsonLine(value: unknown): string {
  return JSON.stringify(value, jsonReplacer) + "\n";
}

/**
 * The address a failure found already taken (EADDRINUSE), if that is what it is: from the socket's
 * error itself, or from the text of an error that only quotes it (libp2p's listen failure does).
 */
function addressInUse(error: unknown): string | undefined {
  const found = walk(error, (e) => {
    const { code, message } = (e ?? {}) as { code?: unknown; message?: unknown };
    return code === "EADDRINUSE" || (typeof message === "string" && message.includes("EADDRINUSE"));
  }) as { address?: string; port?: number; message?: string } | undefined;
  if (!found) return undefined;
  if (found.port !== undefined) return `${found.address ?? "127.0.0.1"}:${found.port}`;
  return /address already in use (\S+)/.exec(found.message ?? "")?.[1] ?? "an address";
}

/**
 * What to tell a person about a failure, in one line. A port already taken is said as such, with
 * what to do, wherever it came from (a gateway, a node's listen address, its metrics).
 */
export function describeError(error: unknown): string {
  const inUse = addressInUse(error);
  if (inUse) {
    return (
      `${inUse} is already in use: stop the program listening there, or choose another port ` +
      "(baton serve --port; a provider's listen and metricsPort in its config.yaml)"
    );
  }
  // Details (a schema's complaints, the last of several failures) stay on the same line.
  if (error instanceof BaseError) return oneLineOf(error);
  // viem's errors carry a short message too; their full one spans many lines.
  const short = (error as { shortMessage?: unknown } | undefined)?.shortMessage;
  if (typeof short === "string") return short;
  const message = error instanceof Error ? error.message : String(error);
  return message.split("\n")[0]!;
}

/**
 * Prints a failure for a person: one line, `error: …`. With `debug` (`--debug`, `BATON_DEBUG=1`),
 * the stack of the error and of every cause below it follows.
 */
export function printError(error: unknown, { debug = false }: { debug?: boolean } = {}): void {
  process.stderr.write(`error: ${describeError(error)}\n`);
  if (!debug) return;
  for (let e: unknown = error; e !== undefined; e = (e as { cause?: unknown }).cause) {
    process.stderr.write(`${e === error ? "" : "caused by: "}${e instanceof Error ? e.stack : String(e)}\n`);
    if (typeof e !== "object" || e === null) break;
  }
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

/** A size for people: bytes, KiB, MiB or GiB. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

/**
 * Logs a promise rejected with no handler, and lets the process carry on. Such a rejection is a bug
 * (seen: bitswap's `Want was aborted` surfacing after a fetch gave up), and Node's default, exiting,
 * would take a provider's running jobs or a tenant's watched jobs down with it; what failed has
 * already failed, and nothing waits on it.
 */
export function surviveUnhandledRejections(log: Logger): void {
  process.on("unhandledRejection", (reason) => {
    log.error("unhandled promise rejection (a bug); carrying on", { error: reason });
  });
}
