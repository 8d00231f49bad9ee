import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { devAccount } from "../../deploy/local-chain.ts";
import { privateKeyOf, startMarket, type Market } from "../helpers/market.ts";
import { root } from "../helpers/processes.ts";

// Baton as a user's project gets it: `npm pack` (which builds dist/), the tarball installed in a
// fresh project, and a plain JavaScript script that imports "baton" and runs the example training
// job on a devnet. Slow (packing compiles the whole tree, installing unpacks ~500 packages from the
// npm cache), so it runs as `npm run test:package`, which CI runs, and not in `npm test`.

const run = promisify(execFile);
// npm and the installed bin run under this Node (22): the system's may be older than `engines`.
const env = { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH}` };

let dir: string;
let app: string;
let market: Market;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-package-test-"));
  await run("npm", ["pack", "--pack-destination", dir], { cwd: root, env, maxBuffer: 64 << 20 });
  const tarball = (await readdir(dir)).find((name) => name.endsWith(".tgz"))!;
  app = path.join(dir, "app");
  await run("mkdir", [app]);
  await writeFile(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  // --omit=peer: React Native, which only peer dependencies of Helia's libp2p ask for (see README).
  // ethers, the optional peer that `baton/ethers` imports, is the app's own dependency, as in an
  // ethers user's project; the version is Baton's, which the npm cache holds.
  const { devDependencies } = JSON.parse(await readFile(path.join(root, "package.json"), "utf8")) as {
    devDependencies: Record<string, string>;
  };
  await run(
    "npm",
    [
      "install",
      path.join(dir, tarball),
      `ethers@${devDependencies.ethers}`,
      "--omit=peer",
      "--omit=optional",
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
    ],
    { cwd: app, env, maxBuffer: 64 << 20 },
  );
  market = await startMarket({
    providers: 1,
    config: { cpuJobs: true, price: { basePerSecond: "1000000000000", perGpuPerSecond: "1000000000000" } },
  });
}, 600_000);

afterAll(async () => {
  await market?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the npm package", () => {
  it("exports the SDK, the node, the ABIs and ethers bindings, with type declarations, and a `baton` bin", async () => {
    const probe = path.join(app, "probe.mjs");
    await writeFile(
      probe,
      `import * as sdk from "baton";
import * as alias from "baton/sdk";
import { startProviderNode } from "baton/node";
import * as abis from "baton/abis";
import { Contract } from "ethers";
import * as bindings from "baton/ethers";
console.log(JSON.stringify({
  same: sdk === alias,
  sdk: ["createBatonClient", "runJob", "serve", "auditJob"].filter((name) => typeof sdk[name] === "function"),
  node: typeof startProviderNode,
  abis: Object.keys(abis).filter((name) => name.endsWith("Abi")).length,
  ethers: Object.keys(bindings).filter((name) => name.endsWith("__factory")).sort(),
  // A contract of the app's own ethers: the bindings import the peer, not a copy of their own.
  appEthers: bindings.LeaseManager__factory.connect("0x0000000000000000000000000000000000000001") instanceof Contract,
}));
`,
    );
    const { stdout } = await run(process.execPath, [probe], { cwd: app, env });
    expect(JSON.parse(stdout)).toEqual({
      same: true,
      sdk: ["createBatonClient", "runJob", "serve", "auditJob"],
      node: "function",
      abis: expect.any(Number),
      ethers: ["DevToken__factory", "LeaseManager__factory", "ProviderRegistry__factory"],
      appEthers: true,
    });
    expect(JSON.parse(stdout).abis).toBeGreaterThan(0);
    const types = await readFile(path.join(app, "node_modules/baton/dist/sdk/index.d.ts"), "utf8");
    expect(types).toMatch(/createBatonClient/);
    const ethersTypes = await readFile(
      path.join(app, "node_modules/baton/dist/sdk/generated/ethers/index.d.ts"),
      "utf8",
    );
    expect(ethersTypes).toMatch(/LeaseManager__factory/);
    const bin = path.join(app, "node_modules/.bin/baton");
    const { version } = JSON.parse(await readFile(path.join(root, "package.json"), "utf8")) as { version: string };
    expect((await run(bin, ["--version"], { cwd: app, env })).stdout.trim()).toBe(version);
    const help = (await run(bin, ["--help"], { cwd: app, env })).stdout;
    expect(help).toMatch(/^Usage: baton/);
    expect(help).toMatch(/\bjob\b/);
  });

  it("runs a job on a devnet from a plain script that imports it", async () => {
    const account = devAccount(13);
    await market.fund(account.address, parseEther("1"));
    const script = path.join(app, "run.mjs");
    await writeFile(
      script,
      `import { readFile } from "node:fs/promises";
import path from "node:path";
import { createBatonClient, readJobFile, runJob } from "baton";
import { parseEther } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const [networkFile, jobFile] = process.argv.slice(2);
const network = JSON.parse(await readFile(networkFile, "utf8"));
const client = await createBatonClient({
  rpcUrl: network.rpcUrl,
  account: privateKeyToAccount(process.env.BATON_TENANT_KEY),
  deployment: path.resolve(path.dirname(networkFile), network.deployment),
  bootstrap: network.bootstrap,
  dataDir: "tenant",
});
try {
  const { spec, files } = await readJobFile(jobFile);
  spec.env.TRAIN_STEPS = "200";
  const job = await runJob(client, spec, { maxPricePerSecond: parseEther("0.00001"), files });
  const result = await job.result();
  console.log(JSON.parse(await readFile(path.join(result.outputDir, "result.json"), "utf8")).steps);
} finally {
  await client.close();
}
`,
    );
    const { stdout } = await run(
      process.execPath,
      [script, market.networkFile, path.join(root, "examples/train/train.yaml")],
      { cwd: app, env: { ...env, BATON_TENANT_KEY: privateKeyOf(account) }, timeout: 180_000 },
    );
    expect(stdout.trim().split("\n").at(-1)).toBe("200");
  });
});
