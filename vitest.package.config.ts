import { configDefaults, defineConfig } from "vitest/config";

import base from "./vitest.config.ts";

/** `npm run test:package`: only the npm package's test (see test/package/package.test.ts). */
export default defineConfig({
  ...base,
  // Its own file only: not the main config's projects (quick and long), which list the rest.
  test: { ...base.test, projects: undefined, include: ["test/package/**/*.test.ts"], exclude: configDefaults.exclude },
});
