import { isAddressEqual, parseEventLogs, type Address, type Hex } from "viem";

import { contracts, type ChainClient } from "../chain/client.ts";
import { waitForConfirmations } from "../chain/confirmations.ts";
import { findLastLog } from "../chain/logs.ts";

/**
 * When the tenant believes a lease exists. The job starts on a lease as soon as its opening is mined
 * (the fast path: the provider is told at once, and takes the risk of a few blocks of work), but the
 * lease counts only once its opening lies `confirmations` blocks deep (sdk/chain/confirmations.ts).
 * Until then a reorg may drop the opening, or mine it again elsewhere, where it may get another lease
 * id (ids count up across every tenant's openings). Either way the lease the job runs on is not
 * there, and the job runner leaves it for a new one instead of keeping a phantom.
 */

/** What became of a lease's opening, followed to the client's depth. */
export type OpeningFate =
  /** Its opening lies `confirmations` deep, under the lease id the tenant knows. */
  | { state: "confirmed"; blockNumber: bigint }
  /** No block holds its opening any more, and none will (or it was mined again and reverted). */
  | { state: "vanished"; reason: string }
  /**
   * Mined again after a reorg, behind another tenant's opening: it is lease `leaseId` now, and the
   * id the tenant knew is someone else's, or nobody's.
   */
  | { state: "moved"; leaseId: bigint; reason: string };

/** A lease's opening that was not confirmed: it vanished, or is another lease now. */
export type LostOpening = Exclude<OpeningFate, { state: "confirmed" }>;

export interface FollowOpeningParameters {
  leaseId: bigint;
  /** The transaction that opened it, if known; else it is found by the lease's `LeaseOpened` event. */
  openingTx?: Hex | undefined;
  /** Whose lease it is: the opening of a lease id now another tenant's is not ours. */
  tenant: Address;
  signal?: AbortSignal;
}

/**
 * Follows a lease's opening until it lies as deep as the client's `confirmations` say, or is gone.
 * Who sent the opening does not matter (the tenant, or a provider submitting the tenant's signed
 * opening): only its transaction is followed.
 *
 * @example
 * const fate = await followOpening(client.chain, { leaseId, openingTx, tenant: client.account.address });
 * if (fate.state !== "confirmed") console.log("the lease is not there:", fate.reason);
 */
export async function followOpening(
  chain: ChainClient,
  { leaseId, openingTx, tenant, signal }: FollowOpeningParameters,
): Promise<OpeningFate> {
  const hash = openingTx ?? (await openingOf(chain, leaseId, tenant, signal));
  if (!hash) return { state: "vanished", reason: `lease ${leaseId} has no opening of this tenant on chain` };
  const fate = await waitForConfirmations(chain, { hash, ...(signal ? { signal } : {}) });
  if (fate.state === "vanished") return { state: "vanished", reason: `its opening vanished: ${fate.reason}` };
  const { leaseManager } = contracts(chain.deployment);
  const opened = parseEventLogs({
    abi: leaseManager.abi,
    logs: fate.receipt.logs.filter((log) => isAddressEqual(log.address, leaseManager.address)),
    eventName: "LeaseOpened",
  })[0];
  if (!opened) return { state: "vanished", reason: `its opening ${hash} opened no lease` };
  if (opened.args.leaseId !== leaseId) {
    return {
      state: "moved",
      leaseId: opened.args.leaseId,
      reason: `a reorg mined its opening again, as lease ${opened.args.leaseId}`,
    };
  }
  return { state: "confirmed", blockNumber: fate.receipt.blockNumber };
}

/** The transaction of the lease's newest `LeaseOpened`, if the tenant opened it. */
async function openingOf(
  chain: ChainClient,
  leaseId: bigint,
  tenant: Address,
  signal: AbortSignal | undefined,
): Promise<Hex | undefined> {
  const { leaseManager } = contracts(chain.deployment);
  const log = await findLastLog(
    (range) =>
      chain.publicClient.getContractEvents({ ...leaseManager, eventName: "LeaseOpened", args: { leaseId }, ...range }),
    {
      what: `the opening of lease ${leaseId}`,
      fromBlock: chain.deployment.deployBlock,
      toBlock: await chain.publicClient.getBlockNumber({ cacheTime: 0 }),
      maxRange: chain.maxLogRange,
      ...(signal ? { signal } : {}),
    },
  );
  return log?.args.tenant && isAddressEqual(log.args.tenant, tenant) ? log.transactionHash : undefined;
}
