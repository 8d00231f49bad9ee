import { configDefaults, defineConfig } from "vitest/config";

import base from "./vitest.config.ts";

/** `npm run test:package`: only the npm package's test (see test/package/package.test.ts). */
export default defineConfig({
  ...base,
  test: { ...base.test, include: ["test/package/**/*.test.ts"], exclude: configDefaults.exclude },
});
