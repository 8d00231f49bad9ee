/**
 * Trying again, in one place: every retry or poll loop of the SDK and the node goes through
 * {@link withRetry} (a task that may fail) or {@link poll} (a look that may find nothing yet). Both
 * pause between tries with a backoff up to a cap, stop at a limit of tries or of time, and end at
 * once, with the signal's reason, when their signal aborts. After viem's `withRetry`.
 */

export interface BackoffOptions {
  /** The pause after the first try, in ms. Default 100. */
  delayMs?: number;
  /** Each pause is this many times the one before. Default 2; 1 keeps a steady pace. */
  backoff?: number;
  /** The longest pause, in ms. Default 5 s. */
  maxDelayMs?: number;
  /** Tries in all, the first included. Default: no limit. */
  attempts?: number;
  /** Give up after a try that ends this long (ms) or more after the first began. Default: no limit. */
  timeoutMs?: number;
  /** Ends the pause under way and every later try, rejecting with its reason. */
  signal?: AbortSignal;
  /** Pauses do not keep the process alive on their own: for work in the background of a client. */
  unref?: boolean;
}

/** The pause after try `attempt` (counted from 1): `delayMs × backoff^(attempt − 1)`, at most `maxDelayMs`. */
export function backoffDelay(
  attempt: number,
  { delayMs = 100, backoff = 2, maxDelayMs = 5_000 }: Pick<BackoffOptions, "delayMs" | "backoff" | "maxDelayMs"> = {},
): number {
  return Math.min(maxDelayMs, delayMs * backoff ** (attempt - 1));
}

/** Waits `ms` (none at all for 0 or less), or rejects with the signal's reason as soon as it aborts. */
export function sleep(
  ms: number,
  { signal, unref = false }: Pick<BackoffOptions, "signal" | "unref"> = {},
): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason as Error);
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    if (unref) timer.unref();
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export interface RetryOptions extends Omit<BackoffOptions, "delayMs"> {
  /** The pause after the first failure (then the backoff), or the pause after each failure. */
  delayMs?: number | ((error: unknown, attempt: number) => number);
  /** Whether a failure is worth another try. Default: every one. */
  shouldRetry?: (error: unknown, attempt: number) => boolean;
}

/**
 * Runs `task` until it resolves, trying again after a failure while `shouldRetry` allows and the
 * limits (`attempts`, `timeoutMs`) are not reached; then its last error is thrown.
 *
 * @example
 * const receipt = await withRetry(() => send(), { attempts: 5, shouldRetry: isRpcHiccup, signal });
 */
export async function withRetry<T>(task: (attempt: number) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const { delayMs, shouldRetry } = options;
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    options.signal?.throwIfAborted();
    try {
      return await task(attempt);
    } catch (error) {
      if (!mayTryAgain(attempt, started, options) || !(shouldRetry?.(error, attempt) ?? true)) throw error;
      const pause =
        typeof delayMs === "function" ? delayMs(error, attempt) : backoffDelay(attempt, { ...options, delayMs });
      await sleep(pause, options);
    }
  }
}

/** What one look of {@link poll} found: the value it waits for, or not yet (and how long to wait, if it knows). */
export type Look<T> = { done: true; value: T } | { done: false; waitMs?: number };

/**
 * Looks until `look` finds what it waits for, pausing between looks (the look's `waitMs`, else the
 * backoff). An error from `look` ends the poll.
 *
 * @returns the value found, or `undefined` once `attempts` or `timeoutMs` run out first.
 * @example
 * const receipt = await poll(async () => {
 *   const found = await getReceipt(hash);
 *   return found ? { done: true, value: found } : { done: false };
 * }, { delayMs: 250, backoff: 1, timeoutMs: 30_000 });
 */
export async function poll<T>(
  look: (attempt: number) => Promise<Look<T>> | Look<T>,
  options: BackoffOptions = {},
): Promise<T | undefined> {
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    options.signal?.throwIfAborted();
    const found = await look(attempt);
    if (found.done) return found.value;
    if (!mayTryAgain(attempt, started, options)) return undefined;
    await sleep(found.waitMs ?? backoffDelay(attempt, options), options);
  }
}

/**
 * Polls `condition` until it holds.
 *
 * @returns `true` once it holds, `false` when `attempts` or `timeoutMs` ran out first.
 * @example
 * const gone = await pollUntil(() => !isAlive(pid), { delayMs: 10, backoff: 1, timeoutMs: 2_000 });
 */
export async function pollUntil(
  condition: () => boolean | Promise<boolean>,
  options: BackoffOptions = {},
): Promise<boolean> {
  const met = await poll(
    async (): Promise<Look<true>> => ((await condition()) ? { done: true, value: true } : { done: false }),
    options,
  );
  return met === true;
}

function mayTryAgain(
  attempt: number,
  started: number,
  { attempts, timeoutMs }: Pick<BackoffOptions, "attempts" | "timeoutMs">,
): boolean {
  if (attempts !== undefined && attempt >= attempts) return false;
  return timeoutMs === undefined || Date.now() - started < timeoutMs;
}
