import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { describe, expect, it, onTestFinished } from "vitest";

import { inNamespace, listNamespaces } from "../../deploy/netns.ts";
import { isAlive, spawnScript, until } from "../helpers/processes.ts";
import { SCRIPT, trainSpec } from "../helpers/run-job.ts";

const asRoot = process.getuid?.() === 0;

interface Printed {
  networkFile: string;
  providers: { name: string; pid: number; multiaddr: string; host: { netns: string; behindNat: boolean } }[];
  tenant: { privateKey: string; host: { netns: string; address: string; rpcUrl: string } };
}

describe.skipIf(!asRoot)("baton devnet --netns", () => {
  it("puts each provider on a host of its own, one behind a NAT; `baton job run` on the tenant host completes a job; Ctrl-C removes every namespace", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "baton-devnet-netns-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const devnetDir = path.join(dir, "devnet");
    const devnet = spawnScript("cli/baton.ts", [
      "devnet",
      "--netns",
      "--providers",
      "2",
      "--behind-nat",
      "1",
      "--dir",
      devnetDir,
      "--json",
      "--logs",
    ]);
    onTestFinished(() => devnet.stop());
    await devnet.waitFor(/^}$/, 180_000);
    const printed = JSON.parse(devnet.stdout.join("\n")) as Printed;
    const [public1, natted] = printed.providers;
    expect([public1!.host.behindNat, natted!.host.behindNat]).toEqual([false, true]);
    // The NATed provider is reached through provider-1, as the network file tells tenants.
    expect(natted!.multiaddr).toMatch(new RegExp(`^${public1!.multiaddr}/p2p-circuit/p2p/`));
    const network = JSON.parse(await readFile(path.join(devnetDir, "network.json"), "utf8")) as {
      rpcUrl: string;
      bootstrap: string[];
      listen: string[];
    };
    expect(network).toMatchObject({
      rpcUrl: printed.tenant.host.rpcUrl,
      bootstrap: [public1!.multiaddr, natted!.multiaddr],
      listen: ["/ip4/0.0.0.0/tcp/0"],
    });
    const made = (await listNamespaces()).filter((name) => name.startsWith(`baton-${devnet.child.pid}-`));
    // Two providers, a tenant, the NATed one's router and the internet.
    expect(made).toHaveLength(5);
    expect(made).toContain(printed.tenant.host.netns);

    const specFile = path.join(dir, "train.yaml");
    await writeFile(specFile, JSON.stringify({ ...trainSpec("5"), inputs: [{ file: SCRIPT, path: "train.mjs" }] }));
    const job = spawnScript(
      "cli/baton.ts",
      [
        "job",
        "run",
        specFile,
        "--max-price",
        "0.001",
        "--watch",
        "--json",
        "--network",
        path.join(devnetDir, "network.json"),
        "--data-dir",
        path.join(dir, "tenant"),
      ],
      { BATON_TENANT_KEY: printed.tenant.privateKey },
      { wrap: (argv) => inNamespace(printed.tenant.host.netns, argv) },
    );
    onTestFinished(() => job.stop());
    const { code } = await job.closed;
    // The providers' logs beside the tenant's (a failed bid is told on both sides), less the checkpoints.
    const providerLines = devnet.stderr.filter((line) => !line.includes("checkpoint published")).slice(-40);
    expect(code, [...job.lines.slice(-20), "providers:", ...providerLines].join("\n")).toBe(0);
    const events = job.stdout.map((line) => JSON.parse(line) as { type: string });
    expect(events.filter((e) => e.type === "completed")).toHaveLength(1);
    expect(events.filter((e) => e.type === "provider-failed")).toEqual([]);

    devnet.child.kill("SIGINT");
    await devnet.exited;
    await until(() => printed.providers.every((p) => !isAlive(p.pid)), 20_000, "providers stopped");
    expect((await listNamespaces()).filter((name) => made.includes(name))).toEqual([]);
  }, 400_000);
});
