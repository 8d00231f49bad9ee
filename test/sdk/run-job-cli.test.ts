import { readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";

import { parseEther } from "viem";
import { describe, expect, it } from "vitest";

import { devAccount } from "../../deploy/local-chain.ts";
import { fallbackJobsDir } from "../../node/jobs-dir.ts";
import { privateKeyOf } from "../helpers/market.ts";
import { spawnScript } from "../helpers/processes.ts";
import { SCRIPT, tenantCliArgs, trainSpec, useRunJobMarket } from "../helpers/run-job.ts";

// The tenant side from outside the SDK: the CLI across a tenant restart, and the README example.
// No test here waits for a slash, and (d) expects no hand-off: room for a loaded machine. The devnet
// sits under a 0700 directory, as a checkout in root's home does (issue 13 found every job refused).
const fixture = useRunJobMarket({ chainHeartbeatTimeoutS: 20, privateParent: true });

describe("tenant restart", () => {
  it("(d) a killed `baton job run --watch` is picked up by `baton job watch`, which re-attaches and completes the job", async () => {
    const dataDir = path.join(fixture.dir, "tenant-cli");
    await fixture.market.client(1, path.join(fixture.dir, "tenant-fund"));
    const specFile = path.join(fixture.dir, "train.yaml");
    await writeFile(specFile, JSON.stringify({ ...trainSpec("20"), inputs: [{ file: SCRIPT, path: "train.mjs" }] }));
    const network = tenantCliArgs(fixture.market, dataDir);
    const env = { BATON_TENANT_KEY: privateKeyOf(devAccount(11)) };
    const first = spawnScript(
      "cli/baton.ts",
      ["job", "run", specFile, "--max-price", "0.001", "--watch", ...network],
      env,
    );
    const idLine = await first.waitFor(/^job 0x[0-9a-f]{64}$/, 60_000);
    const jobId = idLine.split(" ")[1]!;
    // Any step from 100 on: the replicator skips a checkpoint a newer one overtook (under load,
    // step 100 itself may never be made safe, and the job then ran to its end unkilled).
    await first.waitFor(/checkpoint step [1-9]\d{2,} safe/, 60_000);
    first.child.kill("SIGKILL");
    await first.exited;

    const second = spawnScript("cli/baton.ts", ["job", "watch", jobId, ...network], env);
    const exit = await second.exited;
    // What the providers said of the chain, should the lease not be there for the re-attach (CI saw
    // it refused once as "not active on chain", its provider's heartbeats apparently late by 20 s).
    const chainLines = (): string =>
      fixture.market.providers
        .flatMap((p) =>
          (p.process?.lines ?? []).filter((l) => /heartbeat|chain round|ended on chain/.test(l)).slice(-8),
        )
        .join("\n");
    expect(exit.code, `${second.lines.slice(-20).join("\n")}\n${chainLines()}`).toBe(0);
    expect(second.lines.join("\n"), chainLines()).toMatch(/completed \(exit 0\) after 0 hand-off/);
    const record = JSON.parse(await readFile(path.join(dataDir, "jobs", `${jobId}.json`), "utf8"));
    expect(record.state).toBe("completed");
    // The job's record, listed from the data dir alone: no key, no network.
    const list = spawnScript("cli/baton.ts", ["job", "list", "--data-dir", dataDir, "--json"]);
    expect((await list.closed).code, list.lines.join("\n")).toBe(0);
    expect(JSON.parse(list.stdout.join("\n"))).toMatchObject([{ jobId, state: "completed" }]);
    expect(await readFile(path.join(record.result.outputDir, "result.json"), "utf8")).toBe(fixture.reference);
    // Run as root, the job ran as nobody, who cannot pass the 0700 dir above the provider's data dir:
    // its work dir was where nobody can reach it, beside its log, which stays once the work dir is gone.
    if (process.getuid?.() === 0) {
      const provider = fixture.market.providers.find((p) => p.account.address === record.leases[0].provider)!;
      const { leaseId } = record.leases[0];
      const log = path.join(await fallbackJobsDir(provider.dataDir), leaseId, `${leaseId}.log`);
      expect((await stat(log)).isFile()).toBe(true);
    }
  });
});

describe("the README's SDK example", () => {
  it("examples/sdk/run-job.ts runs as written against a devnet's network file", async () => {
    const account = devAccount(12);
    await fixture.market.fund(account.address, parseEther("1"));
    const example = spawnScript(
      "examples/sdk/run-job.ts",
      [
        "--network",
        fixture.market.networkFile,
        "--steps",
        "300",
        "--data-dir",
        path.join(fixture.dir, "tenant-example"),
      ],
      { BATON_TENANT_KEY: privateKeyOf(account) },
    );
    const exit = await example.exited;
    expect(exit.code, example.lines.slice(-20).join("\n")).toBe(0);
    expect(example.lines.join("\n")).toMatch(/^done after 0 hand-off\(s\): loss \d/m);
  });
});
