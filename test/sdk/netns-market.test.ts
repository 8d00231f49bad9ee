import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { HOST_P2P_PORT, type DevnetHosts } from "../../deploy/devnet-hosts.ts";
import { devAccount } from "../../deploy/local-chain.ts";
import { spawnScript } from "../../deploy/processes.ts";
import type { JobResult } from "../../sdk/tenant/job-events.ts";
import { providerDirs, runToEnd, startExampleJob } from "../helpers/example-jobs.ts";
import { privateKeyOf, startMarket, type Market } from "../helpers/market.ts";
import type { TenantRun } from "../helpers/netns-tenant.ts";
import { blockBytesSent } from "../helpers/node-metrics.ts";
import { SCRIPT, TRAIN_ENV, trainSpec } from "../helpers/run-job.ts";

/*
 * A devnet of separate hosts (deploy/devnet-hosts.ts): provider-1 on a public address, relaying for
 * others and too dear to be leased; provider-2 behind a NAT of its own, listening only through
 * provider-1; the tenant on a public address, as a process on the devnet's tenant host. Each host
 * reaches the chain (in the machine's own namespace) at its own 127.0.0.1:8545.
 */
const root = process.getuid?.() === 0;

describe.skipIf(!root)("a provider behind a NAT, on a devnet of separate hosts", () => {
  let dir: string;
  let market: Market;
  let hosts: DevnetHosts;
  let reference: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-netns-"));
    const refDirs = await providerDirs(dir, "ref");
    reference = await runToEnd(startExampleJob([process.execPath, SCRIPT], refDirs, TRAIN_ENV), refDirs);
    market = await startMarket({
      providers: 2,
      dir: path.join(dir, "devnet"),
      netns: { behindNat: 1 },
      config: {
        cpuJobs: true,
        price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
        chainHeartbeatPeriodS: 1,
        chainHeartbeatTimeoutS: 20,
      },
      configFor: (index) => (index === 0 ? { price: { basePerSecond: "2000000000000000", perGpuPerSecond: "0" } } : {}),
    });
    hosts = market.hosts!;
  }, 240_000);

  afterAll(async () => {
    await market?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("a tenant reaches the NATed provider through the relay, the provider dials it back directly, the job runs there to the reference result, and its checkpoints come directly", async () => {
    const [relay, home] = market.providers;
    const tenantAccount = devAccount(10);
    await market.fund(tenantAccount.address, parseEther("100"));
    const relayAddress = relay!.address!;
    expect(home!.address).toBe(`${relayAddress}/p2p-circuit/p2p/${home!.peerId}`);
    const run: TenantRun = {
      rpcUrl: hosts.rpcUrl,
      deploymentFile: market.deploymentFile,
      dataDir: path.join(dir, "tenant"),
      privateKey: privateKeyOf(tenantAccount),
      bootstrap: [relayAddress, home!.address!],
      // AutoNAT confirms the public address: nothing announced, as the devnet's providers announce nothing.
      listen: [`/ip4/0.0.0.0/tcp/${HOST_P2P_PORT}`],
      spec: trainSpec("20"),
      files: { "train.mjs": SCRIPT },
      maxPricePerSecond: parseEther("0.001").toString(),
    };
    const tenant = spawnScript(
      "test/helpers/netns-tenant.ts",
      [JSON.stringify(run)],
      {},
      { wrap: hosts.tenant.command },
    );
    onTestFinished(() => tenant.stop());
    // Within the test's time, so that a job that never ends shows what the tenant printed.
    const { code } = await Promise.race([
      tenant.closed,
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error(`the tenant did not end:\n${tenant.lines.slice(-40).join("\n")}`)), 150_000),
      ),
    ]);
    const line = (prefix: string): string | undefined =>
      tenant.lines.find((l) => l.startsWith(`${prefix} `))?.slice(prefix.length + 1);
    expect(code, tenant.lines.slice(-30).join("\n")).toBe(0);
    const result = JSON.parse(line("result")!) as JobResult;
    // Its public address, confirmed by a peer that dialled it back (AutoNAT), is one it tells peers.
    expect(JSON.parse(line("addresses")!)).toContainEqual(
      expect.stringMatching(
        new RegExp(`^/ip4/${hosts.tenant.address.replaceAll(".", "\\.")}/tcp/${HOST_P2P_PORT}/p2p/`),
      ),
    );
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(reference);
    expect(result.leases.map((l) => l.provider)).toEqual([home!.account.address]);
    // No address of its own reaches provider-2 (its offers list its LAN's and the relay's): the
    // tenant's first connection to it went through the relay, and the next came from its NAT.
    const opened = JSON.parse(line("opened")!) as string[];
    expect(opened[0]).toBe(`${relayAddress}/p2p-circuit/p2p/${home!.peerId}`);
    expect(opened.slice(1).some((a) => a.startsWith(`/ip4/${hosts.provider(1).publicAddress}/tcp/`))).toBe(true);
    const connections = JSON.parse(line("connections")!) as { remoteAddr: string; limited: boolean }[];
    const direct = connections.filter((c) => !c.limited && !c.remoteAddr.includes("/p2p-circuit"));
    expect(direct.map((c) => c.remoteAddr)).toEqual([
      expect.stringMatching(
        new RegExp(`^/ip4/${hosts.provider(1).publicAddress.replaceAll(".", "\\.")}/tcp/\\d+/p2p/`),
      ),
    ]);
    // The checkpoints and the output came over the direct connection: none through the relay.
    const sent = await blockBytesSent(home!.process!, hosts.provider(1));
    expect(sent.relayed).toBe(0);
    expect(sent.direct).toBeGreaterThan(0);
  }, 180_000);
});
