import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";

import type { BatonClient } from "../client.ts";
import { ProviderFaultError, shortMessageOf } from "../errors.ts";
import { monitorLiveness, type LivenessOptions, type LivenessState } from "../tenant/liveness.ts";
import { createEventQueue } from "../tenant/event-queue.ts";
import { openLeaseSession, type LeaseSession, type ProviderEvent } from "../wire/clients.ts";
import type { TenantMessage } from "../wire/messages.ts";
import { signTenantAuth } from "../wire/tenant-auth.ts";
import { withRetry } from "../utils/retry.ts";

export type LeaseWatchEvent =
  | ProviderEvent
  | { type: "liveness"; body: { state: LivenessState; reason: string; lastSeenAt: number } }
  /**
   * The session was opened again after it was lost, past the message numbered `afterSeq`: what the
   * provider sends now follows. A provider node that restarted meanwhile relaunched the job, and
   * knows nothing that was sent to it on the lost session.
   */
  | { type: "reattached"; body: { afterSeq: number } };

export interface WatchLeaseParameters {
  leaseId: bigint;
  /** The provider's peer id and, if known, its listen addresses. */
  peerId: string;
  addresses?: readonly string[];
  /** Starts the job (a lease just opened); without it the session re-attaches to a running job. */
  start?: Omit<TenantMessage<"start">, "leaseId" | "auth">;
  /** Re-attach after this session sequence number (what was already seen). */
  afterSeq?: number;
  liveness: LivenessOptions;
  /** How long starting may take before the first message (inputs and checkpoint are fetched first). */
  startTimeoutMs?: number;
  /**
   * A batch lease: a task's `result` (one with a task id) ends the task, not the watch, which goes on
   * until a refusal, the provider's failure or a stop. See `runBatch`.
   */
  batch?: boolean;
  signal?: AbortSignal;
}

export interface LeaseWatch extends AsyncIterable<LeaseWatchEvent> {
  /** Sends a message on the current session (e.g. a checkpoint acknowledgement). */
  send: LeaseSession["send"];
  /** Stops watching and closes the session; the job keeps running. */
  stop(): Promise<void>;
}

/**
 * Opens a lease session (starting the job, or re-attaching to it), and yields the provider's
 * verified messages together with liveness changes: `suspect` on missed heartbeats or a lost
 * session (it then re-attaches if the provider still answers), `failed` when the provider is
 * unreachable or stays silent past the window. The iterator ends after a `result` (a job's, not a
 * batch task's), a `refused`, or `failed`.
 *
 * @example
 * for await (const event of watchLease(client, { leaseId, peerId, liveness: { heartbeatMs: 500 } })) {
 *   if (event.type === "heartbeat") console.log(event.body.progress);
 * }
 */
export function watchLease(client: BatonClient, parameters: WatchLeaseParameters): LeaseWatch {
  const { leaseId, peerId, addresses = [], start, liveness: livenessOptions, signal } = parameters;
  const startTimeoutMs = parameters.startTimeoutMs ?? 120_000;
  const peer = peerIdFromString(peerId);
  const queue = createEventQueue<LeaseWatchEvent>();
  const log = client.log.child(`lease.${leaseId}`);
  let lastSeq = parameters.afterSeq ?? 0;
  let session: LeaseSession | undefined;
  let finished = false;
  let started = start === undefined;

  const finish = (): void => {
    if (finished) return;
    finished = true;
    monitor.stop();
    queue.end();
    void session?.close();
  };

  const monitor = monitorLiveness(client.host, peer, livenessOptions, (change) => {
    queue.push({ type: "liveness", body: change });
    if (change.state === "failed") finish();
    else if (change.state === "suspect" && !session) void connect();
  });
  // Until the job is accepted the provider fetches its inputs and checkpoint, and sends nothing.
  if (start) monitor.quietUntil(Date.now() + startTimeoutMs);

  for (const address of addresses) {
    void client.host.peerStore
      .merge(peer, { multiaddrs: [multiaddr(address)] })
      .catch((error: unknown) => log.debug("address not stored", { address, error }));
  }

  let connecting = false;
  /** Opens the session; while the provider is only suspect, a failed open is tried again every heartbeat. */
  const connect = async (): Promise<void> => {
    if (connecting || finished) return;
    connecting = true;
    // No signal here: an abort finishes the watch, and a finished watch opens nothing more.
    await withRetry(open, { delayMs: livenessOptions.heartbeatMs, backoff: 1, unref: true }).catch(() => undefined);
    connecting = false;
  };
  const open = async (attempt: number): Promise<void> => {
    if (attempt > 1 && (finished || monitor.state === "failed" || session)) return;
    const afterSeq = lastSeq;
    const reattaching = started;
    try {
      const auth = await signTenantAuth(client.account, leaseId, client.host.peerId.toString());
      const first = reattaching
        ? { type: "attach" as const, body: { leaseId, auth, afterSeq } }
        : { type: "start" as const, body: { leaseId, auth, ...start! } };
      session = await openLeaseSession(client.host, peer, client.peerKey, first, {
        signal: AbortSignal.any([AbortSignal.timeout(10_000), ...(signal ? [signal] : [])]),
      });
    } catch (error) {
      log.debug("session not opened", { error });
      monitor.lost(`cannot open a session: ${shortMessageOf(error)}`);
      throw error;
    }
    if (reattaching) queue.push({ type: "reattached", body: { afterSeq } });
    started = true;
    monitor.heard();
    void read(session);
  };

  const read = async (current: LeaseSession): Promise<void> => {
    let reason = "session ended";
    try {
      for await (const event of current.messages) {
        monitor.heard();
        if (event.type === "accepted") monitor.quietUntil(0);
        if ("seq" in event.body) {
          // Replays after a re-attach start past what we saw; anything older is a duplicate.
          if (event.body.seq <= lastSeq && event.type !== "accepted") continue;
          lastSeq = Math.max(lastSeq, event.body.seq);
        }
        queue.push(event);
        const taskEnded = parameters.batch === true && event.type === "result" && event.body.taskId !== undefined;
        if ((event.type === "result" && !taskEnded) || event.type === "refused") {
          finish();
          return;
        }
      }
    } catch (error) {
      reason = `session lost: ${shortMessageOf(error)}`;
    }
    if (session === current) session = undefined;
    if (!finished) monitor.lost(reason);
  };

  // A signal aborted already fires no event: such a watch is over before it starts (its session
  // would otherwise be tried again every heartbeat, for good).
  if (signal?.aborted) finish();
  else signal?.addEventListener("abort", finish, { once: true });
  void connect();

  return {
    [Symbol.asyncIterator]: () => queue[Symbol.asyncIterator](),
    async send(type, body) {
      if (!session) throw new ProviderFaultError("no session open");
      await session.send(type, body);
    },
    async stop() {
      finish();
    },
  };
}
