import os from "node:os";
import path from "node:path";

import { bundleCli } from "../scripts/bundle-cli.ts";

/**
 * Builds the bundled `baton` for this run's processes (see scripts/bundle-cli.ts): the workers and
 * every process they start inherit these variables. V8's compile cache is on for all of them: the
 * bundle is one module, loaded before `cli/baton.ts` could turn the cache on itself.
 */
export default async function setup(): Promise<void> {
  process.env.BATON_CLI_BUNDLE = await bundleCli();
  process.env.NODE_COMPILE_CACHE ??= path.join(os.tmpdir(), "node-compile-cache");
}
