/**
 * A batch's bookkeeping, in the manner of the hand-off policy: which task a lease runs next, what a
 * task's exit means (done, tried again elsewhere, failed for good), which tasks go back to the queue
 * when a provider is lost, and which providers are excluded for the rest of the batch. Pure state:
 * the batch runner asks it and records what it answers, and nothing here talks to the network, the
 * chain or the disk. Results are recorded once by the manifest (`batch-manifest.ts`); this queue
 * makes sure that only the attempt a lease was given can count.
 */

/**
 * A provider whose tasks fail this many times in a row by their own fault (non-zero exit) is
 * excluded. Counted in a row, reset by any task it completes: a task that fails everywhere (a bad
 * task, not a bad provider) adds one failure to each of the few providers it is tried on, and an
 * honest provider completes other tasks in between.
 */
export const PROVIDER_FAILURE_LIMIT = 3;

/** A checkpoint a task committed, to resume it from when it runs again elsewhere. */
export interface TaskCheckpoint {
  cid: string;
  sha256: string;
}

/** What a lease is given to run. */
export interface TaskAssignment {
  taskId: string;
  /** 1 for the first attempt; attempts cut short by a lost provider are not counted. */
  attempt: number;
  resume?: TaskCheckpoint;
}

/** What a task's exit on a lease means for the batch. */
export type TaskExitOutcome =
  /** It exited 0: record its result. */
  | { kind: "done"; attempts: number }
  /**
   * It exited 0 with an output to fetch and verify first: the lease is free for its next task
   * meanwhile, and the task is done once {@link BatchQueue.verified}, or queued again if
   * {@link BatchQueue.unverified}.
   */
  | { kind: "verify"; attempts: number }
  /** It failed by its own fault with retries left: it is queued again, for other providers. */
  | { kind: "retry"; attempts: number }
  /** It failed by its own fault once more than the batch retries: record it as failed. */
  | { kind: "failed"; attempts: number }
  /**
   * The lease was not running this task (it was taken from the lease, e.g. a fenced provider that
   * finishes late): discard it, record and pay nothing for it.
   */
  | { kind: "stale" };

export interface BatchQueueInit {
  /** Every task id of the batch, in the order they should run. */
  tasks: readonly string[];
  /** Tasks whose result the manifest holds already (a batch resumed after a restart): never run. */
  recorded: ReadonlySet<string>;
  /**
   * Checkpoints tasks without a result committed in an earlier run (a batch resumed after a
   * restart): their first attempt here resumes from them.
   */
  checkpoints?: ReadonlyMap<string, TaskCheckpoint>;
  /** How many times a task that fails by its own fault is run again (on other providers). */
  retries: number;
  /** Providers excluded from the start (the user's list). */
  exclude?: readonly string[];
}

interface TaskState {
  attempts: number;
  /** Providers it failed on by its own fault: it is not given to them again. */
  failedOn: Set<string>;
  checkpoint: TaskCheckpoint | undefined;
  /** The lease running it, if any. */
  lease: string | undefined;
  /** The provider it exited 0 on, while its output is fetched and verified. */
  verifying: string | undefined;
}

export interface BatchCounts {
  /** Recorded as done or failed (this run or before a restart). */
  done: number;
  failed: number;
  running: number;
  queued: number;
}

/** A batch's queue; see the module comment. Leases and providers are named by any stable string. */
export class BatchQueue {
  readonly #tasks = new Map<string, TaskState>();
  /** Task ids waiting, in order; a task that goes back to the queue goes to its front. */
  readonly #queue: string[] = [];
  /** Lease → its provider and the tasks it was given, in order: the one it runs, then those queued on it. */
  readonly #leases = new Map<string, { provider: string; tasks: string[] }>();
  readonly #failuresInARow = new Map<string, number>();
  readonly #excluded = new Set<string>();
  readonly #retries: number;
  /** Tasks that exited 0 and whose output is being verified. */
  #verifying = 0;
  #done = 0;
  #failed = 0;

  constructor(init: BatchQueueInit) {
    if (!Number.isInteger(init.retries) || init.retries < 0) throw new RangeError("retries must be a whole number ≥ 0");
    this.#retries = init.retries;
    for (const provider of init.exclude ?? []) this.#excluded.add(provider);
    for (const id of init.tasks) {
      if (this.#tasks.has(id)) throw new RangeError(`task ${id} is listed twice`);
      this.#tasks.set(id, {
        attempts: 0,
        failedOn: new Set(),
        checkpoint: init.recorded.has(id) ? undefined : init.checkpoints?.get(id),
        lease: undefined,
        verifying: undefined,
      });
      if (init.recorded.has(id)) this.#done += 1;
      else this.#queue.push(id);
    }
  }

  /** Providers no lease of this batch may use. */
  get excluded(): ReadonlySet<string> {
    return this.#excluded;
  }

  /** Whether every task has a result (done or failed): none runs, and no output is being verified. */
  get finished(): boolean {
    return (
      this.#queue.length === 0 && this.#verifying === 0 && [...this.#leases.values()].every((l) => l.tasks.length === 0)
    );
  }

  /**
   * `running` counts the tasks given to leases (queued on one behind its running task included) and
   * those whose output is being verified: they have no result yet either.
   */
  counts(): BatchCounts {
    const running = [...this.#leases.values()].reduce((sum, l) => sum + l.tasks.length, 0) + this.#verifying;
    return { done: this.#done, failed: this.#failed, running, queued: this.#queue.length };
  }

  /**
   * The next task for `lease` (of `provider`), to run after the tasks it was given already: the first
   * queued task that has not failed on this provider. `undefined` when there is none for it, or the
   * provider is excluded: an idle lease can be closed.
   */
  next(lease: string, provider: string): TaskAssignment | undefined {
    const held = this.#leases.get(lease);
    if (held && held.provider !== provider) throw new Error(`lease ${lease} is of ${held.provider}`);
    if (this.#excluded.has(provider)) return undefined;
    const index = this.#queue.findIndex((id) => !this.#state(id).failedOn.has(provider));
    if (index === -1) return undefined;
    const [taskId] = this.#queue.splice(index, 1) as [string];
    const state = this.#state(taskId);
    state.lease = lease;
    if (held) held.tasks.push(taskId);
    else this.#leases.set(lease, { provider, tasks: [taskId] });
    return {
      taskId,
      attempt: state.attempts + 1,
      ...(state.checkpoint === undefined ? {} : { resume: state.checkpoint }),
    };
  }

  /**
   * A task running on `lease` committed a checkpoint: a later attempt resumes from it. Ignored (false)
   * from any other lease: one that no longer runs the task.
   */
  checkpointed(taskId: string, lease: string, checkpoint: TaskCheckpoint): boolean {
    const state = this.#state(taskId);
    if (state.lease !== lease) return false;
    state.checkpoint = checkpoint;
    return true;
  }

  /**
   * The task on `lease` exited with `exitCode` (`null`: killed by a signal, which the node only does
   * for the task's own doing: a limit it went over). With `verify`, an exit 0 is not done yet but
   * {@link TaskExitOutcome verify}: its output is to be fetched and verified while the lease runs its
   * next task. A result from a lease not running that task (the first it was given and holds) is
   * {@link TaskExitOutcome stale}.
   */
  exited(taskId: string, lease: string, exitCode: number | null, { verify = false } = {}): TaskExitOutcome {
    const state = this.#state(taskId);
    const held = this.#leases.get(lease);
    if (state.lease !== lease || held?.tasks[0] !== taskId) return { kind: "stale" };
    state.lease = undefined;
    held.tasks.shift();
    state.attempts += 1;
    if (exitCode === 0 && verify) {
      state.verifying = held.provider;
      this.#verifying += 1;
      return { kind: "verify", attempts: state.attempts };
    }
    if (exitCode === 0) {
      this.#failuresInARow.delete(held.provider);
      this.#done += 1;
      return { kind: "done", attempts: state.attempts };
    }
    state.failedOn.add(held.provider);
    const failures = (this.#failuresInARow.get(held.provider) ?? 0) + 1;
    this.#failuresInARow.set(held.provider, failures);
    if (failures >= PROVIDER_FAILURE_LIMIT) this.#excluded.add(held.provider);
    if (state.attempts > this.#retries) {
      this.#failed += 1;
      return { kind: "failed", attempts: state.attempts };
    }
    this.#queue.unshift(taskId);
    return { kind: "retry", attempts: state.attempts };
  }

  /** The output of a task that exited 0 (`verify`) was fetched and verified: it is done. */
  verified(taskId: string): Extract<TaskExitOutcome, { kind: "done" }> {
    const state = this.#state(taskId);
    const provider = this.#stopVerifying(taskId, state);
    this.#failuresInARow.delete(provider);
    this.#done += 1;
    return { kind: "done", attempts: state.attempts };
  }

  /**
   * The output of a task that exited 0 (`verify`) could not be fetched, or did not verify: the
   * provider's fault, as a lost lease's task is, so the task goes back to the front of the queue and
   * the attempt is not counted. Excluding the provider is the caller's call ({@link exclude}).
   */
  unverified(taskId: string): void {
    const state = this.#state(taskId);
    this.#stopVerifying(taskId, state);
    state.attempts -= 1;
    this.#queue.unshift(taskId);
  }

  /**
   * The lease is gone (its provider failed, was fenced or was dropped): the tasks it was given go
   * back to the front of the queue, in their order, the running one to resume from its checkpoint
   * elsewhere; the attempt is not counted against them. Whatever the lease reports later is
   * {@link TaskExitOutcome stale}.
   *
   * @returns the tasks that went back, the running one first.
   */
  leaseLost(lease: string): string[] {
    const tasks = this.#leases.get(lease)?.tasks ?? [];
    this.#leases.delete(lease);
    for (const taskId of tasks) this.#state(taskId).lease = undefined;
    this.#queue.unshift(...tasks);
    return tasks;
  }

  /**
   * Excludes `provider` for the rest of the batch (it was lost, or returned an output that did not
   * verify): its leases get no further task. Their running tasks are the caller's to end with
   * {@link leaseLost}.
   */
  exclude(provider: string): void {
    this.#excluded.add(provider);
  }

  #stopVerifying(taskId: string, state: TaskState): string {
    const provider = state.verifying;
    if (provider === undefined) throw new Error(`task ${taskId} has no output being verified`);
    state.verifying = undefined;
    this.#verifying -= 1;
    return provider;
  }

  #state(taskId: string): TaskState {
    const state = this.#tasks.get(taskId);
    if (!state) throw new Error(`no task ${taskId} in this batch`);
    return state;
  }
}
