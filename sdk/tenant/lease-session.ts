import type { Address } from "viem";

import { watchLease } from "../actions/watchLease.ts";
import type { BatonClient } from "../client.ts";
import type { OpeningWire, ProviderMessage, SessionRefusalReason } from "../wire/messages.ts";
import { SESSION_HEARTBEAT_MS } from "../wire/protocols.ts";
import type { CheckpointReplicator } from "./checkpoint-replicator.ts";
import type { JobEvents } from "./job-events.ts";
import type { CheckpointRecord, JobRecord, LeaseRecord } from "./job-store.ts";
import type { LeaseTopUps } from "./lease-top-ups.ts";
import type { LivenessOptions } from "./liveness.ts";

/** How following a lease's session ended. */
export type FollowOutcome =
  | { kind: "result"; body: ProviderMessage<"result"> }
  | { kind: "refused"; reason: SessionRefusalReason; message: string }
  | { kind: "failed"; reason: string; lastSeenAt: number }
  | { kind: "stopped" };

/** Where the job's own progress reports put it last. */
export interface JobProgress {
  step: number | undefined;
  total: number | undefined;
}

export interface FollowLeaseParameters {
  record: JobRecord;
  events: JobEvents;
  replicator: CheckpointReplicator;
  topUps: LeaseTopUps;
  /** Updated with every progress report. */
  progress: JobProgress;
  /** How soon a silent provider is suspect, and failed (see `monitorLiveness`). */
  heartbeatWindowMs: number | undefined;
  failAfterMs: number | undefined;
  /**
   * Starts the job on the lease (from `resume`, if any), rather than re-attaching to it; with
   * `opening`, on a signed opening the provider submits itself.
   */
  start:
    | {
        resume: CheckpointRecord | undefined;
        /** More peers that hold `resume` (the job's holders), for the provider to fetch it from first. */
        resumeFrom?: readonly string[];
        opening?: OpeningWire;
      }
    | undefined;
  /** Aborted when the lease's signed opening did not land on chain: the provider counts as failed. */
  notOpened?: AbortSignal;
  /** The job is stopping (cancel, detach, or a failure). */
  stop: AbortSignal;
  /** The tenant leaves this lease: its session and the replications of its checkpoints end. */
  leaseWork: AbortSignal;
}

/**
 * How a lease's provider is watched: at the session heartbeat its offer announced, with the tenant's
 * windows for suspect and failed where it set them.
 */
export function leaseLiveness(
  client: BatonClient,
  lease: Pick<LeaseRecord, "peerId">,
  { heartbeatWindowMs, failAfterMs }: Pick<FollowLeaseParameters, "heartbeatWindowMs" | "failAfterMs">,
): LivenessOptions {
  return {
    heartbeatMs: client.offers.list().find((o) => o.peerId === lease.peerId)?.heartbeatMs ?? SESSION_HEARTBEAT_MS,
    ...(heartbeatWindowMs ? { suspectAfterMs: heartbeatWindowMs } : {}),
    ...(failAfterMs ? { failAfterMs } : {}),
  };
}

/**
 * Follows one lease's session until the job's result, a refusal, its provider's failure, or a stop:
 * job events out of the provider's messages, each checkpoint handed to the replicator, the lease's
 * progress saved in the job's record, and the lease kept funded meanwhile.
 */
export async function followLease(
  client: BatonClient,
  lease: LeaseRecord,
  parameters: FollowLeaseParameters,
): Promise<FollowOutcome> {
  const { record, events, replicator, topUps, progress, start, stop, leaseWork } = parameters;
  const leaseId = BigInt(lease.leaseId);
  const provider = lease.provider as Address;
  const resume = start?.resume;
  const watch = watchLease(client, {
    leaseId,
    peerId: lease.peerId,
    addresses: lease.addresses,
    afterSeq: lease.lastSeq,
    liveness: leaseLiveness(client, lease, parameters),
    ...(start
      ? {
          start: {
            spec: record.spec,
            key: record.key,
            ...(resume
              ? {
                  resume: {
                    cid: resume.cid,
                    sha256: resume.sha256,
                    ...(start.resumeFrom?.length ? { providers: [...start.resumeFrom] } : {}),
                  },
                }
              : {}),
            ...(start.opening ? { opening: start.opening } : {}),
          },
        }
      : {}),
    signal: AbortSignal.any([stop, leaseWork, ...(parameters.notOpened ? [parameters.notOpened] : [])]),
  });
  topUps.schedule(lease);
  try {
    for await (const event of watch) {
      switch (event.type) {
        case "accepted":
          lease.state = "running";
          lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
          await client.jobs.save(record);
          if (start) {
            events.emit({
              type: "started",
              leaseId,
              resumed: event.body.resumed,
              ...(resume && event.body.resumed ? { resumedFrom: { cid: resume.cid, step: resume.step } } : {}),
            });
          }
          break;
        case "heartbeat":
          lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
          if (event.body.progress) {
            progress.step = event.body.progress.step ?? progress.step;
            progress.total = event.body.progress.total ?? progress.total;
            events.emit({ type: "progress", leaseId, ...event.body.progress });
          }
          break;
        case "log":
          events.emit({ type: "log", leaseId, stream: event.body.stream, line: event.body.line });
          break;
        case "checkpoint":
          replicator.replicate(lease, event.body, watch, leaseWork);
          break;
        case "result":
          lease.lastSeq = Math.max(lease.lastSeq, event.body.seq);
          return { kind: "result", body: event.body };
        case "refused":
          return { kind: "refused", reason: event.body.reason, message: event.body.message };
        case "liveness":
          if (event.body.state === "suspect") {
            events.emit({ type: "provider-suspect", leaseId, provider, reason: event.body.reason });
          } else if (event.body.state === "alive") {
            events.emit({ type: "provider-recovered", leaseId, provider });
          } else {
            return { kind: "failed", reason: event.body.reason, lastSeenAt: event.body.lastSeenAt };
          }
          break;
      }
    }
    if (stop.aborted) return { kind: "stopped" };
    if (parameters.notOpened?.aborted) {
      return { kind: "failed", reason: "its signed opening did not land on chain", lastSeenAt: Date.now() };
    }
    return { kind: "failed", reason: "the session ended", lastSeenAt: Date.now() };
  } finally {
    topUps.stop();
    await watch.stop();
  }
}
