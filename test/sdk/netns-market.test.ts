import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { devAccount } from "../../deploy/local-chain.ts";
import { forwardFromHost, startNetwork, type Host, type NetworkOfHosts } from "../../deploy/netns.ts";
import { spawnScript } from "../../deploy/processes.ts";
import type { JobResult } from "../../sdk/tenant/job-events.ts";
import { providerDirs, runToEnd, startExampleJob } from "../helpers/example-jobs.ts";
import { privateKeyOf, startMarket, type Market } from "../helpers/market.ts";
import type { TenantRun } from "../helpers/netns-tenant.ts";
import { SCRIPT, TRAIN_ENV, trainSpec } from "../helpers/run-job.ts";

/*
 * A devnet of separate hosts (deploy/netns.ts): provider-1 on a public address, relaying for others
 * and too dear to be leased; provider-2 behind a NAT of its own, listening only through
 * provider-1; the tenant on a public address, as a process in its own namespace. Each host reaches
 * the chain (in the machine's own namespace) through a forwarder on its 127.0.0.1:8545.
 */
const root = process.getuid?.() === 0;
const P2P_PORT = 4001;
const CHAIN_PORT = 8545;

describe.skipIf(!root)("a provider behind a NAT, on a devnet of separate hosts", () => {
  let dir: string;
  let net: NetworkOfHosts;
  let market: Market;
  let reference: string;
  let chainPort: number | undefined;
  const forwards: { close(): Promise<void> }[] = [];
  const host = (name: string): Host => net.hosts.get(name)!;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-netns-"));
    const refDirs = await providerDirs(dir, "ref");
    reference = await runToEnd(startExampleJob([process.execPath, SCRIPT], refDirs, TRAIN_ENV), refDirs);
    net = await startNetwork([{ name: "relay" }, { name: "home", behindNat: true }, { name: "tenant" }]);
    for (const name of ["relay", "home", "tenant"]) {
      forwards.push(
        await forwardFromHost(host(name), {
          port: CHAIN_PORT,
          target: () => chainPort!,
          socket: path.join(dir, `${name}-chain.sock`),
        }),
      );
    }
    const relay = host("relay");
    market = await startMarket({
      providers: 2,
      config: {
        cpuJobs: true,
        price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" },
        chainHeartbeatPeriodS: 1,
        chainHeartbeatTimeoutS: 20,
        rpcUrl: `http://127.0.0.1:${CHAIN_PORT}`,
      },
      configFor: (index, devnet) => {
        chainPort = Number(new URL(devnet.rpcUrl).port);
        return index === 0
          ? {
              listen: [`/ip4/0.0.0.0/tcp/${P2P_PORT}`],
              announce: [`/ip4/${relay.address}/tcp/${P2P_PORT}`],
              relayReservations: 4,
              price: { basePerSecond: "2000000000000000", perGpuPerSecond: "0" },
            }
          : {
              listen: [
                `/ip4/0.0.0.0/tcp/${P2P_PORT}`,
                `/ip4/${relay.address}/tcp/${P2P_PORT}/p2p/${devnet.peerIds[0]}/p2p-circuit`,
              ],
            };
      },
      wrapProvider: (index) => host(index === 0 ? "relay" : "home").command,
    });
  }, 240_000);

  afterAll(async () => {
    await market?.stop();
    await Promise.all(forwards.map((f) => f.close()));
    await net?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("a tenant reaches the NATed provider through the relay, the provider dials it back directly, and the job runs there to the reference result", async () => {
    const [relay, home] = market.providers;
    const tenantAccount = devAccount(10);
    await market.fund(tenantAccount.address, parseEther("100"));
    const relayAddress = `/ip4/${host("relay").address}/tcp/${P2P_PORT}/p2p/${relay!.peerId}`;
    const run: TenantRun = {
      rpcUrl: `http://127.0.0.1:${CHAIN_PORT}`,
      deploymentFile: market.deploymentFile,
      dataDir: path.join(dir, "tenant"),
      privateKey: privateKeyOf(tenantAccount),
      bootstrap: [relayAddress, `${relayAddress}/p2p-circuit/p2p/${home!.peerId}`],
      listen: [`/ip4/0.0.0.0/tcp/${P2P_PORT}`],
      announce: [`/ip4/${host("tenant").address}/tcp/${P2P_PORT}`],
      spec: trainSpec("20"),
      files: { "train.mjs": SCRIPT },
      maxPricePerSecond: parseEther("0.001").toString(),
    };
    const tenant = spawnScript(
      "test/helpers/netns-tenant.ts",
      [JSON.stringify(run)],
      {},
      { wrap: host("tenant").command },
    );
    const { code } = await tenant.closed;
    const line = (prefix: string): string | undefined =>
      tenant.lines.find((l) => l.startsWith(`${prefix} `))?.slice(prefix.length + 1);
    expect(code, tenant.lines.slice(-30).join("\n")).toBe(0);
    const result = JSON.parse(line("result")!) as JobResult;
    expect(await readFile(path.join(result.outputDir!, "result.json"), "utf8")).toBe(reference);
    expect(result.leases.map((l) => l.provider)).toEqual([home!.account.address]);
    // No address of its own reaches provider-2 (its offers list its LAN's and the relay's): the
    // tenant's first connection to it went through the relay, and the next came from its NAT.
    const opened = JSON.parse(line("opened")!) as string[];
    expect(opened[0]).toBe(`${relayAddress}/p2p-circuit/p2p/${home!.peerId}`);
    expect(opened.slice(1).some((a) => a.startsWith(`/ip4/${host("home").publicAddress}/tcp/`))).toBe(true);
    const connections = JSON.parse(line("connections")!) as { remoteAddr: string; limited: boolean }[];
    const direct = connections.filter((c) => !c.limited && !c.remoteAddr.includes("/p2p-circuit"));
    expect(direct.map((c) => c.remoteAddr)).toEqual([
      expect.stringMatching(new RegExp(`^/ip4/${host("home").publicAddress.replaceAll(".", "\\.")}/tcp/\\d+/p2p/`)),
    ]);
  });
});
