import { createRequire } from "node:module";
import { defineConfig } from "hardhat/config";
import hardhatViem from "@nomicfoundation/hardhat-viem";
import { PRODUCTION_SOLC_SETTINGS, SOLC_VERSION } from "./scripts/solidity-profiles.ts";

const require = createRequire(import.meta.url);

/**
 * The compiler comes from the `solc` npm package, never from a download: the
 * machines this project builds on reach only the npm registry. The configured
 * version must equal the package's, or Hardhat would label artifacts wrongly.
 */
const solcPackageVersion = (require("solc/package.json") as { version: string }).version;
if (solcPackageVersion !== SOLC_VERSION) {
  throw new Error(
    `hardhat.config.ts expects solc ${SOLC_VERSION} but the installed solc package is ${solcPackageVersion}`,
  );
}

const SOLC_PATH = require.resolve("solc/soljson.js");

/**
 * `default` (development, every task without `--build-profile`): the legacy code generator without
 * the optimizer. Contracts and Solidity tests build cold in about 20 s here, against about 400 s
 * with the production settings: via IR, every test contract that deploys the LeaseManager re-runs
 * the IR pipeline over it, and a shorter Yul optimizer sequence barely helps (most of the time is
 * outside the optimizer); the legacy optimizer would add 35 s and nothing the tests need. Tests do
 * not measure gas or code size. Legacy code has 16 stack slots, so a few functions are split.
 */
const DEVELOPMENT_SOLC_SETTINGS = {
  optimizer: { enabled: false },
  evmVersion: PRODUCTION_SOLC_SETTINGS.evmVersion,
  viaIR: false,
};

/**
 * Fuzz and invariant depth. `default` (every `npm test`) runs what issue 11 requires of it: 1,000
 * fuzz runs and 256 invariant sequences of 50 calls. `full`, the profile CI runs against the
 * production build (`npm run test:sol:production`), plays four times the sequences: each suite's
 * invariants share one campaign (test/contracts/invariant/README.md), and CI buys back some of
 * the variety that eleven separate campaigns had. `deep` (`npm run test:deep`) is 10x `default`.
 */
const FUZZ_RUNS = 1000;
const INVARIANT_RUNS = 256;
const INVARIANT_DEPTH = 50;
const invariant = (runs: number) => ({ runs, depth: INVARIANT_DEPTH, failOnRevert: false });
/**
 * Gas for one test call (setUp included): the invariant suite's setUp deploys two lease manager
 * pairs and its handler, some 90 KB of unoptimised code at 200 gas a byte, past the default limit.
 */
const TEST_GAS_LIMIT = 100_000_000n;
const testProfile = (runs: number, invariantRuns: number) => ({
  gasLimit: TEST_GAS_LIMIT,
  fuzz: { runs },
  invariant: invariant(invariantRuns),
});

export default defineConfig({
  plugins: [hardhatViem],
  solidity: {
    profiles: {
      default: {
        version: SOLC_VERSION,
        path: SOLC_PATH,
        settings: DEVELOPMENT_SOLC_SETTINGS,
      },
      // `production`: the deployed bytecode (scripts/gen-abis.ts accepts no other). Built as one
      // compilation job (Hardhat's production default is one job per file): the bytecode is the
      // same either way, and per-file jobs would re-optimise the LeaseManager for each test file.
      production: {
        version: SOLC_VERSION,
        path: SOLC_PATH,
        settings: PRODUCTION_SOLC_SETTINGS,
        isolated: false,
      },
    },
  },
  paths: {
    tests: { solidity: "test/contracts" },
  },
  test: {
    solidity: {
      profiles: {
        default: testProfile(FUZZ_RUNS, INVARIANT_RUNS),
        full: testProfile(FUZZ_RUNS, INVARIANT_RUNS * 4),
        // More sequences, each as deep.
        deep: testProfile(FUZZ_RUNS * 10, INVARIANT_RUNS * 10),
      },
    },
  },
  networks: {
    // The chain that `hardhat node` (deploy/chain-server.ts, so every devnet and test chain) runs.
    // EDR mines a block per transaction and by default gives each a timestamp at least one second
    // after the last: a burst of 100 transactions would push chain time ~95 s ahead of the clock,
    // and every lease deadline with it, so honest providers would turn slashable seconds after a
    // lease opened. Blocks that may share a second keep chain time at the clock, as on a real chain.
    node: {
      type: "edr-simulated",
      chainType: "l1",
      allowBlocksWithSameTimestamp: true,
    },
    localhost: {
      type: "http",
      chainType: "l1",
      url: "http://127.0.0.1:8545",
    },
  },
});
