/**
 * `npm run demo`: starts a local chain on loopback, deploys Baton's contracts with the deploy
 * module, prints their addresses, and keeps the chain up until Ctrl-C (or exits at once with
 * `--exit`). The full market demo (providers, a job, a hand-off) grows from here.
 */
import path from "node:path";
import { parseArgs } from "node:util";
import { createPublicClient, createWalletClient, http } from "viem";
import { hardhat } from "viem/chains";

import { deployBaton, writeDeployment } from "../deploy/deploy.ts";
import { devAccount, startLocalChain } from "../deploy/local-chain.ts";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "8545" },
    exit: { type: "boolean", default: false },
    out: { type: "string", default: path.join(".baton", "demo", "deployments") },
  },
});

const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65_535) {
  console.error(`demo: --port must be a TCP port number, got ${values.port}`);
  process.exit(1);
}

console.log("starting a local chain (Hardhat EDR) on 127.0.0.1 …");
const chain = await startLocalChain({ port, signal: AbortSignal.timeout(60_000) }).catch((error: Error) => {
  console.error(`demo: could not start the local chain: ${error.message}`);
  process.exit(1);
});
let stopping = false;
const stop = async (code: number): Promise<never> => {
  if (!stopping) {
    stopping = true;
    await chain.stop();
  }
  process.exit(code);
};
process.on("SIGINT", () => void stop(0));
process.on("SIGTERM", () => void stop(0));

try {
  console.log(`chain listening at ${chain.rpcUrl} (pid ${chain.pid})`);
  const publicClient = createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl), pollingInterval: 50 });
  const walletClient = createWalletClient({ chain: hardhat, account: devAccount(0), transport: http(chain.rpcUrl) });
  console.log("deploying contracts …");
  const deployment = await deployBaton({
    walletClient,
    publicClient,
    onProgress: ({ step, address }) => console.log(`  ${step.padEnd(34)} ${address}`),
  });
  const file = await writeDeployment(values.out, deployment);
  console.log(`\ndeployment written to ${file}`);
  console.log(`point tools at it with: --rpc-url ${chain.rpcUrl} --deployments ${values.out}`);
  if (values.exit) await stop(0);
  console.log("\nthe chain stays up; press Ctrl-C to stop it");
} catch (error) {
  console.error(`demo: ${(error as Error).message}`);
  await stop(1);
}
