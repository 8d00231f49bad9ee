/**
 * A signal that aborts when any of `signals` does (with its reason), or after `timeoutMs` (with a
 * `TimeoutError`, as `AbortSignal.timeout`'s). It does what `AbortSignal.any` and
 * `AbortSignal.timeout` do for a signal that lives as long as one request, at a fraction of their
 * cost (no weak references, no finalization registry: they were a tenth of the gateway's CPU per
 * request); `release()` lets go of the sources' listeners and the timer once the request is done.
 */
export function linkedSignal(
  signals: readonly AbortSignal[],
  timeoutMs?: number,
): { signal: AbortSignal; release(): void } {
  const controller = new AbortController();
  const aborted = signals.find((s) => s.aborted);
  if (aborted) {
    controller.abort(aborted.reason);
    return { signal: controller.signal, release: () => undefined };
  }
  let timer: NodeJS.Timeout | undefined;
  const release = (): void => {
    clearTimeout(timer);
    for (const s of signals) s.removeEventListener("abort", onAbort);
  };
  function onAbort(this: AbortSignal): void {
    release();
    controller.abort(this.reason);
  }
  for (const s of signals) s.addEventListener("abort", onAbort);
  if (timeoutMs !== undefined) {
    timer = setTimeout(() => {
      release();
      controller.abort(new DOMException("The operation was aborted due to timeout", "TimeoutError"));
    }, timeoutMs);
    // As AbortSignal.timeout's: a deadline alone does not keep the process up.
    timer.unref();
  }
  return { signal: controller.signal, release };
}
