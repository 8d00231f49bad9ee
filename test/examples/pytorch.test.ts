import { spawnSync } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";

import { readJobFile } from "../../sdk/job-spec.ts";
import {
  cleanUp,
  completedCheckpoints,
  progressStep,
  providerDirs,
  providerResumingFrom,
  runToEnd,
  startExampleJob,
  tempDir,
  type ProviderDirs,
} from "../helpers/example-jobs.ts";
import { root } from "../helpers/processes.ts";

// examples/pytorch/train.py as a real python3 process. The training runs need PyTorch, which this
// machine and CI may not have (nothing can be installed from PyPI here): without it they are
// skipped, saying why. What needs no PyTorch (the job spec, the settings) is always checked.
const script = path.join(root, "examples/pytorch/train.py");
const specFile = path.join(root, "examples/pytorch/train.yaml");

const probe = spawnSync("python3", ["-c", "import torch"], { encoding: "utf8", timeout: 120_000 });
const noTorch =
  probe.status === 0
    ? undefined
    : `PyTorch is not importable by python3 here (${
        probe.error?.message ?? (probe.stderr ?? "").trim().split("\n").at(-1) ?? `exit ${probe.status}`
      })`;
const noPython = probe.error === undefined ? undefined : `python3 cannot be run here (${probe.error.message})`;

/** A tiny configuration: 60 steps of a 16-unit MLP on 512 samples, a checkpoint every 20 steps. */
const TINY = {
  TRAIN_STEPS: "60",
  TRAIN_CHECKPOINT_EVERY: "20",
  TRAIN_HIDDEN: "16",
  TRAIN_BATCH: "32",
  TRAIN_SAMPLES: "512",
};

afterEach(cleanUp);

const startTrain = (dirs: ProviderDirs, env: Record<string, string> = {}) =>
  startExampleJob(["python3", script], dirs, env, 180_000);

describe("examples/pytorch/train.py", () => {
  it("has a job spec that asks for one GPU and runs train.py", async () => {
    const { spec, files } = await readJobFile(specFile);
    expect(files).toEqual({ "train.py": script });
    expect(spec).toMatchObject({
      command: ["python3", "train.py"],
      resources: { gpus: 1 },
      network: false,
    });
    expect(Object.keys(spec.env).every((name) => !name.startsWith("BATON_"))).toBe(true);
  });

  it("refuses invalid settings with exit code 2, before it needs PyTorch", async ({ skip }) => {
    skip(noPython !== undefined, noPython);
    const base = await tempDir("pytorch-config");
    for (const [name, value] of [
      ["TRAIN_STEPS", "0"],
      ["TRAIN_HIDDEN", "x"],
      ["TRAIN_DEVICE", "gpu"],
    ] as const) {
      const dirs = await providerDirs(base, `${name}-${value}`);
      const job = startTrain(dirs, { [name]: value });
      expect(await job.exited).toMatchObject({ code: 2 });
      expect(job.stderr.join("\n")).toMatch(new RegExp(`^train\\.py: error: ${name} must be`));
    }
  });

  it("runs a tiny configuration to result.json, with progress lines", async ({ skip }) => {
    skip(noTorch !== undefined, noTorch);
    const dirs = await providerDirs(await tempDir("pytorch-straight"), "provider");
    const job = startTrain(dirs, TINY);
    const result = JSON.parse(await runToEnd(job, dirs)) as Record<string, unknown>;
    expect(result).toMatchObject({
      steps: 60,
      seed: 1,
      device: expect.stringMatching(/^(cpu|cuda)$/),
      loss: expect.stringMatching(/^\d/),
      weightsSha256: expect.stringMatching(/^[0-9a-f]{64}$/),
    });
    const steps = job.stdout.map(progressStep).filter((step) => step !== undefined);
    expect(steps[0]).toBe(0);
    expect(steps.at(-1)).toBe(60);
    expect(steps).toEqual([...steps].sort((a, b) => a - b));
    expect((await completedCheckpoints(dirs.checkpointDir)).map((c) => c.name)).toEqual([
      "step-000020",
      "step-000040",
      "step-000060",
    ]);
  });

  it("gives the same result.json, byte for byte, when SIGKILLed and resumed on a new provider", async ({ skip }) => {
    skip(noTorch !== undefined, noTorch);
    const base = await tempDir("pytorch-kill");
    const straight = await providerDirs(base, "straight");
    const reference = await runToEnd(startTrain(straight, TINY), straight);

    const first = await providerDirs(base, "first");
    const job = startTrain(first, { ...TINY, TRAIN_STEP_DELAY_MS: "50" });
    await job.waitForLine((line) => (progressStep(line) ?? -1) >= 30, "progress at step 30");
    expect(await job.kill()).toMatchObject({ signal: "SIGKILL" });
    const latest = (await completedCheckpoints(first.checkpointDir)).at(-1);
    expect(latest?.step).toBeGreaterThanOrEqual(20);
    expect(latest!.step).toBeLessThan(60);

    const second = await providerResumingFrom(base, "second", path.join(first.checkpointDir, latest!.name));
    const resumed = startTrain(second, TINY);
    expect(await runToEnd(resumed, second)).toBe(reference);
    expect(resumed.stdout[0]).toMatch(new RegExp(`^resuming at step ${latest!.step} from `));
  });

  it("fails loudly, with exit code 3, on a corrupted resume dir", async ({ skip }) => {
    skip(noTorch !== undefined, noTorch);
    const base = await tempDir("pytorch-corrupt");
    const source = await providerDirs(base, "source");
    await runToEnd(startTrain(source, TINY), source);
    const dirs = await providerResumingFrom(base, "provider", path.join(source.checkpointDir, "step-000040"));
    const state = path.join(dirs.resumeDir, "state.pt");
    const bytes = await readFile(state);
    const middle = bytes.length >> 1;
    bytes.writeUInt8(bytes.readUInt8(middle) ^ 0xff, middle);
    await writeFile(state, bytes);
    const job = startTrain(dirs, TINY);
    expect(await job.exited).toMatchObject({ code: 3 });
    expect(job.stderr.join("\n")).toMatch(/state\.pt does not match its checksum in SHA256SUMS/);
    expect(job.stdout.some((line) => line.startsWith("starting fresh"))).toBe(false);
  });
});
