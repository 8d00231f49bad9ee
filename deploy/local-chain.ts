import { spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { mnemonicToAccount, type HDAccount } from "viem/accounts";

/** Hardhat's well-known development mnemonic: its accounts are funded on every local chain. */
export const DEV_MNEMONIC = "test test test test test test test test test test test junk";

/** The `index`-th funded development account of a local chain. Never use it on a public chain. */
export function devAccount(index: number): HDAccount {
  return mnemonicToAccount(DEV_MNEMONIC, { addressIndex: index });
}

export interface LocalChain {
  rpcUrl: string;
  port: number;
  pid: number;
  /** Stops the chain (SIGTERM, then SIGKILL after `graceMs`) and waits for it to exit. */
  stop(graceMs?: number): Promise<void>;
}

export interface StartLocalChainParameters {
  /** 0 picks a free port. */
  port?: number;
  chainId?: number;
  signal?: AbortSignal;
  /** Receives the chain's own output, line by line. */
  onLog?: (line: string) => void;
}

const root = path.resolve(import.meta.dirname, "..");
const STARTED = /Started HTTP and WebSocket JSON-RPC server at http:\/\/127\.0\.0\.1:(\d+)/;

/**
 * Starts a Hardhat (EDR) chain on 127.0.0.1 in a child process and resolves once it listens.
 *
 * @example
 * const chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
 * try { ... chain.rpcUrl ... } finally { await chain.stop(); }
 */
export async function startLocalChain({
  port = 0,
  chainId,
  signal,
  onLog,
}: StartLocalChainParameters = {}): Promise<LocalChain> {
  signal?.throwIfAborted();
  const args = [path.join(root, "deploy", "chain-server.ts"), String(port)];
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

  try {
    const listeningPort = await new Promise<number>((resolve, reject) => {
      const onAbort = (): void => reject(signal!.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      const tail: string[] = [];
      lines.on("line", (line) => {
        onLog?.(line);
        tail.push(line);
        if (tail.length > 20) tail.shift();
        const match = STARTED.exec(line);
        if (match) {
          signal?.removeEventListener("abort", onAbort);
          resolve(Number(match[1]));
        }
      });
      child.once("exit", (code, sig) =>
        reject(new Error(`local chain exited before listening (code ${code}, signal ${sig}):\n${tail.join("\n")}`)),
      );
    });
    return { rpcUrl: `http://127.0.0.1:${listeningPort}`, port: listeningPort, pid: child.pid!, stop };
  } catch (error) {
    await stop(1_000);
    throw error;
  }
}
