import { configDefaults, defineConfig } from "vitest/config";

import base from "./vitest.config.ts";

/** `npm run test:deploy`: only the container image's test (see test/deploy/containerfile.test.ts). */
export default defineConfig({
  ...base,
  test: { ...base.test, include: ["test/deploy/containerfile.test.ts"], exclude: configDefaults.exclude },
});
