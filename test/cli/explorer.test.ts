import { mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";

import {
  createPublicClient,
  createTestClient,
  createWalletClient,
  encodeFunctionData,
  http,
  keccak256,
  parseEther,
  toHex,
  zeroHash,
  type Hex,
  type PublicClient,
  type TransactionReceipt,
} from "viem";
import pg from "pg";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { jobView, leaseView, networkView, providerView, transactionView } from "../../cli/explorer/api.ts";
import { deployBaton, writeDeployment } from "../../deploy/deploy.ts";
import { devAccount, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { auditJob } from "../../sdk/actions/auditJob.ts";
import { auditLease } from "../../sdk/actions/auditLease.ts";
import { auditProvider } from "../../sdk/actions/auditProvider.ts";
import type { AuditEventSource } from "../../sdk/chain/audit-events.ts";
import { createChainClient, leaseStatus } from "../../sdk/chain/client.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { withGasHeadroom } from "../../sdk/chain/send.ts";
import { leaseIdOf, signOpening, type Opening } from "../../sdk/chain/opening.ts";
import { signQuote, type Quote } from "../../sdk/chain/quote.ts";
import { devTokenAbi, leaseManagerAbi, providerRegistryAbi } from "../../sdk/generated/abis.ts";
import { createIndexer } from "../../sdk/indexer/indexer.ts";
import { indexLocation, openIndexStore, type IndexedEvent, type IndexStore } from "../../sdk/indexer/store.ts";
import { root, spawnScript, stopAll, until } from "../helpers/processes.ts";
import { startPostgres, type ThrowawayPostgres } from "../helpers/postgres.ts";
import { startExplorerUnderTest, type ExplorerUnderTest } from "../helpers/explorer.ts";
import { reorg, snapshotChain } from "../helpers/reorg.ts";
import { startRpcProxy } from "../helpers/rpc-proxy.ts";

const deployer = devAccount(0);
const providerA = devAccount(1);
const providerB = devAccount(2);
const tenant = devAccount(3);
const keeper = devAccount(4);
type Account = typeof deployer;

const STAKE = parseEther("500");
const JOB_ID = keccak256(toHex("job-indexer"));

let chain: LocalChain;
let dir: string;
let deployment: Deployment;
let deploymentFile: string;
let publicClient: PublicClient;
let nonce = 0n;

const wallet = (account: Account) => createWalletClient({ chain: hardhat, account, transport: http(chain.rpcUrl) });

async function send(hash: Promise<Hex>): Promise<TransactionReceipt> {
  const receipt = await publicClient.waitForTransactionReceipt({ hash: await hash });
  expect(receipt.status).toBe("success");
  return receipt;
}

const lm = (account: Account) => ({
  w: wallet(account),
  address: deployment.contracts.leaseManager,
  abi: leaseManagerAbi,
});

/** A quote of `provider` for the tenant's job `jobId`, valid for 5 minutes of chain time. */
async function quoteOf(provider: Account, jobId: Hex): Promise<Quote> {
  const block = await publicClient.getBlock();
  return {
    provider: provider.address,
    tenant: tenant.address,
    jobId,
    resources: keccak256(toHex("gpu:1xfake")),
    image: zeroHash,
    pricePerSecond: parseEther("0.001"),
    collateral: parseEther("50"),
    heartbeatPeriod: 10n,
    heartbeatTimeout: 60n,
    maxDuration: 3600n,
    expiry: block.timestamp + 300n,
    nonce: nonce++,
  };
}

async function openLease(provider: Account, predecessor: bigint, jobId: Hex = JOB_ID): Promise<bigint> {
  const quote = await quoteOf(provider, jobId);
  const signature = await signQuote(provider, hardhat.id, deployment.contracts.leaseManager, quote);
  const { w, address, abi } = lm(tenant);
  await send(
    w.writeContract({
      address,
      abi,
      functionName: "openLease",
      args: [quote, signature, parseEther("1"), predecessor],
    }),
  );
  return publicClient.readContract({ address, abi, functionName: "leaseCount" });
}

/**
 * Opens a lease as the SDK's hand-offs do: the provider submits the tenant's signed opening
 * (`openLeaseFor`), so the lease's id has bit 63 set, past a JS number's and a signed 64-bit column's range.
 */
async function openLeaseFor(provider: Account, predecessor: bigint): Promise<bigint> {
  const block = await publicClient.getBlock();
  const quote = await quoteOf(provider, JOB_ID);
  const opening: Opening = { quote, deposit: parseEther("1"), predecessor, deadline: block.timestamp + 300n };
  const { leaseManager } = deployment.contracts;
  const signature = await signOpening(tenant, hardhat.id, leaseManager, opening);
  const { w, address, abi } = lm(provider);
  await send(w.writeContract({ address, abi, functionName: "openLeaseFor", args: [opening, signature] }));
  return leaseIdOf(hardhat.id, leaseManager, quote);
}

async function heartbeat(provider: Account, leaseId: bigint, cid?: string): Promise<TransactionReceipt> {
  const args = [[leaseId], cid === undefined ? [] : [cid]] as const;
  return settling(provider, encodeFunctionData({ abi: leaseManagerAbi, functionName: "heartbeat", args }));
}

/**
 * A provider's LeaseManager call (`data`) that settles the lease's earnings, sent with the node's
 * gas headroom: what it settles depends on the block's time, and an estimate made in the second of
 * the last settlement (nothing to settle) ran out of gas when mined a second later (CI runs: the
 * Postgres reorg test's heartbeat, the setup's finish).
 */
async function settling(provider: Account, data: Hex): Promise<TransactionReceipt> {
  const to = deployment.contracts.leaseManager;
  const gas = withGasHeadroom(await publicClient.estimateGas({ account: provider, to, data }));
  return send(wallet(provider).sendTransaction({ to, data, gas }));
}

/** Every event of both contracts, as the chain has them now: what a full index must equal. */
async function chainEvents(): Promise<string[]> {
  const toBlock = await publicClient.getBlockNumber();
  const read = async (address: Hex, abi: typeof leaseManagerAbi | typeof providerRegistryAbi) =>
    (await publicClient.getContractEvents({ address, abi, fromBlock: deployment.deployBlock, toBlock })).map(
      (log) => `${log.blockNumber}:${log.logIndex}:${log.eventName}:${log.transactionHash}`,
    );
  const all = [
    ...(await read(deployment.contracts.providerRegistry, providerRegistryAbi)),
    ...(await read(deployment.contracts.leaseManager, leaseManagerAbi)),
  ];
  return all.sort(byPosition);
}

const byPosition = (a: string, b: string): number => {
  const [ab, al] = a.split(":").map(Number);
  const [bb, bl] = b.split(":").map(Number);
  return ab! - bb! || al! - bl!;
};

const keyOf = (e: IndexedEvent): string => `${e.blockNumber}:${e.logIndex}:${e.name}:${e.txHash}`;

let lease1: bigint;
let lease2: bigint;

beforeAll(async () => {
  chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-indexer-"));
  publicClient = createPublicClient({ chain: hardhat, transport: http(chain.rpcUrl), pollingInterval: 50 });
  deployment = await deployBaton({ walletClient: wallet(deployer), publicClient });
  deploymentFile = await writeDeployment(path.join(dir, "deployments"), deployment);
  const { stakingToken, paymentToken, providerRegistry, leaseManager } = deployment.contracts;
  for (const [i, provider] of [providerA, providerB].entries()) {
    await send(
      wallet(deployer).writeContract({
        address: stakingToken,
        abi: devTokenAbi,
        functionName: "mint",
        args: [provider.address, STAKE],
      }),
    );
    await send(
      wallet(provider).writeContract({
        address: stakingToken,
        abi: devTokenAbi,
        functionName: "approve",
        args: [providerRegistry, STAKE],
      }),
    );
    await send(
      wallet(provider).writeContract({
        address: providerRegistry,
        abi: providerRegistryAbi,
        functionName: "register",
        args: [`12D3KooWIndexerProvider${i}`, "{}", STAKE],
      }),
    );
  }
  await send(
    wallet(deployer).writeContract({
      address: paymentToken,
      abi: devTokenAbi,
      functionName: "mint",
      args: [tenant.address, parseEther("100")],
    }),
  );
  await send(
    wallet(tenant).writeContract({
      address: paymentToken,
      abi: devTokenAbi,
      functionName: "approve",
      args: [leaseManager, parseEther("100")],
    }),
  );

  // The demo's story in miniature: a lease that checkpoints and is slashed after its provider goes
  // silent, and its successor on another provider that resumes from the checkpoint and finishes.
  // Both opened as the SDK opens them (openLeaseFor), with ids past 2^63.
  lease1 = await openLeaseFor(providerA, 0n);
  await heartbeat(providerA, lease1);
  await heartbeat(providerA, lease1, "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi");
  const test = createTestClient({ chain: hardhat, mode: "hardhat", transport: http(chain.rpcUrl) });
  await test.increaseTime({ seconds: 120 });
  await test.mine({ blocks: 1 });
  const { w: keeperWallet, address, abi } = lm(keeper);
  await send(keeperWallet.writeContract({ address, abi, functionName: "slashMissedHeartbeat", args: [lease1] }));
  lease2 = await openLeaseFor(providerB, lease1);
  await heartbeat(providerB, lease2);
  const result = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
  await settling(
    providerB,
    encodeFunctionData({ abi: leaseManagerAbi, functionName: "finish", args: [lease2, result] }),
  );
}, 180_000);

afterAll(async () => {
  await stopAll();
  await chain?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/**
 * The backends every indexer test runs on: each test's index is a new SQLite file, or a new
 * database of a Postgres server started for these tests. `index` gives where, as the command line
 * names it (`--indexer`).
 */
const backends = [
  { name: "embedded (SQLite)", postgres: false },
  { name: "Postgres", postgres: true },
];

describe.each(backends)("indexer, $name", (backend) => {
  let postgres: ThrowawayPostgres | undefined;

  if (backend.postgres) {
    beforeAll(async () => {
      postgres = await startPostgres();
    });
    afterAll(async () => {
      await postgres?.stop();
    });
  }

  const index = async (name: string): Promise<string> =>
    postgres === undefined ? path.join(dir, `${name}.db`) : postgres.createDatabase(name);

  /** Runs `test` on a store of a new index named `name`, closing it even when the test fails. */
  async function withStore(location: string, test: (store: IndexStore) => Promise<void>): Promise<void> {
    const store = await openIndexStore(indexLocation(location), deployment);
    try {
      await test(store);
    } finally {
      await store.close();
    }
  }

  it("indexes every event of both contracts, and its views agree with the chain's own counters", async () => {
    await withStore(await index("full"), async (store) => {
      const indexer = createIndexer({ publicClient, deployment, store });
      const result = await indexer.sync();
      expect(result.blockNumber).toBe(await publicClient.getBlockNumber());
      expect((await store.events()).map(keyOf)).toEqual(await chainEvents());

      // The job's two leases (the other backend's reorg test, run before, opened one more of another job).
      const leases = await store.leases({ jobId: JOB_ID });
      expect(leases.map((l) => [l.lease_id, l.predecessor, l.heartbeats, l.checkpoints])).toEqual([
        [String(lease1), "0", 2, 1],
        [String(lease2), String(lease1), 1, 0],
      ]);
      for (const lease of await store.leases()) {
        const view = await publicClient.readContract({
          address: deployment.contracts.leaseManager,
          abi: leaseManagerAbi,
          functionName: "getLease",
          args: [BigInt(lease.lease_id)],
        });
        expect(lease.status).toBe(leaseStatus[view.status]!.toLowerCase());
      }

      const slashes = await store.slashes();
      expect(slashes.map((s) => [s.lease_id, s.caller])).toEqual([[String(lease1), keeper.address.toLowerCase()]]);

      for (const provider of [providerA, providerB]) {
        const onChain = await publicClient.readContract({
          address: deployment.contracts.providerRegistry,
          abi: providerRegistryAbi,
          functionName: "getProvider",
          args: [provider.address],
        });
        const [row] = await store.providers({ provider: provider.address });
        expect([row!.leases, row!.completed, row!.slashed]).toEqual([
          Number(onChain.leasesOpened),
          Number(onChain.leasesCompleted),
          Number(onChain.leasesSlashed),
        ]);
      }
    });
  });

  it("gives audits the same figures as the chain's logs do, in the SDK and with `baton audit --indexer`", async () => {
    const location = await index("audit");
    const chainClient = createChainClient({ rpcUrl: chain.rpcUrl, deployment, pollingIntervalMs: 50 });
    await withStore(location, async (store) => {
      await createIndexer({ publicClient, deployment, store }).sync();
      const fromChain = { chain: chainClient };
      const fromIndex = { chain: chainClient, events: store };
      expect(await auditJob(fromIndex, { jobId: JOB_ID })).toEqual(await auditJob(fromChain, { jobId: JOB_ID }));
      // Three reads of the index: the job's openings and its holders' (none here), then its leases'
      // nine kinds of event in one query.
      const reads: (readonly string[])[] = [];
      const counted: AuditEventSource = {
        cursor: () => store.cursor(),
        logs: (query) => {
          reads.push(query.names);
          return store.logs(query);
        },
      };
      await auditJob({ chain: chainClient, events: counted }, { jobId: JOB_ID });
      expect(reads.map((names) => names.length)).toEqual([1, 1, 9]);
      for (const leaseId of [lease1, lease2]) {
        expect(await auditLease(fromIndex, { leaseId })).toEqual(await auditLease(fromChain, { leaseId }));
      }
      for (const { address: provider } of [providerA, providerB]) {
        expect(await auditProvider(fromIndex, { provider })).toEqual(await auditProvider(fromChain, { provider }));
      }
    });

    const cli = async (args: string[]): Promise<string> => {
      const run = spawnScript("cli/baton.ts", [...args, "--rpc-url", chain.rpcUrl, "--deployment", deploymentFile]);
      const { code } = await run.closed;
      expect(code, run.lines.join("\n")).toBe(0);
      return run.stdout.join("\n");
    };
    for (const args of [
      ["audit", "job", JOB_ID],
      ["audit", "lease", String(lease1), "--json"],
      ["audit", "provider", providerA.address],
    ]) {
      expect(await cli([...args, "--indexer", location])).toBe(await cli(args));
    }
  });

  it("checks the index's block against the chain: once per block at a confirmation depth, every time at none", async () => {
    const proxy = await startRpcProxy(chain.rpcUrl);
    try {
      await withStore(await index("checked"), async (store) => {
        // Two blocks of plain transfers (no Baton event), so that the index's cursor, one block deep,
        // holds the first; the reorg below drops it, so the new branch's block there differs.
        const snapshot = await snapshotChain(chain.rpcUrl);
        const dropped = await send(wallet(keeper).sendTransaction({ to: keeper.address, value: 1n }));
        await send(wallet(deployer).sendTransaction({ to: deployer.address, value: 1n }));
        const indexer = createIndexer({ publicClient, deployment, store, confirmations: 1 });
        await indexer.sync();
        expect((await store.cursor())?.blockNumber).toBe(Number(dropped.blockNumber));

        const client = (confirmations: number) =>
          createChainClient({ rpcUrl: proxy.url, deployment, pollingIntervalMs: 50, confirmations });
        const deep = { chain: client(1), events: store };
        const shallow = { chain: client(0), events: store };
        const blockReads = () =>
          proxy.requests.filter((r) => r.method === "eth_blockNumber" || r.method === "eth_getBlockByNumber").length;

        expect(await auditJob(deep, { jobId: JOB_ID })).toEqual(
          await auditJob({ chain: client(1) }, { jobId: JOB_ID }),
        );
        let before = blockReads();
        await auditJob(deep, { jobId: JOB_ID });
        expect(blockReads(), "a second audit at the same cursor, one block deep").toBe(before);
        before = blockReads();
        await auditJob(shallow, { jobId: JOB_ID });
        await auditJob(shallow, { jobId: JOB_ID });
        expect(blockReads() - before, "two audits at 0 confirmations").toBe(4);

        await reorg(chain.rpcUrl, snapshot, { drop: [dropped.transactionHash], blockTimeS: 0 });
        await expect(auditJob(shallow, { jobId: JOB_ID })).rejects.toThrow(
          `the index's block ${dropped.blockNumber} is no longer the chain's (a reorg)`,
        );
        expect((await indexer.sync()).rolledBack).toBeGreaterThan(0);
        expect(await auditJob(deep, { jobId: JOB_ID })).toEqual(
          await auditJob({ chain: client(1) }, { jobId: JOB_ID }),
        );
      });
    } finally {
      await proxy.stop();
    }
  });

  it("rebuilds an index of an older format from the chain, and refuses it to a reader until then", async () => {
    const location = await index("outdated");
    await withStore(location, async (store) => {
      await createIndexer({ publicClient, deployment, store }).sync();
    });
    // An index made before the format was recorded (lease ids as 64-bit integers) has no `schema`.
    const forget = "DELETE FROM meta WHERE key = 'schema'";
    if (postgres === undefined) {
      const db = new DatabaseSync(location);
      db.exec(forget);
      db.close();
    } else {
      const client = new pg.Client({ connectionString: location });
      await client.connect();
      await client.query(forget);
      await client.end();
    }
    await expect(openIndexStore(indexLocation(location), deployment, { mustExist: true })).rejects.toThrow(
      "is in an older format: start `baton explorer` on it once",
    );
    await withStore(location, async (store) => {
      expect(await store.cursor()).toBeUndefined();
      await createIndexer({ publicClient, deployment, store }).sync();
      expect((await store.events()).map(keyOf)).toEqual(await chainEvents());
    });
  });

  it("refuses an audit from an index that is not there", async () => {
    // A file nobody made; a database that exists but that no explorer indexed into.
    const location = postgres === undefined ? path.join(dir, "missing.db") : await index("missing");
    const run = spawnScript("cli/baton.ts", [
      "audit",
      "job",
      JOB_ID,
      "--indexer",
      location,
      "--rpc-url",
      chain.rpcUrl,
      "--deployment",
      deploymentFile,
    ]);
    const { code } = await run.closed;
    expect(code).not.toBe(0);
    expect(run.lines.join("\n")).toMatch(/no index (at|in the database) .*: start `baton explorer/);
  });

  it("resumes after a restart mid-sync with nothing lost and nothing counted twice", async () => {
    const location = await index("restart");
    const stopped = new AbortController();
    let partial = 0;
    await withStore(location, async (store) => {
      const first = createIndexer({ publicClient, deployment, store, maxRange: 3n });
      let pages = 0;
      await expect(
        first.sync({
          signal: stopped.signal,
          onPage: () => {
            if (++pages === 4) stopped.abort(new Error("stopped mid-sync"));
          },
        }),
      ).rejects.toThrow("stopped mid-sync");
      partial = (await store.events()).length;
      expect((await store.cursor())?.blockNumber).toBe(Number(deployment.deployBlock) + 4 * 3 - 1);
      expect(partial).toBeLessThan((await chainEvents()).length);
    });

    await withStore(location, async (store) => {
      const second = createIndexer({ publicClient, deployment, store, maxRange: 3n });
      const result = await second.sync();
      expect(result.rolledBack).toBe(0);
      expect(result.events).toBe((await chainEvents()).length - partial);
      expect((await store.events()).map(keyOf)).toEqual(await chainEvents());
      // Indexing again reads nothing new.
      expect((await second.sync()).events).toBe(0);
    });
  });

  it("a watch with no onSynced indexes, and once its stop resolves nothing touches the store", async () => {
    await withStore(await index("stopped-watch"), async (store) => {
      // The store as the indexer sees it, noting every call made after the watch's stop resolved.
      let stopped = false;
      const late: string[] = [];
      const noted = new Proxy(store, {
        get(target, property) {
          // Read on the store itself: its getters use private fields, which a proxy does not have.
          const value: unknown = Reflect.get(target, property);
          if (typeof value !== "function") return value;
          return (...args: unknown[]) => {
            if (stopped) late.push(String(property));
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });
      const indexer = createIndexer({ publicClient, deployment, store: noted, maxRange: 3n });
      let pageWritten!: () => void;
      let failed!: (error: unknown) => void;
      const firstPage = new Promise<void>((resolve, reject) => {
        pageWritten = resolve;
        failed = reject;
      });
      const errors: unknown[] = [];
      // No onSynced: the watch called it with the sync's result as `onSynced?.(await sync())`, which
      // without one skipped the sync itself, and such a watch never indexed anything.
      const unwatch = indexer.watch({
        onError: (error) => {
          errors.push(error);
          failed(error);
        },
        onPage: () => pageWritten(),
      });
      const noPage = setTimeout(() => failed(new Error("the watch wrote no page in 30 s")), 30_000);
      try {
        await firstPage;
      } finally {
        clearTimeout(noPage);
      }
      // Stopped with the next page's reads under way.
      await unwatch();
      stopped = true;
      // What a watch still running would do next (its page's reads end, then it writes) takes a
      // few milliseconds on loopback: half a second is ample to see it.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(late).toEqual([]);
      expect(errors).toEqual([]);
      expect((await store.cursor())?.blockNumber).toBeGreaterThanOrEqual(Number(deployment.deployBlock) + 2);
    });
  });

  it("undoes a reorg: an event whose transaction the new branch dropped leaves the index", async () => {
    await withStore(await index("reorg"), async (store) => {
      const indexer = createIndexer({ publicClient, deployment, store });
      await indexer.sync();
      const snapshot = await snapshotChain(chain.rpcUrl);
      // A heartbeat is gone from the new branch; a claim by provider B survives, in another block.
      const { address, abi } = lm(tenant);
      const heartbeatLease = await openLease(providerA, 0n, keccak256(toHex("job-reorged")));
      const beat = await heartbeat(providerA, heartbeatLease);
      const { w: bWallet } = lm(providerB);
      const claim = await send(bWallet.writeContract({ address, abi, functionName: "claim", args: [[lease2]] }));
      await indexer.sync();
      expect((await store.events()).some((e) => e.txHash === beat.transactionHash.toLowerCase())).toBe(true);

      await reorg(chain.rpcUrl, snapshot, { drop: [beat.transactionHash], blockTimeS: 0 });
      const result = await indexer.sync();
      expect(result.rolledBack).toBeGreaterThan(0);
      const events = await store.events();
      expect(events.some((e) => e.txHash === beat.transactionHash.toLowerCase())).toBe(false);
      expect(events.some((e) => e.txHash === claim.transactionHash.toLowerCase())).toBe(true);
      expect(events.map(keyOf)).toEqual(await chainEvents());
      const [row] = await store.leases({ leaseId: String(heartbeatLease) });
      expect(row!.heartbeats).toBe(0);
    });
  });

  if (backend.postgres) {
    it("answers a page from one snapshot: a page written meanwhile is not seen halfway", async () => {
      await withStore(await index("snapshot"), async (store) => {
        await createIndexer({ publicClient, deployment, store }).sync();
        const before = await store.cursor();
        const seen = await store.snapshot(async (reader) => {
          const first = await reader.cursor();
          // The indexer commits a page (on another connection) while the answer is being read.
          await store.writePage([], new Map(), { blockNumber: before!.blockNumber + 1, blockHash: "0x01" });
          return [first, await reader.cursor()];
        });
        expect(seen).toEqual([before, before]);
        expect((await store.cursor())?.blockNumber).toBe(before!.blockNumber + 1);
      });
    });

    it("refuses a database it cannot use, saying what to do", async () => {
      const { port } = new URL(postgres!.url);
      const refusals: [string, RegExp][] = [
        [
          // Port 1: nothing listens there.
          `postgres://baton:secret@127.0.0.1:1/explorer`,
          /cannot reach Postgres at postgres:\/\/baton:\*\*\*@127\.0\.0\.1:1\/explorer: is the server running/,
        ],
        [`postgres://postgres@127.0.0.1:${port}/absent`, /database "absent" does not exist .*: create it first/],
        [`postgres://nobody@127.0.0.1:${port}/postgres`, /refused the login .*: check the user and its password/],
      ];
      for (const [url, message] of refusals) {
        await expect(openIndexStore({ databaseUrl: url }, deployment), url).rejects.toThrow(message);
      }
      const url = await index("other-deployment");
      await (await openIndexStore({ databaseUrl: url }, deployment)).close();
      const other = { ...deployment, chainId: deployment.chainId + 1 };
      await expect(openIndexStore({ databaseUrl: url }, other)).rejects.toThrow(
        /holds the events of deployment .*, not /,
      );
    });

    it("serves from `baton explorer --database-url` the same pages' data as from the embedded index", async () => {
      const url = await index("served");
      const explorer = spawnScript("cli/baton.ts", [
        "explorer",
        "--port",
        "0",
        "--poll-ms",
        "200",
        "--database-url",
        url,
        "--rpc-url",
        chain.rpcUrl,
        "--deployment",
        deploymentFile,
      ]);
      try {
        const line = await explorer.waitFor(/^explorer: http/, 60_000);
        expect(line).toContain(`(index ${url})`);
        const served = /(http:\/\/\S+)/.exec(line)![1]!;
        const api = async (pathname: string): Promise<unknown> => (await fetch(`${served}${pathname}`)).json();
        const head = Number(await publicClient.getBlockNumber({ cacheTime: 0 }));
        await until(
          async () => ((await api("/api/network")) as { asOf: number | null }).asOf === head,
          60_000,
          `the explorer indexing block ${head}`,
        );
        await withStore(path.join(dir, "served.db"), async (embedded) => {
          await createIndexer({ publicClient, deployment, store: embedded }).sync();
          const slash = (await embedded.slashes())[0]!;
          for (const [pathname, view] of [
            ["/api/network", () => networkView(embedded)],
            [`/api/provider/${providerA.address}`, () => providerView(embedded, providerA.address)],
            [`/api/lease/${lease1}`, () => leaseView(embedded, String(lease1))],
            [`/api/job/${JOB_ID}`, () => jobView(embedded, JOB_ID)],
            [`/api/tx/${slash.tx_hash}`, () => transactionView(embedded, slash.tx_hash)],
          ] as const) {
            expect(await api(pathname), pathname).toEqual(JSON.parse(JSON.stringify(await view())));
          }
        });
      } finally {
        await explorer.stop();
      }
    });
  }
});

describe("explorer pages, in Debian's chromium", () => {
  /** Screenshots of each page, kept as the run's artifacts. */
  const shots = path.join(root, ".baton", "test-artifacts", "explorer");
  let explorer: ExplorerUnderTest;

  const providerView = (address: Hex) =>
    publicClient.readContract({
      address: deployment.contracts.providerRegistry,
      abi: providerRegistryAbi,
      functionName: "getProvider",
      args: [address],
    });

  /** Waits until the explorer's index holds the chain's head. */
  const caughtUp = async () => explorer.caughtUp(await publicClient.getBlockNumber({ cacheTime: 0 }));
  const open = (pathname: string) => explorer.open(pathname);

  beforeAll(async () => {
    await mkdir(shots, { recursive: true });
    explorer = await startExplorerUnderTest({
      rpcUrl: chain.rpcUrl,
      deploymentFile,
      db: path.join(dir, "pages.db"),
    });
    await caughtUp();
  }, 120_000);

  afterAll(async () => {
    await explorer?.stop();
  });

  it("draws the network at a glance", async () => {
    const page = await open("/");
    expect(await page.locator("[data-figure=providers]").textContent()).toBe("2");
    expect(await page.locator("[data-figure=slashes]").textContent()).toBe("1");
    await page.locator(".uplot").first().waitFor();
    await page.screenshot({ path: path.join(shots, "network.png"), fullPage: true });
    await page.close();
  });

  it("shows a job's two leases linked by the hand-off, the checkpoint resumed from, and the slash", async () => {
    const page = await open(`/job/${JOB_ID}`);
    expect(await page.locator("[data-lease]").count()).toBe(2);
    const handOff = page.locator(`[data-hand-off="${lease1}-${lease2}"]`);
    expect(await handOff.textContent()).toContain("resumed from");
    expect(await page.locator(`[data-lease="${lease1}"] .status-slashed`).textContent()).toBe("slashed");
    expect(await page.locator("[data-figure=slashes]").textContent()).toBe("1");
    await page.screenshot({ path: path.join(shots, "job.png"), fullPage: true });
    await page.close();
  });

  it("shows a provider's counters equal to the registry's", async () => {
    for (const provider of [providerA, providerB]) {
      const onChain = await providerView(provider.address);
      const page = await open(`/provider/${provider.address}`);
      expect(await page.locator("[data-figure=leases-opened]").textContent()).toBe(String(onChain.leasesOpened));
      expect(await page.locator("[data-figure=leases-completed]").textContent()).toBe(String(onChain.leasesCompleted));
      expect(await page.locator("[data-figure=leases-slashed]").textContent()).toBe(String(onChain.leasesSlashed));
      if (provider === providerA) await page.screenshot({ path: path.join(shots, "provider.png"), fullPage: true });
      await page.close();
    }
  });

  it("shows a new heartbeat on a lease's page without a reload", async () => {
    const leaseId = await openLease(providerB, 0n, keccak256(toHex("job-live")));
    await caughtUp();
    const page = await open(`/lease/${leaseId}`);
    const beats = page.locator("li[data-event=HeartbeatRecorded]");
    expect(await beats.count()).toBe(0);
    await page.evaluate('document.body.setAttribute("data-same-document", "yes")');
    await heartbeat(providerB, leaseId, "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku");
    await beats.first().waitFor({ timeout: 60_000 });
    expect(await beats.count()).toBe(1);
    // The same document: the page redrew itself, nobody reloaded it.
    expect(await page.evaluate('document.body.getAttribute("data-same-document")')).toBe("yes");
    await page.screenshot({ path: path.join(shots, "lease.png"), fullPage: true });
    await page.close();
  });

  it("fits a phone's width, every link named for a screen reader", async () => {
    for (const [name, pathname] of [
      ["network", "/"],
      ["job", `/job/${JOB_ID}`],
      ["provider", `/provider/${providerA.address}`],
      ["lease", `/lease/${lease1}`],
    ] as const) {
      const page = await explorer.open(pathname, { width: 390, height: 844, isMobile: true });
      expect(await page.evaluate("document.documentElement.scrollWidth"), name).toBeLessThanOrEqual(390);
      expect(await page.locator("h1").count(), name).toBe(1);
      const unnamed = await page.evaluate(
        "[...document.querySelectorAll('a')].filter((a) => a.textContent.trim() === '').length",
      );
      expect(unnamed, name).toBe(0);
      await page.screenshot({ path: path.join(shots, `phone-${name}.png`), fullPage: true });
      await page.close();
    }
  });

  it("says clearly that an unknown lease is not found", async () => {
    const page = await open("/lease/999999");
    expect(await page.locator("h1").textContent()).toBe("Lease 999999 not found");
    expect(await page.locator("[role=alert]").textContent()).toContain("no lease 999999");
    await page.screenshot({ path: path.join(shots, "not-found.png") });
    await page.close();
  });
});
