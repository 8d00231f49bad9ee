import { access, mkdir, readFile } from "node:fs/promises";
import path from "node:path";

import type { Command } from "commander";
import type { PrivateKeyAccount } from "viem/accounts";

import { UserError } from "../sdk/errors.ts";
import { printJson } from "./output.ts";
import { examples } from "./program.ts";

/** Where `baton key new` writes a key unless told: one file per address, as geth names its keystores. */
const KEYS_DIR = path.join(".baton", "keys");

export interface PasswordOptions {
  passwordFile?: string;
}

/** Adds `--password-file`, the option of every command that opens or writes a keystore. */
export function passwordOption(command: Command): Command {
  return command.option(
    "--password-file <file>",
    "read the keystore password from this file (else BATON_KEYSTORE_PASSWORD, else asked on the terminal)",
  );
}

/**
 * The password of a keystore: the first line of `--password-file`, else BATON_KEYSTORE_PASSWORD,
 * else typed on the terminal without echo (twice for a new key, with `confirm`).
 *
 * @throws {UserError} when none of them gives one.
 */
export async function keystorePassword(
  { passwordFile }: PasswordOptions,
  { keystore, confirm = false }: { keystore: string; confirm?: boolean },
): Promise<string> {
  let password: string | undefined;
  if (passwordFile !== undefined) {
    try {
      password = (await readFile(passwordFile, "utf8")).split(/\r?\n/)[0];
    } catch (cause) {
      throw new UserError(`cannot read the password file ${passwordFile}`, { cause });
    }
  } else if (process.env.BATON_KEYSTORE_PASSWORD !== undefined) {
    password = process.env.BATON_KEYSTORE_PASSWORD;
  } else if (process.stdin.isTTY) {
    password = await askHidden(`password for ${keystore}: `);
    if (confirm && (await askHidden("the same password again: ")) !== password) {
      throw new UserError("the two passwords differ");
    }
  } else {
    throw new UserError(
      `keystore ${keystore} needs a password: give --password-file FILE, or set BATON_KEYSTORE_PASSWORD`,
    );
  }
  if (!password) throw new UserError(`the password for ${keystore} is empty`);
  return password;
}

/** Reads a line from the terminal without showing it. */
function askHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(question);
  stdin.setRawMode(true);
  stdin.resume();
  return new Promise((resolve, reject) => {
    let answer = "";
    const finish = (): void => {
      stdin.off("data", onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write("\n");
    };
    const onData = (data: Buffer): void => {
      for (const char of data.toString("utf8")) {
        if (char === "\r" || char === "\n" || char === "\u0004") {
          finish();
          return resolve(answer);
        }
        // Raw mode turns Ctrl-C into a character: it still means stop.
        if (char === "\u0003") {
          finish();
          return reject(new UserError("no password given"));
        }
        answer = char === "\u007f" || char === "\b" ? answer.slice(0, -1) : answer + char;
      }
    };
    stdin.on("data", onData);
  });
}

/**
 * The account a command acts as: the development key in `devKeyVariable` when set, else the
 * keystore opened with its password (see {@link keystorePassword}).
 *
 * @throws {UserError} naming what is missing or wrong (no key, a wrong password).
 */
export async function openAccount(
  options: PasswordOptions,
  { keystore, devKeyVariable }: { keystore: string | undefined; devKeyVariable: string },
): Promise<PrivateKeyAccount> {
  const { loadAccount } = await import("../node/keystore.ts");
  const privateKey = process.env[devKeyVariable];
  if (privateKey) return loadAccount({ privateKey });
  if (keystore === undefined) {
    throw new UserError(
      `no key: give --keystore FILE (\`baton key new\` makes one), or set ${devKeyVariable} in development`,
    );
  }
  return loadAccount({ keystore, password: await keystorePassword(options, { keystore }) });
}

/**
 * Writes `privateKey` to a new v3 keystore at `file`, making its directory; never over an existing
 * file (checked before the password is asked for, and again by the write itself).
 */
export async function writeNewKeystore(
  file: string,
  privateKey: `0x${string}`,
  password: () => Promise<string>,
): Promise<void> {
  const { writeKeystore } = await import("../node/keystore.ts");
  const taken = new UserError(`${file} already exists: a keystore is never overwritten; choose another file`);
  if (
    await access(file).then(
      () => true,
      () => false,
    )
  )
    throw taken;
  const secret = await password();
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  try {
    await writeKeystore(file, privateKey, secret);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") throw taken;
    throw error;
  }
}

async function keyNew(options: PasswordOptions & { out?: string; json?: boolean }): Promise<void> {
  const { generatePrivateKey, privateKeyToAccount } = await import("viem/accounts");
  const privateKey = generatePrivateKey();
  const { address } = privateKeyToAccount(privateKey);
  const file = options.out ?? path.join(KEYS_DIR, `${address}.json`);
  await writeNewKeystore(file, privateKey, () => keystorePassword(options, { keystore: file, confirm: true }));
  if (options.json) return printJson({ address, keystore: file });
  console.log(`address   ${address}`);
  console.log(`keystore  ${file}`);
  console.log(`next: fund it (on a devnet: baton devnet fund ${address}), then use it with --keystore ${file}`);
}

/** `baton key …`: keys for tenants and providers, in v3 keystores (geth's, MetaMask's format). */
export function keyCommands(program: Command): void {
  const key = program.command("key").description("make keys for tenants and providers");
  examples(
    passwordOption(
      key
        .command("new")
        .description("write a new key in an encrypted v3 keystore and print its address")
        .option("--out <file>", `where to write it (default: ${KEYS_DIR}/<address>.json)`)
        .option("--json", "print the address and file as JSON"),
    ),
    [
      "baton key new",
      "baton key new --out tenant.json --password-file pass.txt --json",
      "BATON_KEYSTORE_PASSWORD=… baton key new --out provider.json",
    ],
  ).action(keyNew);
}
