import { configDefaults, defineConfig } from "vitest/config";

/**
 * The long suites: each file takes more than ~10 s (most of them minutes) on CI's two cores, because
 * it starts chains, provider nodes and whole markets and waits on heartbeats, timeouts, blocks and
 * jobs. `npm test` runs the quick project (everything else, about a minute) so that a change is
 * checked in the time a developer waits; `npm run test:long` runs these, and CI runs both. A new
 * file that takes more than ~10 s belongs here.
 */
const LONG_SUITES = [
  "test/bench/checkpoint-bench.test.ts",
  "test/chain/confirmations.test.ts",
  "test/chain/logs.test.ts",
  "test/chain/send.test.ts",
  "test/cli/baton-cli.test.ts",
  "test/cli/devnet-netns.test.ts",
  "test/cli/explorer.test.ts",
  "test/cli/image-cli.test.ts",
  "test/deploy/demo-and-deploy-cli.test.ts",
  "test/examples/images.test.ts",
  "test/examples/train.test.ts",
  "test/ipfs/block-stream.test.ts",
  "test/node/bad-input.test.ts",
  "test/node/batch-lease.test.ts",
  "test/node/hold-lease.test.ts",
  "test/sdk/run-job-holders.test.ts",
  "test/node/checkpoints.test.ts",
  "test/node/containers.test.ts",
  "test/node/job-disk-quota.test.ts",
  "test/node/provider-cli.test.ts",
  "test/node/provider-node.test.ts",
  "test/node/rpc-failover.test.ts",
  "test/sdk/audit.test.ts",
  "test/sdk/link-faults.test.ts",
  "test/sdk/lossy-links.test.ts",
  "test/sdk/netns-market.test.ts",
  "test/sdk/relay.test.ts",
  "test/sdk/run-batch-chaos.test.ts",
  "test/sdk/run-batch.test.ts",
  "test/sdk/run-image-job.test.ts",
  "test/sdk/run-job-blocks.test.ts",
  "test/sdk/run-job-cli.test.ts",
  "test/sdk/run-job-drain.test.ts",
  "test/sdk/run-job-market.test.ts",
  "test/sdk/run-job-reorg.test.ts",
  "test/sdk/run-job.test.ts",
  "test/sdk/serve-limits.test.ts",
  "test/sdk/serve.test.ts",
  "test/sim/simulate.test.ts",
];

/**
 * Long suites that run after the others, with nothing else of ours beside them: the simulation's
 * check against a real run compares wall-clock times, and with three other files beside it on CI's
 * two cores one job's first lease ran 60% slower than another job (a start took 2.8 s in one job and
 * 7.1 s in the next), past what any prediction from the run's averages can match.
 */
const LONG_ALONE = ["test/sim/validation.test.ts"];

/**
 * The npm package's test packs and installs Baton, and the container image's builds it (minutes
 * each): `npm run test:package` and `npm run test:deploy`, which CI runs.
 */
const OWN_CONFIG = [...configDefaults.exclude, "test/package/**", "test/deploy/containerfile.test.ts"];

export default defineConfig({
  test: {
    // Tests start real chains, nodes and IPFS stores: give them time, and never retry a failure.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    retry: 0,
    globalSetup: ["test/global-setup.ts"],
    // Four files at once on CI's two cores: most tests wait on heartbeats, timeouts and job steps
    // (one file at a time keeps the cores ~40% busy), and every test must pass on a loaded machine.
    maxWorkers: 4,
    reporters: ["default"],
    projects: [
      {
        extends: true,
        test: {
          name: "quick",
          include: ["test/**/*.test.ts"],
          exclude: [...OWN_CONFIG, ...LONG_SUITES, ...LONG_ALONE],
        },
      },
      { extends: true, test: { name: "long", include: LONG_SUITES } },
      { extends: true, test: { name: "long-alone", include: LONG_ALONE, sequence: { groupOrder: 1 } } },
    ],
  },
});
