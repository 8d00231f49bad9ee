import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import { createPublicClient, createWalletClient, http, parseEther } from "viem";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { deployBaton, writeDeployment } from "../../deploy/deploy.ts";
import { devAccount, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { contracts, createChainClient, writeContract } from "../../sdk/chain/client.ts";
import { parseDeployment } from "../../sdk/chain/deployments.ts";
import { spawnScript, stopAll } from "../helpers/processes.ts";

let chain: LocalChain;
let dir: string;
let deploymentFile: string;
let dataDir: string;
let address: `0x${string}`;
const env = { BATON_KEYSTORE_PASSWORD: "correct horse battery staple" };

/** Runs `baton …` to completion and returns its exit code and output (`errors`: its stderr lines). */
async function baton(args: string[], extraEnv: Record<string, string> = {}) {
  const run = spawnScript("cli/baton.ts", args, { ...env, ...extraEnv });
  const { code } = await run.closed;
  return { code, output: run.lines.join("\n"), stdout: run.stdout.join("\n"), errors: run.stderr };
}

/**
 * A usual mistake: exit code 1 and one plain line saying what to do, no stack trace (besides the
 * JSON log lines a node that started writes before it fails).
 */
function expectOneLine(result: Awaited<ReturnType<typeof baton>>, message: RegExp): void {
  expect(result.code, result.output).toBe(1);
  const plain = result.errors.filter((line) => !line.startsWith("{"));
  expect(plain, result.output).toHaveLength(1);
  expect(plain[0], result.output).toMatch(message);
}

beforeAll(async () => {
  chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-cli-"));
  await chmod(dir, 0o711);
  const publicClient = createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl), pollingInterval: 50 });
  const walletClient = createWalletClient({ chain: hardhat, account: devAccount(0), transport: http(chain.rpcUrl) });
  deploymentFile = await writeDeployment(
    path.join(dir, "deployments"),
    await deployBaton({ walletClient, publicClient }),
  );
  dataDir = path.join(dir, "provider");
}, 120_000);

afterAll(async () => {
  await stopAll();
  await chain?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("baton provider (CLI)", () => {
  it("init writes an encrypted keystore, a peer key and a config, and prints the identity", async () => {
    const { code, output } = await baton([
      "provider",
      "init",
      "--data-dir",
      dataDir,
      "--rpc-url",
      chain.rpcUrl,
      "--deployment",
      deploymentFile,
      "--fake-gpus",
      "1xFakeGPU",
    ]);
    expect(code, output).toBe(0);
    address = /address\s+(0x[0-9a-fA-F]{40})/.exec(output)![1] as `0x${string}`;
    expect(output).toMatch(/peer id\s+12D3KooW/);
    const keystore = JSON.parse(await readFile(path.join(dataDir, "key.json"), "utf8"));
    expect(keystore.crypto.kdf).toBe("scrypt");
    expect(keystore.address).toBe(address.slice(2).toLowerCase());
  });

  it("refuses to set up a data dir twice, and leaves nothing behind when it cannot make the key", async () => {
    const noPassword = path.join(dir, "no-password");
    const failed = await baton(
      ["provider", "init", "--data-dir", noPassword, "--rpc-url", chain.rpcUrl, "--deployment", deploymentFile],
      { BATON_KEYSTORE_PASSWORD: "" },
    );
    expectOneLine(failed, /^error: the password for .*key\.json is empty$/);
    expect(await readdir(noPassword)).toEqual([]);

    const again = await baton(["provider", "init", "--data-dir", dataDir, "--rpc-url", chain.rpcUrl]);
    expectOneLine(
      again,
      /^error: .*provider is already set up \(it has config\.yaml\): use it as it is, or give another --data-dir$/,
    );
  });

  it("refuses to register without tokens, then registers and reports its stake", async () => {
    const noTokens = await baton(["provider", "register", "--data-dir", dataDir, "--stake", "200"]);
    expect(noTokens.code).toBe(1);
    expect(noTokens.output).toContain("insufficient staking-token balance");

    const deployment = parseDeployment(JSON.parse(await readFile(deploymentFile, "utf8")));
    const funded = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account: devAccount(0) });
    await funded.walletClient!.sendTransaction({ to: address, value: parseEther("1") });
    await writeContract(funded, {
      ...contracts(deployment).stakingToken,
      functionName: "mint",
      args: [address, parseEther("300")],
    });

    const registered = await baton(["provider", "register", "--data-dir", dataDir, "--stake", "200"]);
    expect(registered.code, registered.output).toBe(0);
    expect(registered.output).toMatch(/registered 0x[0-9a-fA-F]{40} as 12D3KooW\w+ with a stake of 200/);

    const status = await baton(["provider", "status", "--data-dir", dataDir, "--json"]);
    expect(status.code, status.output).toBe(0);
    const json = JSON.parse(status.output.slice(status.output.indexOf("{")));
    expect(json.provider.stake).toBe(parseEther("200").toString());
    expect(json.provider.registered).toBe(true);
  });

  it("unstakes into an unbonding period, and says why a withdrawal must wait", async () => {
    const unstake = await baton(["provider", "unstake", "50", "--data-dir", dataDir]);
    expect(unstake.code, unstake.output).toBe(0);
    expect(unstake.output).toMatch(/unbonding 50; withdraw after \d{4}-/);
    const withdraw = await baton(["provider", "withdraw", "--data-dir", dataDir]);
    expect(withdraw.code).toBe(1);
    expect(withdraw.output).toContain("ProviderRegistry_StillUnbonding");
  });

  it("names the problem when the RPC is down, the chain is wrong, or the key is unregistered", async () => {
    const config = await readFile(path.join(dataDir, "config.yaml"), "utf8");
    const noRpcDir = path.join(dir, "no-rpc");
    const otherChainDir = path.join(dir, "other-chain");
    for (const d of [noRpcDir, otherChainDir]) {
      await mkdir(d, { recursive: true });
      await copyFile(path.join(dataDir, "key.json"), path.join(d, "key.json"));
    }
    await writeFile(path.join(noRpcDir, "config.yaml"), config.replace(chain.rpcUrl, "http://127.0.0.1:9"));
    const noRpc = await baton(["provider", "status", "--data-dir", noRpcDir]);
    expect(noRpc.code).toBe(1);
    expect(noRpc.output).toContain("no JSON-RPC node answers at http://127.0.0.1:9");

    const other = JSON.parse(await readFile(deploymentFile, "utf8"));
    other.chainId = 1;
    const otherFile = path.join(otherChainDir, "deployment.json");
    await writeFile(otherFile, JSON.stringify(other));
    await writeFile(path.join(otherChainDir, "config.yaml"), config.replace(deploymentFile, otherFile));
    const wrong = await baton(["provider", "status", "--data-dir", otherChainDir]);
    expect(wrong.code).toBe(1);
    expect(wrong.output).toContain("wrong chain: the RPC serves chain 31337, the deployment is for 1");

    // A registered node on a machine without GPUs, configured for GPU jobs only, refuses to start.
    const noGpuDir = path.join(dir, "no-gpu");
    await mkdir(noGpuDir, { recursive: true });
    for (const file of ["key.json", "peer.key"]) await copyFile(path.join(dataDir, file), path.join(noGpuDir, file));
    await writeFile(path.join(noGpuDir, "config.yaml"), config.replace(/gpus:\n\s+fake: 1xFakeGPU\n/, "gpus: auto\n"));
    const noGpu = await baton(["provider", "start", "--data-dir", noGpuDir], { PATH: "/usr/bin:/bin" });
    expect(noGpu.code).toBe(1);
    expect(noGpu.output).toContain("no GPU found (nvidia-smi is missing or lists none)");

    const unregistered = await baton(["provider", "start", "--data-dir", dataDir], {
      BATON_PROVIDER_KEY: "0x" + "11".repeat(32),
    });
    expect(unregistered.code).toBe(1);
    expect(unregistered.output).toMatch(
      /0x[0-9a-fA-F]{40} is not registered: run `baton provider register --stake N` first/,
    );
  });

  it("says in one line what is wrong: the keystore password, a port in use", async () => {
    const wrongPassword = await baton(["provider", "status", "--data-dir", dataDir], {
      BATON_KEYSTORE_PASSWORD: "not the password",
    });
    expectOneLine(wrongPassword, /^error: wrong keystore password$/);

    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, "127.0.0.1", resolve));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const busyDir = path.join(dir, "busy-port");
      await mkdir(busyDir, { recursive: true });
      for (const file of ["key.json", "peer.key"]) await copyFile(path.join(dataDir, file), path.join(busyDir, file));
      const config = await readFile(path.join(dataDir, "config.yaml"), "utf8");
      await writeFile(
        path.join(busyDir, "config.yaml"),
        config.replace("/ip4/127.0.0.1/tcp/0", `/ip4/127.0.0.1/tcp/${port}`),
      );
      const inUse = await baton(["provider", "start", "--data-dir", busyDir]);
      expectOneLine(
        inUse,
        new RegExp(
          `^error: 127\\.0\\.0\\.1:${port} is already in use: stop the program listening there, or choose another port`,
        ),
      );
    } finally {
      busy.close();
    }
  });

  it("takes a key made by `baton key new`, funded by `baton devnet fund`, with --password-file", async () => {
    const passwordFile = path.join(dir, "password.txt");
    await writeFile(passwordFile, "another passphrase\n");
    const keystore = path.join(dir, "keys", "provider-2.json");
    const made = await baton(["key", "new", "--out", keystore, "--password-file", passwordFile, "--json"]);
    expect(made.code, made.output).toBe(0);
    const key = JSON.parse(made.stdout) as { address: `0x${string}`; keystore: string };
    expect(key.keystore).toBe(keystore);
    expect(JSON.parse(await readFile(keystore, "utf8")).address).toBe(key.address.slice(2).toLowerCase());
    const again = await baton(["key", "new", "--out", keystore, "--password-file", passwordFile]);
    expectOneLine(again, /^error: .*provider-2\.json already exists: a keystore is never overwritten/);

    // The network as a devnet's network file gives it: `devnet fund` and `provider init` read it.
    const network = path.join(dir, "network.json");
    await writeFile(
      network,
      JSON.stringify({ rpcUrl: chain.rpcUrl, deployment: path.relative(dir, deploymentFile), bootstrap: [] }),
    );
    const funded = await baton(["devnet", "fund", key.address, "--network", network, "--tokens", "5", "--json"]);
    expect(funded.code, funded.output).toBe(0);
    expect(JSON.parse(funded.stdout)).toEqual({
      address: key.address,
      paymentTokens: parseEther("5").toString(),
      stakingTokens: parseEther("1000").toString(),
      eth: parseEther("10").toString(),
    });

    // The file's password wins over BATON_KEYSTORE_PASSWORD (set to the first provider's here).
    const secondDir = path.join(dir, "provider-2");
    const withPassword = ["--data-dir", secondDir, "--password-file", passwordFile];
    const init = await baton([
      "provider",
      "init",
      "--keystore",
      keystore,
      "--network",
      network,
      "--fake-gpus",
      "1xFakeGPU",
      "--json",
      ...withPassword,
    ]);
    expect(init.code, init.output).toBe(0);
    expect(JSON.parse(init.stdout)).toMatchObject({ address: key.address, peerId: expect.stringMatching(/^12D3KooW/) });
    const registered = await baton(["provider", "register", "--stake", "150", "--json", ...withPassword]);
    expect(registered.code, registered.output).toBe(0);
    expect(JSON.parse(registered.stdout)).toMatchObject({ address: key.address, registered: true });
    const status = await baton(["provider", "status", "--json", ...withPassword]);
    expect(status.code, status.output).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({
      address: key.address,
      provider: { registered: true, stake: parseEther("150").toString() },
    });
  });

  it("starts, serves metrics on loopback, and drains on SIGTERM", async () => {
    const node = spawnScript("cli/baton.ts", ["provider", "start", "--data-dir", dataDir], env);
    const line = await node.waitFor(/metrics on http:\/\/127\.0\.0\.1:\d+\/metrics/, 60_000);
    const url = /(http:\S+)/.exec(line)![1]!;
    const metrics = await (await fetch(url)).text();
    expect(metrics).toContain("# TYPE baton_gpus gauge");
    expect(metrics).toContain("baton_gpus 1");
    // The process metrics every exporter has, and the series an operator alerts on (their values
    // under load are asserted with a running lease, in test/sdk/run-job-drain.test.ts).
    expect(metrics).toContain("# TYPE process_cpu_user_seconds_total counter");
    expect(metrics).toContain("# TYPE nodejs_eventloop_lag_seconds gauge");
    for (const histogram of [
      "baton_chain_heartbeat_seconds",
      "baton_bid_seconds",
      "baton_checkpoint_publish_seconds",
    ]) {
      expect(metrics).toContain(`# TYPE ${histogram} histogram`);
    }
    expect(metrics).toContain("# TYPE baton_lease_heartbeat_timeout_seconds gauge");
    expect(metrics).toContain("baton_leases_handed_back_total 0");
    // Funded with 1 ETH before registering, which cost some gas.
    const gas = Number(/^baton_gas_balance_eth (\S+)$/m.exec(metrics)?.[1]);
    expect(gas).toBeGreaterThan(0.9);
    expect(gas).toBeLessThan(1);
    node.child.kill("SIGTERM");
    const exit = await node.exited;
    expect(exit.code).toBe(0);
    expect(node.lines.join("\n")).toContain("SIGTERM: draining");
    expect(node.lines.join("\n")).toContain('"msg":"provider node stopped"');
  });

  it("refuses a second node on the same data dir, naming the first; a SIGKILLed node's dir is free at once", async () => {
    const first = spawnScript("cli/baton.ts", ["provider", "start", "--data-dir", dataDir], env);
    await first.waitFor(/provider node listening on /, 60_000);
    const second = await baton(["provider", "start", "--data-dir", dataDir]);
    expect(second.code).toBe(1);
    expect(second.output).toContain(
      `error: the data dir ${dataDir} is in use by another baton provider (pid ${first.pid}); stop it first`,
    );
    expect(first.child.exitCode).toBeNull();

    first.child.kill("SIGKILL");
    await first.exited;
    // Its pid file is left behind; the lock itself went with the process.
    expect((await readFile(path.join(dataDir, "node.pid"), "utf8")).trim()).toBe(String(first.pid));
    const next = spawnScript("cli/baton.ts", ["provider", "start", "--data-dir", dataDir], env);
    await next.waitFor(/provider node listening on /, 60_000);
    expect((await readFile(path.join(dataDir, "node.pid"), "utf8")).trim()).toBe(String(next.pid));
    next.child.kill("SIGTERM");
    const nextExit = await next.exited;
    expect(nextExit, next.lines.slice(-15).join("\n")).toEqual({ code: 0, signal: null });
    // Stopped cleanly, it let the data dir go: no pid file names it any more.
    await expect(readFile(path.join(dataDir, "node.pid"), "utf8")).rejects.toThrow(/ENOENT/);
  });

  it("logs at BATON_LOG_LEVEL, and refuses one that names no level", async () => {
    const wrong = await baton(["provider", "start", "--data-dir", dataDir], { BATON_LOG_LEVEL: "verbose" });
    expect(wrong.code).toBe(1);
    expect(wrong.output).toContain('error: BATON_LOG_LEVEL must be one of debug, info, warn, error, not "verbose"');

    const node = spawnScript("cli/baton.ts", ["provider", "start", "--data-dir", dataDir], {
      ...env,
      BATON_LOG_LEVEL: "warn",
    });
    await node.waitFor(/provider node listening on /, 60_000);
    node.child.kill("SIGTERM");
    const exit = await node.exited;
    expect(exit, node.lines.slice(-15).join("\n")).toEqual({ code: 0, signal: null });
    const levels = node.lines.flatMap((line) => (line.startsWith("{") ? [JSON.parse(line).level as string] : []));
    // The fake GPUs are warned about; "provider node started" and "… stopped" (info) are not written.
    expect(levels).toContain("warn");
    expect(levels.filter((level) => level === "info" || level === "debug")).toEqual([]);
  });
});
