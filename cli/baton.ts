#!/usr/bin/env node
/**
 * The `baton` command: `baton provider …`, `baton job …`, `baton audit …` (and `devnet`).
 * Thin over sdk/ and node/: it parses arguments, calls them, and prints for people.
 */
import module from "node:module";

import { printError } from "./output.ts";

// V8 keeps the compiled code of every module it loads in the OS temp dir, keyed by content: each
// later `baton` process (a provider, a CLI call) then starts with about 0.2 s less CPU.
module.enableCompileCache();

type Commands = Record<string, { run: (args: string[]) => Promise<void>; help: string }>;

// Each group is loaded only when used: `baton audit …` need not load libp2p, Helia and the node.
const groups: Record<string, () => Promise<Commands>> = {
  provider: async () => (await import("./provider.ts")).providerCommands,
  job: async () => (await import("./job.ts")).jobCommands,
  devnet: async () => (await import("./devnet.ts")).devnetCommands,
  serve: async () => (await import("./serve.ts")).serveCommands,
  audit: async () => (await import("./audit.ts")).auditCommands,
};

async function usage(): Promise<string> {
  const lines = ["usage: baton <group> <command> [options]", ""];
  for (const [group, load] of Object.entries(groups)) {
    for (const [name, { help }] of Object.entries(await load())) {
      lines.push(`  baton ${group} ${name.padEnd(10)} ${help}`);
    }
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
const load = group === undefined ? undefined : groups[group];
const selected = load ? (await load())[implicitStart ? "start" : (command ?? "")] : undefined;
const args = implicitStart && command !== undefined ? [command, ...rest] : rest;
if (!selected) {
  console.error(await usage());
  process.exit(group === undefined || group === "--help" || group === "-h" ? 0 : 2);
}
try {
  await selected.run(args);
} catch (error) {
  printError(error);
  process.exit(1);
}
