/**
 * Renting from a script: run the example training job on a Baton network through the SDK, print
 * what happens, and fetch the result. Against a devnet (`npm run baton -- devnet` in another
 * terminal), as written:
 *
 *   export BATON_TENANT_KEY=0x…            # printed by the devnet
 *   node examples/sdk/run-job.ts           # or: --network <file> --steps 600
 *
 * The network file (written by the devnet) says where the chain, the deployment and the providers
 * are; with a real network, pass `rpcUrl`, `deployment` and `bootstrap` to createBatonClient yourself.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";

import { formatEther, parseEther, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";

import { createBatonClient, readJobFile, runJob } from "../../sdk/index.ts";

const { values } = parseArgs({
  options: {
    network: { type: "string", default: ".baton/devnet/network.json" },
    steps: { type: "string", default: "1000" },
    "data-dir": { type: "string", default: ".baton/tenant" },
  },
});
const key = process.env.BATON_TENANT_KEY;
if (!key) throw new Error("set BATON_TENANT_KEY to the tenant's private key (the devnet prints one)");

const network = JSON.parse(await readFile(values.network, "utf8")) as {
  rpcUrl: string;
  deployment: string;
  bootstrap: string[];
};
const client = await createBatonClient({
  rpcUrl: network.rpcUrl,
  account: privateKeyToAccount(key as Hex),
  deployment: path.resolve(path.dirname(values.network), network.deployment),
  bootstrap: network.bootstrap,
  dataDir: values["data-dir"],
});

try {
  const here = import.meta.dirname;
  const { spec, files } = await readJobFile(path.join(here, "../train/train.yaml"));
  spec.env.TRAIN_STEPS = values.steps;

  const job = await runJob(client, spec, {
    maxPricePerSecond: parseEther("0.00001"),
    budget: parseEther("0.01"),
    files,
  });
  console.log(`job ${job.jobId}`);
  job.on("lease-opened", (e) =>
    console.log(`lease ${e.leaseId} with ${e.provider} at ${formatEther(e.pricePerSecond)}/s`),
  );
  job.on("checkpoint-safe", (e) => console.log(`checkpoint at step ${e.step} is safe with us`));
  job.on("provider-failed", (e) => console.log(`provider ${e.provider} failed: ${e.reason}`));
  job.on("re-leased", (e) => console.log(`moved to ${e.provider}, resuming from step ${e.resumeFrom?.step ?? 0}`));

  const result = await job.result();
  const output = JSON.parse(await readFile(path.join(result.outputDir!, "result.json"), "utf8")) as {
    loss: string;
    weightsSha256: string;
  };
  console.log(`done after ${result.handOffs} hand-off(s): loss ${output.loss}, weights ${output.weightsSha256}`);
} finally {
  await client.close();
}
