import type { PeerId } from "@libp2p/interface";

import type { BatonHost } from "../p2p/host.ts";
import { poll, type Look } from "../utils/retry.ts";

export type LivenessState = "alive" | "suspect" | "failed";

export interface LivenessOptions {
  /** The provider's session heartbeat period (from its offer). */
  heartbeatMs: number;
  /** Suspect after this long without any message from the provider. Default: 3 heartbeats. */
  suspectAfterMs?: number;
  /**
   * Failed once suspect has lasted this long without a message, even if pings still answer (a node
   * whose runtime is wedged). Default: 10 s, far above any scheduling delay of a busy machine.
   */
  failAfterMs?: number;
  /** A ping slower than this counts as unanswered. */
  pingTimeoutMs?: number;
}

export interface LivenessEvent {
  state: LivenessState;
  /** Why it changed, for logs and the job's events. */
  reason: string;
  /** When the provider was last heard from. */
  lastSeenAt: number;
}

export interface LivenessMonitor {
  /** Call on every message from the provider. */
  heard(): void;
  /** Call when the session stream ended or reset without a result. */
  lost(reason: string): void;
  /**
   * Silence is expected until `until` (ms since epoch): a provider fetching a job's inputs and
   * checkpoint sends no heartbeats. Only an unreachable peer fails it meanwhile.
   */
  quietUntil(until: number): void;
  readonly state: LivenessState;
  stop(): void;
}

/**
 * Two-stage failure detection for one provider. *Suspect* on missed heartbeats or a lost session;
 * then it pings: an answer keeps the provider suspect but not failed (a slow machine is not a dead
 * one), a refused dial or missing route marks it *failed* at once (the process or the machine is
 * gone; a ping whose connection merely closed under it is sent again first), and a suspect that lasts `failAfterMs` without a message fails too. A message clears it.
 */
export function monitorLiveness(
  host: BatonHost,
  peer: PeerId,
  options: LivenessOptions,
  onChange: (event: LivenessEvent) => void,
): LivenessMonitor {
  const suspectAfterMs = options.suspectAfterMs ?? 3 * options.heartbeatMs;
  const failAfterMs = options.failAfterMs ?? 10_000;
  const pingTimeoutMs = options.pingTimeoutMs ?? 2_000;
  let state: LivenessState = "alive";
  let lastSeenAt = Date.now();
  let suspectSince = 0;
  let pinging = false;
  let stopped = false;
  let quiet = 0;
  const silenceCounts = (): boolean => Date.now() >= quiet;

  const set = (next: LivenessState, reason: string): void => {
    if (stopped || state === next || state === "failed") return;
    state = next;
    if (next === "suspect") suspectSince = Date.now();
    onChange({ state, reason, lastSeenAt });
    if (next === "suspect") void probe();
    if (next === "failed") stop();
  };

  /**
   * Why the peer cannot be reached, if a ping shows it. A timeout says nothing (a stopped or
   * overloaded machine, a silent link). Any other error may only be the connection the ping ran on
   * closing under it: libp2p's connection monitor, on either side, aborts a connection whose ping
   * went unanswered for 5 s, so a link silent that long loses its connection, and the ping on it
   * fails at once, 5 s before `failAfterMs`. So a second ping is sent, on a fresh dial: only when it
   * fails too, and not by a timeout, is there no way to the peer (a refused or reset dial, no address).
   */
  const pingRefused = async (): Promise<string | undefined> => {
    for (let attempt = 1; ; attempt++) {
      try {
        await host.services.ping.ping(peer, { signal: AbortSignal.timeout(pingTimeoutMs) });
        return undefined;
      } catch (error) {
        const name = (error as Error).name;
        if (name === "TimeoutError" || name === "AbortError") return undefined;
        if (attempt === 2 || stopped) return (error as Error).message;
      }
    }
  };

  const probe = async (): Promise<void> => {
    if (pinging) return;
    pinging = true;
    try {
      await poll(async (): Promise<Look<void>> => {
        if (stopped || state !== "suspect") return { done: true, value: undefined };
        const started = Date.now();
        const unreachable = await pingRefused();
        if (unreachable !== undefined) {
          set("failed", `unreachable: ${unreachable}`);
          return { done: true, value: undefined };
        }
        if (silenceCounts() && Date.now() - suspectSince >= failAfterMs) {
          set("failed", `no message for ${Date.now() - lastSeenAt} ms`);
          return { done: true, value: undefined };
        }
        // One ping per heartbeat period.
        return { done: false, waitMs: options.heartbeatMs - (Date.now() - started) };
      });
    } finally {
      pinging = false;
    }
  };

  const tickMs = Math.max(20, Math.floor(options.heartbeatMs / 4));
  let lastTick = Date.now();
  const timer = setInterval(() => {
    const now = Date.now();
    const late = now - lastTick - tickMs;
    lastTick = now;
    // This process was stalled (a checkpoint decrypted, a GC pause, a loaded machine): what the
    // provider sent meanwhile is still unread in the socket. Count no silence until it is read.
    if (late > options.heartbeatMs) {
      lastSeenAt = Math.max(lastSeenAt, now - options.heartbeatMs);
      return;
    }
    if (!silenceCounts()) return;
    if (state === "alive" && Date.now() - lastSeenAt > suspectAfterMs) {
      set("suspect", `no heartbeat for ${Date.now() - lastSeenAt} ms`);
    } else if (state === "suspect" && Date.now() - suspectSince >= failAfterMs) {
      set("failed", `no message for ${Date.now() - lastSeenAt} ms`);
    }
  }, tickMs);
  timer.unref();

  const stop = (): void => {
    stopped = true;
    clearInterval(timer);
  };

  return {
    heard() {
      lastSeenAt = Date.now();
      if (state === "suspect") {
        state = "alive";
        onChange({ state, reason: "heard from again", lastSeenAt });
      }
    },
    lost(reason) {
      set("suspect", reason);
    },
    quietUntil(until) {
      quiet = until;
      // The window starts afresh when it ends: the silence before it was expected.
      lastSeenAt = Math.max(lastSeenAt, Date.now());
      suspectSince = Math.max(suspectSince, Date.now());
    },
    get state() {
      return state;
    },
    stop,
  };
}
