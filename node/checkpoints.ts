import { existsSync, watch, type FSWatcher } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import path from "node:path";

import { shortMessageOf } from "../sdk/errors.ts";
import { publishCheckpoint } from "../sdk/ipfs/checkpoint.ts";
import type { IpfsNode } from "../sdk/ipfs/node.ts";
import type { Logger } from "../sdk/logger.ts";
import type { LeasePins } from "./lease-pins.ts";
import type { Metrics } from "./metrics.ts";

/** A checkpoint the node published: what the lease session announces. */
export interface PublishedCheckpoint {
  cid: string;
  name: string;
  step: number | undefined;
  size: number;
  sha256: string;
}

export interface WatchCheckpointsInit {
  /** Host path of the job's `$BATON_CHECKPOINT_DIR`. */
  dir: string;
  key: Uint8Array;
  ipfs: IpfsNode;
  maxBytes: number;
  log: Logger;
  metrics: Metrics;
  onPublished: (checkpoint: PublishedCheckpoint) => void;
  /** Announced when a committed checkpoint cannot be published (too large, unreadable). */
  onRejected: (name: string, reason: string) => void;
  /** How many published checkpoints stay pinned here; older ones are unpinned. */
  keep?: number;
  /** The lease's record of its pins: each published checkpoint goes in, each dropped one out. */
  pins: LeasePins;
  /**
   * Checkpoints the lease pinned already, oldest first (the one its job resumed from, those published
   * before the node restarted): let go as published ones are, once a newer one is safe.
   */
  pinned?: readonly string[];
}

export interface CheckpointWatcher {
  /** Scans once more and waits until everything committed so far is published. */
  settle(): Promise<void>;
  /**
   * The tenant holds the checkpoint `cid` (it is safe): those published before it are unpinned and
   * deleted from this node's store and from the job's checkpoint dir, so a long job does not fill
   * the disk. The safe one and any newer stay.
   */
  acknowledged(cid: string): void;
  stop(): Promise<void>;
}

/** `step-000100` → 100; names without digits have no step. */
export function stepOf(name: string): number | undefined {
  const digits = /(\d+)$/.exec(name)?.[1];
  return digits === undefined ? undefined : Number(digits);
}

/**
 * Publishes each checkpoint a job commits. The job commits by renaming a finished directory into
 * its checkpoint dir under a name not starting with `.`; the watcher hears the rename through
 * file-system events (no polling), then packs, encrypts, adds and pins the directory, one at a
 * time, and reports it. When several were committed since the last publish, only the newest (last
 * in name order) is published. In-progress (`.`-named) directories are never touched.
 */
export function watchCheckpoints(init: WatchCheckpointsInit): CheckpointWatcher {
  const { dir, key, ipfs, maxBytes, log, metrics, onPublished, onRejected, keep = 3, pins } = init;
  const seen = new Set<string>();
  /** Pinned here, oldest first; those this watcher published have a name in the checkpoint dir. */
  const pinned: { cid: string; name?: string }[] = (init.pinned ?? []).map((cid) => ({ cid }));
  let watcher: FSWatcher | undefined;
  let scanning: Promise<void> = Promise.resolve();
  let again = false;
  let stopped = false;
  const abort = new AbortController();

  const publish = async (name: string): Promise<void> => {
    const took = metrics.checkpointPublishSeconds.startTimer();
    try {
      const result = await publishCheckpoint(ipfs, key, path.join(dir, name), { maxBytes, signal: abort.signal, log });
      const cid = result.cid.toString();
      took();
      metrics.checkpointsPublished.inc();
      metrics.checkpointBytes.inc(result.size);
      pins.add(cid);
      onPublished({ cid, name, step: stepOf(name), size: result.size, sha256: result.plaintextSha256 });
      pinned.push({ cid, name });
      if (pinned.length > keep) await drop(pinned.splice(0, pinned.length - keep));
    } catch (error) {
      if (stopped) return;
      // The job deleted it while it was packed (the contract lets it delete old checkpoints).
      if ((error as NodeJS.ErrnoException).code === "ENOENT" || !existsSync(path.join(dir, name))) return;
      const reason = shortMessageOf(error);
      metrics.checkpointsRejected.inc();
      log.warn("checkpoint not published", { name, reason });
      onRejected(name, reason);
    }
  };

  /** Lets checkpoints go (the store collects them) and deletes their dirs from the job's checkpoint dir. */
  const drop = async (checkpoints: { cid: string; name?: string }[]): Promise<void> => {
    await pins.release(checkpoints.map(({ cid }) => cid));
    for (const { name } of checkpoints) {
      if (name !== undefined) await rm(path.join(dir, name), { recursive: true, force: true }).catch(() => undefined);
    }
  };

  const scan = async (): Promise<void> => {
    do {
      again = false;
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      const fresh = entries
        .filter((e) => e.isDirectory() && !e.name.startsWith(".") && !seen.has(e.name))
        .map((e) => e.name)
        .sort();
      // Only the newest: a job that commits faster than checkpoints publish would otherwise queue
      // a backlog, published oldest first while the job deletes them, and a resume would always
      // start from a stale one. Those it supersedes are never published.
      const newest = fresh.pop();
      for (const name of fresh) seen.add(name);
      if (fresh.length > 0) log.info("checkpoints superseded before they were published", { names: fresh, newest });
      if (newest === undefined || stopped) return;
      seen.add(newest);
      await publish(newest);
    } while (again && !stopped);
  };

  const trigger = (): void => {
    again = true;
    scanning = scanning.then(scan);
  };

  watcher = watch(dir, () => trigger());
  watcher.on("error", (error) => log.warn("checkpoint watcher failed", { error }));
  trigger();

  return {
    acknowledged(cid) {
      const index = pinned.findIndex((checkpoint) => checkpoint.cid === cid);
      if (index > 0) void drop(pinned.splice(0, index));
    },
    async settle() {
      trigger();
      await scanning.catch(() => undefined);
    },
    async stop() {
      stopped = true;
      abort.abort();
      watcher?.close();
      watcher = undefined;
      await scanning.catch(() => undefined);
    },
  };
}
