import { once, setMaxListeners } from "node:events";

import type { Address } from "viem";

import type { BatonClient } from "../client.ts";
import {
  BaseError,
  NoReplicaError,
  ProviderFaultError,
  RequestNotRetriedError,
  RequestNotSentError,
  ServiceBusyError,
  UserError,
} from "../errors.ts";
import { pinJobImage } from "../images/registry.ts";
import { httpLanes } from "../p2p/http-lanes.ts";
import { httpStreams } from "../p2p/http-streams.ts";
import type { JobSpec, JobSpecInput } from "../job-spec.ts";
import { parseJobSpec } from "../job-spec.ts";
import { chainHeartbeatsCurrent } from "../tenant/chain-deadline.ts";
import type { JobHandle } from "../tenant/job-handle.ts";
import { linkedSignal } from "../utils/linked-signal.ts";
import { poll, type Look } from "../utils/retry.ts";
import { leaseFetch, type LeaseFetchResponse } from "./leaseFetch.ts";
import { runJob } from "./runJob.ts";

export interface ServeOptions {
  replicas: number;
  maxPricePerSecond: bigint;
  /** Most payment tokens per replica (deposits, top-ups and replacements). */
  budgetPerReplica?: bigint;
  files?: Record<string, string>;
  /** Hand-offs a replica may take before it is given up (and replaced by a fresh one). Default 10. */
  retryLimit?: number;
  heartbeatWindowMs?: number;
  failAfterMs?: number;
  /**
   * How long a replica on a new lease may take to pass its readiness probe; one that does not is
   * given up (its lease closed) and replaced by a fresh replica. Default 60 s.
   */
  readinessTimeoutMs?: number;
  /** Send an idempotent request to a second replica when the first has not answered in this long. */
  hedgeAfterMs?: number;
  /**
   * Most requests in flight on one replica (default 64): a server job has a fixed number of
   * workers, and requests past that only queue inside it, out of sight of the routing.
   */
  maxConcurrentPerReplica?: number;
  /**
   * Most requests waiting for a replica with room (default 1,024); past that, `fetch` fails at
   * once with {@link ServiceBusyError} (a gateway answers 503) rather than letting waits pile up.
   */
  maxQueued?: number;
  /**
   * Closes the service when it aborts (as `close()`). While `serve` is still starting its replicas,
   * it stops there, closes what it started and rejects with the signal's reason.
   */
  signal?: AbortSignal;
}

export interface ServiceFetchOptions {
  /** Allows retrying a request whose method is not idempotent (POST, PATCH). */
  retryable?: boolean;
  /** The whole request, retries included, must finish within this. Default 30 s. */
  deadlineMs?: number;
  /** This request's hedge (see {@link ServeOptions.hedgeAfterMs}), instead of the service's. */
  hedgeAfterMs?: number;
  signal?: AbortSignal;
}

/** A request as a gateway holds it: what {@link Service.forward} takes, without WHATWG objects. */
export interface ServiceRequest {
  method: string;
  /** Path and query, e.g. `/predict?text=hi`. */
  path: string;
  headers: [string, string][];
  body?: AsyncIterable<Uint8Array>;
}

/** The answer of {@link Service.forward}: the job's status, its headers as sent, its body as it streams. */
export interface ServiceResponse {
  status: number;
  headers: [string, string][];
  body: AsyncGenerator<Uint8Array>;
}

export interface ServiceStats {
  /** Attempts sent again after a replica failed a request (not counting hedges). */
  retries: number;
  /** Second attempts sent because the first was slow (`hedgeAfterMs`). */
  hedges: number;
  /** Requests refused with {@link ServiceBusyError}. */
  busy: number;
  /**
   * Connections on lanes to the replicas: open now (carrying a request, or idle), closed
   * mid-response, and the leases that have a lane.
   */
  lanes: { active: number; idle: number; cut: number; leases: number };
}

export type ReplicaState = "starting" | "ready" | "suspect" | "replacing" | "stopped";

export interface ReplicaStatus {
  index: number;
  jobId: string;
  state: ReplicaState;
  leaseId: bigint | undefined;
  provider: Address | undefined;
  outstanding: number;
  served: number;
  failed: number;
  /** Smoothed response time of this replica. */
  latencyMs: number | undefined;
  handOffs: number;
}

export interface Service {
  /** Sends a request to a healthy replica; see {@link ServiceFetchOptions} for retries. */
  fetch(request: Request, options?: ServiceFetchOptions): Promise<Response>;
  /**
   * `fetch` for gateways: the same routing, retries, hedging and deadline, on plain values. A
   * gateway forwarding each request through WHATWG `Request`/`Response` objects and web streams
   * spends more CPU on them than on the hop to the replica.
   */
  forward(request: ServiceRequest, options?: ServiceFetchOptions): Promise<ServiceResponse>;
  /**
   * Opens an upgraded connection (a WebSocket) on the least loaded ready replica: `request` has
   * the `Upgrade` header, and its body is what the client sends after the handshake. On a 101,
   * the response's body is what the replica sends, until either side ends the connection; it
   * breaks off (a {@link ProviderFaultError}) when the replica is lost, for the client to connect
   * again. Never retried: the client has the handshake's answer or an error within `deadlineMs`.
   */
  upgrade(
    request: ServiceRequest,
    options?: Pick<ServiceFetchOptions, "deadlineMs" | "signal">,
  ): Promise<ServiceResponse>;
  replicas(): ReplicaStatus[];
  /** Counts since the service started, for a gateway's metrics. */
  stats(): ServiceStats;
  /** Resolves once `count` replicas are ready (or rejects after `timeoutMs`). */
  ready(count?: number, timeoutMs?: number): Promise<void>;
  /** Changes the number of replicas: new ones are leased, surplus ones cancelled. */
  scale(replicas: number): Promise<void>;
  /** Every replica's job, for its events (`re-leased`, `slashed`, …). */
  jobs(): JobHandle[];
  /** Cancels every replica (their leases are closed and refunded). */
  close(): Promise<void>;
}

const IDEMPOTENT = new Set(["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"]);
/** A response body is read this far before it is handed on (see `attempt`). */
const PREFETCH_BYTES = 64 * 1024;
/** The largest request or response body, either way (the node's own limit on its libp2p path). */
const MAX_BODY_BYTES = 64 * 1024 * 1024;
/** The most request body kept for a retry; a larger idempotent request is sent once. */
const MAX_RETRY_BODY_BYTES = 8 * 1024 * 1024;
/** How often a recovered replica held back is looked at again: about a provider's heartbeat period. */
const RECOVERY_POLL_MS = 1_000;

interface Replica {
  index: number;
  job: JobHandle;
  state: ReplicaState;
  outstanding: number;
  served: number;
  failed: number;
  latencyMs: number | undefined;
  /** Aborts the requests in flight on this replica's current lease (it became suspect or failed). */
  inFlight: AbortController;
}

/**
 * Serves a stateless server job as `replicas` replicas on as many distinct providers. Each replica
 * is a job kept running by `runJob` (hand-off when its provider fails, slash at timeout); a new
 * replica, or one moved to a new provider, gets traffic only once `spec.service.readinessPath`
 * answers 200. `fetch` picks the ready replica with the fewest requests in flight, then the
 * fastest; a replica that turns suspect stops getting traffic at once and its requests in flight
 * are retried elsewhere when that is safe (idempotent methods, or `retryable`), within the
 * request's deadline. Others fail with {@link RequestNotRetriedError}, never silently twice.
 *
 * @example
 * const service = await serve(client, spec, { replicas: 3, maxPricePerSecond: parseEther("0.001"), files });
 * await service.ready();
 * const res = await service.fetch(new Request("http://service/predict?text=hello"));
 */
export async function serve(
  client: BatonClient,
  specInput: JobSpec | JobSpecInput,
  options: ServeOptions,
): Promise<Service> {
  const spec = parseJobSpec(specInput);
  if (!spec.service) throw new UserError("a served job needs `service` in its spec (at least `service: {}`)");
  if (!Number.isInteger(options.replicas) || options.replicas < 1) throw new UserError("replicas must be 1 or more");
  const readinessPath = spec.service.readinessPath;
  const readinessTimeoutMs = options.readinessTimeoutMs ?? 60_000;
  const { signal } = options;
  // Once for the service: a replica added or replaced later runs the image the first ones run.
  if (spec.image !== undefined) spec.image = await pinJobImage(spec.image, { signal });
  const replicas: Replica[] = [];
  let closing = false;
  let nextIndex = 0;
  const log = client.log.child("serve");
  // Requests and readiness probes reuse streams to the replicas' providers (keep-alive).
  const streams = httpStreams(client.host);
  // And go straight to the jobs, on lanes, where their nodes serve them (then a request costs a
  // node a copy of its bytes, not a libp2p exchange); over the streams where not.
  const lanes = httpLanes(client.host, log);
  /** One exchange with the server job of a lease, on its lane or else over a stream. */
  const exchange = async (
    peerId: string,
    leaseId: bigint,
    request: { method: string; path: string; headers: [string, string][]; body?: AsyncIterable<Uint8Array> },
    signal: AbortSignal,
  ): Promise<LeaseFetchResponse> =>
    (await lanes.fetch(peerId, leaseId, { ...request, maxBodyBytes: MAX_BODY_BYTES, signal })) ??
    (await leaseFetch(client, { peerId, leaseId, ...request, maxBodyBytes: MAX_BODY_BYTES, streams, signal }));
  /** Fires "change" whenever a replica's state changes: what `ready()` and a waiting `fetch` wait for. */
  const changes = new EventTarget();
  // Every request waiting for a ready replica listens: no count of them is a leak.
  setMaxListeners(0, changes);

  const setState = (replica: Replica, state: ReplicaState): void => {
    replica.state = state;
    changes.dispatchEvent(new Event("change"));
  };

  /** Resolves at the next change of any replica's state; rejects when `wait` aborts first. */
  const nextChange = async (wait: AbortSignal): Promise<void> => {
    await once(changes, "change", { signal: wait });
  };

  const providersOfOthers = (self: Replica | undefined) => () =>
    replicas.filter((r) => r !== self && r.state !== "stopped").flatMap((r) => r.job?.status().provider ?? []);

  /**
   * Probes a replica's readiness path until it answers 200 (the replica is ready then), its lease
   * changes, the service closes or the readiness timeout passes.
   */
  const probe = async (replica: Replica): Promise<"ready" | "moved" | "timeout"> => {
    const leaseId = replica.job.status().leaseId;
    const ready = await poll(
      async (): Promise<Look<boolean>> => {
        if (closing || replica.job.status().leaseId !== leaseId) return { done: true, value: false };
        const { peerId } = replica.job.status();
        if (peerId && leaseId !== undefined) {
          try {
            const res = await exchange(
              peerId,
              leaseId,
              { method: "GET", path: readinessPath, headers: [] },
              AbortSignal.timeout(2_000),
            );
            for await (const piece of res.body) void piece;
            if (res.status === 200) return { done: true, value: true };
          } catch (error) {
            log.debug("readiness probe failed", { index: replica.index, error });
          }
        }
        return { done: false };
      },
      { delayMs: 200, backoff: 1, timeoutMs: readinessTimeoutMs },
    );
    if (ready) {
      setState(replica, "ready");
      log.info("replica ready", { index: replica.index, leaseId });
      return "ready";
    }
    return ready === false ? "moved" : "timeout";
  };

  /**
   * A suspect replica whose provider answers again is ready once its lease's heartbeats on chain
   * are current (chain-deadline.ts). A provider frozen past that point answers before its next
   * heartbeat transaction lands, and the tenant leaves its lease a moment later, cutting every
   * request sent there meanwhile: a POST among them would fail. A chain that cannot be read holds
   * nothing back, as it makes the tenant leave no lease.
   */
  const recovering = new Set<Replica>();
  const recovered = async (replica: Replica): Promise<void> => {
    const { leaseId } = replica.job.status();
    // Once at a time: suspect again and recovered again while held back changes nothing.
    if (leaseId === undefined || recovering.has(replica)) return;
    recovering.add(replica);
    const waiting = (): boolean => !closing && replica.state === "suspect" && replica.job.status().leaseId === leaseId;
    let heldBack = false;
    await poll(
      async (): Promise<Look<undefined>> => {
        if (!waiting()) return { done: true, value: undefined };
        const current = await chainHeartbeatsCurrent(client, leaseId).catch((error: unknown) => {
          log.debug("lease deadline not read; the replica is ready", { index: replica.index, leaseId, error });
          return true;
        });
        if (!waiting()) return { done: true, value: undefined };
        if (current) {
          setState(replica, "ready");
          if (heldBack)
            log.info("replica's heartbeats current on chain again: ready", { index: replica.index, leaseId });
          return { done: true, value: undefined };
        }
        if (!heldBack) {
          log.info("replica answers again but its heartbeats on chain are behind: held back", {
            index: replica.index,
            leaseId,
          });
        }
        heldBack = true;
        return { done: false };
      },
      { delayMs: RECOVERY_POLL_MS, backoff: 1, unref: true },
    ).finally(() => recovering.delete(replica));
  };

  const add = async (): Promise<Replica> => {
    const index = nextIndex++;
    const placeholder = { state: "starting" } as Replica;
    replicas.push(placeholder);
    const job = await runJob(client, spec, {
      maxPricePerSecond: options.maxPricePerSecond,
      ...(options.budgetPerReplica === undefined ? {} : { budget: options.budgetPerReplica }),
      ...(options.files ? { files: options.files } : {}),
      retryLimit: options.retryLimit ?? 10,
      ...(options.heartbeatWindowMs ? { heartbeatWindowMs: options.heartbeatWindowMs } : {}),
      ...(options.failAfterMs ? { failAfterMs: options.failAfterMs } : {}),
      excludeProviders: providersOfOthers(placeholder),
    });
    const replica = Object.assign(placeholder, {
      index,
      job,
      state: "starting" as ReplicaState,
      outstanding: 0,
      served: 0,
      failed: 0,
      latencyMs: undefined,
      inFlight: new AbortController(),
    });
    const cut = (state: ReplicaState): void => {
      setState(replica, state);
      replica.inFlight.abort(new ProviderFaultError(`replica ${index} is ${state}`));
      replica.inFlight = new AbortController();
    };
    job.on("started", () => {
      void probe(replica).then((outcome) => {
        if (outcome !== "timeout" || closing || !replicas.includes(replica)) return;
        // Never ready on its lease (a server that hangs before it listens, or cannot answer its
        // readiness path): it would stay `starting` for good. It is given up, its lease closed, and
        // a fresh replica takes its place, as for one that failed.
        log.warn("replica not ready within the readiness timeout; replacing it", {
          index,
          leaseId: job.status().leaseId,
          timeoutMs: readinessTimeoutMs,
        });
        replicas.splice(replicas.indexOf(replica), 1);
        cut("stopped");
        void job.cancel().catch((error: unknown) => log.warn("unready replica not cancelled", { error }));
        void add().catch((error: unknown) => log.warn("replacement replica failed to start", { error }));
      });
    });
    job.on("provider-suspect", () => {
      if (replica.state === "ready") cut("suspect");
    });
    job.on("provider-recovered", () => {
      if (replica.state === "suspect") void recovered(replica);
    });
    job.on("provider-failed", () => cut("replacing"));
    // A reorg took the lease it serves on (not an older one of the replica's): it moves to a new lease.
    job.on("lease-vanished", (event) => {
      if (job.status().leaseId === event.leaseId) cut("replacing");
    });
    job.on("re-leased", (event) => {
      lanes.forget(event.from);
      setState(replica, "starting");
    });
    const ended = (): void => {
      const { leaseId } = job.status();
      if (leaseId !== undefined) lanes.forget(leaseId);
      cut("stopped");
      // A replica that gave up (retry limit, budget) is replaced by a fresh one: the count holds.
      if (!closing && replicas.includes(replica)) {
        replicas.splice(replicas.indexOf(replica), 1);
        void add().catch((error: unknown) => log.warn("replacement replica failed to start", { error }));
      }
    };
    job.on("failed", ended);
    job.on("completed", ended);
    // One lease at a time: the next replica must see this one's provider to stay off it.
    await new Promise<void>((resolve) => {
      const off = job.on("lease-opened", () => {
        off();
        resolve();
      });
      job.result().then(
        () => resolve(),
        () => resolve(),
      );
    });
    return replica;
  };

  const stats: Omit<ServiceStats, "lanes"> = { retries: 0, hedges: 0, busy: 0 };
  /** Responses read whole by their attempt: nothing is left to time out or cancel. */
  const whole = new WeakSet<ServiceResponse>();
  const maxConcurrent = options.maxConcurrentPerReplica ?? 64;
  const maxQueued = options.maxQueued ?? 1_024;
  /** Requests waiting for a replica with room, oldest first: each slot freed wakes the oldest. */
  const queue: (() => void)[] = [];
  const freed = (): void => queue.shift()?.();
  /**
   * Resolves when a slot frees, a replica changes state, or `wait` aborts (the caller checks its
   * deadline); rejects with {@link ServiceBusyError} when the queue is full.
   */
  const room = (wait: AbortSignal): Promise<void> => {
    if (queue.length >= maxQueued) {
      stats.busy++;
      return Promise.reject(
        new ServiceBusyError(`every replica has ${maxConcurrent} requests in flight and ${maxQueued} wait`),
      );
    }
    return new Promise<void>((resolve) => {
      const done = (): void => {
        const at = queue.indexOf(done);
        if (at >= 0) queue.splice(at, 1);
        changes.removeEventListener("change", done);
        wait.removeEventListener("abort", done);
        resolve();
      };
      queue.push(done);
      changes.addEventListener("change", done);
      wait.addEventListener("abort", done);
    });
  };

  const pick = (tried: Set<Replica>): Replica | undefined => {
    const ready = replicas.filter((r) => r.state === "ready" && r.outstanding < maxConcurrent);
    const fresh = ready.filter((r) => !tried.has(r));
    const pool = fresh.length > 0 ? fresh : ready;
    return pool.sort((a, b) => a.outstanding - b.outstanding || (a.latencyMs ?? 0) - (b.latencyMs ?? 0))[0];
  };

  const attempt = async (
    replica: Replica,
    request: { method: string; path: string; headers: [string, string][]; body: Uint8Array[] | undefined },
    stream: AsyncIterable<Uint8Array> | undefined,
    signal: AbortSignal,
  ): Promise<LeaseFetchResponse> => {
    const { leaseId, peerId } = replica.job.status();
    if (leaseId === undefined || !peerId) throw new RequestNotSentError("the replica has no lease");
    const started = performance.now();
    replica.outstanding++;
    const linked = linkedSignal([signal, replica.inFlight.signal]);
    try {
      const body =
        stream ??
        (request.body
          ? (async function* () {
              yield* request.body!;
            })()
          : undefined);
      const response = await exchange(
        peerId,
        leaseId,
        { method: request.method, path: request.path, headers: request.headers, ...(body ? { body } : {}) },
        linked.signal,
      );
      // Read the start of the body here: a small response is then whole before the caller sees
      // it, so a replica dying mid-answer is still a retry, not a cut response. Not an event
      // stream's: its events must reach the client as they come (its end is the client's to handle).
      const streaming = response.headers.some(
        ([name, value]) => name.toLowerCase() === "content-type" && value.startsWith("text/event-stream"),
      );
      const buffered: Uint8Array[] = [];
      let size = 0;
      let done = false;
      const iterator = response.body[Symbol.asyncIterator]();
      while (!streaming && size < PREFETCH_BYTES) {
        const next = await iterator.next();
        if (next.done) {
          done = true;
          break;
        }
        buffered.push(next.value);
        size += next.value.byteLength;
      }
      if (done) {
        // A whole response has nothing left to cancel: its listener on the replica's signal goes
        // now, not when (or if) its reader reaches the end, and its body is the bytes read.
        linked.release();
        response.body = (async function* () {
          yield* buffered;
        })();
        whole.add(response);
      } else {
        response.body = (async function* () {
          try {
            yield* buffered;
            yield* { [Symbol.asyncIterator]: () => iterator };
          } finally {
            // Let go before its end (a client gone, a hedge's loser): the stream is released.
            await iterator.return?.(undefined);
            linked.release();
          }
        })();
      }
      const ms = performance.now() - started;
      replica.latencyMs = replica.latencyMs === undefined ? ms : 0.8 * replica.latencyMs + 0.2 * ms;
      replica.served++;
      return response;
    } catch (error) {
      linked.release();
      replica.failed++;
      throw error;
    } finally {
      replica.outstanding--;
      freed();
    }
  };

  /**
   * One request to the service, within `deadline`: see {@link Service.forward}. `settled`, when a
   * hedge sent it twice, resolves once the other attempt is over too (answered, failed or aborted).
   */
  const forwardWithin = async (
    request: ServiceRequest,
    fetchOptions: ServiceFetchOptions,
    deadline: AbortSignal,
  ): Promise<{ response: ServiceResponse; settled?: Promise<unknown> }> => {
    const method = request.method.toUpperCase();
    const pathname = request.path.split("?")[0];
    const retryable = IDEMPOTENT.has(method) || fetchOptions.retryable === true;
    // A body is kept for retries only when a retry may happen, and only up to a bound.
    let kept: Uint8Array[] | undefined;
    /** A body streamed as it comes (not kept whole): each attempt's, replaying what one before read. */
    let stream: (() => AsyncIterable<Uint8Array> | undefined) | undefined;
    if (request.body) {
      if (retryable) {
        kept = [];
        let size = 0;
        for await (const chunk of request.body) {
          size += chunk.byteLength;
          if (size > MAX_RETRY_BODY_BYTES) {
            throw new UserError(`a retryable request body may be at most ${MAX_RETRY_BODY_BYTES} bytes`);
          }
          kept.push(chunk);
        }
      } else {
        stream = replayable(request.body, MAX_RETRY_BODY_BYTES);
      }
    }
    const head = { method, path: request.path, headers: request.headers, body: kept };
    const tried = new Set<Replica>();
    let rounds = 0;
    let lastError: unknown;
    for (;;) {
      if (deadline.aborted) {
        throw new NoReplicaError(`no replica answered ${method} ${pathname} within the deadline`, {
          cause: lastError,
          details: lastError instanceof BaseError ? lastError.shortMessage : undefined,
        });
      }
      const first = pick(tried);
      if (!first) {
        if (replicas.some((r) => r.state === "ready")) {
          // Every ready replica is full: wait in the queue for a slot (or fail now if it is full too).
          await room(deadline);
        } else {
          // No replica is ready: wait for one to become so (the deadline is checked above).
          await nextChange(deadline).catch(() => undefined);
        }
        continue;
      }
      if (tried.has(first)) {
        // Every ready replica failed this request once: try again after a pause that doubles
        // (or at a change of replicas), not in a loop as fast as refusals come back.
        rounds++;
        await Promise.race([
          nextChange(deadline),
          new Promise((resolve) => setTimeout(resolve, Math.min(1_000, 25 * 2 ** rounds))),
        ]).catch(() => undefined);
        if (first.state !== "ready") continue;
      }
      if (tried.size > 0) stats.retries++;
      tried.add(first);
      // A request not sent may go again (even a POST), but only with its whole body: a body that
      // streamed past the bound is no longer all here, and its request fails as not retried.
      const body = stream?.();
      if (stream && !body) {
        throw new RequestNotRetriedError(
          `${method} ${pathname} was not delivered, and its body (over ${MAX_RETRY_BODY_BYTES} bytes, streamed) cannot be sent again`,
          { cause: lastError },
        );
      }
      const attempts = [attempt(first, head, body, deadline)];
      let hedge: NodeJS.Timeout | undefined;
      // A hedge not sent by the time the first attempt is over is settled as not sent: otherwise
      // `settled` below would never come, and the request's deadline and listeners would be held
      // until the deadline's end.
      let unsent: (() => void) | undefined;
      const hedgeAfterMs = fetchOptions.hedgeAfterMs ?? options.hedgeAfterMs;
      if (retryable && hedgeAfterMs !== undefined) {
        attempts.push(
          new Promise<LeaseFetchResponse>((resolve, reject) => {
            unsent = () => reject(new RequestNotSentError("the first attempt was over before the hedge was due"));
            hedge = setTimeout(() => {
              unsent = undefined;
              const second = pick(tried);
              if (!second) return reject(new RequestNotSentError("no second replica to hedge on"));
              stats.hedges++;
              tried.add(second);
              attempt(second, head, undefined, deadline).then(resolve, reject);
            }, hedgeAfterMs);
          }),
        );
      }
      try {
        const winner = await Promise.any(attempts);
        // A hedge's loser that answers too has a response nobody reads: its stream is let go.
        for (const other of attempts) {
          void other.then(
            (response) => (response === winner ? undefined : discard(response)),
            () => undefined,
          );
        }
        return { response: winner, ...(attempts.length > 1 ? { settled: Promise.allSettled(attempts) } : {}) };
      } catch (error) {
        lastError = error instanceof AggregateError ? error.errors[0] : error;
        const notSent = attempts.length === 1 && lastError instanceof RequestNotSentError;
        if (!retryable && !notSent) {
          throw new RequestNotRetriedError(
            `${method} ${pathname} failed on replica ${first.index} after it was sent, and was not retried: ${method} is not idempotent (mark it retryable to allow a retry)`,
            { cause: lastError },
          );
        }
      } finally {
        clearTimeout(hedge);
        unsent?.();
      }
    }
  };

  const service: Service = {
    async fetch(request, fetchOptions = {}) {
      const url = new URL(request.url);
      const response = await service.forward(
        {
          method: request.method,
          path: `${url.pathname}${url.search}`,
          headers: [...request.headers.entries()],
          ...(request.body ? { body: request.body as unknown as AsyncIterable<Uint8Array> } : {}),
        },
        fetchOptions,
      );
      return toResponse(response);
    },
    async forward(request, fetchOptions = {}) {
      const deadline = linkedSignal(
        fetchOptions.signal ? [fetchOptions.signal] : [],
        fetchOptions.deadlineMs ?? 30_000,
      );
      try {
        const { response, settled } = await forwardWithin(request, fetchOptions, deadline.signal);
        // A hedge's other attempt may still wait for its answer: the deadline holds until it is over.
        const release = settled ? () => void settled.then(deadline.release) : deadline.release;
        if (whole.has(response)) {
          release();
          return response;
        }
        // The deadline and the caller's signal hold until the response's end, not its head's.
        const body = response.body;
        response.body = (async function* () {
          try {
            yield* body;
          } finally {
            release();
          }
        })();
        return response;
      } catch (error) {
        deadline.release();
        throw error;
      }
    },
    async upgrade(request, { deadlineMs = 30_000, signal: connection } = {}) {
      const method = request.method.toUpperCase();
      const pathname = request.path.split("?")[0];
      const deadline = AbortSignal.any([AbortSignal.timeout(deadlineMs), ...(connection ? [connection] : [])]);
      let replica = pick(new Set());
      while (!replica) {
        if (deadline.aborted)
          throw new NoReplicaError(`no replica was ready for ${method} ${pathname} within the deadline`);
        await nextChange(deadline).catch(() => undefined);
        replica = pick(new Set());
      }
      const { leaseId, peerId } = replica.job.status();
      if (leaseId === undefined || !peerId) throw new NoReplicaError("the replica has no lease");
      // The deadline is for the handshake's answer; the connection lasts while both sides keep it
      // and the replica stays (a replica lost or replaced aborts its in-flight signal).
      const handshake = new AbortController();
      const timer = setTimeout(() => handshake.abort(deadline.reason), Math.max(0, deadlineMs));
      try {
        const response = await leaseFetch(client, {
          peerId,
          leaseId,
          method,
          path: request.path,
          headers: request.headers,
          ...(request.body ? { body: request.body } : {}),
          streams,
          signal: AbortSignal.any([handshake.signal, replica.inFlight.signal, ...(connection ? [connection] : [])]),
        });
        replica.served++;
        return response;
      } catch (error) {
        replica.failed++;
        throw error;
      } finally {
        clearTimeout(timer);
      }
    },
    stats: () => ({ ...stats, lanes: lanes.connections() }),
    replicas: () =>
      replicas
        .filter((r) => r.job)
        .map((r) => {
          const status = r.job.status();
          return {
            index: r.index,
            jobId: r.job.jobId,
            state: r.state,
            leaseId: status.leaseId,
            provider: status.provider,
            outstanding: r.outstanding,
            served: r.served,
            failed: r.failed,
            latencyMs: r.latencyMs,
            handOffs: status.handOffs,
          };
        }),
    async ready(count = options.replicas, timeoutMs = 120_000) {
      const timeout = AbortSignal.timeout(timeoutMs);
      const wait = AbortSignal.any([timeout, ...(signal ? [signal] : [])]);
      while (replicas.filter((r) => r.state === "ready").length < count) {
        try {
          await nextChange(wait);
        } catch (error) {
          signal?.throwIfAborted();
          if (timeout.aborted) throw new NoReplicaError(`fewer than ${count} replicas ready after ${timeoutMs} ms`);
          throw error;
        }
      }
    },
    async scale(count) {
      if (!Number.isInteger(count) || count < 1) throw new UserError("replicas must be 1 or more");
      options.replicas = count;
      while (replicas.length < count) await add();
      while (replicas.length > count) {
        const surplus = replicas.pop()!;
        const { leaseId } = surplus.job.status();
        if (leaseId !== undefined) lanes.forget(leaseId);
        setState(surplus, "stopped");
        await surplus.job.cancel();
      }
    },
    jobs: () => replicas.filter((r) => r.job).map((r) => r.job),
    async close() {
      closing = true;
      streams.close();
      lanes.close();
      await Promise.all(
        replicas.map(async (r) => {
          setState(r, "stopped");
          await r.job?.cancel();
        }),
      );
    },
  };
  const stopIfAborted = async (): Promise<void> => {
    if (!signal?.aborted) return;
    await service.close();
    signal.throwIfAborted();
  };
  for (let i = 0; i < options.replicas; i++) {
    await stopIfAborted();
    await add();
  }
  await stopIfAborted();
  signal?.addEventListener("abort", () => void service.close(), { once: true });
  return service;
}

/** Drops a response unread: its body is started (so that its clean-up runs) and ended. */
async function discard(response: ServiceResponse): Promise<void> {
  await response.body.next().catch(() => undefined);
  await response.body.return(undefined).catch(() => undefined);
}

function toResponse(response: ServiceResponse): Response {
  const iterator = response.body[Symbol.asyncIterator]();
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done } = await iterator.next();
        if (done) controller.close();
        else controller.enqueue(value);
      } catch (error) {
        controller.error(error);
      }
    },
    async cancel() {
      await iterator.return?.(undefined);
    },
  });
  const noBody = response.status === 204 || response.status === 304;
  return new Response(noBody ? null : body, { status: response.status, headers: response.headers });
}

/**
 * A body streamed once but sent maybe more than once: each call gives an iterable that yields the
 * chunks read so far, then reads on. A read one attempt began and gave up on lands before the next
 * attempt reads, so no chunk is lost to it. Undefined once more than `max` bytes were read: from
 * then on no chunk is kept once yielded.
 */
function replayable(source: AsyncIterable<Uint8Array>, max: number): () => AsyncIterable<Uint8Array> | undefined {
  const iterator = source[Symbol.asyncIterator]();
  const read: (Uint8Array | undefined)[] = [];
  let size = 0;
  let done = false;
  let reading: Promise<void> = Promise.resolve();
  return () => {
    if (size > max) return undefined;
    return (async function* () {
      for (let at = 0; ; at++) {
        await reading;
        if (at === read.length) {
          if (done) return;
          reading = iterator.next().then((next) => {
            if (next.done) done = true;
            else {
              size += next.value.byteLength;
              read.push(next.value);
            }
          });
          await reading;
          if (at === read.length) return;
        }
        const chunk = read[at]!;
        // Past the bound no attempt can be given the body again: what was kept goes.
        if (size > max) read.fill(undefined, 0, at + 1);
        yield chunk;
      }
    })();
  };
}
