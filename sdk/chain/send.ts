/**
 * Sending a transaction until it is mined, on chains where that is not a given: a node may drop it,
 * a connection may break after it was sent, and a fee spike may leave it underpriced in the mempool.
 * The transaction keeps its nonce throughout, so at most one of its versions is ever mined.
 */
import {
  BaseError as ViemBaseError,
  FeeCapTooLowError,
  HttpRequestError,
  keccak256,
  NonceTooLowError,
  TimeoutError,
  WaitForTransactionReceiptTimeoutError,
  type Account,
  type Chain,
  type Hash,
  type Hex,
  type PublicClient,
  type TransactionReceipt,
  type Transport,
  type WalletClient,
} from "viem";

import { walk } from "../errors.ts";

/** What a client may pay for gas, and when it sends a transaction again. */
export interface FeePolicy {
  /** The most wei per gas any transaction may pay (EIP-1559 `maxFeePerGas`, or a legacy gas price). None by default. */
  maxFeePerGas: bigint | undefined;
  /** A transaction not mined after this long is sent again, with 12.5% more fee while the cap allows. */
  replaceAfterMs: number;
}

/** What the transaction does, and where. */
export interface SendParameters {
  to: `0x${string}`;
  data: Hex;
  signal?: AbortSignal | undefined;
}

/** Runs one send at a time for an account (see {@link sendLock}). */
export type SendLock = <T>(send: () => Promise<T>) => Promise<T>;

/**
 * A lock that lets one transaction of an account at a time take its nonce and reach the node: the
 * next one then reads the pending nonce past it. Only the sending is serialised, not the wait for a
 * block, so a provider's signed opening need not wait behind a heartbeat that waits to be mined.
 */
export function sendLock(): SendLock {
  let last: Promise<unknown> = Promise.resolve();
  return <T>(send: () => Promise<T>): Promise<T> => {
    const next = last.then(send, send);
    last = next.catch(() => undefined);
    return next;
  };
}

interface Fees {
  maxFeePerGas?: bigint;
  maxPriorityFeePerGas?: bigint;
  gasPrice?: bigint;
}

/** What a node must see to take a replacement: more than 10% on every fee (geth's rule). */
const BUMP_NUMERATOR = 1125n;
const BUMP_DENOMINATOR = 1000n;

/** The fees at most `cap` per gas. */
function capped(fees: Fees, cap: bigint | undefined): Fees {
  if (cap === undefined) return fees;
  const min = (a: bigint | undefined) => (a === undefined ? undefined : a < cap ? a : cap);
  return {
    ...(fees.maxFeePerGas !== undefined ? { maxFeePerGas: min(fees.maxFeePerGas)! } : {}),
    ...(fees.maxPriorityFeePerGas !== undefined ? { maxPriorityFeePerGas: min(fees.maxPriorityFeePerGas)! } : {}),
    ...(fees.gasPrice !== undefined ? { gasPrice: min(fees.gasPrice)! } : {}),
  };
}

/** Every fee 12.5% higher (at least 1 wei), then capped. */
function bumped(fees: Fees, cap: bigint | undefined): Fees {
  const up = (a: bigint | undefined) => (a === undefined ? undefined : (a * BUMP_NUMERATOR) / BUMP_DENOMINATOR + 1n);
  return capped(
    {
      ...(fees.maxFeePerGas !== undefined ? { maxFeePerGas: up(fees.maxFeePerGas)! } : {}),
      ...(fees.maxPriorityFeePerGas !== undefined ? { maxPriorityFeePerGas: up(fees.maxPriorityFeePerGas)! } : {}),
      ...(fees.gasPrice !== undefined ? { gasPrice: up(fees.gasPrice)! } : {}),
    },
    cap,
  );
}

/**
 * Gas given over the node's estimate: 20 %, and at least 30,000. An estimate holds only for the state
 * it was made on: a claim or a heartbeat mined between the estimate and the transaction changes what
 * a `finish` or a `close` costs, by a whole storage write from zero (20,000 gas) when a claim has just
 * emptied the balance it adds to. Seen under load: a node's `finish` and a tenant's `close` ran out of
 * gas. Unused gas is not paid for.
 */
const GAS_HEADROOM_PERCENT = 20n;
const GAS_HEADROOM_MIN = 30_000n;

/** The gas limit for a transaction the node estimated at `estimate`. */
export function withGasHeadroom(estimate: bigint): bigint {
  const percent = (estimate * GAS_HEADROOM_PERCENT) / 100n;
  return estimate + (percent > GAS_HEADROOM_MIN ? percent : GAS_HEADROOM_MIN);
}

/** Times a transaction's nonce is read before a node that keeps calling it taken is believed. */
const STALE_NONCE_READS = 3;

/** Whether a failed send may still have reached the node: the connection, not the node, failed. */
const maybeSent = (error: unknown): boolean =>
  walk(error, (e) => e instanceof HttpRequestError || e instanceof TimeoutError) !== undefined;

/**
 * Whether the node already has this nonce: an earlier version of ours is pending or mined. A raw
 * send's refusal is a plain RPC error (EDR: `InvalidInputRpcError`), not viem's `NonceTooLowError`,
 * so its message is matched too.
 */
const nonceTaken = (error: unknown): boolean =>
  walk(
    error,
    (e) =>
      e instanceof NonceTooLowError ||
      (e instanceof ViemBaseError &&
        /nonce too low|already known|already imported|replacement transaction underpriced/i.test(e.message)),
  ) !== undefined;

/**
 * Whether the node refused the transaction because its fee cap is below the current base fee. Geth
 * and EDR take such a transaction and hold it until fees come down; Anvil refuses it outright. Either
 * way it is sent again at the next round, with more fee while the cap allows: it waits out the spike.
 */
const belowBaseFee = (error: unknown): boolean =>
  walk(
    error,
    (e) =>
      e instanceof FeeCapTooLowError || (e instanceof ViemBaseError && FeeCapTooLowError.nodeMessage.test(e.details)),
  ) !== undefined;

/**
 * Signs and sends a transaction, and resends it (same nonce, fees 12.5% higher up to the cap) every
 * `replaceAfterMs` until one version is mined; resolves with that version's receipt. A send whose
 * connection failed counts as sent (the node may have it): it is sent again at the next round.
 */
export async function sendUntilMined(
  publicClient: PublicClient<Transport, Chain>,
  wallet: WalletClient<Transport, Chain, Account>,
  fees: FeePolicy,
  { to, data, signal }: SendParameters,
  lock: SendLock = (send) => send(),
): Promise<TransactionReceipt> {
  let prepared: Awaited<ReturnType<typeof wallet.prepareTransactionRequest>>;
  let current: Fees | undefined;
  const sent: Hash[] = [];
  /** Signs the current version and sends it; throws when it surely did not reach the node. */
  const send = async (attempt: number): Promise<void> => {
    const serializedTransaction = await wallet.signTransaction({ ...prepared, ...current! } as never);
    const hash = keccak256(serializedTransaction);
    if (!sent.includes(hash)) sent.push(hash);
    try {
      await publicClient.sendRawTransaction({ serializedTransaction });
    } catch (error) {
      if (!maybeSent(error) && !(attempt > 1 && nonceTaken(error)) && !belowBaseFee(error)) throw error;
    }
  };
  // The nonce is taken and the first version sent under the account's lock. A node that says the
  // nonce is taken already answered the nonce read from a state it had not caught up with (a
  // load-balanced RPC, or a local chain under load mining just then): read it again, a few times.
  await lock(async () => {
    for (let read = 1; ; read++) {
      prepared = await wallet.prepareTransactionRequest({ account: wallet.account, chain: wallet.chain, to, data });
      prepared.gas = withGasHeadroom(prepared.gas);
      current = capped(prepared as Fees, fees.maxFeePerGas);
      signal?.throwIfAborted();
      try {
        await send(1);
        return;
      } catch (error) {
        if (read >= STALE_NONCE_READS || !nonceTaken(error)) throw error;
        sent.length = 0;
      }
    }
  });
  for (let attempt = 1; ; attempt++) {
    signal?.throwIfAborted();
    if (attempt > 1) await send(attempt);
    const hash = sent.at(-1)!;
    try {
      return await publicClient.waitForTransactionReceipt({ hash, timeout: fees.replaceAfterMs });
    } catch (error) {
      if (!(error instanceof WaitForTransactionReceiptTimeoutError)) throw error;
    }
    // An earlier version may have been mined meanwhile.
    for (const earlier of sent) {
      const receipt = await publicClient.getTransactionReceipt({ hash: earlier }).catch(() => undefined);
      if (receipt) return receipt;
    }
    current = bumped(current!, fees.maxFeePerGas);
  }
}
