import { describe, expect, it } from "vitest";

import { nodeConfigSchema, nodeLogLevel } from "../../node/config.ts";
import { UserError } from "../../sdk/errors.ts";

const minimal = {
  rpcUrl: "http://127.0.0.1:8545",
  deployment: "deployments/31337.json",
  price: { basePerSecond: "1", perGpuPerSecond: "1" },
  collateralPerLease: "1",
};

describe("the node's log level", () => {
  it("is info unless the config says otherwise", () => {
    expect(nodeLogLevel(nodeConfigSchema.parse(minimal), {})).toBe("info");
    expect(nodeLogLevel(nodeConfigSchema.parse({ ...minimal, logLevel: "warn" }), {})).toBe("warn");
  });

  it("comes from BATON_LOG_LEVEL when it is set, over the config", () => {
    const config = nodeConfigSchema.parse({ ...minimal, logLevel: "warn" });
    expect(nodeLogLevel(config, { BATON_LOG_LEVEL: "debug" })).toBe("debug");
    expect(nodeLogLevel(config, { BATON_LOG_LEVEL: "" })).toBe("warn");
  });

  it("refuses a BATON_LOG_LEVEL that names no level, saying which ones exist", () => {
    const config = nodeConfigSchema.parse(minimal);
    const read = () => nodeLogLevel(config, { BATON_LOG_LEVEL: "verbose" });
    expect(read).toThrow(UserError);
    expect(read).toThrow('BATON_LOG_LEVEL must be one of debug, info, warn, error, not "verbose"');
  });

  it("refuses a logLevel in the config that names no level", () => {
    const parsed = nodeConfigSchema.safeParse({ ...minimal, logLevel: "loud" });
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues[0]?.path).toEqual(["logLevel"]);
  });
});

describe("the drain's settings", () => {
  it("default to a minute of grace, 30 s for a tenant's close after a hand-back, 10 s to serve outputs", () => {
    const config = nodeConfigSchema.parse(minimal);
    expect(config.drainTimeoutMs).toBe(60_000);
    expect(config.handBackTimeoutMs).toBe(30_000);
    expect(config.drainOutputLingerMs).toBe(10_000);
  });
});

describe("job disk quotas", () => {
  it("give a job at most 100 GiB, held as the machine allows, unless the config says otherwise", () => {
    const config = nodeConfigSchema.parse(minimal);
    expect(config.maxJobDiskGiB).toBe(100);
    expect(config.diskQuota).toBe("auto");
    expect(nodeConfigSchema.parse({ ...minimal, maxJobDiskGiB: 0.5, diskQuota: "watch" })).toMatchObject({
      maxJobDiskGiB: 0.5,
      diskQuota: "watch",
    });
  });

  it("refuse a cap that is not positive and a way of holding them that does not exist", () => {
    for (const bad of [{ maxJobDiskGiB: 0 }, { diskQuota: "xfs" }]) {
      const parsed = nodeConfigSchema.safeParse({ ...minimal, ...bad });
      expect(parsed.success).toBe(false);
      expect(parsed.error?.issues[0]?.path).toEqual(Object.keys(bad));
    }
  });
});

describe("heartbeat settings against the chain's block time", () => {
  it("refuses a timeout that blockTimeS makes unmeetable, naming the block time", () => {
    const parsed = nodeConfigSchema.safeParse({
      ...minimal,
      blockTimeS: 12,
      chainHeartbeatPeriodS: 2,
      chainHeartbeatTimeoutS: 10,
    });
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues.map((i) => i.message)).toEqual([
      "chainHeartbeatTimeoutS: a heartbeat timeout of 10 s cannot be kept on a chain with 12 s blocks: with a 2 s period a heartbeat can land 14 s after the last, and the timeout must cover two such gaps (at least 28 s), or honest providers turn slashable",
    ]);
  });

  it("takes the same settings on 2 s blocks, and the defaults (30 s, 120 s) on 12 s blocks", () => {
    const fast = { ...minimal, chainHeartbeatPeriodS: 2, chainHeartbeatTimeoutS: 10 };
    expect(nodeConfigSchema.safeParse({ ...fast, blockTimeS: 2 }).success).toBe(true);
    expect(nodeConfigSchema.safeParse({ ...minimal, blockTimeS: 12 }).success).toBe(true);
    // Without blockTimeS the node estimates the block time when it starts, and checks then.
    expect(nodeConfigSchema.safeParse({ ...fast, chainHeartbeatTimeoutS: 4 }).success).toBe(true);
  });
});

describe("claims and gas", () => {
  it("claim any amount owed, and warn below 0.01 ETH of gas, unless configured", () => {
    const config = nodeConfigSchema.parse(minimal);
    expect(config.claimMinAmount).toBe(0n);
    expect(config.lowGasBalance).toBe(10n ** 16n);
    const set = nodeConfigSchema.parse({ ...minimal, claimMinAmount: "5000", lowGasBalance: 7 });
    expect([set.claimMinAmount, set.lowGasBalance]).toEqual([5000n, 7n]);
  });
});
