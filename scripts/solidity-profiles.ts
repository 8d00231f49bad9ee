/**
 * The compiler version and the `production` build profile's solc settings, in one place:
 * `hardhat.config.ts` builds with them and `scripts/gen-abis.ts` refuses artifacts that were built
 * with anything else. Plain data, so that reading it needs no Hardhat.
 */

/** The compiler: the `solc` npm package's soljson.js, never a download (see hardhat.config.ts). */
export const SOLC_VERSION = "0.8.37";

/**
 * `production`: what gets deployed and what `sdk/generated/abis.ts` carries. The IR pipeline with
 * the full optimizer tuned for many calls (10,000 runs): the cheapest calls, for a build that
 * takes minutes once tests are included.
 */
export const PRODUCTION_SOLC_SETTINGS = {
  optimizer: { enabled: true, runs: 10_000 },
  evmVersion: "cancun",
  viaIR: true,
} as const;

/** The command that builds the artifacts `scripts/gen-abis.ts` accepts. */
export const PRODUCTION_BUILD_COMMAND = "npx hardhat --build-profile production build --no-tests";
