import { rm } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";

import { parseEther } from "viem";

import { privateKeyOf, startDevnet } from "../deploy/devnet.ts";
import { devAccount } from "../deploy/local-chain.ts";
import { UserError } from "../sdk/errors.ts";
import { SESSION_HEARTBEAT_MS } from "../sdk/wire/protocols.ts";
import { DEFAULT_NETWORK_FILE } from "./job.ts";

const DEFAULT_DIR = path.dirname(DEFAULT_NETWORK_FILE);

/**
 * `baton devnet`: a complete local network that stays up until Ctrl-C. Everything lives in `--dir`
 * (default .baton/devnet, emptied first: it belongs to the devnet), including the network file the
 * `baton job` commands read by default.
 */
async function devnetCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      providers: { type: "string", default: "3" },
      dir: { type: "string", default: DEFAULT_DIR },
      "heartbeat-ms": { type: "string", default: String(SESSION_HEARTBEAT_MS) },
      logs: { type: "boolean", default: false },
    },
  });
  const count = Number(values.providers);
  if (!Number.isInteger(count) || count < 1 || count > 32) throw new UserError("--providers must be 1…32");
  const heartbeatMs = Number(values["heartbeat-ms"]);
  if (!Number.isInteger(heartbeatMs) || heartbeatMs < 50) throw new UserError("--heartbeat-ms must be at least 50");
  const dir = path.resolve(values.dir);
  await rm(dir, { recursive: true, force: true });
  const devnet = await startDevnet({
    providers: count,
    dir,
    config: { heartbeatMs },
    onStep: (message) => console.log(`  · ${message}`),
    ...(values.logs ? { onProviderLine: (name: string, line: string) => console.log(`[${name}] ${line}`) } : {}),
  });
  const tenant = devAccount(10);
  await devnet.fund(tenant.address, parseEther("1000"));
  const networkFile = path.relative(process.cwd(), devnet.networkFile);
  const isDefault = path.resolve(DEFAULT_NETWORK_FILE) === devnet.networkFile;
  const networkFlag = isDefault ? "" : ` --network ${networkFile}`;
  console.log(`
devnet up: chain ${devnet.chain.rpcUrl} (chain id ${devnet.deployment.chainId}), ${count} provider(s)
${devnet.providers.map((p) => `  ${p.name}  ${p.account.address}  pid ${p.process!.pid}  ${p.address}`).join("\n")}

network file: ${networkFile}  ${isDefault ? "(the baton job commands read it by default)" : "(give it to the baton job commands with --network)"}
tenant account ${tenant.address}, funded with 1000 payment tokens. In another terminal:

  export BATON_TENANT_KEY=${privateKeyOf(tenant)}
  npm run baton -- job run examples/train/train.yaml --max-price 0.001 --watch${networkFlag}
  npm run baton -- audit job <job id> --rpc-url ${devnet.chain.rpcUrl} --deployment ${path.relative(process.cwd(), devnet.deploymentFile)}

From a script: createBatonClient({ rpcUrl: "${devnet.chain.rpcUrl}", deployment: "${path.relative(process.cwd(), devnet.deploymentFile)}", bootstrap: <the addresses above>, account, dataDir })
(see examples/sdk/run-job.ts). Ctrl-C stops everything this started.`);

  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  console.log("stopping the devnet …");
  await devnet.stop({ keep: true });
  console.log("stopped");
}

export const devnetCommands = {
  start: { run: devnetCommand, help: "a local chain, contracts and N providers, until Ctrl-C: [--providers 3]" },
};
