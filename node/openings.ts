import type { Address } from "viem";

import { chainBlockTime, nextBlockTime } from "../sdk/chain/block-time.ts";
import { contracts, leaseStatus, revertOf, writeContract } from "../sdk/chain/client.ts";
import { leaseIdOf, openingSigner, quoteSigner, type Opening } from "../sdk/chain/opening.ts";
import { RefusalError, shortMessageOf } from "../sdk/errors.ts";
import type { OpeningWire, SessionRefusalReason } from "../sdk/wire/messages.ts";
import type { NodeComponents } from "./components.ts";

/**
 * Tenants' signed lease openings (`LeaseManager.openLeaseFor`): a hand-off that waits for no block.
 * The tenant sends the provider's quote and its own EIP-712 signature of the opening; the node checks
 * both against the latest block, starts the job at once, and submits the opening itself (paying the
 * gas). Until it is mined the node runs the job unpaid: if the opening fails, or is not mined by its
 * deadline (when no block can open it any more), the job is stopped. The deadline, which the node
 * accepts at most `maxOpeningWindowS` ahead, bounds that risk to seconds of compute.
 */
export interface Openings {
  /**
   * Checks `opening` for lease `leaseId` from `tenant`: the node's own quote, signed by the tenant,
   * for the id it gets, with a deadline neither too close nor too far, and that would open the lease
   * in the next block (the tenant's balance and allowance cover the deposit, the quote's nonce is
   * unused, the predecessor is the tenant's job's and not continued, the stake covers the collateral).
   *
   * @throws {RefusalError} `opening-refused` with the reason.
   */
  check(leaseId: bigint, opening: OpeningWire, tenant: Address): Promise<void>;
  /**
   * Submits a checked opening and watches it: `onFailed` is called, once, if it reverts or is not
   * mined by its deadline. A lease's opening is submitted once.
   */
  submit(leaseId: bigint, opening: OpeningWire, onFailed: (reason: string) => void): void;
  /** Whether the lease's opening was submitted and is not mined yet (the chain has no such lease). */
  pending(leaseId: bigint): boolean;
  /** Stops watching (shutdown): pending openings are left to the chain. */
  stop(): void;
}

const refusal = (message: string): RefusalError<SessionRefusalReason> => new RefusalError("opening-refused", message);

/** The opening as `openLeaseFor` takes it. */
export const openingArgs = (wire: OpeningWire): Opening => ({
  quote: wire.quote,
  deposit: wire.deposit,
  predecessor: wire.predecessor,
  deadline: wire.deadline,
});

export function openings(components: NodeComponents): Openings {
  const { chain, account, config, log, metrics } = components;
  const { leaseManager } = contracts(chain.deployment);
  const { chainId } = chain.deployment;
  const submitted = new Map<bigint, AbortController>();
  const stopped = new AbortController();

  /** The chain's block time, for the least time an opening must leave to be mined. */
  const blockTime = (): Promise<number> =>
    chain.blockTimeS !== undefined ? Promise.resolve(chain.blockTimeS) : chainBlockTime(chain).catch(() => 0);

  /** Resolves once the next block comes after `deadline`: from then on no block can open the lease. */
  const pastDeadline = async (deadline: bigint, signal: AbortSignal): Promise<void> => {
    const pollMs = Math.max(250, ((await blockTime()) * 1000) / 2);
    for (;;) {
      const next = await nextBlockTime(chain).catch(() => undefined);
      if (next !== undefined && next > deadline) return;
      await new Promise((resolve) => setTimeout(resolve, pollMs).unref());
      signal.throwIfAborted();
    }
  };

  const opened = async (leaseId: bigint): Promise<boolean> => {
    const lease = await chain.publicClient.readContract({ ...leaseManager, functionName: "getLease", args: [leaseId] });
    return leaseStatus[lease.status] !== "None";
  };

  return {
    async check(leaseId, wire, tenant) {
      const opening = openingArgs(wire);
      const { quote } = opening;
      if (quote.provider !== account.address) throw refusal("the quote is not this provider's");
      if ((await quoteSigner(chainId, leaseManager.address, quote, wire.quoteSignature)) !== account.address) {
        throw refusal("the quote is not signed by this provider");
      }
      if (leaseIdOf(chainId, leaseManager.address, quote) !== leaseId) {
        throw refusal(`lease ${leaseId} is not the id this quote's opening gets`);
      }
      if (quote.tenant !== tenant) throw refusal("the quote is for another tenant");
      const signer = await openingSigner(chainId, leaseManager.address, opening, wire.signature).catch(() => undefined);
      if (signer !== tenant) throw refusal("the opening is not signed by the quote's tenant");
      const [now, blockTimeS] = await Promise.all([nextBlockTime(chain), blockTime()]);
      const left = Number(opening.deadline - now);
      // Two blocks at least: one for the submission to reach, one to be mined in.
      const least = Math.max(2, Math.ceil(2 * blockTimeS));
      if (left < least) throw refusal(`the opening's deadline is ${left} s away; it needs ${least} s to be mined`);
      if (left > config.maxOpeningWindowS) {
        throw refusal(
          `the opening's deadline is ${left} s away; this provider takes at most ${config.maxOpeningWindowS} s`,
        );
      }
      if (submitted.has(leaseId)) return;
      try {
        await chain.publicClient.simulateContract({
          account,
          ...leaseManager,
          functionName: "openLeaseFor",
          args: [opening, wire.signature],
          // At the next block's time: the latest block's may be long past on a chain mining on demand.
          blockTag: "pending",
        });
      } catch (error) {
        const revert = revertOf(error);
        throw refusal(
          `the opening would fail on chain: ${revert ? `${revert.name}(${revert.args.map(String).join(", ")})` : shortMessageOf(error)}`,
        );
      }
    },

    submit(leaseId, wire, onFailed) {
      if (submitted.has(leaseId)) return;
      const abort = new AbortController();
      submitted.set(leaseId, abort);
      const signal = AbortSignal.any([abort.signal, stopped.signal]);
      const opening = openingArgs(wire);
      const mined = writeContract(chain, {
        ...leaseManager,
        functionName: "openLeaseFor",
        args: [opening, wire.signature],
        blockTag: "pending",
        signal,
      }).then(
        (receipt) => ({ ok: true as const, tx: receipt.transactionHash }),
        (error: unknown) => ({ ok: false as const, reason: `its opening failed on chain: ${shortMessageOf(error)}` }),
      );
      const late = pastDeadline(opening.deadline, signal).then(
        () => ({ ok: false as const, reason: `its opening was not mined by its deadline (${opening.deadline})` }),
        () => undefined,
      );
      void (async () => {
        let outcome = await Promise.race([mined, late.then((value) => value ?? mined)]);
        // Mined in a block just before the deadline, its receipt not read yet: the chain says.
        if (!outcome.ok && (await opened(leaseId).catch(() => false))) outcome = { ok: true, tx: "0x" };
        abort.abort();
        submitted.delete(leaseId);
        if (stopped.signal.aborted) return;
        metrics.signedOpenings.inc({ outcome: outcome.ok ? "opened" : "failed" });
        if (outcome.ok) {
          log.info("signed opening mined", { leaseId, tx: outcome.tx });
          return;
        }
        log.warn("signed opening failed; stopping its job", { leaseId, reason: outcome.reason });
        onFailed(outcome.reason);
      })();
    },

    pending: (leaseId) => submitted.has(leaseId),

    stop() {
      stopped.abort();
    },
  };
}
