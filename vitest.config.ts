import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The npm package's test packs and installs Baton, and the container image's builds it (minutes
    // each): `npm run test:package` and `npm run test:deploy`, which CI runs.
    exclude: [...configDefaults.exclude, "test/package/**", "test/deploy/containerfile.test.ts"],
    // Tests start real chains, nodes and IPFS stores: give them time, and never retry a failure.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    retry: 0,
    globalSetup: ["test/global-setup.ts"],
    // Four files at once on CI's two cores: most tests wait on heartbeats, timeouts and job steps
    // (one file at a time keeps the cores ~40% busy), and every test must pass on a loaded machine.
    maxWorkers: 4,
    reporters: ["default"],
  },
});
