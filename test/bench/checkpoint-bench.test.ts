import { readFile } from "node:fs/promises";
import { afterAll, describe, expect, it } from "vitest";

import type { Figure } from "../../bench/report.ts";
import { spawnScript, stopAll } from "../helpers/processes.ts";
import { tempDir } from "../ipfs/helpers.ts";

// `bench/checkpoint.ts --quick` end to end: a 16 MiB checkpoint (from its provider, and from holders
// behind capped links) and a short example job, real processes and IPFS stores. It checks that every
// figure came out, not how fast anything was.
const BENCH_GIVEN_UP_MS = 280_000;

describe("bench:checkpoint --quick", () => {
  afterAll(stopAll);

  it("writes every figure as a finite number, positive but for the two wall-time differences", async () => {
    const out = await tempDir("bench-checkpoint-test");
    try {
      const bench = spawnScript("bench/checkpoint.ts", ["--quick", "--out", out.dir]);
      // Given up a little before the test's own timeout, so that a bench that hangs says where.
      let timer: NodeJS.Timeout | undefined;
      const exited = await Promise.race([
        bench.exited,
        new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), BENCH_GIVEN_UP_MS))),
      ]).finally(() => clearTimeout(timer));
      if (!exited) {
        await bench.stop();
        throw new Error(
          `bench:checkpoint --quick still running after ${BENCH_GIVEN_UP_MS / 1000} s; its last lines:\n${bench.lines.slice(-60).join("\n")}`,
        );
      }
      expect(exited.code, bench.lines.slice(-40).join("\n")).toBe(0);

      const result = JSON.parse(await readFile(`${out.dir}/checkpoint.json`, "utf8")) as {
        sizesMiB: number[];
        figures: Figure[];
        machine: { loadAverage: { start: number[]; end: number[] } };
      };
      expect(result.sizesMiB).toEqual([16]);
      // How loaded the machine was, beside the figures it lowered.
      expect(result.machine.loadAverage.start).toHaveLength(3);
      expect(result.machine.loadAverage.end).toHaveLength(3);
      const names = result.figures.map((f) => f.name);
      for (const expected of [
        "16 MiB: raw SHA-256",
        "16 MiB: raw AES-256-GCM",
        "16 MiB: raw disk write + fsync",
        "16 MiB: publish",
        "16 MiB: raw loopback TCP",
        "16 MiB: fetch provider → tenant (restore)",
        "16 MiB: fetch provider → tenant (verify + pin)",
        "16 MiB: fetch by bitswap alone",
        "16 MiB: restore, blocks already local",
        "16 MiB: fetch CPU time, provider",
        "16 MiB: fetch CPU time, tenant",
        "16 MiB from 1 holder",
        "16 MiB from 2 holders at once",
        "16 MiB from 4 holders at once",
        "16 MiB from 4 holders, one of them at",
        "example job wall, no checkpoints",
        "example job wall, checkpoints, no watcher",
        "example job wall, checkpoints + watcher",
        "example job: Baton capture overhead",
        "example job: total checkpoint overhead",
        "example job: publish time / wall time",
      ]) {
        expect(
          names.some((name) => name.startsWith(expected)),
          `${expected} in ${names.join(", ")}`,
        ).toBe(true);
      }
      for (const figure of result.figures) {
        expect(Number.isFinite(figure.value), figure.name).toBe(true);
        // An overhead is the difference of two wall times of a job that takes under a second here:
        // run-to-run noise can make it zero or negative. Everything else is a rate, a time or a share.
        if (figure.name.endsWith("overhead")) expect(figure.value, figure.name).toBeGreaterThan(-100);
        else expect(figure.value, figure.name).toBeGreaterThan(0);
        if (figure.reference) expect(figure.reference.value, figure.name).toBeGreaterThan(0);
      }
    } finally {
      await out.remove();
    }
    // 45 s on an idle machine of 2 cores: 4 holder processes start and the holders' part alone moves
    // the checkpoint 12 times through links of 8 MB/s.
  }, 300_000);
});
