import { stat } from "node:fs/promises";
import path from "node:path";

import { CID } from "multiformats/cid";
import { z } from "zod";

import { UserError } from "../errors.ts";
import { jobSpecSchema, type JobSpec } from "../job-spec.ts";
import { MAX_SPEC_MESSAGE_BYTES, specMessageBytes, taskIdSchema } from "../wire/messages.ts";

/**
 * One line of a task file larger than this is refused: a task carries at most a job spec's worth of
 * inputs and env, and the whole job spec travels in one 64 KiB session message.
 */
export const MAX_TASK_LINE_BYTES = 64 * 1024;

/** A file input's CID, made up, as long as a real one (CIDv1, sha2-256, base32): the spec is sized with it. */
const CID_STAND_IN = `bafk${"a".repeat(55)}`;

/** The most tasks one batch takes: its manifest and queue are held in memory. */
export const MAX_BATCH_TASKS = 1_000_000;

const taskLineSchema = z
  .object({
    /** Names the task in the manifest; left out, the task is named after its line number. */
    id: taskIdSchema.optional(),
    /** Added to the spec's inputs: by CID, or a local `file` (relative to the task file's directory). */
    inputs: z
      .array(
        z.union([
          z.object({ cid: z.string().min(1).max(256), path: z.string() }).strict(),
          z.object({ file: z.string().min(1).max(4096), path: z.string() }).strict(),
        ]),
      )
      .default([]),
    /** Merged over the spec's env (the task's value wins). */
    env: z.record(z.string(), z.string()).default({}),
  })
  .strict();

/** A task of a batch: the job spec's command run with its own inputs and env. */
export interface BatchTask {
  /** Its `id`, or its line number in the task file. */
  id: string;
  /** Its line number in the task file (1-based), for messages. */
  line: number;
  /** Inputs by CID. */
  inputs: { cid: string; path: string }[];
  /** Inputs from local files: work-dir path → absolute file path; the SDK adds them to IPFS. */
  files: Record<string, string>;
  env: Record<string, string>;
}

/**
 * The spec one task runs: the batch's spec with the task's inputs after its own and the task's env
 * over its own. Checked by the job spec's schema, so a task that makes a bad spec (an input path
 * with `..`, a `BATON_*` variable, too many inputs) is refused like a bad spec.
 *
 * @throws {UserError} naming the task when the result is not a valid spec.
 */
export function taskSpec(spec: JobSpec, task: Pick<BatchTask, "id" | "line" | "inputs" | "env">): JobSpec {
  const parsed = jobSpecSchema.safeParse({
    ...spec,
    inputs: [...spec.inputs, ...task.inputs],
    env: { ...spec.env, ...task.env },
  });
  if (!parsed.success) {
    throw new UserError(`task ${task.id} (line ${task.line}) is invalid`, { details: z.prettifyError(parsed.error) });
  }
  return parsed.data;
}

/**
 * Parses a task file's text (JSON Lines: one task object per line; blank lines are skipped) against
 * the batch's spec. Every task is checked before any lease opens: its JSON, its fields, the spec it
 * makes ({@link taskSpec}), that its CIDs parse, and that no two tasks share an id. Local files are
 * resolved against `baseDir` but not read; {@link checkTaskFiles} checks that they exist.
 *
 * @throws {UserError} with the file and line number of the first bad line, or for a file with no task.
 * @example
 * const tasks = parseTasks(await readFile("tasks.jsonl", "utf8"), spec, { source: "tasks.jsonl", baseDir: "." });
 */
export function parseTasks(text: string, spec: JobSpec, options: { source: string; baseDir: string }): BatchTask[] {
  const { source, baseDir } = options;
  const tasks: BatchTask[] = [];
  const lines = new Map<string, number>();
  const refuse = (line: number, message: string, details?: string): never => {
    throw new UserError(`${source}:${line}: ${message}`, details === undefined ? {} : { details });
  };
  text.split("\n").forEach((raw, index) => {
    const line = index + 1;
    const content = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (content.trim() === "") return;
    if (Buffer.byteLength(content) > MAX_TASK_LINE_BYTES) refuse(line, `longer than ${MAX_TASK_LINE_BYTES} bytes`);
    if (tasks.length === MAX_BATCH_TASKS) refuse(line, `more than ${MAX_BATCH_TASKS} tasks`);
    let value: unknown;
    try {
      value = JSON.parse(content);
    } catch (error) {
      return refuse(line, "not valid JSON", (error as Error).message);
    }
    const parsed = taskLineSchema.safeParse(value);
    if (!parsed.success) return refuse(line, "not a valid task", z.prettifyError(parsed.error));
    const id = parsed.data.id ?? String(line);
    const seen = lines.get(id);
    if (seen !== undefined) refuse(line, `task id ${id} is already used on line ${seen}`);
    lines.set(id, line);
    const inputs: BatchTask["inputs"] = [];
    const files: BatchTask["files"] = {};
    for (const input of parsed.data.inputs) {
      if ("cid" in input) {
        try {
          CID.parse(input.cid);
        } catch {
          refuse(line, `input ${input.path}: ${input.cid} is not a CID`);
        }
        inputs.push(input);
      } else {
        files[input.path] = path.resolve(baseDir, input.file);
      }
    }
    const task: BatchTask = { id, line, inputs, files, env: parsed.data.env };
    // File inputs are checked as CID inputs would be (their path rules), with a CID standing in.
    const placeholders = Object.keys(files).map((target) => ({ cid: CID_STAND_IN, path: target }));
    let made: JobSpec | undefined;
    try {
      made = taskSpec(spec, { ...task, inputs: [...inputs, ...placeholders] });
    } catch (error) {
      refuse(line, "makes an invalid job spec", (error as UserError).details);
    }
    // A spec too large for its message would close every session it is sent on.
    const bytes = specMessageBytes(made);
    if (bytes > MAX_SPEC_MESSAGE_BYTES) {
      refuse(
        line,
        `makes a job spec of ${bytes} bytes as sent, over the ${MAX_SPEC_MESSAGE_BYTES} a lease message has room for`,
      );
    }
    tasks.push(task);
  });
  if (tasks.length === 0) throw new UserError(`${source} has no tasks`);
  return tasks;
}

/**
 * Checks, before any lease opens, that a batch's budget can pay for one task: at the most it offers
 * per second, for as long as the spec lets one task run (`maxDurationS`). A lease is funded for a
 * task's longest run before the task starts, so a budget below that would open a lease and then stop
 * the batch on its first task.
 *
 * @throws {UserError} saying what one task may cost, when `budget` is below it.
 */
export function checkBatchBudget(spec: Pick<JobSpec, "maxDurationS">, maxPricePerSecond: bigint, budget: bigint): void {
  const oneTask = maxPricePerSecond * BigInt(spec.maxDurationS);
  if (budget < oneTask) {
    throw new UserError(`the budget of ${budget} cannot cover one task`, {
      details: `a task may run ${spec.maxDurationS} s (the spec's maxDurationS) at up to ${maxPricePerSecond} per second: ${oneTask}; raise the budget or lower maxDurationS`,
    });
  }
}

/**
 * Checks that every local file the tasks name is a readable regular file, before any lease opens.
 *
 * @throws {UserError} naming the first task whose file is missing or not a file.
 */
export async function checkTaskFiles(tasks: readonly BatchTask[], source: string): Promise<void> {
  for (const task of tasks) {
    for (const [target, file] of Object.entries(task.files)) {
      let isFile: boolean;
      try {
        isFile = (await stat(file)).isFile();
      } catch (cause) {
        throw new UserError(`${source}:${task.line}: input ${target}: cannot read ${file}`, { cause });
      }
      if (!isFile) throw new UserError(`${source}:${task.line}: input ${target}: ${file} is not a file`);
    }
  }
}
