/**
 * Runs commands at once and prints each one's output whole when it ends, so that outputs do not
 * interleave. Used where single-threaded steps would leave a core idle one after another: the
 * lint checks (`scripts/lint.ts`), and in `npm test` the lint beside the Solidity tests, whose
 * solc-js compile runs on one core.
 *
 * Usage: node scripts/side-by-side.ts <npm script>...   (exit code 1 if any failed)
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

/**
 * Runs the steps at once in the repository's root. Prints `── <name> passed (<s> s)` (or `failed`)
 * and the step's output as each one ends, then a line naming the failed steps, if any.
 * @returns whether every step passed.
 */
export async function sideBySide(label: string, steps: Step[]): Promise<boolean> {
  const results = await Promise.all(
    steps.map(
      ({ name, command, args }) =>
        new Promise<{ name: string; ok: boolean }>((resolve) => {
          const started = performance.now();
          const child = spawn(command, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
          let output = "";
          child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
          child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
          const done = (ok: boolean, why: string): void => {
            const seconds = ((performance.now() - started) / 1000).toFixed(1);
            console.log(`── ${name} ${why} (${seconds} s)${output.trim() ? `\n${output.trimEnd()}` : ""}`);
            resolve({ name, ok });
          };
          child.once("error", (error) => done(false, `could not start: ${error.message}`));
          child.once("exit", (code, signal) => done(code === 0, code === 0 ? "passed" : `failed (${code ?? signal})`));
        }),
    ),
  );
  const failed = results.filter((r) => !r.ok).map((r) => r.name);
  console.log(failed.length ? `${label} failed: ${failed.join(", ")}` : `${label} passed`);
  return failed.length === 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const scripts = process.argv.slice(2);
  if (scripts.length === 0) {
    console.error("usage: node scripts/side-by-side.ts <npm script>...");
    process.exit(2);
  }
  console.log(`running ${scripts.join(", ")} side by side; each one's output follows when it ends`);
  const ok = await sideBySide(
    scripts.join(" + "),
    scripts.map((name) => ({ name, command: "npm", args: ["run", "--silent", name] })),
  );
  process.exit(ok ? 0 : 1);
}
