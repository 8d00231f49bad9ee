import { statfsSync } from "node:fs";
import os from "node:os";

import { describe, expect, it } from "vitest";

import type { NodeConfig } from "../../node/config.ts";
import { diskTooFull, freeDiskBytes } from "../../node/disk.ts";

describe("a nearly full disk", () => {
  const dirs = { jobsDir: os.tmpdir(), dataDir: process.cwd() };
  const withMinimum = (minFreeDiskGiB: number) => ({ ...dirs, config: { minFreeDiskGiB } as NodeConfig });

  it("free space is the least of the jobs dir's and the data dir's file systems, as statfs reports", () => {
    const free = (dir: string) => statfsSync(dir).bavail * statfsSync(dir).bsize;
    const got = freeDiskBytes(dirs);
    // Others write to the same disk meanwhile: equal within 1 %.
    expect(Math.abs(got - Math.min(free(dirs.jobsDir), free(dirs.dataDir)))).toBeLessThan(got / 100);
  });

  it("stops new leases below minFreeDiskGiB, saying how much is free and how much it wants", () => {
    expect(diskTooFull(withMinimum(0))).toBeUndefined();
    expect(diskTooFull(withMinimum(1_000_000))).toMatch(
      /^the provider's disk is nearly full \([\d.]+ GiB free, it takes new leases with 1000000\.0 GiB\)$/,
    );
  });

  it("stops a lease whose disk quota the free disk cannot hold beside minFreeDiskGiB, naming both", () => {
    const free = freeDiskBytes(dirs);
    expect(diskTooFull(withMinimum(0), 2 ** 20)).toBeUndefined();
    expect(diskTooFull(withMinimum(1), free * 2)).toMatch(
      /^the provider's disk has [\d.]+ GiB free, too little for the job's \d+ [MG]iB disk quota and the 1\.0 GiB it keeps free$/,
    );
  });
});
