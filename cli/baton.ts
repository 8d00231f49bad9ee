#!/usr/bin/env -S node --max-semi-space-size=4
/**
 * The `baton` command: `baton devnet`, `baton provider …`, `baton job …`, `baton image …`,
 * `baton serve`, `baton audit …`, `baton key …`, `baton simulate`. Thin over sdk/ and node/: it parses arguments,
 * calls them, and prints for people (or JSON with `--json`).
 *
 * The command line is parsed by commander: it has no dependencies, gives per-command help, typo
 * suggestions and `--version` for free, and is the most used CLI library for Node. Each command's
 * module loads only what its definitions need; the heavy parts (viem, libp2p, Helia, the node) are
 * imported inside the action that uses them, so `--help`, `--version` and `job list` start at once.
 */
import module from "node:module";

import type { Command } from "commander";

// V8 keeps the compiled code of every module it loads in the OS temp dir, keyed by content: each
// later `baton` process (a provider, a CLI call) then starts with about 0.2 s less CPU.
module.enableCompileCache();

// Imported once the cache is on: static imports would all be loaded before it.
const { auditCommands } = await import("./audit.ts");
const { devnetCommands } = await import("./devnet.ts");
const { explorerCommands } = await import("./explorer.ts");
const { imageCommands } = await import("./image.ts");
const { batchCommands } = await import("./batch.ts");
const { jobCommands } = await import("./job.ts");
const { keyCommands } = await import("./key.ts");
const { BatonCommand, examples, runProgram, UsageError } = await import("./program.ts");
const { providerCommands } = await import("./provider.ts");
const { serveCommands } = await import("./serve.ts");
const { simulateCommands } = await import("./simulate.ts");

// By the package's own name: from cli/ in a checkout and from dist/cli/ in the npm package alike.
const { version } = module.createRequire(import.meta.url)("baton/package.json") as { version: string };

const program = new BatonCommand("baton")
  .description("rent GPUs from anyone; a dropped provider means a pause, not lost work")
  .version(version, "-V, --version", "print the version")
  .option("--debug", "print the stack of an error (also BATON_DEBUG=1)")
  .addHelpText(
    "after",
    `
Every command that talks to a network reads .baton/devnet/network.json (written by \`baton devnet\`)
unless given --network FILE or BATON_NETWORK; --rpc-url, --deployment and --bootstrap override it.
Commands that report take --json. Exit codes: 0 ok, 1 failure, 2 usage error.`,
  );

devnetCommands(program);
providerCommands(program);
jobCommands(program);
batchCommands(program);
imageCommands(program);
serveCommands(program);
auditCommands(program);
explorerCommands(program);
keyCommands(program);
simulateCommands(program);

examples(
  program
    .command("help")
    .description("show the help of a command")
    .argument("[command...]", "the command, e.g. `job run`"),
  ["baton help", "baton help job run"],
).action((words: string[]) => {
  let command: Command = program;
  for (const word of words) {
    const next = command.commands.find((c) => c.name() === word || c.aliases().includes(word));
    if (!next) throw new UsageError(`unknown command: baton ${words.join(" ")}; see \`baton --help\``);
    command = next;
  }
  command.outputHelp();
});

const { surviveUnhandledRejections } = await import("./output.ts");
const { createLogger } = await import("../sdk/logger.ts");
surviveUnhandledRejections(createLogger("process"));

await runProgram(program);
