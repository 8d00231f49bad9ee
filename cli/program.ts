import { Command, CommanderError } from "commander";

import { UserError } from "../sdk/errors.ts";
import { printError } from "./output.ts";

/**
 * Exit codes of `baton` (and `npm run deploy`): 0 when it did what was asked, 1 when it failed
 * (the chain refused, a file is missing, a job failed), 2 for a usage error: an unknown command or
 * option, a missing or malformed argument.
 */
const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

/** A mistake in how the command was called (a malformed value, a missing option): exit code 2. */
export class UsageError extends UserError {
  override name = "UsageError";
}

/**
 * commander's Command, with one change: a command left out (`baton`, `baton job`) is a request for
 * help, so the help goes to stdout and the exit code is 0, as with `--help`.
 */
export class BatonCommand extends Command {
  override createCommand(name?: string): BatonCommand {
    return new BatonCommand(name);
  }

  override help(): never {
    return super.help();
  }
}

/** commander's codes for help and the version, which it prints on purpose: not errors. */
const SHOWN_ON_PURPOSE = new Set(["commander.helpDisplayed", "commander.help", "commander.version"]);

/** Adds an "Examples:" section to a command's help: what a person would type, one per line. */
export function examples(command: Command, lines: string[]): Command {
  return command.addHelpText("after", `\nExamples:\n${lines.map((line) => `  $ ${line}`).join("\n")}`);
}

/**
 * Parses the command line and runs the chosen command; every error ends here. Usage errors print
 * one line and exit 2; failures print one line (the stack with `--debug` or BATON_DEBUG=1) and
 * exit 1. A command that succeeds leaves the process to end on its own (a node keeps running).
 */
export async function runProgram(program: Command, argv: string[] = process.argv): Promise<void> {
  configure(program);
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      process.exit(SHOWN_ON_PURPOSE.has(error.code) ? EXIT.ok : EXIT.usage);
    }
    printError(error, { debug: program.opts().debug === true || process.env.BATON_DEBUG === "1" });
    process.exit(error instanceof UsageError ? EXIT.usage : EXIT.failure);
  }
}

/**
 * Every command throws instead of exiting (so that the codes above are decided in one place), and
 * prints commander's own complaints (unknown option, missing argument, its typo suggestion) as one
 * line that ends with where to read more. Help is `--help` on any command, or the program's own
 * `help` command: commander's `help` subcommand in every group would only repeat it.
 */
function configure(command: Command): void {
  const path: string[] = [];
  for (let c: Command | null = command; c; c = c.parent) path.unshift(c.name());
  command.exitOverride().helpCommand(false);
  command.configureOutput({
    outputError: (text, write) => write(`${text.trim().split("\n").join(" ")}; see \`${path.join(" ")} --help\`\n`),
  });
  for (const sub of command.commands) configure(sub);
}

/** Collects a repeatable option's values (`--bootstrap a --bootstrap b`). */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** An option's parser for a whole number (its range is checked where it is known). */
export function wholeNumber(name: string): (text: string) => number {
  return (text) => {
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
      throw new UsageError(`${name} must be a whole number, not ${text}`);
    }
    return Number(text);
  };
}

/** An option's parser for a whole number in `[min, max]`. */
export function integerIn(name: string, min: number, max: number): (text: string) => number {
  const parse = wholeNumber(name);
  return (text) => {
    const value = parse(text);
    if (value < min || value > max) throw new UsageError(`${name} must be from ${min} to ${max}, not ${text}`);
    return value;
  };
}

/** The longest block time a devnet takes: Ethereum's 12 s, with room for slower chains. */
const MAX_BLOCK_TIME_S = 60;

/**
 * An option's parser for a chain's block time in seconds: 0 (each transaction mined at once) to
 * 60, fractions allowed (0.25 for Arbitrum's blocks).
 */
export function blockTimeArg(name = "--block-time"): (text: string) => number {
  return (text) => {
    const value = Number(text);
    if (!/^\d+(\.\d+)?$/.test(text) || value > MAX_BLOCK_TIME_S) {
      throw new UsageError(`${name} must be a number of seconds from 0 to ${MAX_BLOCK_TIME_S}, not ${text}`);
    }
    return value;
  };
}

/** An option's parser for an amount of tokens (`0.5`, `1000`): checked here, converted where the token's decimals are known. */
export function tokenAmount(name: string): (text: string) => string {
  return (text) => {
    if (!/^\d+(\.\d+)?$/.test(text)) throw new UsageError(`${name} must be an amount of tokens like 0.5, not ${text}`);
    return text;
  };
}

/** A job id argument: 0x and 64 hex digits, lower-cased. */
export function jobIdArg(text: string): `0x${string}` {
  if (!/^0x[0-9a-fA-F]{64}$/.test(text)) throw new UsageError(`not a job id: ${text} (0x and 64 hex digits)`);
  return text.toLowerCase() as `0x${string}`;
}

/** A lease id argument: a whole number from 1. */
export function leaseIdArg(text: string): bigint {
  if (!/^\d+$/.test(text) || BigInt(text) === 0n) {
    throw new UsageError(`not a lease id: ${text} (lease ids are whole numbers from 1)`);
  }
  return BigInt(text);
}

/**
 * An address argument's shape: 0x and 40 hex digits. Its mixed-case checksum is checked where viem
 * is loaded ({@link checkedAddress}), not while parsing: `--help` must not pay for loading viem.
 */
export function addressArg(text: string): `0x${string}` {
  if (!/^0x[0-9a-fA-F]{40}$/.test(text)) throw new UsageError(`not an address: ${text} (0x and 40 hex digits)`);
  return text as `0x${string}`;
}

/** An address in its checksummed form; a wrong mixed-case checksum is a usage error. */
export async function checkedAddress(text: `0x${string}`): Promise<`0x${string}`> {
  const { getAddress, isAddress } = await import("viem");
  if (!isAddress(text)) throw new UsageError(`not an address: ${text} (its mixed-case checksum is wrong)`);
  return getAddress(text);
}
