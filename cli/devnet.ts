import { rm } from "node:fs/promises";
import path from "node:path";

import type { Command } from "commander";

import { LOCAL_CHAINS, type LocalChainKind } from "../deploy/local-chain-kinds.ts";
import { inNamespace } from "../deploy/netns.ts";
import { UserError } from "../sdk/errors.ts";
import { SESSION_HEARTBEAT_MS } from "../sdk/wire/protocols.ts";
import { DEFAULT_NETWORK_FILE, networkOptions, resolveNetwork, type NetworkOptions } from "./network.ts";
import { printJson } from "./output.ts";
import { addressArg, blockTimeArg, checkedAddress, examples, integerIn, tokenAmount, UsageError } from "./program.ts";

const DEFAULT_DIR = path.dirname(DEFAULT_NETWORK_FILE);

/**
 * The local chain's id (Hardhat's and Anvil's): `devnet fund` refuses any other, where dev account 0
 * is no one's faucet.
 */
const LOCAL_CHAIN_ID = 31337;

function chainArg(text: string): LocalChainKind {
  if (!(LOCAL_CHAINS as readonly string[]).includes(text)) {
    throw new UsageError(`--chain must be ${LOCAL_CHAINS.join(" or ")}, not ${text}`);
  }
  return text as LocalChainKind;
}

interface StartOptions {
  providers: number;
  chain: LocalChainKind;
  dir: string;
  heartbeatMs: number;
  blockTime: number;
  netns?: boolean;
  behindNat?: number;
  logs?: boolean;
  json?: boolean;
}

/**
 * `baton devnet`: a complete local network that stays up until Ctrl-C. Everything lives in `--dir`
 * (emptied first: it belongs to the devnet), including the network file every command reads by
 * default. With `--json`, the progress goes to stderr and stdout gets the network, once, when ready.
 */
async function start(options: StartOptions): Promise<void> {
  const [{ privateKeyOf, startDevnet, DEVNET_KEYSTORE_PASSWORD }, { checkBlockTime, devAccount }, { parseEther }] =
    await Promise.all([import("../deploy/devnet.ts"), import("../deploy/local-chain.ts"), import("viem")]);
  try {
    checkBlockTime(options.chain, options.blockTime);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (options.behindNat !== undefined && !options.netns) throw new UsageError("--behind-nat needs --netns");
  const behindNat = options.behindNat ?? 0;
  if (behindNat >= options.providers) {
    throw new UsageError(`--behind-nat must be below --providers (${options.providers}): provider-1 relays for them`);
  }
  if (options.netns && process.getuid?.() !== 0) {
    throw new UserError("--netns makes network namespaces, which needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN)");
  }
  const dir = path.resolve(options.dir);
  await rm(dir, { recursive: true, force: true });
  const say = (text: string): boolean => (options.json ? process.stderr : process.stdout).write(`${text}\n`);
  const devnet = await startDevnet({
    providers: options.providers,
    chain: options.chain,
    blockTimeS: options.blockTime,
    dir,
    config: { heartbeatMs: options.heartbeatMs },
    ...(options.netns ? { netns: { behindNat } } : {}),
    onStep: (message) => say(`  · ${message}`),
    ...(options.logs ? { onProviderLine: (name: string, line: string) => say(`[${name}] ${line}`) } : {}),
  });
  const tenant = devAccount(10);
  await devnet.fund(tenant.address, parseEther("1000"));
  // Before saying the devnet is up: whoever reads that may signal at once, and a signal that lands
  // before its handler would kill this process outright, leaving the clean stop undone.
  const stopped = new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  const relative = (file: string): string => path.relative(process.cwd(), file);
  const networkFile = relative(devnet.networkFile);
  const isDefault = path.resolve(DEFAULT_NETWORK_FILE) === devnet.networkFile;
  const networkFlag = isDefault ? "" : ` --network ${networkFile}`;
  const { hosts } = devnet;
  const hostOf = (index: number) => {
    const host = hosts!.provider(index);
    return {
      netns: host.netns,
      address: host.address,
      publicAddress: host.publicAddress,
      behindNat: hosts!.behindNat(index),
    };
  };
  if (options.json) {
    printJson({
      rpcUrl: devnet.chain.rpcUrl,
      chain: devnet.chain.kind,
      chainId: devnet.deployment.chainId,
      blockTimeS: devnet.blockTimeS,
      networkFile,
      deployment: relative(devnet.deploymentFile),
      keystorePassword: DEVNET_KEYSTORE_PASSWORD,
      providers: devnet.providers.map((p) => ({
        name: p.name,
        address: p.account.address,
        pid: p.process!.pid,
        multiaddr: p.address,
        dataDir: relative(p.dataDir),
        ...(hosts ? { host: hostOf(p.index) } : {}),
      })),
      tenant: {
        address: tenant.address,
        privateKey: privateKeyOf(tenant),
        ...(hosts ? { host: { netns: hosts.tenant.netns, address: hosts.tenant.address, rpcUrl: hosts.rpcUrl } } : {}),
      },
    });
  } else {
    const first = devnet.providers[0]!;
    // On separate hosts, every command runs on the one it is about: tenants' on the tenant host.
    const on = (host: { netns: string } | undefined): string =>
      host ? `${inNamespace(host.netns, []).join(" ")} ` : "";
    const hostLine = (index: number): string => {
      if (!hosts) return "";
      const host = hostOf(index);
      return `\n      host ${host.netns}, ${host.behindNat ? `${host.address} behind a NAT (${host.publicAddress})` : host.address}`;
    };
    say(`
devnet up: chain ${devnet.chain.rpcUrl} (${devnet.chain.kind === "anvil" ? "Anvil" : "Hardhat/EDR"}, chain id ${devnet.deployment.chainId}, ${devnet.blockTimeS > 0 ? `a block every ${devnet.blockTimeS} s` : "each transaction mined at once"}), ${options.providers} provider(s)${hosts ? `, each on a host of its own; tenants on ${hosts.tenant.netns} (${hosts.tenant.address}), every host's chain at ${hosts.rpcUrl}` : ""}
${devnet.providers.map((p) => `  ${p.name}  ${p.account.address}  pid ${p.process!.pid}  ${p.address}${hostLine(p.index)}`).join("\n")}

network file: ${networkFile}  ${isDefault ? "(every baton command reads it by default)" : "(give it to baton commands with --network, or BATON_NETWORK)"}
provider keystores: <provider dir>/key.json, password "${DEVNET_KEYSTORE_PASSWORD}"
tenant account ${tenant.address}, funded with 1000 payment tokens. In another terminal:

  export BATON_TENANT_KEY=${privateKeyOf(tenant)}
  ${on(hosts?.tenant)}npm run baton -- job run examples/train/train.yaml --max-price 0.001 --watch${networkFlag}
  ${on(hosts?.tenant)}npm run baton -- audit job <job id>${networkFlag}
  BATON_KEYSTORE_PASSWORD=${DEVNET_KEYSTORE_PASSWORD} ${on(hosts?.provider(0))}npm run baton -- provider status --data-dir ${relative(first.dataDir)}
  ${on(hosts?.tenant)}npm run baton -- devnet fund <address>${networkFlag}      # payment and staking tokens, and ETH

From a script${hosts ? " on the tenant host" : ""}: createBatonClient({ rpcUrl: "${hosts?.rpcUrl ?? devnet.chain.rpcUrl}", deployment: "${relative(devnet.deploymentFile)}", bootstrap: <the addresses above>, account, dataDir })
(see examples/sdk/run-job.ts). Ctrl-C stops everything this started.`);
  }

  await stopped;
  say("stopping the devnet …");
  await devnet.stop({ keep: true });
  say("stopped");
}

interface FundOptions extends NetworkOptions {
  tokens: string;
  stakingTokens: string;
  eth: string;
  json?: boolean;
}

/**
 * `baton devnet fund`: dev tokens (anyone may mint them) and ETH from the devnet's deployer, dev
 * account 0, whose key every Hardhat and Anvil chain shares: a plain transfer and plain contract
 * calls, so no chain's own dev methods (`hardhat_setBalance`, `anvil_setBalance`) are needed. Only
 * on a local chain with dev tokens.
 */
async function fund(to: `0x${string}`, options: FundOptions): Promise<void> {
  const address = await checkedAddress(to);
  const network = await resolveNetwork(options);
  const [{ checkChain, contracts, createChainClient, writeContract }, { loadDeploymentFile }, { devAccount }, viem] =
    await Promise.all([
      import("../sdk/chain/client.ts"),
      import("../sdk/chain/deployments.ts"),
      import("../deploy/local-chain.ts"),
      import("viem"),
    ]);
  const deployment = await loadDeploymentFile(network.deployment);
  if (deployment.chainId !== LOCAL_CHAIN_ID || !deployment.parameters.devTokens) {
    throw new UserError(
      `devnet fund mints dev tokens on a local chain (id ${LOCAL_CHAIN_ID}); this network is chain ${deployment.chainId}` +
        (deployment.parameters.devTokens ? "" : " with real tokens"),
    );
  }
  const admin = createChainClient({
    rpcUrl: network.rpcUrl,
    deployment,
    account: devAccount(0),
    pollingIntervalMs: 50,
  });
  await checkChain(admin);
  const { paymentToken, stakingToken } = contracts(deployment);
  const amounts = {
    paymentTokens: viem.parseEther(options.tokens),
    stakingTokens: viem.parseEther(options.stakingTokens),
    eth: viem.parseEther(options.eth),
  };
  if (amounts.paymentTokens > 0n) {
    await writeContract(admin, { ...paymentToken, functionName: "mint", args: [address, amounts.paymentTokens] });
  }
  if (amounts.stakingTokens > 0n) {
    await writeContract(admin, { ...stakingToken, functionName: "mint", args: [address, amounts.stakingTokens] });
  }
  if (amounts.eth > 0n) {
    const hash = await admin.walletClient!.sendTransaction({ to: address, value: amounts.eth });
    await admin.publicClient.waitForTransactionReceipt({ hash });
  }
  if (options.json) return printJson({ address, ...amounts });
  console.log(
    `funded ${address}: ${options.tokens} payment tokens, ${options.stakingTokens} staking tokens, ${options.eth} ETH`,
  );
}

/** `baton devnet`: a whole network on this machine, and `baton devnet fund` for its accounts. */
export function devnetCommands(program: Command): void {
  const devnet = program
    .command("devnet")
    .description("a local chain, the contracts and N provider nodes, until Ctrl-C; and dev tokens for any account");
  examples(
    devnet
      .command("start", { isDefault: true })
      .description("start the devnet (what `baton devnet` alone does) and print how to use it")
      .option("--providers <n>", "provider nodes to start", integerIn("--providers", 1, 32), 3)
      .option(
        "--chain <evm>",
        "the local chain: hardhat (Hardhat's EDR) or anvil (Foundry's Anvil)",
        chainArg,
        "hardhat",
      )
      .option("--dir <dir>", "where everything lives (emptied first)", DEFAULT_DIR)
      .option(
        "--heartbeat-ms <ms>",
        "the providers' off-chain session heartbeat period",
        integerIn("--heartbeat-ms", 50, 60_000),
        SESSION_HEARTBEAT_MS,
      )
      .option(
        "--block-time <s>",
        "seconds between blocks, as on a public chain (2 on most L2s, 12 on Ethereum); 0 mines each transaction at once",
        blockTimeArg(),
        0,
      )
      .option(
        "--netns",
        "each provider on a host of its own, tenants on one more: Linux network namespaces on one internet (needs root)",
      )
      .option(
        "--behind-nat <n>",
        "with --netns: the last n providers behind home NATs, reached through provider-1's relay",
        integerIn("--behind-nat", 0, 31),
      )
      .option("--logs", "show the providers' logs")
      .option("--json", "print the network as JSON once it is up (progress goes to stderr)"),
    [
      "baton devnet",
      "baton devnet --providers 5 --dir /tmp/devnet --json",
      "baton devnet --block-time 2",
      "baton devnet --chain anvil --block-time 12",
      "sudo baton devnet --netns --providers 3 --behind-nat 2",
    ],
  ).action(start);
  examples(
    networkOptions(
      devnet
        .command("fund")
        .description(
          "mint dev payment and staking tokens to an address and send it ETH, from the deployer (dev account 0)",
        )
        .argument("<address>", "the account to fund", addressArg)
        .option("--tokens <n>", "payment tokens to mint", tokenAmount("--tokens"), "1000")
        .option("--staking-tokens <n>", "staking tokens to mint", tokenAmount("--staking-tokens"), "1000")
        .option("--eth <n>", "ETH to send, for gas", tokenAmount("--eth"), "10")
        .option("--json", "print what was sent as JSON"),
      { bootstrap: false },
    ),
    ["baton devnet fund 0x7099…79C8", "baton devnet fund 0x7099…79C8 --tokens 50 --staking-tokens 0 --eth 1 --json"],
  ).action(fund);
}
