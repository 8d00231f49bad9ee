/**
 * `npm run bench:setup`: what a newcomer's first two commands cost. Clones this checkout's HEAD into
 * a temp dir, then runs `npm ci` and `npm test` there cold, phase by phase, and prints seconds per
 * phase beside the targets, the size of `node_modules` and the tests each suite ran.
 *
 * `npm ci` is run as its two halves (`npm ci --ignore-scripts`, then `npm run prepare`, which is
 * what `npm ci` runs after installing) and `npm test` as the parts it chains, so each is timed on
 * its own; a part that runs scripts side by side (`scripts/side-by-side.ts`) is timed whole, and
 * the time of each of its steps is read from its output. The Solidity tests' compile, which
 * `test:sol` does beside the lint, is then timed alone: the build is removed and redone cold.
 * Commit first: uncommitted changes are not in the clone. Nothing here fails for being slow.
 *
 * Usage: npm run bench:setup [-- --keep]   (--keep leaves the clone for a look)
 */
import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs, stripVTControlCharacters } from "node:util";

import { printTable, writeResults, type Figure } from "./report.ts";

const root = path.resolve(import.meta.dirname, "..");
const { values } = parseArgs({ options: { keep: { type: "boolean", default: false } } });

const dir = await mkdtemp(path.join(os.tmpdir(), "baton-setup-"));
const logFile = path.join(dir, "setup.log");
const log = createWriteStream(logFile);
const clone = path.join(dir, "baton");
// The clone must not find this checkout's tools: its own install provides them, as on a new machine.
const env: NodeJS.ProcessEnv = {
  ...Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("npm_"))),
  PATH: (process.env.PATH ?? "")
    .split(path.delimiter)
    .filter((entry) => !entry.startsWith(path.join(root, "node_modules")))
    .join(path.delimiter),
};

interface Phase {
  name: string;
  seconds: number;
  output: string;
}

/** Runs a command in the clone, its output appended to the log; resolves with its time and output. */
async function phase(name: string, command: string, args: string[], cwd = clone): Promise<Phase> {
  process.stdout.write(`… ${name}: ${command} ${args.join(" ")}\n`);
  log.write(`\n=== ${name}: ${command} ${args.join(" ")}\n`);
  const started = performance.now();
  const child = spawn(command, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const collect = (chunk: Buffer): void => {
    output += chunk.toString();
    log.write(chunk);
  };
  child.stdout.on("data", collect);
  child.stderr.on("data", collect);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", resolve);
  });
  const seconds = (performance.now() - started) / 1000;
  if (code !== 0) {
    console.error(output.split("\n").slice(-30).join("\n"));
    throw new Error(`${name} failed (exit ${code}) after ${seconds.toFixed(0)} s; the whole log: ${logFile}`);
  }
  console.log(`  ${name}: ${seconds.toFixed(1)} s`);
  return { name, seconds, output };
}

/** Tests a suite reported: mocha-style "N passing" (test:sol) or vitest's "Tests N passed". */
function counted(output: string, suite: string): string {
  const text = stripVTControlCharacters(output);
  if (suite === "test:sol") {
    const passing = /(\d+) passing/.exec(text)?.[1];
    return passing ? `${passing} passed, ${/(\d+) failing/.exec(text)?.[1] ?? 0} failed` : "";
  }
  return /^\s*Tests\s+(.*)$/m.exec(text)?.[1]?.trim() ?? "";
}

/** The steps a side-by-side run printed as each ended (`── <name> passed (<s> s)`), nested ones included. */
function sideBySideSteps(output: string): Figure[] {
  return [...stripVTControlCharacters(output).matchAll(/^── (.+) (?:passed|failed.*) \(([\d.]+) s\)$/gm)].map(
    ([, step, time]) => ({ name: `  of which ${step}`, value: Math.round(Number(time)), unit: "s" }),
  );
}

const phases: Phase[] = [];
try {
  await phase("clone", "git", ["clone", "--quiet", root, clone], dir);
  phases.push(await phase("npm ci: dependencies", "npm", ["ci", "--ignore-scripts", "--no-audit", "--no-fund"]));
  phases.push(await phase("npm ci: prepare (contracts, ABIs)", "npm", ["run", "prepare"]));
  const du = await phase("node_modules size", "du", ["-sm", "node_modules"]);
  const nodeModulesMb = Number(du.output.split(/\s/)[0]);

  const pkg = JSON.parse(await readFile(path.join(clone, "package.json"), "utf8")) as {
    scripts: Record<string, string>;
  };
  const suites: { name: string; tests: string }[] = [];
  const steps = new Map<Phase, Figure[]>();
  for (const part of pkg.scripts.test!.split("&&").map((p) => p.trim())) {
    const script = /^npm run ([\w:-]+)$/.exec(part)?.[1];
    const lanes = /^node scripts\/side-by-side\.ts ([\w:, -]+)$/.exec(part)?.[1]?.split(" ");
    if (script) {
      const ran = await phase(`npm test: ${script}`, "npm", ["run", script]);
      phases.push(ran);
      if (script.startsWith("test:")) suites.push({ name: script, tests: counted(ran.output, script) });
    } else if (lanes) {
      const name = `npm test: ${lanes.map((lane) => lane.replaceAll(",", " then ")).join(", beside ")}`;
      const ran = await phase(name, "npm", ["exec", "--", ...part.split(" ")]);
      phases.push(ran);
      steps.set(ran, sideBySideSteps(ran.output));
      for (const suite of lanes.flatMap((lane) => lane.split(",")).filter((name) => name.startsWith("test:"))) {
        suites.push({ name: suite, tests: counted(ran.output, suite) });
      }
    } else {
      throw new Error(`cannot time the test script's part "${part}": expected "npm run <script>" or a side-by-side`);
    }
  }
  // The Solidity tests' compile on its own, as cold as in the test run above, which did it beside the
  // lint: the build is removed, the production contracts that prepare built are rebuilt, and then
  // the development build of contracts and tests is timed.
  await rm(path.join(clone, "artifacts"), { recursive: true, force: true });
  await rm(path.join(clone, "cache"), { recursive: true, force: true });
  await phase("production contracts again", "npx", ["hardhat", "--build-profile", "production", "build", "--no-tests"]);
  phases.push(await phase("Solidity test build, alone", "npx", ["hardhat", "build", "--quiet"]));

  const seconds = (prefix: string): number =>
    Math.round(phases.filter((p) => p.name.startsWith(prefix)).reduce((sum, p) => sum + p.seconds, 0));
  const figures: Figure[] = [
    ...phases.flatMap((p) => [{ name: p.name, value: Math.round(p.seconds), unit: "s" }, ...(steps.get(p) ?? [])]),
    { name: "npm ci (both halves)", value: seconds("npm ci"), unit: "s", target: { value: 90, atMost: true } },
    {
      name: "cold build: contracts + Solidity tests",
      value: seconds("npm ci: prepare") + seconds("Solidity test build"),
      unit: "s",
      target: { value: 60, atMost: true },
      note: "the production contracts that prepare builds, plus the dev-profile build of contracts and tests",
    },
    { name: "npm test (every part)", value: seconds("npm test"), unit: "s", target: { value: 180, atMost: true } },
    {
      name: "node_modules",
      value: nodeModulesMb,
      unit: "MB",
      reference: { value: 834, label: "before trimming" },
      target: { value: 700, atMost: true },
    },
  ];
  printTable(`Set-up of a fresh clone (${os.availableParallelism()} cores)`, figures);
  for (const suite of suites) console.log(`  ${suite.name}: ${suite.tests}`);
  const written = await writeResults("setup", { figures, suites });
  console.log(`\nwrote ${path.relative(root, written)}; the whole log: ${logFile}`);
} finally {
  log.end();
  if (!values.keep) await rm(clone, { recursive: true, force: true });
}
