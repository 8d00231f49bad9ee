import { configDefaults, defineConfig } from "vitest/config";

import base from "./vitest.config.ts";

/** `npm run test:deploy`: only the container image's test (see test/deploy/containerfile.test.ts). */
export default defineConfig({
  ...base,
  // Its own file only: not the main config's projects (quick and long), which list the rest.
  test: {
    ...base.test,
    projects: undefined,
    include: ["test/deploy/containerfile.test.ts"],
    exclude: configDefaults.exclude,
  },
});
