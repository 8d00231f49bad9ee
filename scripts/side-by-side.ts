/**
 * Runs lanes of commands at once, each lane's commands one after another, and prints each command's
 * output whole when it ends, so that outputs do not interleave. Used where steps would leave a core
 * idle one after another: the lint checks (`scripts/lint.ts`), and `npm test`, where the Solidity
 * tests (whose solc-js compile runs on one core) run beside the lint and then the quick TypeScript
 * tests.
 *
 * Usage: node scripts/side-by-side.ts <lane>...   a lane is npm scripts joined by commas, run in
 * order until one fails (`lint,test:ts`); exit code 1 if any failed.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export interface Step {
  name: string;
  command: string;
  args: string[];
}

const root = path.resolve(import.meta.dirname, "..");

/** Runs one step; prints `── <name> passed (<s> s)` (or `failed`) and its output when it ends. */
function run({ name, command, args }: Step): Promise<boolean> {
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn(command, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const done = (ok: boolean, why: string): void => {
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      console.log(`── ${name} ${why} (${seconds} s)${output.trim() ? `\n${output.trimEnd()}` : ""}`);
      resolve(ok);
    };
    child.once("error", (error) => done(false, `could not start: ${error.message}`));
    child.once("exit", (code, signal) => done(code === 0, code === 0 ? "passed" : `failed (${code ?? signal})`));
  });
}

/**
 * Runs the lanes at once in the repository's root, the steps of each in order until one fails, then
 * prints a line naming the failed steps, if any. With `announce`, a line says when each step starts.
 * @returns whether every step ran and passed.
 */
export async function sideBySide(label: string, lanes: Step[][], { announce = false } = {}): Promise<boolean> {
  const failed: string[] = [];
  await Promise.all(
    lanes.map(async (lane) => {
      for (const step of lane) {
        if (announce) console.log(`… ${step.name}`);
        if (!(await run(step))) {
          failed.push(step.name);
          return;
        }
      }
    }),
  );
  console.log(failed.length ? `${label} failed: ${failed.join(", ")}` : `${label} passed`);
  return failed.length === 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const lanes = process.argv.slice(2).map((lane) => lane.split(","));
  if (lanes.length === 0 || lanes.flat().some((script) => !/^[\w:-]+$/.test(script))) {
    console.error("usage: node scripts/side-by-side.ts <npm script>[,<npm script>...]...");
    process.exit(2);
  }
  console.log(`side by side: ${lanes.map((lane) => lane.join(" then ")).join("; ")}; each output follows its end`);
  const ok = await sideBySide(
    lanes.map((lane) => lane.join(", ")).join(" + "),
    lanes.map((lane) => lane.map((name) => ({ name, command: "npm", args: ["run", "--silent", name] }))),
    { announce: true },
  );
  process.exit(ok ? 0 : 1);
}
