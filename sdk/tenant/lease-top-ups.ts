import { contracts, writeContract } from "../chain/client.ts";
import type { BatonClient } from "../client.ts";
import { BudgetExhaustedError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { TOP_UP_MARGIN_MS, TOP_UP_RETRY_MS, topUpAmount, topUpAt, type Funding } from "./hand-off-policy.ts";
import type { JobEvents } from "./job-events.ts";
import type { JobRecord, LeaseRecord } from "./job-store.ts";

export interface LeaseTopUpsInit {
  client: BatonClient;
  record: JobRecord;
  events: JobEvents;
  log: Logger;
  /** The budget cannot pay another second of the lease: the job must fail with this. */
  onBudgetSpent: (error: BudgetExhaustedError) => void;
  /** How much each top-up pays for; a job's `maxDurationS` by default (see {@link Funding}). */
  funding?: Funding;
}

/**
 * Keeps the lease the job runs on funded: shortly before its deposit runs out it is topped up, by
 * as much as the hand-off policy allows within the budget. A top-up that fails is logged, and the
 * lease then runs to the end of what it has.
 */
export class LeaseTopUps {
  readonly #client: BatonClient;
  readonly #record: JobRecord;
  readonly #events: JobEvents;
  readonly #log: Logger;
  readonly #onBudgetSpent: (error: BudgetExhaustedError) => void;
  readonly #funding: Funding | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor({ client, record, events, log, onBudgetSpent, funding }: LeaseTopUpsInit) {
    this.#funding = funding;
    this.#client = client;
    this.#record = record;
    this.#events = events;
    this.#log = log;
    this.#onBudgetSpent = onBudgetSpent;
  }

  /** Tops `lease` up when it is due (in place of any top-up scheduled before), and so on until `stop()`. */
  schedule(lease: LeaseRecord): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.#topUp(lease), Math.max(0, topUpAt(lease) - Date.now()));
    this.#timer.unref();
  }

  stop(): void {
    clearTimeout(this.#timer);
  }

  async #topUp(lease: LeaseRecord): Promise<void> {
    const amount = topUpAmount(this.#record, lease, this.#funding);
    if (amount === undefined) {
      const { budget } = this.#record.options;
      this.#onBudgetSpent(
        new BudgetExhaustedError(`the budget of ${budget} is spent; lease ${lease.leaseId} cannot be extended`),
      );
      return;
    }
    try {
      const { leaseManager, paymentToken } = contracts(this.#client.chain.deployment);
      await this.#client.transact(async () => {
        // On top of the allowance there is: what is reserved for a hand-off's signed opening stays.
        const allowance = await this.#client.chain.publicClient.readContract({
          ...paymentToken,
          functionName: "allowance",
          args: [this.#client.account.address, leaseManager.address],
        });
        await writeContract(this.#client.chain, {
          ...paymentToken,
          functionName: "approve",
          args: [leaseManager.address, allowance + amount],
        });
        await writeContract(this.#client.chain, {
          ...leaseManager,
          functionName: "topUp",
          args: [BigInt(lease.leaseId), amount],
        });
      });
      lease.deposit = (BigInt(lease.deposit) + amount).toString();
      this.#record.deposited = (BigInt(this.#record.deposited) + amount).toString();
      await this.#client.jobs.save(this.#record);
      this.#events.emit({ type: "top-up", leaseId: BigInt(lease.leaseId), amount });
      this.schedule(lease);
    } catch (error) {
      // A top-up can fail for a moment (the chain refuses one that would move the end past a
      // deadline under half a timeout away, until the provider's next heartbeat): try again each
      // second until the deposit runs out.
      const retry = Date.now() + TOP_UP_RETRY_MS < topUpAt(lease) + TOP_UP_MARGIN_MS;
      this.#log.warn(retry ? "top-up failed; trying again" : "top-up failed", { leaseId: lease.leaseId, error });
      if (retry) {
        this.#timer = setTimeout(() => void this.#topUp(lease), TOP_UP_RETRY_MS);
        this.#timer.unref();
      }
    }
  }
}
