import { constants } from "node:fs";
import { access, copyFile, mkdir, rm } from "node:fs/promises";
import path from "node:path";

import type { Command } from "commander";

import type { PrivateKey } from "@libp2p/interface";
import type { ChainClient } from "../sdk/chain/client.ts";
import { UserError } from "../sdk/errors.ts";
import { keystorePassword, openAccount, passwordOption, writeNewKeystore, type PasswordOptions } from "./key.ts";
import { networkOptions, resolveNetwork, type NetworkOptions } from "./network.ts";
import { printJson, table } from "./output.ts";
import { collect, examples, tokenAmount } from "./program.ts";

const DEFAULT_DATA_DIR = path.join(".baton", "provider");
/** The keystore's name in a data dir (the config may name another). */
const KEYSTORE = "key.json";

interface ProviderOptions extends PasswordOptions {
  dataDir: string;
  json?: boolean;
}

/** Adds the options every provider command takes: its data dir and how to open its keystore. */
function providerOptions(command: Command, { json = true }: { json?: boolean } = {}): Command {
  command.option("--data-dir <dir>", "the node's data dir: keys, config, lease database", DEFAULT_DATA_DIR);
  passwordOption(command);
  return json ? command.option("--json", "print the result as JSON") : command;
}

const exists = (file: string): Promise<boolean> =>
  access(file).then(
    () => true,
    () => false,
  );

/** The node's account: BATON_PROVIDER_KEY in development, else the data dir's keystore. */
async function providerAccount(options: ProviderOptions, keystore: string) {
  return openAccount(options, {
    keystore: path.resolve(options.dataDir, keystore),
    devKeyVariable: "BATON_PROVIDER_KEY",
  });
}

/** The node's chain client and peer identity, from its data dir, checked to be on the deployment's chain. */
async function connect(options: ProviderOptions): Promise<{ chain: ChainClient; peerId: string; peerKey: PrivateKey }> {
  const [
    { chainClientOptions, DATA_FILES, loadNodeConfig },
    { checkChain, createChainClient },
    { loadDeploymentFile },
    host,
    peer,
  ] = await Promise.all([
    import("../node/config.ts"),
    import("../sdk/chain/client.ts"),
    import("../sdk/chain/deployments.ts"),
    import("../sdk/p2p/host.ts"),
    import("@libp2p/peer-id"),
  ]);
  const config = await loadNodeConfig(options.dataDir);
  const deployment = await loadDeploymentFile(path.resolve(options.dataDir, config.deployment));
  const account = await providerAccount(options, config.keystore);
  const chain = createChainClient({ ...chainClientOptions(config), deployment, account });
  await checkChain(chain);
  const peerKey = await host.loadOrCreatePeerKey(path.join(options.dataDir, DATA_FILES.peerKey));
  return { chain, peerId: peer.peerIdFromPrivateKey(peerKey).toString(), peerKey };
}

async function stakingAmount(chain: ChainClient, text: string): Promise<bigint> {
  const [{ contracts }, { parseUnits }] = await Promise.all([import("../sdk/chain/client.ts"), import("viem")]);
  const decimals = await chain.publicClient.readContract({
    ...contracts(chain.deployment).stakingToken,
    functionName: "decimals",
  });
  return parseUnits(text, decimals);
}

interface InitOptions extends ProviderOptions, NetworkOptions {
  keystore?: string;
  listen?: string[];
  fakeGpus?: string;
  cpuJobs?: boolean;
  unsafeNoSandbox?: boolean;
  priceBase: string;
  pricePerGpu: string;
  collateral: string;
}

async function init(options: InitOptions): Promise<void> {
  const { dataDir } = options;
  const [
    { CONFIG_FILE, DATA_FILES, writeNodeConfig },
    { loadOrCreatePeerKey },
    { peerIdFromPrivateKey },
    accounts,
    { loadAccount },
  ] = await Promise.all([
    import("../node/config.ts"),
    import("../sdk/p2p/host.ts"),
    import("@libp2p/peer-id"),
    import("viem/accounts"),
    import("../node/keystore.ts"),
  ]);
  for (const file of [CONFIG_FILE, KEYSTORE]) {
    if (await exists(path.join(dataDir, file))) {
      throw new UserError(`${dataDir} is already set up (it has ${file}): use it as it is, or give another --data-dir`);
    }
  }
  const network = await resolveNetwork(options);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  // The config first: writing it checks it, before a key is made for a node that could not start.
  const file = await writeNodeConfig(dataDir, {
    rpcUrl: network.rpcUrl,
    deployment: network.deployment,
    keystore: KEYSTORE,
    listen: options.listen ?? ["/ip4/127.0.0.1/tcp/0"],
    bootstrap: network.bootstrap,
    gpus: options.fakeGpus ? { fake: options.fakeGpus } : "auto",
    cpuJobs: options.cpuJobs === true,
    sandbox: options.unsafeNoSandbox ? "unsafe-none" : "bwrap",
    price: { basePerSecond: options.priceBase, perGpuPerSecond: options.pricePerGpu },
    collateralPerLease: options.collateral,
  });
  const keystore = path.join(dataDir, KEYSTORE);
  let address: string;
  try {
    if (process.env.BATON_PROVIDER_KEY) {
      address = (await loadAccount({ privateKey: process.env.BATON_PROVIDER_KEY })).address;
    } else if (options.keystore !== undefined) {
      // An existing key (`baton key new`): it must open with the password the node will be given.
      const password = await keystorePassword(options, { keystore: options.keystore });
      address = (await loadAccount({ keystore: options.keystore, password })).address;
      await copyFile(options.keystore, keystore, constants.COPYFILE_EXCL);
    } else {
      const privateKey = accounts.generatePrivateKey();
      address = accounts.privateKeyToAccount(privateKey).address;
      await writeNewKeystore(keystore, privateKey, () => keystorePassword(options, { keystore, confirm: true }));
    }
  } catch (error) {
    // No half-made data dir (a config without its key), which a second `init` would refuse.
    await rm(file, { force: true });
    throw error;
  }
  const peerKey = await loadOrCreatePeerKey(path.join(dataDir, DATA_FILES.peerKey));
  const peerId = peerIdFromPrivateKey(peerKey).toString();
  if (options.json) return printJson({ config: file, address, peerId });
  console.log(`wrote ${file}`);
  console.log(`address  ${address}`);
  console.log(`peer id  ${peerId}`);
  console.log(
    `next: fund the address with gas and staking tokens (on a devnet: baton devnet fund ${address}), ` +
      "then `baton provider register --stake N`",
  );
}

async function register(options: ProviderOptions & { stake: string; metadata: string }): Promise<void> {
  const [{ chain, peerId, peerKey }, { contracts, writeContract }, proof, { formatUnits }] = await Promise.all([
    connect(options),
    import("../sdk/chain/client.ts"),
    import("../sdk/chain/peer-proof.ts"),
    import("viem"),
  ]);
  const { registry, stakingToken } = contracts(chain.deployment);
  const me = chain.walletClient!.account.address;
  // Tenants trust our peer id only with this proof that its key is ours (see sdk/chain/peer-proof.ts).
  const binding = proof.peerBinding(chain.deployment, me);
  const metadata = await proof.metadataWithPeerProof(options.metadata, peerKey, binding);
  const amount = await stakingAmount(chain, options.stake);
  const balance = await chain.publicClient.readContract({ ...stakingToken, functionName: "balanceOf", args: [me] });
  if (balance < amount) {
    throw new UserError(
      `insufficient staking-token balance: ${formatUnits(balance, 18)} < ${options.stake}` +
        ` (on a devnet: baton devnet fund ${me})`,
    );
  }
  await writeContract(chain, { ...stakingToken, functionName: "approve", args: [registry.address, amount] });
  const current = await chain.publicClient.readContract({ ...registry, functionName: "getProvider", args: [me] });
  const done: string[] = [];
  if (current.registered) {
    if (current.peerId !== peerId || !(await proof.verifyPeerProof(peerId, current.metadata, binding))) {
      await writeContract(chain, { ...registry, functionName: "updateProfile", args: [peerId, metadata] });
      done.push(`updated the profile of ${me}: peer id ${peerId}, with its proof`);
    }
    await writeContract(chain, { ...registry, functionName: "stake", args: [amount] });
    done.push(`added ${options.stake} to the stake of ${me}`);
  } else {
    await writeContract(chain, { ...registry, functionName: "register", args: [peerId, metadata, amount] });
    done.push(`registered ${me} as ${peerId} with a stake of ${options.stake}`);
  }
  if (options.json) return printJson({ address: me, peerId, staked: amount, registered: !current.registered });
  for (const line of done) console.log(line);
}

async function start(
  options: ProviderOptions & { bootstrap?: string[]; listen?: string[]; exitWithStdin?: boolean },
): Promise<void> {
  const { loadNodeConfig } = await import("../node/config.ts");
  const config = await loadNodeConfig(options.dataDir);
  config.bootstrap.push(...(options.bootstrap ?? []));
  if (options.listen) config.listen = options.listen;
  const password = process.env.BATON_PROVIDER_KEY
    ? undefined
    : await keystorePassword(options, { keystore: path.resolve(options.dataDir, config.keystore) });
  // Loaded here: the node (libp2p, Helia, the sandbox) costs seconds that other commands need not pay.
  const { startProviderNode } = await import("../node/provider-node.ts");
  const node = await startProviderNode({
    dataDir: options.dataDir,
    config,
    ...(process.env.BATON_PROVIDER_KEY ? { privateKey: process.env.BATON_PROVIDER_KEY } : {}),
    ...(password === undefined ? {} : { password }),
  });
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    console.log(
      `${signal}: draining (no new leases; running ones go on for up to ${config.drainTimeoutMs / 1000} s, then are handed back to their tenants)`,
    );
    node.drain().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  // Before the line that says we are up: a supervisor may signal as soon as it reads it, and a
  // SIGTERM that lands before the handler kills the process outright (seen under load in tests).
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  console.log(`provider node listening on ${node.addresses.join(", ")}`);
  if (node.metricsPort !== undefined) console.log(`metrics on http://127.0.0.1:${node.metricsPort}/metrics`);
  if (options.exitWithStdin) {
    // Started by a supervisor (`baton devnet`) that holds our stdin: when it dies, even by SIGKILL,
    // the pipe closes and we stop at once, jobs included, rather than live on as an orphan.
    process.stdin.on("end", () => {
      if (stopping) return;
      stopping = true;
      console.log("stdin closed: the supervisor is gone; stopping");
      node.stop().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    });
    process.stdin.resume();
  }
}

async function status(options: ProviderOptions): Promise<void> {
  const [{ chain }, { contracts, leaseStatus }, { DATA_FILES }, { NodeStore }, { formatUnits }] = await Promise.all([
    connect(options),
    import("../sdk/chain/client.ts"),
    import("../node/config.ts"),
    import("../node/store.ts"),
    import("viem"),
  ]);
  const { registry, leaseManager } = contracts(chain.deployment);
  const me = chain.walletClient!.account.address;
  const provider = await chain.publicClient.readContract({ ...registry, functionName: "getProvider", args: [me] });
  const claimable = await chain.publicClient.readContract({ ...leaseManager, functionName: "claimable", args: [me] });
  const store = new NodeStore(path.join(options.dataDir, DATA_FILES.database));
  const rows = store.leases(["preparing", "running", "exited", "finished", "fenced", "failed", "handed-back"]);
  store.close();
  const leases = await Promise.all(
    rows.slice(-20).map(async (row) => {
      const lease = await chain.publicClient.readContract({
        ...leaseManager,
        functionName: "getLease",
        args: [row.leaseId],
      });
      return { id: row.leaseId, node: row.state, chain: leaseStatus[lease.status] ?? "?", earned: lease.earned };
    }),
  );
  const unclaimed = claimable + leases.reduce((sum, l) => sum + l.earned, 0n);
  if (options.json) return printJson({ address: me, provider, claimable, unclaimed, leases });
  const f = (v: bigint): string => formatUnits(v, 18);
  console.log(
    table([
      ["address", me],
      ["registered", provider.registered ? `yes, peer ${provider.peerId}` : "no"],
      ["eligible", provider.eligible ? "yes" : "no (stake below minimum)"],
      ["stake", f(provider.stake)],
      ["locked as collateral", f(provider.locked)],
      [
        "unbonding",
        provider.unbonding > 0n
          ? `${f(provider.unbonding)} until ${new Date(Number(provider.unbondingEndsAt) * 1000).toISOString()}`
          : "0",
      ],
      [
        "leases opened/completed/slashed",
        `${provider.leasesOpened}/${provider.leasesCompleted}/${provider.leasesSlashed}`,
      ],
      ["seconds served", provider.secondsServed],
      ["claimable now", f(claimable)],
      ["earned, unclaimed (incl. unsettled)", f(unclaimed)],
    ]),
  );
  if (leases.length > 0) {
    console.log("");
    console.log(
      table([
        ["lease", "node", "chain", "earned (unsettled)"],
        ...leases.map((l) => [l.id, l.node, l.chain, f(l.earned)]),
      ]),
    );
  }
}

async function unstake(amountText: string, options: ProviderOptions): Promise<void> {
  const [{ chain }, { contracts, writeContract }] = await Promise.all([
    connect(options),
    import("../sdk/chain/client.ts"),
  ]);
  const { registry } = contracts(chain.deployment);
  const amount = await stakingAmount(chain, amountText);
  await writeContract(chain, { ...registry, functionName: "requestUnstake", args: [amount] });
  const provider = await chain.publicClient.readContract({
    ...registry,
    functionName: "getProvider",
    args: [chain.walletClient!.account.address],
  });
  const until = new Date(Number(provider.unbondingEndsAt) * 1000).toISOString();
  if (options.json) return printJson({ unbonding: provider.unbonding, withdrawAfter: until });
  console.log(`unbonding ${amountText}; withdraw after ${until}`);
}

async function withdraw(options: ProviderOptions): Promise<void> {
  const [{ chain }, { contracts, writeContract }, { formatUnits }] = await Promise.all([
    connect(options),
    import("../sdk/chain/client.ts"),
    import("viem"),
  ]);
  const { registry } = contracts(chain.deployment);
  const me = chain.walletClient!.account.address;
  const before = await chain.publicClient.readContract({ ...registry, functionName: "getProvider", args: [me] });
  await writeContract(chain, { ...registry, functionName: "withdraw", args: [] });
  if (options.json) return printJson({ withdrawn: before.unbonding });
  console.log(`withdrawn ${formatUnits(before.unbonding, 18)}`);
}

/** `baton provider …`: set up, register and run a provider node, and see what it earned. */
export function providerCommands(program: Command): void {
  const provider = program
    .command("provider")
    .description("run a provider: keys, registration and stake, the node, earnings")
    .addHelpText(
      "after",
      "\nThe keystore's password comes from --password-file, BATON_KEYSTORE_PASSWORD, or the terminal;\n" +
        "BATON_PROVIDER_KEY=0x… replaces the keystore in development. A devnet's providers use the password `devnet`.",
    );

  examples(
    networkOptions(
      providerOptions(
        provider
          .command("init")
          .description("create the node's key, peer identity and config in its data dir")
          .option("--keystore <file>", "use this existing keystore (`baton key new`) instead of a new key")
          .option("--listen <multiaddr>", "where the node listens (repeatable; default /ip4/127.0.0.1/tcp/0)", collect)
          .option("--fake-gpus <spec>", "advertise fake GPUs, e.g. 1xFakeGPU (tests and development only)")
          .option("--cpu-jobs", "also serve jobs that need no GPU (priced by --price-base, which must be above 0)")
          .option("--unsafe-no-sandbox", "run jobs without bubblewrap (never for untrusted tenants)")
          .option("--price-base <wei>", "price per second of any lease, in payment-token base units", "0")
          .option("--price-per-gpu <wei>", "price per GPU per second, in payment-token base units", "1000000000000")
          .option("--collateral <wei>", "stake locked per lease, in staking-token base units", "10000000000000000000"),
      ),
    ),
    [
      "baton provider init --fake-gpus 1xFakeGPU          # on a devnet: its network file says where",
      "baton provider init --cpu-jobs --price-base 1000000000000 --data-dir .baton/cpu-provider",
      "baton provider init --rpc-url http://127.0.0.1:8545 --deployment deployments/31337.json",
      "baton provider init --keystore provider.json --network net.json --data-dir /var/lib/baton",
    ],
  ).action(init);

  examples(
    providerOptions(
      provider
        .command("register")
        .description("register the node's address and peer id with a stake, or add stake")
        .requiredOption("--stake <tokens>", "staking tokens to stake", tokenAmount("--stake"))
        .option("--metadata <json>", "a JSON object published with the registration", "{}"),
    ),
    ["baton provider register --stake 200"],
  ).action(register);

  examples(
    providerOptions(
      provider
        .command("start")
        .description("run the node until SIGTERM or Ctrl-C, which drain it (no new leases; running ones end)")
        .option("--bootstrap <multiaddr>", "a peer to join through, besides the config's (repeatable)", collect)
        .option("--listen <multiaddr>", "where the node listens, instead of the config's (repeatable)", collect)
        .option("--exit-with-stdin", "stop when stdin closes (for supervisors such as `baton devnet`)"),
      { json: false },
    ),
    ["baton provider start", "BATON_KEYSTORE_PASSWORD=devnet baton provider start --data-dir .baton/devnet/provider-1"],
  ).action(start);

  examples(
    providerOptions(
      provider.command("status").description("stake, locked collateral, leases, earnings and what is claimable"),
    ),
    [
      "baton provider status",
      "BATON_KEYSTORE_PASSWORD=devnet baton provider status --data-dir .baton/devnet/provider-1 --json",
    ],
  ).action(status);

  examples(
    providerOptions(
      provider
        .command("unstake")
        .description("start unbonding free stake; withdraw it once the unbonding period passes")
        .argument("<amount>", "staking tokens to unbond", tokenAmount("the amount")),
    ),
    ["baton provider unstake 50"],
  ).action(unstake);

  examples(
    providerOptions(provider.command("withdraw").description("withdraw stake whose unbonding period has passed")),
    ["baton provider withdraw"],
  ).action(withdraw);
}
