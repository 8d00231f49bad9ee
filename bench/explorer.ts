/**
 * bench:explorer: how fast the explorer indexes and answers. On a local chain it opens LEASES
 * leases (default 10,000) across 8 providers, sends HEARTBEATS heartbeat rounds (default 3, each
 * a batch of 100 leases per transaction) and finishes every tenth lease, then measures:
 *
 * - `auditJob` chain-only (eth_getLogs): the reference;
 *
 * and then for each backend, the embedded index (SQLite) and Postgres (a server the bench starts,
 * as the tests do: test/helpers/postgres.ts):
 *
 * - indexing from scratch (events per second);
 * - time to first page: from starting the explorer on that index to its first API answer;
 * - p50/p99 latency of the job and provider page APIs (200 requests each, over HTTP);
 * - `auditJob` from the index, against the chain-only one: the first at the index's block (it checks
 *   that block against the chain), then the median of later ones (which need not).
 *
 * The index and both audits read CONFIRMATIONS blocks below the head, as on a public chain.
 *
 * Prints the figures and writes bench/results/explorer.json. Usage: npm run bench:explorer
 * (smaller: LEASES=1000 HEARTBEATS=2 npm run bench:explorer)
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import {
  createPublicClient,
  createWalletClient,
  http,
  keccak256,
  parseEther,
  toHex,
  zeroHash,
  type Hex,
  type PublicClient,
} from "viem";
import { hardhat } from "viem/chains";

import { startExplorer } from "../cli/explorer/server.ts";
import { deployBaton } from "../deploy/deploy.ts";
import { devAccount, startLocalChain } from "../deploy/local-chain.ts";
import { auditJob } from "../sdk/actions/auditJob.ts";
import { createChainClient } from "../sdk/chain/client.ts";
import { signQuote, type Quote } from "../sdk/chain/quote.ts";
import { devTokenAbi, leaseManagerAbi, providerRegistryAbi } from "../sdk/generated/abis.ts";
import { createIndexer } from "../sdk/indexer/indexer.ts";
import { openIndexStore, type IndexLocation } from "../sdk/indexer/store.ts";
import { startPostgres } from "../test/helpers/postgres.ts";

const LEASES = Number(process.env.LEASES ?? 10_000);
const HEARTBEATS = Number(process.env.HEARTBEATS ?? 3);
/** Providers 1–8 and tenants 9–16 of the devnet's 20 funded accounts. */
const PROVIDERS = 8;
/** Leases one heartbeat transaction covers: well inside a block's gas limit. */
const BATCH = 100;
const REQUESTS = 200;
/**
 * The depth the index and both audits read at, as on a public chain: an audit from the index then
 * checks the index's block against the chain once, and later audits at that block trust it.
 */
const CONFIRMATIONS = 2;
/** Audits from the index timed after the first (they are well under a millisecond each). */
const AUDITS = 21;
/** Gas given to each transaction, so that none waits on an estimate. */
const GAS = 3_000_000n;

/** The median time of `times` runs of `run`, in ms. */
async function median(run: () => Promise<unknown>, times: number): Promise<number> {
  const all: number[] = [];
  for (let i = 0; i < times; i++) {
    const t = performance.now();
    await run();
    all.push(performance.now() - t);
  }
  return all.sort((a, b) => a - b)[Math.floor(times / 2)]!;
}

const percentile = (sorted: number[], p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
const round = (x: number, places = 1): number => Number(x.toFixed(places));

async function main(): Promise<void> {
  const chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
  const dir = await mkdtemp(path.join(os.tmpdir(), "baton-bench-explorer-"));
  try {
    const publicClient = createPublicClient({
      chain: hardhat,
      transport: http(chain.rpcUrl),
      pollingInterval: 50,
    }) as PublicClient;
    const wallet = (i: number) =>
      createWalletClient({ chain: hardhat, account: devAccount(i), transport: http(chain.rpcUrl) });
    const deployment = await deployBaton({ walletClient: wallet(0), publicClient });
    const { stakingToken, paymentToken, providerRegistry, leaseManager } = deployment.contracts;
    const wait = async (hash: Promise<Hex>) => publicClient.waitForTransactionReceipt({ hash: await hash });

    // One tenant per provider, so that openings go in parallel.
    const perProvider = Math.ceil(LEASES / PROVIDERS);
    const stake = parseEther("1000") + BigInt(perProvider) * parseEther("1");
    for (let p = 0; p < PROVIDERS; p++) {
      const provider = devAccount(1 + p).address;
      const tenant = devAccount(1 + PROVIDERS + p).address;
      await wait(
        wallet(0).writeContract({
          address: stakingToken,
          abi: devTokenAbi,
          functionName: "mint",
          args: [provider, stake],
        }),
      );
      await wait(
        wallet(0).writeContract({
          address: paymentToken,
          abi: devTokenAbi,
          functionName: "mint",
          args: [tenant, parseEther("1000000")],
        }),
      );
    }
    const { timestamp } = await publicClient.getBlock();
    const generating = performance.now();
    const jobs: Hex[] = [];
    await Promise.all(
      Array.from({ length: PROVIDERS }, async (_, p) => {
        const provider = devAccount(1 + p);
        const tenant = wallet(1 + PROVIDERS + p);
        await wait(
          wallet(1 + p).writeContract({
            address: stakingToken,
            abi: devTokenAbi,
            functionName: "approve",
            args: [providerRegistry, stake],
          }),
        );
        await wait(
          wallet(1 + p).writeContract({
            address: providerRegistry,
            abi: providerRegistryAbi,
            functionName: "register",
            args: [`12D3KooWBench${p}`, "{}", stake],
          }),
        );
        await wait(
          tenant.writeContract({
            address: paymentToken,
            abi: devTokenAbi,
            functionName: "approve",
            args: [leaseManager, parseEther("1000000")],
          }),
        );
        let nonce = await publicClient.getTransactionCount({ address: tenant.account.address, blockTag: "pending" });
        let last: Hex = zeroHash;
        for (let i = 0; i < perProvider; i++) {
          const jobId = keccak256(toHex(`bench-job-${p}-${i}`));
          if (i === 0) jobs.push(jobId);
          const quote: Quote = {
            provider: provider.address,
            tenant: tenant.account.address,
            jobId,
            resources: keccak256(toHex("gpu:1xbench")),
            image: zeroHash,
            pricePerSecond: parseEther("0.0001"),
            collateral: parseEther("1"),
            heartbeatPeriod: 30n,
            heartbeatTimeout: 3600n,
            maxDuration: 86_400n,
            expiry: timestamp + 86_400n,
            nonce: BigInt(i),
          };
          const signature = await signQuote(provider, hardhat.id, leaseManager, quote);
          last = await tenant.writeContract({
            address: leaseManager,
            abi: leaseManagerAbi,
            functionName: "openLease",
            args: [quote, signature, parseEther("10"), 0n],
            nonce: nonce++,
            gas: GAS,
          });
        }
        await wait(Promise.resolve(last));
        const ids = (
          await publicClient.getContractEvents({
            address: leaseManager,
            abi: leaseManagerAbi,
            eventName: "LeaseOpened",
            args: { provider: provider.address },
            fromBlock: deployment.deployBlock,
          })
        ).map((log) => log.args.leaseId!);
        const providerWallet = wallet(1 + p);
        let providerNonce = await publicClient.getTransactionCount({ address: provider.address, blockTag: "pending" });
        for (let round = 0; round < HEARTBEATS; round++) {
          for (let i = 0; i < ids.length; i += BATCH) {
            const batch = ids.slice(i, i + BATCH);
            const cids =
              round === HEARTBEATS - 1
                ? batch.map(() => "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi")
                : [];
            last = await providerWallet.writeContract({
              address: leaseManager,
              abi: leaseManagerAbi,
              functionName: "heartbeat",
              args: [batch, cids],
              nonce: providerNonce++,
              gas: 16_000_000n,
            });
          }
        }
        for (const leaseId of ids.filter((_, i) => i % 10 === 0)) {
          last = await providerWallet.writeContract({
            address: leaseManager,
            abi: leaseManagerAbi,
            functionName: "finish",
            args: [leaseId, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"],
            nonce: providerNonce++,
            gas: GAS,
          });
        }
        const receipt = await wait(Promise.resolve(last));
        if (receipt.status !== "success") throw new Error(`provider ${p}'s last transaction reverted`);
      }),
    );
    const generated = (performance.now() - generating) / 1000;
    console.log(`generated ${LEASES} leases with ${HEARTBEATS} heartbeat rounds in ${round(generated)} s`);

    // The reference: one job's audit from the chain's logs.
    const chainClient = createChainClient({
      rpcUrl: chain.rpcUrl,
      deployment,
      pollingIntervalMs: 50,
      confirmations: CONFIRMATIONS,
    });
    const jobId = jobs[0]!;
    const chainAuditMs = await median(() => auditJob({ chain: chainClient }, { jobId }), 3);
    console.log(`auditJob, chain-only: ${round(chainAuditMs)} ms`);

    /** Indexes from scratch into `location`, then serves pages and audits from it. */
    const measure = async (backend: string, location: IndexLocation) => {
      const store = await openIndexStore(location, deployment);
      try {
        const indexer = createIndexer({ publicClient, deployment, store, confirmations: CONFIRMATIONS });
        const indexing = performance.now();
        const synced = await indexer.sync();
        const indexSeconds = (performance.now() - indexing) / 1000;
        const eventsPerSecond = synced.events / indexSeconds;
        console.log(
          `${backend}: indexed ${synced.events} events in ${round(indexSeconds)} s: ${Math.round(eventsPerSecond)} events/s`,
        );

        // Time to first page: the explorer started on the built index, until its first answer.
        const starting = performance.now();
        const explorer = await startExplorer({
          indexer,
          host: "127.0.0.1",
          port: 0,
          onError: (error) => console.error(error),
        });
        const first = await fetch(`${explorer.url}/api/network`);
        await first.json();
        const firstPageMs = performance.now() - starting;
        console.log(`${backend}: time to first page: ${round(firstPageMs)} ms`);

        const latency = async (paths: string[]) => {
          const times: number[] = [];
          for (let i = 0; i < REQUESTS; i++) {
            const t = performance.now();
            const response = await fetch(`${explorer.url}${paths[i % paths.length]}`);
            if (!response.ok) throw new Error(`${paths[i % paths.length]}: HTTP ${response.status}`);
            await response.arrayBuffer();
            times.push(performance.now() - t);
          }
          times.sort((a, b) => a - b);
          return { p50Ms: round(percentile(times, 0.5), 2), p99Ms: round(percentile(times, 0.99), 2) };
        };
        const jobPage = await latency(jobs.map((job) => `/api/job/${job}`));
        const providerPage = await latency(
          Array.from({ length: PROVIDERS }, (_, p) => `/api/provider/${devAccount(1 + p).address}`),
        );
        console.log(`${backend}: job page API: p50 ${jobPage.p50Ms} ms, p99 ${jobPage.p99Ms} ms`);
        console.log(
          `${backend}: provider page API (${perProvider} leases each): p50 ${providerPage.p50Ms} ms, p99 ${providerPage.p99Ms} ms`,
        );
        await explorer.close();

        // The first audit at the index's block checks it against the chain; the rest need not.
        const fromIndex = { chain: chainClient, events: store };
        const checking = performance.now();
        await auditJob(fromIndex, { jobId });
        const firstAuditMs = performance.now() - checking;
        const indexedAuditMs = await median(() => auditJob(fromIndex, { jobId }), AUDITS);
        console.log(
          `${backend}: auditJob from the index: first ${round(firstAuditMs, 2)} ms (${round(chainAuditMs / firstAuditMs)}× faster than chain-only), then ${round(indexedAuditMs, 2)} ms (${round(chainAuditMs / indexedAuditMs)}×)`,
        );
        return {
          synced,
          figures: {
            indexSeconds: round(indexSeconds, 2),
            eventsPerSecond: Math.round(eventsPerSecond),
            firstPageMs: round(firstPageMs),
            jobPage,
            providerPage,
            auditJobFirstMs: round(firstAuditMs, 2),
            auditJobFirstSpeedup: round(chainAuditMs / firstAuditMs),
            auditJobMs: round(indexedAuditMs, 2),
            auditSpeedup: round(chainAuditMs / indexedAuditMs),
          },
        };
      } finally {
        await store.close();
      }
    };

    const embedded = await measure("embedded", { file: path.join(dir, "explorer.db") });
    // A Postgres server of the bench's own, with Postgres' default settings (fsync on, as the
    // embedded index's synchronous=FULL), on the same machine: what a one-host deployment gets.
    const server = await startPostgres();
    let postgres: Awaited<ReturnType<typeof measure>>;
    try {
      postgres = await measure("Postgres", { databaseUrl: await server.createDatabase("explorer") });
    } finally {
      await server.stop();
    }

    const results = {
      leases: LEASES,
      heartbeatRounds: HEARTBEATS,
      events: embedded.synced.events,
      blocks: Number(embedded.synced.blockNumber - deployment.deployBlock + 1n),
      auditJobChainOnlyMs: round(chainAuditMs),
      embedded: embedded.figures,
      postgres: postgres.figures,
    };
    await mkdir(path.join(import.meta.dirname, "results"), { recursive: true });
    await writeFile(
      path.join(import.meta.dirname, "results", "explorer.json"),
      `${JSON.stringify(results, null, 2)}\n`,
    );
  } finally {
    await chain.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
