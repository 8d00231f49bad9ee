/**
 * Runs Hardhat's JSON-RPC node (EDR) on loopback for `startLocalChain`. It exits when its parent
 * closes our stdin, so a parent that dies, even by SIGKILL, leaves no chain behind.
 *
 * Usage: node deploy/chain-server.ts <port> [chainId]
 */
import hre from "hardhat";

const port = Number(process.argv[2] ?? "0");
const chainId = process.argv[3] === undefined ? -1 : Number(process.argv[3]);

process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();

await hre.tasks.getTask("node").run({ hostname: "127.0.0.1", port, chainId });
