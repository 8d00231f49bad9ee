import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { UserError } from "../../sdk/errors.ts";
import { parseJobSpec } from "../../sdk/job-spec.ts";
import {
  checkBatchBudget,
  checkTaskFiles,
  MAX_TASK_LINE_BYTES,
  parseTasks,
  taskSpec,
} from "../../sdk/tenant/batch-tasks.ts";
import { MAX_SPEC_MESSAGE_BYTES } from "../../sdk/wire/messages.ts";

const spec = parseJobSpec({
  command: ["node", "task.mjs"],
  env: { MODE: "fast", SEED: "1" },
  inputs: [{ cid: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", path: "task.mjs" }],
});
const cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
const where = { source: "tasks.jsonl", baseDir: "/data" };

/** The UserError `run` throws. */
function refusal(run: () => unknown): UserError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(UserError);
    return error as UserError;
  }
  throw new Error("no error thrown");
}

describe("parseTasks", () => {
  it("names tasks by id or line, merges env over the spec's and adds inputs after the spec's", () => {
    const text = [
      JSON.stringify({ id: "a", env: { SEED: "7" }, inputs: [{ cid, path: "in/a.txt" }] }),
      "",
      JSON.stringify({ inputs: [{ file: "shard-3.bin", path: "in/shard.bin" }] }),
      "{}\r",
    ].join("\n");
    const tasks = parseTasks(text, spec, where);
    expect(tasks.map((t) => [t.id, t.line])).toEqual([
      ["a", 1],
      ["3", 3],
      ["4", 4],
    ]);
    expect(tasks[1]!.files).toEqual({ "in/shard.bin": "/data/shard-3.bin" });
    const first = taskSpec(spec, tasks[0]!);
    expect(first.env).toEqual({ MODE: "fast", SEED: "7" });
    expect(first.inputs.map((i) => i.path)).toEqual(["task.mjs", "in/a.txt"]);
    expect(first.command).toEqual(spec.command);
  });

  it("refuses a file with no tasks", () => {
    expect(refusal(() => parseTasks("\n  \n", spec, where)).shortMessage).toBe("tasks.jsonl has no tasks");
  });

  it("refuses a line that is not JSON, with its line number", () => {
    const error = refusal(() => parseTasks(`{}\n{}\n{"id": "x",\n`, spec, where));
    expect(error.shortMessage).toBe("tasks.jsonl:3: not valid JSON");
  });

  it("refuses unknown fields and bad ids", () => {
    expect(refusal(() => parseTasks(`{"command": ["rm"]}`, spec, where)).shortMessage).toBe(
      "tasks.jsonl:1: not a valid task",
    );
    expect(refusal(() => parseTasks(`{}\n{"id": "a b"}`, spec, where)).shortMessage).toBe(
      "tasks.jsonl:2: not a valid task",
    );
  });

  it("refuses two tasks with the same id", () => {
    const error = refusal(() => parseTasks(`{"id": "2"}\n{}\n`, spec, where));
    expect(error.shortMessage).toBe("tasks.jsonl:2: task id 2 is already used on line 1");
  });

  it("refuses an input that is not a CID", () => {
    const error = refusal(() => parseTasks(`{}\n{"inputs": [{"cid": "nope", "path": "x"}]}`, spec, where));
    expect(error.shortMessage).toBe("tasks.jsonl:2: input x: nope is not a CID");
  });

  it("refuses a task that makes an invalid spec: a path with .., a BATON_ variable", () => {
    const escape = JSON.stringify({ inputs: [{ file: "x", path: "../x" }] });
    expect(refusal(() => parseTasks(escape, spec, where)).shortMessage).toBe(
      "tasks.jsonl:1: makes an invalid job spec",
    );
    const env = JSON.stringify({ env: { BATON_LEASE: "1" } });
    expect(refusal(() => parseTasks(`{}\n${env}`, spec, where)).details).toContain("BATON_");
  });

  it("refuses a line over the size limit", () => {
    const long = JSON.stringify({ env: { PAD: "x".repeat(MAX_TASK_LINE_BYTES) } });
    expect(refusal(() => parseTasks(long, spec, where)).shortMessage).toBe(
      `tasks.jsonl:1: longer than ${MAX_TASK_LINE_BYTES} bytes`,
    );
  });
});

describe("parseTasks, sizes", () => {
  it("refuses a task whose spec, with the batch spec's, is too large for the message that sends it", () => {
    // Each line is within its limit; the spec's own env and the task's together are not.
    const padded = parseJobSpec({ ...spec, env: { ...spec.env, BIG: "x".repeat(8000) } });
    const env = Object.fromEntries(Array.from({ length: 7 }, (_, i) => [`PAD_${i}`, "y".repeat(8000)]));
    const line = JSON.stringify({ env });
    expect(Buffer.byteLength(line)).toBeLessThan(MAX_TASK_LINE_BYTES);
    expect(parseTasks(line, spec, where)).toHaveLength(1);
    expect(refusal(() => parseTasks(`{}\n${line}`, padded, where)).shortMessage).toMatch(
      new RegExp(`^tasks.jsonl:2: makes a job spec of \\d+ bytes as sent, over the ${MAX_SPEC_MESSAGE_BYTES}`),
    );
  });
});

describe("checkTaskFiles", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-batch-tasks-"));
    await writeFile(path.join(dir, "a.txt"), "a");
    await mkdir(path.join(dir, "sub"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("accepts tasks whose files exist", async () => {
    const tasks = parseTasks(`{"inputs": [{"file": "a.txt", "path": "a"}]}`, spec, { source: "t", baseDir: dir });
    await expect(checkTaskFiles(tasks, "t")).resolves.toBeUndefined();
  });

  it("refuses a missing file and a directory, naming the line", async () => {
    const missing = parseTasks(`{}\n{"inputs": [{"file": "gone.txt", "path": "g"}]}`, spec, {
      source: "t",
      baseDir: dir,
    });
    await expect(checkTaskFiles(missing, "t")).rejects.toThrow(
      `t:2: input g: cannot read ${path.join(dir, "gone.txt")}`,
    );
    const directory = parseTasks(`{"inputs": [{"file": "sub", "path": "s"}]}`, spec, { source: "t", baseDir: dir });
    await expect(checkTaskFiles(directory, "t")).rejects.toThrow(
      `t:1: input s: ${path.join(dir, "sub")} is not a file`,
    );
  });
});

describe("checkBatchBudget", () => {
  const short = parseJobSpec({ command: ["true"], maxDurationS: 60 });

  it("accepts a budget that pays one task's longest run", () => {
    expect(() => checkBatchBudget(short, 10n, 600n)).not.toThrow();
  });

  it("refuses one that does not, saying what one task may cost", () => {
    const error = refusal(() => checkBatchBudget(short, 10n, 599n));
    expect(error.shortMessage).toBe("the budget of 599 cannot cover one task");
    expect(error.details).toContain("at up to 10 per second: 600");
  });
});
