/**
 * Runs a local chain on loopback for `startLocalChain`: Hardhat's JSON-RPC node (EDR), or Foundry's
 * Anvil. It exits when its parent closes our stdin, so a parent that dies, even by SIGKILL, leaves
 * no chain behind.
 *
 * Hardhat's node runs in this process. It is pointed at an empty artifacts directory of its own:
 * Hardhat otherwise reads every build info under `artifacts/` (250 MB once the Solidity tests are
 * built) to decode Solidity stack traces in the node's own log, which nobody reads here: that took
 * 3.4 of a chain's 4 s start. Callers decode reverts from the ABIs; `npm run chain` (`hardhat
 * node`) keeps the traces.
 *
 * Anvil is a native binary (npm `@foundry-rs/anvil`, the binary in its platform package) that knows
 * nothing of our stdin: this process runs it as its child, says its pid (`anvil pid N`), passes its
 * output through, and stops it when the parent goes. Anvil's defaults already keep chain time at the
 * clock: a block's timestamp is the clock's second, and blocks may share one (Hardhat needs
 * `allowBlocksWithSameTimestamp` for that, in hardhat.config.ts).
 *
 * Usage: node deploy/chain-server.ts <hardhat|anvil> <port> [chainId]
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";

import { DEV_ACCOUNTS, DEV_BALANCE_ETH, DEV_MNEMONIC } from "./local-chain-kinds.ts";

const [kind, portArg = "0", chainIdArg] = process.argv.slice(2);
const port = Number(portArg);
const chainId = chainIdArg === undefined ? undefined : Number(chainIdArg);

/** Runs on the parent's death (our stdin closed) and on SIGTERM/SIGINT: stops the chain, then exits. */
let stop: () => void = () => process.exit(0);
for (const signal of ["SIGTERM", "SIGINT"] as const) process.on(signal, () => stop());
process.stdin.on("end", () => stop());
process.stdin.on("error", () => stop());
process.stdin.resume();

if (kind === "hardhat") await runHardhat();
else if (kind === "anvil") runAnvil();
else throw new Error(`chain-server: no chain ${kind} (hardhat or anvil)`);

async function runHardhat(): Promise<void> {
  const artifacts = mkdtempSync(path.join(os.tmpdir(), "baton-chain-"));
  process.on("exit", () => rmSync(artifacts, { recursive: true, force: true }));
  const [{ createHardhatRuntimeEnvironment }, { default: config }] = await Promise.all([
    import("hardhat/hre"),
    import("../hardhat.config.ts"),
  ]);
  const hre = await createHardhatRuntimeEnvironment(
    { ...config, paths: { ...config.paths, artifacts } },
    {},
    path.resolve(import.meta.dirname, ".."),
  );
  await hre.tasks.getTask("node").run({ hostname: "127.0.0.1", port, chainId: chainId ?? -1 });
}

/** How long Anvil has to exit on SIGTERM before it is killed (it exits at once; `stop()` waits 5 s for us). */
const ANVIL_GRACE_MS = 2_000;

function runAnvil(): void {
  const args = [
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    // Hardhat's accounts: the same mnemonic, count and balance, so dev account N is funded on both.
    "--mnemonic",
    DEV_MNEMONIC,
    "--accounts",
    String(DEV_ACCOUNTS),
    "--balance",
    String(DEV_BALANCE_ETH),
    ...(chainId === undefined ? [] : ["--chain-id", String(chainId)]),
  ];
  const child = spawn(anvilBinary(), args, { stdio: ["ignore", "inherit", "inherit"] });
  child.once("error", (error) => {
    console.error(`cannot run anvil: ${error.message}`);
    process.exit(1);
  });
  child.once("exit", (code, signal) => process.exit(code ?? (signal === "SIGTERM" ? 0 : 1)));
  console.log(`anvil pid ${child.pid}`);
  stop = () => {
    child.kill("SIGTERM");
    setTimeout(() => child.kill("SIGKILL"), ANVIL_GRACE_MS).unref();
  };
}

/**
 * The path of the Anvil binary that `npm ci` installed: `@foundry-rs/anvil` depends on one package
 * per platform (`@foundry-rs/anvil-linux-amd64`, …) holding `bin/anvil`, and npm installs the one
 * that fits this machine. (The wrapper's own `anvil` command would put a Node process between us.)
 */
function anvilBinary(): string {
  const arch = { x64: "amd64", arm64: "arm64" }[process.arch as string];
  const pkg = `@foundry-rs/anvil-${process.platform}-${arch}`;
  const binary = process.platform === "win32" ? "anvil.exe" : "anvil";
  try {
    return createRequire(import.meta.url).resolve(`${pkg}/bin/${binary}`);
  } catch (cause) {
    throw new Error(`no Anvil binary for ${process.platform}/${process.arch}: ${pkg} is not installed (npm ci)`, {
      cause,
    });
  }
}
