import { describe, expect, it } from "vitest";

import { chainHeartbeatsFor } from "../../deploy/devnet.ts";
import { checkDeployParameters } from "../../deploy/deploy.ts";
import { heartbeatTimingProblem, minHeartbeatTimeout } from "../../sdk/chain/block-time.ts";
import { UserError } from "../../sdk/errors.ts";

describe("heartbeat timeouts a chain's block time allows", () => {
  it("are two gaps of a period plus a block: the lease manager's two periods when blocks are instant", () => {
    expect(minHeartbeatTimeout(2, 0)).toBe(4);
    expect(minHeartbeatTimeout(2, 2)).toBe(8);
    expect(minHeartbeatTimeout(2, 12)).toBe(28);
    expect(minHeartbeatTimeout(30, 12)).toBe(84);
  });

  it("names the block time when a timeout is too short, and says nothing when it is long enough", () => {
    expect(heartbeatTimingProblem({ periodS: 2, timeoutS: 10, blockTimeS: 12 })).toBe(
      "a heartbeat timeout of 10 s cannot be kept on a chain with 12 s blocks: with a 2 s period a heartbeat can land 14 s after the last, and the timeout must cover two such gaps (at least 28 s), or honest providers turn slashable",
    );
    expect(heartbeatTimingProblem({ periodS: 2, timeoutS: 10, blockTimeS: 2 })).toBeUndefined();
    expect(heartbeatTimingProblem({ periodS: 30, timeoutS: 120, blockTimeS: 12 })).toBeUndefined();
    expect(heartbeatTimingProblem({ periodS: 1, timeoutS: 2, blockTimeS: 0.25 })).toMatch(/0.25 s blocks/);
  });
});

describe("a deployment on a chain with slow blocks", () => {
  it("refuses a shortest heartbeat timeout that quotes could set and honest providers could not keep", () => {
    const deploy = () => checkDeployParameters({ minHeartbeatTimeout: 4 }, 2);
    expect(deploy).toThrow(UserError);
    expect(deploy).toThrow(
      "minHeartbeatTimeout (4 s) is too short for a chain with 2 s blocks: quotes could set timeouts that honest providers cannot keep; it must be at least 6 s (two gaps of a 1 s heartbeat period plus a block)",
    );
    expect(checkDeployParameters({ minHeartbeatTimeout: 6 }, 2).minHeartbeatTimeout).toBe(6);
    expect(checkDeployParameters({}, 0).minHeartbeatTimeout).toBe(4);
  });
});

describe("the devnet's heartbeat settings", () => {
  it("stay 2 s / 10 s on instant and 2 s blocks, and grow to what 12 s blocks need", () => {
    const devnet = { periodS: 2, timeoutS: 10 };
    expect(chainHeartbeatsFor(0, devnet)).toEqual({ chainHeartbeatPeriodS: 2, chainHeartbeatTimeoutS: 10 });
    expect(chainHeartbeatsFor(2, devnet)).toEqual({ chainHeartbeatPeriodS: 2, chainHeartbeatTimeoutS: 10 });
    expect(chainHeartbeatsFor(12, devnet)).toEqual({ chainHeartbeatPeriodS: 12, chainHeartbeatTimeoutS: 48 });
    expect(heartbeatTimingProblem({ periodS: 12, timeoutS: 48, blockTimeS: 12 })).toBeUndefined();
  });
});
