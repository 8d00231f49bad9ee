/**
 * `npm run bench`: every benchmark, one after another, each in its own process (so one's load does
 * not skew the next), then one summary table of every figure beside its reference and target,
 * written to bench/results/summary.json. A benchmark that crashes is reported and the rest go on;
 * nothing here fails for being slow.
 *
 * `--block-time S` goes to every benchmark that runs a market on a chain (node, failover, serve,
 * image, batch): their chain mines a block every S seconds. Gas per operation does not depend on
 * it, the checkpoint benchmark uses no chain, and the network one measures the tenant↔provider
 * link, which no block time touches.
 */
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";

import { blockTimeArg } from "../cli/program.ts";
import { printTable, targetMet, writeResults, type Figure } from "./report.ts";

const { values } = parseArgs({ options: { "block-time": { type: "string", default: "0" } } });
const blockTime = String(blockTimeArg()(values["block-time"]));

const benches = [
  { name: "gas", script: "bench/gas.ts", args: [] },
  { name: "node", script: "bench/node.ts", args: ["--block-time", blockTime] },
  { name: "checkpoint", script: "bench/checkpoint.ts", args: [] },
  { name: "failover", script: "bench/failover.ts", args: ["--block-time", blockTime] },
  { name: "serve", script: "bench/serve.ts", args: ["--block-time", blockTime] },
  { name: "image", script: "bench/image.ts", args: ["--block-time", blockTime] },
  { name: "batch", script: "bench/batch.ts", args: ["--block-time", blockTime] },
  { name: "network", script: "bench/network.ts", args: [] },
];

const outcomes: { bench: string; exitCode: number | null; seconds: number }[] = [];
for (const bench of benches) {
  console.log(`\n=== ${bench.name} (${bench.script}) ===`);
  const started = performance.now();
  const child = spawn(process.execPath, ["--disable-warning=ExperimentalWarning", bench.script, ...bench.args], {
    stdio: "inherit",
    cwd: path.resolve(import.meta.dirname, ".."),
  });
  const exitCode = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  outcomes.push({ bench: bench.name, exitCode, seconds: Math.round((performance.now() - started) / 1000) });
}

const all: (Figure & { bench: string })[] = [];
for (const bench of benches) {
  const file = path.resolve(import.meta.dirname, "results", `${bench.name}.json`);
  const outcome = outcomes.find((o) => o.bench === bench.name)!;
  if (outcome.exitCode !== 0) continue;
  const { figures } = JSON.parse(await readFile(file, "utf8")) as { figures: Figure[] };
  for (const figure of figures) all.push({ ...figure, name: `${bench.name}: ${figure.name}`, bench: bench.name });
}
printTable(
  "Summary of every benchmark",
  all.filter((f) => f.reference || f.target),
);
const failed = outcomes.filter((o) => o.exitCode !== 0);
for (const o of failed) console.log(`  ! ${o.bench} did not finish (exit ${o.exitCode}); its figures are missing`);
const withTarget = all.filter((f) => f.target);
console.log(`\n${withTarget.filter((f) => targetMet(f)).length} of ${withTarget.length} targets met`);
console.log(`wrote ${await writeResults("summary", { runs: outcomes, figures: all })}`);
