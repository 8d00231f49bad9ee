import { describe, expect, it } from "vitest";

import { createLogger } from "../../sdk/logger.ts";

describe("createLogger", () => {
  it("writes bigints as decimal strings, also inside lists and objects (a failed batch names its lease ids)", () => {
    const lines: string[] = [];
    const log = createLogger("node", { write: (line) => lines.push(line) });
    log.warn("on-chain heartbeat failed", { leases: [1n, 2n], lease: { id: 3n }, leaseId: 4n, error: new Error("no") });
    expect(JSON.parse(lines[0]!)).toMatchObject({
      msg: "on-chain heartbeat failed",
      leases: ["1", "2"],
      lease: { id: "3" },
      leaseId: "4",
      error: { name: "Error", message: "no" },
    });
  });
});
