/**
 * Bundles `cli/baton.ts` and all it imports into one ES module with esbuild, for the `baton`
 * processes the tests start (`test/global-setup.ts` builds it at the start of every run, so it is
 * never stale, and `spawnScript` runs it in place of `cli/baton.ts` when `BATON_CLI_BUNDLE` names
 * it). A provider then starts on about 0.3 CPU-s instead of 1.3: Node no longer resolves and loads
 * some 2,500 files one by one, nor strips the types of Baton's own. On two cores, provider and CLI
 * starts were the largest share of the TypeScript suite's CPU.
 *
 * Usage: node scripts/bundle-cli.ts [outfile]   (default .baton/bundle/baton.mjs)
 */
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { build, type Plugin } from "esbuild";

const root = path.resolve(import.meta.dirname, "..");

/** Where the tests' bundle goes (under `.baton/`, which git ignores). */
export const defaultBundlePath = path.join(root, ".baton/bundle/baton.mjs");

// A module loaded from beside a package's index, which its exports map hides (see sdk/ipfs/node.ts).
const BESIDE_PACKAGE = /new URL\(\s*"([^"]+)",\s*import\.meta\.resolve\("([^"]+)"\)\s*\)\.href/g;

/**
 * Gives each of Baton's modules its own `import.meta` in the bundle: its dir and URL as in the
 * checkout (paths to scripts and to the package's own files depend on them), and the modules it
 * loads from beside a package's index as literal paths, which esbuild then bundles as the same
 * module instances the package itself imports (bitswap-resend.ts patches one of them).
 */
const keepSourceLocations: Plugin = {
  name: "keep-source-locations",
  setup(builder) {
    builder.onLoad({ filter: /\.ts$/ }, async ({ path: file }) => {
      if (file.includes(`${path.sep}node_modules${path.sep}`)) return undefined;
      let text = await readFile(file, "utf8");
      for (const [call, relative, pkg] of text.matchAll(BESIDE_PACKAGE)) {
        const index = await builder.resolve(pkg!, { kind: "import-statement", resolveDir: path.dirname(file) });
        if (index.errors.length > 0) throw new Error(`${path.relative(root, file)}: cannot resolve ${pkg}`);
        text = text.replace(call, JSON.stringify(path.join(path.dirname(index.path), relative!)));
      }
      text = text
        .replaceAll("import.meta.dirname", JSON.stringify(path.dirname(file)))
        .replaceAll("import.meta.url", JSON.stringify(pathToFileURL(file).href));
      // Any other use would silently mean the bundle's location: make it fail here instead.
      const other = /import\.meta\.\w+/.exec(text);
      if (other) throw new Error(`${path.relative(root, file)}: ${other[0]} cannot be bundled; handle it here`);
      return { contents: text, loader: "ts" };
    });
  },
};

/** Builds the bundle into `outfile` (atomically: runs already using the old one are unaffected). */
export async function bundleCli(outfile = defaultBundlePath): Promise<string> {
  const result = await build({
    entryPoints: [path.join(root, "cli/baton.ts")],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node22",
    write: false,
    logLevel: "error",
    plugins: [keepSourceLocations],
    // Postgres's client, for `--database-url` alone, loads from node_modules when used: bundled, it
    // would also look for its optional native binding (pg-native), which is not installed.
    external: ["pg"],
    // CommonJS dependencies bundled into an ES module still call `require` for Node's built-ins.
    banner: {
      js: 'import { createRequire as __batonRequire } from "node:module"; const require = __batonRequire(import.meta.url);',
    },
  });
  await mkdir(path.dirname(outfile), { recursive: true });
  const temporary = `${outfile}.${process.pid}.tmp`;
  await writeFile(temporary, result.outputFiles[0]!.contents);
  await rename(temporary, outfile);
  return outfile;
}

if (import.meta.filename === process.argv[1]) {
  const started = performance.now();
  const outfile = await bundleCli(process.argv[2] ? path.resolve(process.argv[2]) : undefined);
  console.log(`${path.relative(process.cwd(), outfile)} (${((performance.now() - started) / 1000).toFixed(1)} s)`);
}
