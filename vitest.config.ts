import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Tests start real chains, nodes and IPFS stores: give them time, and never retry a failure.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    retry: 0,
    // Two cores on CI: more parallel files only make each multi-process test slower.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
