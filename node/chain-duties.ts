import { contracts, leaseStatus, writeContract } from "../sdk/chain/client.ts";
import type { NodeComponents } from "./components.ts";
import type { Leases } from "./leases.ts";
import type { LeaseRow } from "./store.ts";

export interface ChainDuties {
  start(): void;
  stop(): Promise<void>;
  /** Runs one round now (tests and shutdown use it). */
  tick(): Promise<void>;
}

/**
 * The node's duties on chain, run every second: one batched heartbeat transaction for all leases
 * whose on-chain period is due (carrying each lease's latest checkpoint CID), `finish` for jobs
 * that ended, periodic claims, and fencing: a lease the chain says has ended (closed, slashed,
 * expired) gets its job killed and its GPUs freed at once. Transactions are sent one at a time, so
 * the account's nonces never race.
 */
export function chainDuties(components: NodeComponents, leases: Leases): ChainDuties {
  const { chain, store, log, metrics, account, config, chainClock } = components;
  const { leaseManager } = contracts(chain.deployment);
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let lastClaim = Date.now();
  const ended = new Set<bigint>();

  const syncClock = async (): Promise<number> => {
    const block = await chain.publicClient.getBlock();
    const local = Math.floor(Date.now() / 1000);
    // A chain never runs behind the wall clock in a way that matters to us; a local chain moved
    // forward by tests (evm_increaseTime) runs ahead, and quotes must expire by its time.
    chainClock.offsetS = Math.max(0, Number(block.timestamp) - local);
    return local + chainClock.offsetS;
  };

  const heartbeat = async (due: LeaseRow[]): Promise<void> => {
    if (!(await heartbeatBatch(due)) && due.length > 1) {
      // One lease whose heartbeat reverts must not leave the others unheartbeated and slashable:
      // send them one by one, so only that one fails (the next round fences it if it ended).
      for (const lease of due) await heartbeatBatch([lease]);
    }
  };

  /** One heartbeat transaction for `due`; false if it failed. */
  const heartbeatBatch = async (due: LeaseRow[]): Promise<boolean> => {
    const ids = due.map((l) => l.leaseId);
    const cids = due.map((l) => l.pendingCheckpointCid ?? "");
    try {
      const took = metrics.chainHeartbeatSeconds.startTimer();
      await writeContract(chain, {
        ...leaseManager,
        functionName: "heartbeat",
        args: [ids, cids.some((c) => c) ? cids : []],
      });
      took();
      const now = Math.floor(Date.now() / 1000);
      for (const lease of due)
        store.updateLease(lease.leaseId, { lastChainHeartbeat: now, pendingCheckpointCid: null });
      metrics.chainHeartbeats.inc({ outcome: "ok" });
      metrics.chainHeartbeatLeases.inc(ids.length);
      return true;
    } catch (error) {
      metrics.chainHeartbeats.inc({ outcome: "failed" });
      log.warn("on-chain heartbeat failed", { leases: ids, error });
      return false;
    }
  };

  /** One claim transaction over `ids`; false if it failed. */
  const claim = async (ids: bigint[]): Promise<boolean> => {
    try {
      const receipt = await writeContract(chain, { ...leaseManager, functionName: "claim", args: [ids] });
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
      await writeContract(chain, { ...leaseManager, functionName: "finish", args: [lease.leaseId, resultCid] });
      store.updateLease(lease.leaseId, { state: "finished", resultCid });
      log.info("lease finished on chain", { leaseId: lease.leaseId, resultCid });
      metrics.leasesFinished.inc();
      ended.add(lease.leaseId);
      await leases.release(lease.leaseId);
    } catch (error) {
      log.warn("finish failed; will retry", { leaseId: lease.leaseId, error });
    }
  };

  const round = async (): Promise<void> => {
    const now = await syncClock();
    // Failed starts too: their lease stays open until the tenant closes it, and the close needs our acknowledgement.
    const live = store.leases(["preparing", "running", "exited", "failed", "handed-back"]);
    const due: LeaseRow[] = [];
    const deadlines = new Map<bigint, number>();
    for (const lease of live) {
      const onChain = await chain.publicClient.readContract({
        ...leaseManager,
        functionName: "getLease",
        args: [lease.leaseId],
      });
      const status = leaseStatus[onChain.status] ?? "None";
      if (status === "Active" || status === "Closing") deadlines.set(lease.leaseId, Number(onChain.deadline));
      if (status === "Closing" && lease.state === "handed-back") {
        // The tenant took the hand-back: acknowledge its close (the lease then ends `Closed`, our
        // collateral freed). Until the acknowledgement lands it is tried again every round.
        if (await heartbeatBatch([lease])) {
          store.updateLease(lease.leaseId, { state: "fenced" });
          log.info("hand-back acknowledged: the tenant closed the lease", { leaseId: lease.leaseId });
          ended.add(lease.leaseId);
        }
        continue;
      }
      if (status === "Closing") {
        // The tenant left: acknowledge with one heartbeat (it frees our collateral), then stop the job.
        await heartbeat([lease]);
        await leases.fence(lease.leaseId, "closed by the tenant");
        ended.add(lease.leaseId);
        continue;
      }
      if (status !== "Active" || onChain.expired || onChain.slashable) {
        const why = onChain.slashable ? "slashable" : onChain.expired ? "expired" : status.toLowerCase();
        await leases.fence(lease.leaseId, `lease ${why} on chain`);
        ended.add(lease.leaseId);
        continue;
      }
      if (lease.state === "failed") continue;
      if (lease.state === "handed-back" && Date.now() - (lease.endedAt ?? 0) >= config.handBackTimeoutMs) {
        // No close came (the tenant is gone, or its SDK does not hand off on a refusal): end the
        // lease here, so that it does not turn slashable once this node has stopped.
        await finish(lease);
        continue;
      }
      if (lease.state === "exited") {
        await finish(lease);
        continue;
      }
      const last = lease.lastChainHeartbeat ?? Number(onChain.lastHeartbeat);
      if (now - last >= lease.chainPeriodS || lease.pendingCheckpointCid) due.push(lease);
    }
    if (due.length > 0) await heartbeat(due);

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
      const ids = [...store.leases(["preparing", "running", "exited"]).map((l) => l.leaseId), ...ended];
      // An ended lease is claimed once (the chain settled it when it ended; the claim only sweeps
      // what was left), so one that cannot be settled never holds back the pay of the others.
      ended.clear();
      if (!(await claim(ids)) && ids.length > 1) {
        for (const id of ids) await claim([id]);
      }
    }
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
