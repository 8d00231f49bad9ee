/**
 * Runs Hardhat's JSON-RPC node (EDR) on loopback for `startLocalChain`. It exits when its parent
 * closes our stdin, so a parent that dies, even by SIGKILL, leaves no chain behind.
 *
 * The node is pointed at an empty artifacts directory of its own. Hardhat otherwise reads every
 * build info under `artifacts/` (250 MB once the Solidity tests are built) to decode Solidity
 * stack traces in the node's own log, which nobody reads here: that took 3.4 of a chain's 4 s
 * start. Callers decode reverts from the ABIs; `npm run chain` (`hardhat node`) keeps the traces.
 *
 * Usage: node deploy/chain-server.ts <port> [chainId]
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import { createHardhatRuntimeEnvironment } from "hardhat/hre";

import config from "../hardhat.config.ts";

const port = Number(process.argv[2] ?? "0");
const chainId = process.argv[3] === undefined ? -1 : Number(process.argv[3]);

const artifacts = mkdtempSync(path.join(os.tmpdir(), "baton-chain-"));
process.on("exit", () => rmSync(artifacts, { recursive: true, force: true }));
for (const signal of ["SIGTERM", "SIGINT"] as const) process.on(signal, () => process.exit(0));
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();

const hre = await createHardhatRuntimeEnvironment(
  { ...config, paths: { ...config.paths, artifacts } },
  {},
  path.resolve(import.meta.dirname, ".."),
);
await hre.tasks.getTask("node").run({ hostname: "127.0.0.1", port, chainId });
