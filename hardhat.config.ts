import { createRequire } from "node:module";
import { defineConfig } from "hardhat/config";
import hardhatViem from "@nomicfoundation/hardhat-viem";

const require = createRequire(import.meta.url);

/**
 * The compiler comes from the `solc` npm package, never from a download: the
 * machines this project builds on reach only the npm registry. The configured
 * version must equal the package's, or Hardhat would label artifacts wrongly.
 */
const SOLC_VERSION = "0.8.37";
const solcPackageVersion = (require("solc/package.json") as { version: string }).version;
if (solcPackageVersion !== SOLC_VERSION) {
  throw new Error(
    `hardhat.config.ts expects solc ${SOLC_VERSION} but the installed solc package is ${solcPackageVersion}`,
  );
}

/** Fuzz and invariant depth: CI default, and 10x for `npm run test:deep`. */
const DEFAULT_FUZZ_RUNS = 1000;
const DEFAULT_INVARIANT_RUNS = 256;
const DEFAULT_INVARIANT_DEPTH = 50;

export default defineConfig({
  plugins: [hardhatViem],
  solidity: {
    version: SOLC_VERSION,
    path: require.resolve("solc/soljson.js"),
    settings: {
      optimizer: { enabled: true, runs: 10_000 },
      evmVersion: "cancun",
      viaIR: true,
    },
  },
  paths: {
    tests: { solidity: "test/contracts" },
  },
  test: {
    solidity: {
      profiles: {
        default: {
          fuzz: { runs: DEFAULT_FUZZ_RUNS },
          invariant: { runs: DEFAULT_INVARIANT_RUNS, depth: DEFAULT_INVARIANT_DEPTH, failOnRevert: false },
        },
        deep: {
          fuzz: { runs: DEFAULT_FUZZ_RUNS * 10 },
          // 10x the calls of the default: more sequences, each as deep.
          invariant: { runs: DEFAULT_INVARIANT_RUNS * 10, depth: DEFAULT_INVARIANT_DEPTH, failOnRevert: false },
        },
      },
    },
  },
  networks: {
    localhost: {
      type: "http",
      chainType: "l1",
      url: "http://127.0.0.1:8545",
    },
  },
});
