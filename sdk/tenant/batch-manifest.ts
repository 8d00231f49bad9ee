import { mkdir, open, type FileHandle } from "node:fs/promises";
import path from "node:path";

import { z } from "zod";

import { UserError } from "../errors.ts";

const bigintString = z.string().regex(/^\d+$/);

/** One task's result, as the manifest records it: once per task, whatever happened on the way. */
export const taskResultSchema = z
  .object({
    taskId: z.string().min(1).max(128),
    /** `done`: it exited 0; `failed`: it failed by its own fault more often than the batch retries. */
    state: z.enum(["done", "failed"]),
    exitCode: z.number().int().nullable(),
    /** The task's output dir, packed and encrypted like a checkpoint (see the `result` message). */
    outputCid: z.string().max(256).optional(),
    /** The provider's address and the lease that ran the attempt recorded here. */
    provider: z.string(),
    leaseId: bigintString,
    /** From the task's start to its result, on the attempt recorded here. */
    durationMs: z.number().nonnegative(),
    /** What the task's time cost on its lease (its share of the lease's price), over all attempts. */
    cost: bigintString,
    /** Attempts, this one included. */
    attempts: z.number().int().positive(),
    /** For a failed task: the last lines of its log. */
    logs: z.array(z.string()).optional(),
    at: z.number(),
  })
  .strict();
export type TaskResult = z.output<typeof taskResultSchema>;

/**
 * A batch's manifest: one JSON line per task result, appended and fsync'd before the result counts,
 * so that a tenant restarted mid-batch runs again exactly the tasks with no line.
 */
export interface BatchManifest {
  readonly file: string;
  /** Results recorded so far, by task id. */
  readonly results: ReadonlyMap<string, TaskResult>;
  /**
   * Records a task's result unless one is already recorded (a duplicate completion, such as a fenced
   * provider finishing late, or a second attempt racing the first): the first one counts, and is on
   * disk when this resolves.
   *
   * @returns whether this result was recorded (false: a result for the task was there already).
   */
  record(result: TaskResult): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * Opens (creating) the manifest at `file`. A last line cut short by a crash (no newline) is dropped:
 * its write never finished, so its task was never counted and runs again.
 *
 * @throws {UserError} when a complete line is not a task result, or two lines are for the same task
 * (the manifest was edited or belongs to something else).
 */
export async function openBatchManifest(file: string): Promise<BatchManifest> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const handle: FileHandle = await open(file, "a+", 0o600);
  const results = new Map<string, TaskResult>();
  try {
    const text = await handle.readFile("utf8");
    const complete = text.lastIndexOf("\n") + 1;
    if (complete < text.length) await handle.truncate(Buffer.byteLength(text.slice(0, complete)));
    text
      .slice(0, complete)
      .split("\n")
      .slice(0, -1)
      .forEach((line, index) => {
        const where = `batch manifest ${file}:${index + 1}`;
        let value: unknown;
        try {
          value = JSON.parse(line);
        } catch (cause) {
          throw new UserError(`${where} is not valid JSON`, { cause });
        }
        const parsed = taskResultSchema.safeParse(value);
        if (!parsed.success)
          throw new UserError(`${where} is not a task result`, { details: z.prettifyError(parsed.error) });
        if (results.has(parsed.data.taskId)) throw new UserError(`${where} records task ${parsed.data.taskId} twice`);
        results.set(parsed.data.taskId, parsed.data);
      });
  } catch (error) {
    await handle.close();
    throw error;
  }
  // One append at a time, in the order results were accepted.
  let writing: Promise<void> = Promise.resolve();
  // After a failed append the file may end in part of a line: nothing more is appended to it, so
  // that the part stays last and is dropped when the manifest is opened again.
  let failed: unknown;
  return {
    file,
    results,
    record(result) {
      const checked = taskResultSchema.safeParse(result);
      if (!checked.success) {
        return Promise.reject(new UserError("not a task result", { details: z.prettifyError(checked.error) }));
      }
      const parsed = checked.data;
      // Claimed before the write: a second result for the task, arriving while this one is being
      // written, must already see it.
      if (results.has(parsed.taskId)) return Promise.resolve(false);
      if (failed !== undefined) {
        return Promise.reject(new UserError(`batch manifest ${file} cannot be written`, { cause: failed }));
      }
      results.set(parsed.taskId, parsed);
      const next = writing.then(async () => {
        await handle.appendFile(`${JSON.stringify(parsed)}\n`);
        await handle.sync();
      });
      writing = next.catch(() => undefined);
      return next.then(
        () => true,
        (error: unknown) => {
          // Not on disk, so not counted: the task runs again.
          results.delete(parsed.taskId);
          failed ??= error;
          throw error;
        },
      );
    },
    async close() {
      await writing;
      await handle.close();
    },
  };
}
