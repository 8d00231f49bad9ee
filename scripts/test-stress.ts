/**
 * `npm run test:stress`: the TypeScript suite with CPU hogs beside it, as on a shared CI machine. A
 * test that passes only on an idle machine waits on time instead of on events; this finds it.
 *
 * Usage: npm run test:stress [-- --hogs N] [-- <vitest arguments, e.g. a file>]
 *
 * Each hog is a busy loop in its own process that checks every few hundred milliseconds that this
 * script still lives and exits when it does not, so none outlives the run, even after SIGKILL.
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "..");

// `--hogs N` is ours; every other argument goes to vitest as given (files, `-t <name>`, …).
const args = process.argv.slice(2);
let hogsArg = "1";
const hogsAt = args.findIndex((arg) => arg === "--hogs" || arg.startsWith("--hogs="));
if (hogsAt >= 0) {
  const inline = args[hogsAt]!.startsWith("--hogs=");
  hogsArg = inline ? args[hogsAt]!.slice("--hogs=".length) : (args[hogsAt + 1] ?? "");
  args.splice(hogsAt, inline ? 1 : 2);
}
const hogs = Number(hogsArg);
if (!/^\d+$/.test(hogsArg) || hogs > 16) {
  console.error(`--hogs takes a whole number from 0 to 16, not "${hogsArg}"`);
  process.exit(2);
}

const HOG = `
const parent = ${process.pid};
for (let i = 0; ; i++) {
  if (i % 50_000_000 === 0) {
    try { process.kill(parent, 0); } catch { process.exit(0); }
  }
}`;

const burners: ChildProcess[] = Array.from({ length: hogs }, () =>
  spawn(process.execPath, ["-e", HOG], { stdio: "ignore" }),
);
const stopBurners = (): void => {
  for (const burner of burners) burner.kill("SIGKILL");
};
process.on("exit", stopBurners);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    stopBurners();
    process.exit(130);
  });
}

console.log(`test:stress: ${hogs} CPU hog(s) beside vitest (pids ${burners.map((b) => b.pid).join(", ")})`);
const vitest = spawn(process.execPath, [path.join(root, "node_modules/vitest/vitest.mjs"), "run", ...args], {
  cwd: root,
  stdio: "inherit",
});
const code = await new Promise<number>((resolve) =>
  vitest.once("exit", (exitCode, signal) => resolve(exitCode ?? (signal ? 1 : 0))),
);
stopBurners();
process.exit(code);
