/**
 * `npm run lint`: the type check and eslint (one process, one TypeScript program:
 * scripts/lint-typescript.ts), solhint (zero warnings) and prettier, side by side. The first takes
 * the longest (~30 s here); the others run beside it. The exit code is 1 if any failed.
 */
import path from "node:path";

import { sideBySide } from "./side-by-side.ts";

const bin = (name: string): string => path.resolve(import.meta.dirname, "..", "node_modules", ".bin", name);

const ok = await sideBySide(
  "lint",
  [
    { name: "tsc + eslint", command: process.execPath, args: [path.join(import.meta.dirname, "lint-typescript.ts")] },
    { name: "solhint", command: bin("solhint"), args: ["--max-warnings", "0", "contracts/**/*.sol"] },
    { name: "prettier", command: bin("prettier"), args: ["--check", "."] },
  ].map((step) => [step]),
);
process.exit(ok ? 0 : 1);
