/**
 * `npm run lint`: the type check, eslint, solhint (zero warnings) and prettier, side by side. Each is
 * single-threaded and the first two each type-check the whole project (~20 s and ~30 s here), so
 * running them at once takes about as long as the slowest. Each one's output is printed whole when
 * it ends; the exit code is 1 if any failed.
 */
import { spawn } from "node:child_process";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "..");
const bin = (name: string): string => path.join(root, "node_modules", ".bin", name);

const checks = [
  { name: "tsc", command: bin("tsc"), args: ["--noEmit"] },
  { name: "eslint", command: bin("eslint"), args: ["."] },
  { name: "solhint", command: bin("solhint"), args: ["--max-warnings", "0", "contracts/**/*.sol"] },
  { name: "prettier", command: bin("prettier"), args: ["--check", "."] },
];

const results = await Promise.all(
  checks.map(
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
console.log(failed.length ? `lint failed: ${failed.join(", ")}` : "lint passed");
process.exit(failed.length ? 1 : 0);
