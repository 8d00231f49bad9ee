#!/usr/bin/env node
/**
 * The `baton` command: `baton provider …`, `baton job …`, `baton audit …` (and `devnet`).
 * Thin over sdk/ and node/: it parses arguments, calls them, and prints for people.
 */
import { auditCommands } from "./audit.ts";
import { devnetCommands } from "./devnet.ts";
import { jobCommands } from "./job.ts";
import { printError } from "./output.ts";
import { providerCommands } from "./provider.ts";
import { serveCommands } from "./serve.ts";

const groups: Record<string, Record<string, { run: (args: string[]) => Promise<void>; help: string }>> = {
  provider: providerCommands,
  job: jobCommands,
  devnet: devnetCommands,
  serve: serveCommands,
  audit: auditCommands,
};

function usage(): string {
  const lines = ["usage: baton <group> <command> [options]", ""];
  for (const [group, commands] of Object.entries(groups)) {
    for (const [name, { help }] of Object.entries(commands)) lines.push(`  baton ${group} ${name.padEnd(10)} ${help}`);
  }
  lines.push(
    "",
    "provider commands take --data-dir (default .baton/provider); keys: BATON_KEYSTORE_PASSWORD, or BATON_PROVIDER_KEY in development.",
    "job commands take --data-dir (default .baton/tenant) and --network (default .baton/devnet/network.json, written by",
    "`baton devnet`) or --rpc-url, --deployment and --bootstrap; keys: --keystore, or BATON_TENANT_KEY in development.",
  );
  return lines.join("\n");
}

const [group, command, ...rest] = process.argv.slice(2);
// `baton devnet` and `baton serve` have a single command each: `start` is implied.
const implicitStart = (group === "devnet" || group === "serve") && command !== "start";
const selected = group === undefined ? undefined : groups[group]?.[implicitStart ? "start" : (command ?? "")];
const args = implicitStart && command !== undefined ? [command, ...rest] : rest;
if (!selected) {
  console.error(usage());
  process.exit(group === undefined || group === "--help" || group === "-h" ? 0 : 2);
}
try {
  await selected.run(args);
} catch (error) {
  printError(error);
  process.exit(1);
}
