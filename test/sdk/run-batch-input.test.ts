import { access, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { parseEther } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { runBatch, type RunBatchParameters } from "../../sdk/actions/runBatch.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { UserError } from "../../sdk/errors.ts";
import { parseJobSpec, readJobFile } from "../../sdk/job-spec.ts";
import { parseTasks } from "../../sdk/tenant/batch-tasks.ts";
import { root, spawnScript } from "../helpers/processes.ts";

/*
 * runBatch's and `baton batch run`'s refusals of bad input: each before any lease opens. The client
 * given to runBatch throws on any use, so a refusal that reached the network or the chain would show
 * as that throw instead; and no manifest is created.
 */

const spec = parseJobSpec({ command: ["sh", "-c", "true"], maxDurationS: 60 });
const untouchable = new Proxy({} as BatonClient, {
  get(_target, property) {
    throw new Error(`the client was used (${String(property)}) before the input was checked`);
  },
});

let dir: string;
let manifest: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-batch-input-"));
  manifest = path.join(dir, "manifest.jsonl");
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function refusal(parameters: Partial<RunBatchParameters>): Promise<UserError> {
  const error = await runBatch(untouchable, {
    spec,
    tasks: parseTasks('{"id":"a"}', spec, { source: "tasks.jsonl", baseDir: dir }),
    source: "tasks.jsonl",
    manifest,
    maxPricePerSecond: parseEther("0.001"),
    ...parameters,
  }).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(UserError);
  const exists = await access(manifest).then(
    () => true,
    () => false,
  );
  expect(exists).toBe(false);
  return error as UserError;
}

describe("runBatch refuses bad input before any lease opens", () => {
  it("refuses a batch with no tasks", async () => {
    expect((await refusal({ tasks: [] })).message).toMatch(/tasks\.jsonl has no tasks/);
  });

  it("refuses a task whose input file does not exist, naming its line", async () => {
    const tasks = parseTasks(`{"id":"a"}\n{"id":"b","inputs":[{"file":"missing.bin","path":"in.bin"}]}`, spec, {
      source: "tasks.jsonl",
      baseDir: dir,
    });
    const error = await refusal({ tasks });
    expect(error.message).toMatch(/^tasks\.jsonl:2: input in\.bin: cannot read .*missing\.bin/);
  });

  it("refuses a budget that cannot pay for one task", async () => {
    const error = await refusal({ budget: parseEther("0.001") * 59n });
    expect(error.message).toMatch(/cannot cover one task/);
    expect(error.details).toMatch(/60 s/);
  });

  it("refuses a parallelism below 1, negative retries and a lease shorter than a task", async () => {
    expect((await refusal({ parallelism: 0 })).message).toMatch(/parallelism/);
    expect((await refusal({ retries: -1 })).message).toMatch(/retries/);
    expect((await refusal({ leaseDurationS: 30 })).message).toMatch(/leaseDurationS/);
    expect((await refusal({ maxPricePerSecond: 0n })).message).toMatch(/maxPricePerSecond/);
  });
});

/** `baton batch run` on a task file of `text`; no network is given: it must not get that far. */
async function batchRunOn(name: string, text: string) {
  const specFile = path.join(dir, "spec.json");
  const tasksFile = path.join(dir, name);
  await writeFile(specFile, JSON.stringify(spec));
  await writeFile(tasksFile, text);
  const dataDir = path.join(dir, "tenant");
  const cli = spawnScript("cli/baton.ts", [
    "batch",
    "run",
    specFile,
    "--tasks",
    tasksFile,
    "--max-price",
    "0.001",
    "--data-dir",
    dataDir,
  ]);
  const exit = await cli.closed;
  return { code: exit.code, stderr: cli.stderr.join("\n") };
}

describe("baton batch run refuses a bad task file before it connects", () => {
  it("names the file and line of a malformed task, and exits 1", async () => {
    const { code, stderr } = await batchRunOn("bad.jsonl", '{"id":"a"}\n{"id": oops}\n');
    expect(code).toBe(1);
    expect(stderr).toMatch(/bad\.jsonl:2: not valid JSON/);
  });

  it("says so when the task file is empty", async () => {
    const { code, stderr } = await batchRunOn("empty.jsonl", "\n\n");
    expect(code).toBe(1);
    expect(stderr).toMatch(/empty\.jsonl has no tasks/);
  });
});

describe("examples/batch", () => {
  it("is a valid spec and task file: twelve tasks, each with its own N", async () => {
    const { spec: example } = await readJobFile(path.join(root, "examples/batch/square.yaml"));
    const file = path.join(root, "examples/batch/tasks.jsonl");
    const tasks = parseTasks(await readFile(file, "utf8"), example, { source: file, baseDir: path.dirname(file) });
    expect(tasks.map((t) => t.env.N)).toEqual(Array.from({ length: 12 }, (_, i) => String(i + 1)));
  });
});
