import { formatEther, isAddressEqual, type TransactionReceipt } from "viem";

import { contracts, leaseStatus, writeContract } from "../sdk/chain/client.ts";
import { confirmedBlockNumber } from "../sdk/chain/confirmations.ts";
import type { NodeComponents } from "./components.ts";
import type { Leases } from "./leases.ts";
import type { Openings } from "./openings.ts";
import type { LeaseRow } from "./store.ts";

export interface ChainDuties {
  start(): void;
  stop(): Promise<void>;
  /** Runs one round now (tests and shutdown use it). */
  tick(): Promise<void>;
}

/**
 * Checkpoint CIDs one heartbeat commits per lease at most: after an RPC outage a lease may have a
 * backlog, and one transaction stays a bounded size; the rest go in the next rounds.
 */
const MAX_CIDS_PER_HEARTBEAT = 16;

/**
 * The node's duties on chain, run every second: one batched heartbeat transaction for all leases
 * whose on-chain period is due (committing every checkpoint CID published since the last, in order),
 * `finish` for jobs that ended, claims, and fencing: a lease the chain says has ended (closed,
 * slashed, expired) gets its job killed and its GPUs freed at once. Transactions are sent one at a
 * time, so the account's nonces never race. A node with no lease sends nothing: heartbeats are for
 * live leases only, and a claim goes out only when earnings are owed (at least `claimMinAmount`).
 * After each transaction it checks its gas balance and warns once it falls below `lowGasBalance`.
 *
 * With `confirmations` (config), what keeps a lease alive goes on the newest block, and what stops a
 * job waits until it lies that deep: a lease's end (read at `head − confirmations`), the absence of
 * a lease whose opening a reorg took (seen for that many blocks), the completion `finish` brought
 * (the lease stays `exited`, and its finish is sent again should a reorg take it back). A close is
 * acknowledged at once, and its job stopped once the close is that deep.
 */
export function chainDuties(components: NodeComponents, leases: Leases, openings: Openings): ChainDuties {
  const { chain, store, log, metrics, account, config, chainClock } = components;
  const { leaseManager } = contracts(chain.deployment);
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let lastClaim = Date.now();
  /** Leases that ended since the last claim, with what they had earned unsettled (an expired one settles at its claim). */
  const ended = new Map<bigint, bigint>();
  /** The last transaction's cost in wei, to say how many more the gas balance pays for. */
  let lastTransactionCost: bigint | undefined;
  /** Whether a transaction was mined since the gas balance was last read (the first round reads it too). */
  let spentGas = true;
  let gasLow = false;

  const syncClock = async (): Promise<number> => {
    // The pending block's time is the time the next block would have: on a quiet chain the latest
    // block's stands still, and heartbeats, which count their period in chain time, would wait for
    // a block that only they would bring. (An RPC that answers `pending` as `latest` is no worse.)
    const block = await chain.publicClient.getBlock({ blockTag: "pending" });
    const local = Math.floor(Date.now() / 1000);
    // A chain never runs behind the wall clock in a way that matters to us; a local chain moved
    // forward by tests (evm_increaseTime) runs ahead, and quotes must expire by its time.
    chainClock.offsetS = Math.max(0, Number(block.timestamp) - local);
    return local + chainClock.offsetS;
  };

  const sent = (receipt: TransactionReceipt): TransactionReceipt => {
    lastTransactionCost = receipt.gasUsed * receipt.effectiveGasPrice;
    spentGas = true;
    return receipt;
  };

  const checkGas = async (): Promise<void> => {
    if (!spentGas) return;
    const balance = await chain.publicClient.getBalance({ address: account.address });
    spentGas = false;
    const low = balance < config.lowGasBalance;
    if (low && !gasLow) {
      log.warn("gas balance low: top up this account before it runs dry, or its leases turn slashable", {
        address: account.address,
        balanceEth: formatEther(balance),
        lowGasBalanceEth: formatEther(config.lowGasBalance),
        ...(lastTransactionCost ? { transactionsLeft: Number(balance / lastTransactionCost) } : {}),
      });
    }
    gasLow = low;
  };

  /**
   * Heartbeats `due` in one transaction; if it fails, one lease at a time, so that one lease whose
   * heartbeat reverts does not leave the others unheartbeated and slashable (the next round fences
   * it if it ended). `sentAt` is the chain time the round began.
   */
  const heartbeat = async (due: LeaseRow[], sentAt: number): Promise<void> => {
    if (!(await heartbeatBatch(due, sentAt)) && due.length > 1) {
      for (const lease of due) await heartbeatBatch([lease], sentAt);
    }
  };

  /** One heartbeat transaction for `due`, with their pending checkpoint CIDs; false if it failed. */
  const heartbeatBatch = async (due: LeaseRow[], sentAt: number): Promise<boolean> => {
    const pending = new Map(due.map((l) => [l.leaseId, store.pendingCheckpoints(l.leaseId, MAX_CIDS_PER_HEARTBEAT)]));
    // A lease is listed once per CID it commits (the contract takes repeats and records each), or
    // once with none.
    const ids: bigint[] = [];
    const cids: string[] = [];
    for (const lease of due) {
      const checkpoints = pending.get(lease.leaseId)!;
      if (checkpoints.length === 0) {
        ids.push(lease.leaseId);
        cids.push("");
      }
      for (const { cid } of checkpoints) {
        ids.push(lease.leaseId);
        cids.push(cid);
      }
    }
    try {
      const took = metrics.chainHeartbeatSeconds.startTimer();
      sent(
        await writeContract(chain, {
          ...leaseManager,
          functionName: "heartbeat",
          args: [ids, cids.some((c) => c) ? cids : []],
        }),
      );
      took();
      for (const lease of due) {
        // The period counts from when the heartbeat was sent: it waits up to a block to be mined,
        // and counting from the receipt would add that wait to every gap between heartbeats.
        store.updateLease(lease.leaseId, { lastChainHeartbeat: sentAt });
        // Only the CIDs sent: any published while the transaction was pending go in the next one.
        const last = pending.get(lease.leaseId)!.at(-1);
        if (last) store.removePendingCheckpoints(lease.leaseId, last.seq);
      }
      metrics.chainHeartbeats.inc({ outcome: "ok" });
      metrics.chainHeartbeatLeases.inc(due.length);
      return true;
    } catch (error) {
      metrics.chainHeartbeats.inc({ outcome: "failed" });
      log.warn("on-chain heartbeat failed", { leases: due.map((l) => l.leaseId), error });
      return false;
    }
  };

  /** One claim transaction over `ids`; false if it failed. */
  const claim = async (ids: bigint[]): Promise<boolean> => {
    try {
      const receipt = sent(await writeContract(chain, { ...leaseManager, functionName: "claim", args: [ids] }));
      log.info("claimed earnings", { leases: ids.length, tx: receipt.transactionHash });
      metrics.claims.inc();
      return true;
    } catch (error) {
      log.warn("claim failed", { leases: ids, error });
      return false;
    }
  };

  const finish = async (lease: LeaseRow): Promise<void> => {
    const resultCid =
      lease.resultCid ?? `baton-result:v1:exit=${lease.exitCode ?? "signal"}:${lease.reason ?? "exited"}`;
    try {
      sent(await writeContract(chain, { ...leaseManager, functionName: "finish", args: [lease.leaseId, resultCid] }));
      // With confirmations the lease stays `exited` until its completion lies deep enough: a finish
      // that a reorg takes back is sent again, and the lease never goes unheartbeated meanwhile.
      if (config.confirmations === 0) finished(lease.leaseId, resultCid);
      else store.updateLease(lease.leaseId, { resultCid });
      ended.set(lease.leaseId, 0n);
      await leases.release(lease.leaseId);
    } catch (error) {
      log.warn("finish failed; will retry", { leaseId: lease.leaseId, error });
    }
  };

  const finished = (leaseId: bigint, resultCid: string | null): void => {
    store.updateLease(leaseId, { state: "finished" });
    log.info("lease finished on chain", { leaseId, resultCid });
    metrics.leasesFinished.inc();
  };

  /** Ends the lease's part in the duties: its pending CIDs can no longer be committed. */
  const forget = (leaseId: bigint, earned: bigint): void => {
    ended.set(leaseId, earned);
    store.removePendingCheckpoints(leaseId);
    seenOnChain.delete(leaseId);
    missingSince.delete(leaseId);
  };

  /** A lease as the node may act on it: `None` also for an id that names another provider's lease (after a reorg). */
  const readLease = async (leaseId: bigint, blockNumber?: bigint) => {
    const view = await chain.publicClient.readContract({
      ...leaseManager,
      functionName: "getLease",
      args: [leaseId],
      ...(blockNumber === undefined ? {} : { blockNumber }),
    });
    const ours = isAddressEqual(view.provider, account.address);
    return { view, status: ours ? (leaseStatus[view.status] ?? "None") : ("None" as const) };
  };

  /**
   * Why a lease read at the node's confirmation depth has ended for good, if it has: a reorg no
   * deeper than `confirmations` cannot bring it back, so its job may be stopped.
   */
  const endOf = ({ view, status }: Awaited<ReturnType<typeof readLease>>): string | undefined => {
    if (status === "None") return undefined;
    if (status === "Active" || status === "Closing") {
      if (view.slashable) return "lease slashable on chain";
      if (status === "Active" && view.expired) return "lease expired on chain";
      return undefined;
    }
    // Only a tenant's close, acknowledged, ends `Closed`: by the acknowledgement the round sends on
    // seeing `Closing`, or by a regular heartbeat that landed after a close the round had not read.
    if (status === "Closed") return "closed by the tenant";
    return `lease ${status.toLowerCase()} on chain`;
  };

  const maxOf = (a: bigint, b: bigint): bigint => (a > b ? a : b);

  /** Per lease, the head block at which the newest block was first seen without it (a reorg took its opening). */
  const missingSince = new Map<bigint, bigint>();
  /** Leases this node has read on chain since it started. */
  const seenOnChain = new Set<bigint>();

  const round = async (): Promise<void> => {
    const now = await syncClock();
    // Failed starts too: their lease stays open until the tenant closes it, and the close needs our acknowledgement.
    const live = store.leases(["preparing", "running", "exited", "failed", "handed-back"]);
    // What stops a job (a lease ended, or gone) counts only `confirmations` blocks deep; what keeps
    // a lease alive (heartbeats, acknowledging a close, finish) goes on the newest block.
    const depth = config.confirmations;
    const head = depth > 0 && live.length > 0 ? await chain.publicClient.getBlockNumber({ cacheTime: 0 }) : 0n;
    // No lease lies below the deployment (and no contract answers there).
    const deepBlock = maxOf(confirmedBlockNumber(head, depth), chain.deployment.deployBlock);
    /** Leases that could take a heartbeat this round, with the seconds since their last. */
    const heartbeatable: { lease: LeaseRow; age: number; pending: boolean }[] = [];
    const deadlines = new Map<bigint, number>();
    /** What each lease still active on chain has earned and not settled. */
    const earned = new Map<bigint, bigint>();
    for (const lease of live) {
      // A lease whose signed opening is not mined yet is not on chain: its opening's watch decides.
      if (openings.pending(lease.leaseId)) continue;
      const newest = await readLease(lease.leaseId);
      const { view: onChain, status } = newest;
      // Not on chain yet, started on a signed opening that may still land (a node restarted while
      // its opening was pending no longer watches it): the job runs on until the opening's window
      // has passed, and is fenced then. A lease this node saw on chain and sees no more was taken
      // by a reorg instead: see below.
      if (status !== "None") seenOnChain.add(lease.leaseId);
      else if (!seenOnChain.has(lease.leaseId) && Date.now() - lease.startedAt < config.maxOpeningWindowS * 1000) {
        continue;
      }
      if (status === "Active" || status === "Closing") deadlines.set(lease.leaseId, Number(onChain.deadline));
      if (status === "Closing" && lease.state === "handed-back") {
        // The tenant took the hand-back: acknowledge its close (the lease then ends `Closed`, our
        // collateral freed). Until the acknowledgement lands it is tried again every round.
        if ((await heartbeatBatch([lease], now)) && depth === 0) {
          store.updateLease(lease.leaseId, { state: "fenced" });
          log.info("hand-back acknowledged: the tenant closed the lease", { leaseId: lease.leaseId });
          forget(lease.leaseId, 0n);
          await leases.releaseEndedPins();
        }
        continue;
      }
      if (status === "Closing") {
        // The tenant left: acknowledge with one heartbeat (it frees our collateral), then stop the
        // job, once the close lies deep enough (a close a reorg takes back leaves the lease running).
        await heartbeat([lease], now);
        if (depth === 0) {
          await leases.fence(lease.leaseId, "closed by the tenant");
          forget(lease.leaseId, 0n);
        }
        continue;
      }
      const deep = depth === 0 ? newest : await readLease(lease.leaseId, deepBlock);
      const end = endOf(deep);
      if (end !== undefined) {
        missingSince.delete(lease.leaseId);
        if (deep.status === "Completed" && lease.state === "exited") {
          finished(lease.leaseId, lease.resultCid);
          // Its finish may have been mined while this node was down: nothing released its GPUs then.
          await leases.release(lease.leaseId);
        } else if (lease.state === "handed-back" && deep.status === "Closed") {
          store.updateLease(lease.leaseId, { state: "fenced" });
          log.info("hand-back acknowledged: the tenant closed the lease", { leaseId: lease.leaseId });
          await leases.releaseEndedPins();
        } else await leases.fence(lease.leaseId, end);
        forget(lease.leaseId, deep.status === "Active" ? deep.view.earned : 0n);
        continue;
      }
      if (status === "None") {
        // Not on the newest block: a reorg took its opening (or gave its id to another provider's
        // lease). Its job stops once that has held for `confirmations` blocks; the opening may come back.
        const since = missingSince.get(lease.leaseId) ?? head;
        missingSince.set(lease.leaseId, since);
        if (head - since >= BigInt(depth)) {
          await leases.fence(lease.leaseId, "lease gone from the chain (a reorg took its opening)");
          forget(lease.leaseId, 0n);
        }
        continue;
      }
      missingSince.delete(lease.leaseId);
      // Ended on the newest block but not yet as deep as `confirmations`: the job runs on meanwhile.
      if (status !== "Active" || onChain.expired || onChain.slashable) continue;
      if (lease.state === "failed") continue;
      const pending = store.pendingCheckpoints(lease.leaseId, 1).length > 0;
      const ending =
        lease.state === "exited" ||
        // No close came for a handed-back lease (the tenant is gone, or its SDK does not hand off on
        // a refusal): end it here, so that it does not turn slashable once this node has stopped.
        (lease.state === "handed-back" && Date.now() - (lease.endedAt ?? 0) >= config.handBackTimeoutMs);
      // A lease about to end commits its last checkpoints first: a finished lease takes no heartbeat.
      if (ending && !pending) {
        await finish(lease);
        continue;
      }
      earned.set(lease.leaseId, onChain.earned);
      const last = lease.lastChainHeartbeat ?? Number(onChain.lastHeartbeat);
      heartbeatable.push({ lease, age: now - last, pending });
    }
    // When one lease is due, those past half their period come along: leases opened at different
    // times would otherwise each be due in a different round, and cost a transaction each.
    const due = heartbeatable.some(({ lease, age, pending }) => pending || age >= lease.chainPeriodS)
      ? heartbeatable.filter(({ lease, age, pending }) => pending || age >= lease.chainPeriodS / 2).map((h) => h.lease)
      : [];
    if (due.length > 0) await heartbeat(due, now);

    metrics.leasesActive.set(store.leases(["preparing", "running"]).length);
    metrics.setLeaseDeadlines(deadlines);
    if (Date.now() - lastClaim >= config.claimIntervalMs) {
      lastClaim = Date.now();
      // Read at claim time only: a metric is not worth an RPC call every second.
      const claimable = await chain.publicClient.readContract({
        ...leaseManager,
        functionName: "claimable",
        args: [account.address],
      });
      metrics.claimableWei.set(Number(claimable));
      const sum = (amounts: Iterable<bigint>): bigint => [...amounts].reduce((a, b) => a + b, 0n);
      const owed = claimable + sum(earned.values()) + sum(ended.values());
      if (owed > 0n && owed >= config.claimMinAmount) {
        const ids = [...earned.keys(), ...ended.keys()];
        // An ended lease is claimed once (the chain settled it when it ended, unless it expired: the
        // claim settles that), so one that cannot be settled never holds back the pay of the others.
        ended.clear();
        if (!(await claim(ids)) && ids.length > 1) {
          for (const id of ids) await claim([id]);
        }
      }
    }
    await checkGas();
  };

  const tick = (): Promise<void> => {
    running = running.then(round).catch((error: unknown) => log.warn("chain round failed", { error }));
    return running;
  };

  return {
    start() {
      timer = setInterval(() => void tick(), config.chainPollMs);
      void tick();
    },
    async stop() {
      clearInterval(timer);
      await running;
    },
    tick,
  };
}
