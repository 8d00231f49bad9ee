import { spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";

import { createTestClient, http } from "viem";
import { mnemonicToAccount, type HDAccount } from "viem/accounts";
import { hardhat } from "viem/chains";

import { UserError } from "../sdk/errors.ts";
import { DEV_MNEMONIC, type LocalChainKind } from "./local-chain-kinds.ts";

export { DEV_MNEMONIC, LOCAL_CHAINS, type LocalChainKind } from "./local-chain-kinds.ts";

/**
 * Refuses a block time the chain cannot mine at: Anvil sets interval mining in whole seconds.
 *
 * @throws {UserError} naming the block time and the chain that can.
 */
export function checkBlockTime(kind: LocalChainKind, seconds: number): void {
  if (kind === "anvil" && !Number.isInteger(seconds)) {
    throw new UserError(
      `Anvil mines at intervals of whole seconds, not ${seconds} s: a block time of a fraction of a second needs the hardhat chain`,
    );
  }
}

/** The `index`-th funded development account of a local chain. Never use it on a public chain. */
export function devAccount(index: number): HDAccount {
  return mnemonicToAccount(DEV_MNEMONIC, { addressIndex: index });
}

export interface LocalChain {
  kind: LocalChainKind;
  rpcUrl: string;
  port: number;
  /** The process we started (for Anvil, the server that runs the anvil binary as its child). */
  pid: number;
  /** Every process of the chain: `pid`, and the anvil binary's. */
  pids: number[];
  /**
   * Switches from mining each transaction at once to a block every `seconds` (interval mining), with
   * the chain's own dev methods (`evm_setAutomine`, `evm_setIntervalMining`: Hardhat and Anvil both
   * have them, in milliseconds on Hardhat, whole seconds on Anvil).
   *
   * @throws {UserError} on Anvil when `seconds` is not whole.
   */
  mineEvery(seconds: number): Promise<void>;
  /** Stops the chain (SIGTERM, then SIGKILL after `graceMs`) and waits for it to exit. */
  stop(graceMs?: number): Promise<void>;
}

export interface StartLocalChainParameters {
  /** Which EVM: Hardhat's EDR (the default) or Anvil. */
  chain?: LocalChainKind;
  /** 0 picks a free port. */
  port?: number;
  chainId?: number;
  signal?: AbortSignal;
  /** Receives the chain's own output, line by line. */
  onLog?: (line: string) => void;
}

const root = path.resolve(import.meta.dirname, "..");
/** The line each chain prints once it listens, with its port. */
const STARTED: Record<LocalChainKind, RegExp> = {
  hardhat: /Started HTTP and WebSocket JSON-RPC server at http:\/\/127\.0\.0\.1:(\d+)/,
  anvil: /^Listening on 127\.0\.0\.1:(\d+)$/,
};
/** What deploy/chain-server.ts says of the anvil binary it started. */
const ANVIL_PID = /^anvil pid (\d+)$/;

/**
 * Starts a local chain on 127.0.0.1, Hardhat's (EDR) or Anvil, in a child process
 * (deploy/chain-server.ts) and resolves once it listens. Either way it mines each transaction at
 * once, funds the {@link DEV_MNEMONIC}'s first 20 accounts, is chain 31337 unless told otherwise,
 * and goes when we do, however we die.
 *
 * @example
 * const chain = await startLocalChain({ chain: "anvil", signal: AbortSignal.timeout(60_000) });
 * try { ... chain.rpcUrl ... } finally { await chain.stop(); }
 */
export async function startLocalChain({
  chain: kind = "hardhat",
  port = 0,
  chainId,
  signal,
  onLog,
}: StartLocalChainParameters = {}): Promise<LocalChain> {
  signal?.throwIfAborted();
  const args = [path.join(root, "deploy", "chain-server.ts"), kind, String(port)];
  if (chainId !== undefined) args.push(String(chainId));
  // Run under this process's Node: npm scripts put the project's Node 22 first on PATH.
  const child = spawn(process.execPath, args, { cwd: root, stdio: ["pipe", "pipe", "pipe"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));

  const stop = async (graceMs = 5_000): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await exited;
    clearTimeout(timer);
  };

  const lines = createInterface({ input: child.stdout! });
  createInterface({ input: child.stderr! }).on("line", (line) => onLog?.(line));

  const pids = [child.pid!];
  try {
    const listeningPort = await new Promise<number>((resolve, reject) => {
      const onAbort = (): void => reject(signal!.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      const tail: string[] = [];
      lines.on("line", (line) => {
        onLog?.(line);
        tail.push(line);
        if (tail.length > 20) tail.shift();
        // The server names the anvil binary's pid as soon as it starts it (before Anvil says anything).
        const pid = ANVIL_PID.exec(line);
        if (pid) pids.push(Number(pid[1]));
        const match = STARTED[kind].exec(line);
        if (match) {
          signal?.removeEventListener("abort", onAbort);
          resolve(Number(match[1]));
        }
      });
      child.once("exit", (code, sig) =>
        reject(
          new Error(`local ${kind} chain exited before listening (code ${code}, signal ${sig}):\n${tail.join("\n")}`),
        ),
      );
    });
    const rpcUrl = `http://127.0.0.1:${listeningPort}`;
    return {
      kind,
      rpcUrl,
      port: listeningPort,
      pid: child.pid!,
      pids,
      stop,
      async mineEvery(seconds) {
        checkBlockTime(kind, seconds);
        const test = createTestClient({ mode: kind, transport: http(rpcUrl), chain: hardhat });
        await test.setAutomine(false);
        await test.setIntervalMining({ interval: seconds });
      },
    };
  } catch (error) {
    await stop(1_000);
    throw error;
  }
}
