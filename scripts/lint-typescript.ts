/**
 * The type check and eslint on one TypeScript program. `tsc --noEmit` and eslint's type-aware rules
 * each build and type-check the whole project (~30 s each on two cores); here the compiler's
 * diagnostics fill the checker's caches, and eslint's rules then read types from that same
 * program (`parserOptions.programs`). `eslint .` on its own, as editors run it, still builds its
 * program from eslint.config.js. Run by `npm run lint`; exit code 1 on any error or warning.
 */
import path from "node:path";

import { ESLint } from "eslint";
import ts from "typescript";

const root = path.resolve(import.meta.dirname, "..");
const seconds = (since: number): string => `${((performance.now() - since) / 1000).toFixed(1)} s`;
const count = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? "" : "s"}`;

let started = performance.now();
const host: ts.FormatDiagnosticsHost = {
  getCanonicalFileName: (file) => file,
  getCurrentDirectory: () => root,
  getNewLine: () => "\n",
};
const config = ts.getParsedCommandLineOfConfigFile(path.join(root, "tsconfig.json"), undefined, {
  ...ts.sys,
  onUnRecoverableConfigFileDiagnostic: (diagnostic) => {
    throw new Error(ts.formatDiagnostic(diagnostic, host));
  },
});
if (!config) throw new Error("tsconfig.json could not be read");
const program = ts.createProgram({ rootNames: config.fileNames, options: config.options });
const diagnostics = [...config.errors, ...ts.getPreEmitDiagnostics(program)];
const format = process.stdout.isTTY ? ts.formatDiagnosticsWithColorAndContext : ts.formatDiagnostics;
if (diagnostics.length) console.log(format(diagnostics, host));
console.log(`tsc: ${count(diagnostics.length, "error")} (${seconds(started)})`);

started = performance.now();
const eslint = new ESLint({
  cwd: root,
  overrideConfig: { files: ["**/*.ts"], languageOptions: { parserOptions: { programs: [program] } } },
});
const results = await eslint.lintFiles(["."]);
const problems = results.reduce((sum, r) => sum + r.errorCount + r.warningCount, 0);
const report = await (await eslint.loadFormatter("stylish")).format(results);
if (report) console.log(report.trimEnd());
console.log(`eslint: ${count(problems, "problem")} in ${count(results.length, "file")} (${seconds(started)})`);

process.exit(diagnostics.length || problems ? 1 : 0);
