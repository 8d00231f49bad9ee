import { createTransport, http, shouldThrow, type EIP1193RequestFn, type Transport } from "viem";

/** How long one endpoint of several may take to answer before the next is asked. */
const FALLBACK_TIMEOUT_MS = 3_000;

/**
 * A transport over several JSON-RPC endpoints that sticks to the last one that answered. A request
 * goes to the current endpoint; when that fails for a reason another endpoint might not have (a
 * timeout, a dropped connection, an HTTP or server error, not a revert), the endpoint moves to the
 * back and the next one is asked. So an endpoint that stopped answering costs one timeout, once,
 * instead of one per request for as long as its outage lasts.
 *
 * viem's `fallback` asks the endpoints in their given order at every request unless ranked, and its
 * ranking pings every endpoint on a timer that nothing stops (a command would never exit).
 */
export function stickyFallback(urls: readonly string[], timeoutMs = FALLBACK_TIMEOUT_MS): Transport {
  const endpoints = urls.map((url) => http(url, { retryCount: 0, timeout: timeoutMs }));
  let order = endpoints.map((_, i) => i);
  return ({ chain, retryCount = 2 }) => {
    const started = endpoints.map((endpoint) => endpoint({ chain, retryCount: 0 }));
    const request: EIP1193RequestFn = async (args, options) => {
      const tried = order;
      let last: unknown;
      for (const index of tried) {
        try {
          return await started[index]!.request(args, options);
        } catch (error) {
          if (shouldThrow(error as Error)) throw error;
          last = error;
          // Another request may have moved it already: only the current first goes to the back.
          if (order[0] === index) order = [...order.slice(1), index];
        }
      }
      throw last;
    };
    return createTransport({ key: "sticky-fallback", name: "Sticky fallback", request, retryCount, type: "fallback" });
  };
}
