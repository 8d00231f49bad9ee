import { createHash } from "node:crypto";
import { chmod, chown, copyFile, cp, mkdir, readdir, readFile, rm, truncate, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";

import { PROGRESS_PREFIX } from "../../node/leases.ts";
import { detectSandbox } from "../../node/sandbox/detect.ts";
import { nodeRuntimeBind, startJob, type JobProcess } from "../../node/sandbox/runner.ts";
import { readJobFile } from "../../sdk/job-spec.ts";
import { silentLogger } from "../../sdk/logger.ts";
import { progressSchema } from "../../sdk/wire/messages.ts";
import {
  cleanUp,
  completedCheckpoints,
  deferCleanUp,
  progressStep,
  providerDirs,
  providerResumingFrom,
  runToEnd,
  startExampleJob,
  tempDir,
  type ProviderDirs,
} from "../helpers/example-jobs.ts";
import { root } from "../helpers/processes.ts";

// The example job as a real child process of this Node, killed with real SIGKILLs; the last test
// runs it in the real bubblewrap sandbox from its job spec.
const script = path.join(root, "examples/train/train.mjs");
const specFile = path.join(root, "examples/train/train.yaml");

/** 600 steps, a checkpoint every 50: long enough to be killed three times. */
const KILL_RUN = { TRAIN_STEPS: "600", TRAIN_CHECKPOINT_EVERY: "50" };
/** 300 steps, a checkpoint every 100. */
const SHORT_RUN = { TRAIN_STEPS: "300", TRAIN_CHECKPOINT_EVERY: "100" };
/** Slows a run down so that it can be killed where the test wants: 2 ms a step. */
const SLOW = { TRAIN_STEP_DELAY_MS: "2" };

/**
 * What the default run (2000 steps, seed 1) gives. Pinned: the job uses only correctly rounded
 * float64 operations, so it must give exactly this on any machine and Node version. A change to
 * the model, data or schedule changes it, on purpose.
 */
const DEFAULT_RESULT = {
  steps: 2000,
  seed: 1,
  loss: "0.0088645786886876136",
  weightsSha256: "55eb2459f770b57610a381535b30f33a6f4f6b3fa9f8ad7679f3b8a463d82509",
};

const sandbox = await detectSandbox();

afterEach(cleanUp);

const startTrain = (dirs: ProviderDirs, env: Record<string, string> = {}) =>
  startExampleJob([process.execPath, script], dirs, env, 60_000);

/** result.json of a straight run with `env`, computed once per env. */
const straightResults = new Map<string, Promise<string>>();
function straightResult(env: Record<string, string>): Promise<string> {
  const key = JSON.stringify(env);
  let result = straightResults.get(key);
  if (!result) {
    result = (async () => {
      const dirs = await providerDirs(await tempDir("train-straight"), "provider");
      return runToEnd(startTrain(dirs, env), dirs);
    })();
    straightResults.set(key, result);
  }
  return result;
}

/** A checkpoint dir written by a short run with `env`, in a temp dir of the current test. */
async function someCheckpoint(env: Record<string, string>, step: number): Promise<string> {
  const dirs = await providerDirs(await tempDir("train-source"), "provider");
  await runToEnd(startTrain(dirs, { ...SHORT_RUN, ...env }), dirs);
  return path.join(dirs.checkpointDir, `step-${String(step).padStart(6, "0")}`);
}

describe("examples/train/train.mjs", () => {
  it("runs straight through to result.json, the same in every process and whatever the checkpoint interval (a)", async () => {
    const base = await tempDir("train-straight");
    const dirs = await providerDirs(base, "provider");
    const job = startTrain(dirs);
    const result = await runToEnd(job, dirs);
    expect(JSON.parse(result)).toEqual(DEFAULT_RESULT);
    // The loss is a float64 written with all its digits.
    expect(Number(DEFAULT_RESULT.loss).toPrecision(17)).toBe(DEFAULT_RESULT.loss);
    expect(job.stdout.at(-1)).toBe(`result ${JSON.stringify(DEFAULT_RESULT)}`);

    // A checkpoint every 200 steps and after the last; only the newest 3 are kept, nothing half-written.
    expect((await readdir(dirs.checkpointDir)).sort()).toEqual(["step-001600", "step-001800", "step-002000"]);
    expect((await readdir(path.join(dirs.checkpointDir, "step-002000"))).sort()).toEqual(["SHA256SUMS", "state.json"]);
    expect(await readdir(dirs.outputDir)).toEqual(["result.json"]);

    // Another process, checkpointing only at the end: the same bytes.
    const other = await providerDirs(base, "other");
    expect(await runToEnd(startTrain(other, { TRAIN_CHECKPOINT_EVERY: "2000" }), other)).toBe(result);
    expect(await readdir(other.checkpointDir)).toEqual(["step-002000"]);

    // The seed matters.
    const seeded = await providerDirs(base, "seeded");
    const seed2 = JSON.parse(await runToEnd(startTrain(seeded, { TRAIN_SEED: "2" }), seeded)) as typeof DEFAULT_RESULT;
    expect(seed2).toMatchObject({ steps: 2000, seed: 2 });
    expect(seed2.weightsSha256).not.toBe(DEFAULT_RESULT.weightsSha256);
  });

  it("gives the same result.json, byte for byte, when SIGKILLed three times and resumed on a new provider each time (b)", async () => {
    const reference = await straightResult(KILL_RUN);
    const base = await tempDir("train-kill");
    let resumeFrom: string | undefined;
    let resumedAt = 0;
    for (const [i, killAt] of [130, 320, 470].entries()) {
      const dirs = resumeFrom
        ? await providerResumingFrom(base, `provider-${i}`, resumeFrom)
        : await providerDirs(base, `provider-${i}`);
      const job = startTrain(dirs, { ...KILL_RUN, ...SLOW });
      await job.waitForLine((line) => (progressStep(line) ?? -1) >= killAt, `progress at step ${killAt}`);
      expect(await job.kill()).toMatchObject({ code: null, signal: "SIGKILL" });
      expect(job.stdout[0]).toBe(
        resumeFrom ? `resuming at step ${resumedAt} from ${dirs.resumeDir}` : "starting fresh at step 0",
      );

      // The progress line at `killAt` came after the checkpoint below it was committed.
      const latest = (await completedCheckpoints(dirs.checkpointDir)).at(-1);
      expect(latest?.step).toBeGreaterThanOrEqual(Math.floor(killAt / 50) * 50);
      expect(latest!.step).toBeLessThan(600);
      await expect(readFile(path.join(dirs.outputDir, "result.json"))).rejects.toMatchObject({ code: "ENOENT" });
      resumeFrom = path.join(dirs.checkpointDir, latest!.name);
      resumedAt = latest!.step;
    }

    const dirs = await providerResumingFrom(base, "provider-last", resumeFrom!);
    const job = startTrain(dirs, KILL_RUN);
    expect(await runToEnd(job, dirs)).toBe(reference);
    expect(job.stdout[0]).toBe(`resuming at step ${resumedAt} from ${dirs.resumeDir}`);
  });

  it("never resumes from a checkpoint it was killed while writing (c)", async () => {
    const reference = await straightResult(SHORT_RUN);
    const base = await tempDir("train-torn");
    const dirs = await providerDirs(base, "killed");
    // Each checkpoint write pauses for 2 s between state.json and SHA256SUMS: step-000100 is
    // completed, and the job is killed in the middle of step-000200.
    const job = startTrain(dirs, { ...SHORT_RUN, TRAIN_CHECKPOINT_PAUSE_MS: "2000" });
    await job.waitForLine((line) => line === "checkpoint step-000200 half-written", "the second checkpoint write");
    await job.kill();
    expect(job.stdout).toContain("checkpoint step-000100 saved");
    expect(job.stdout).not.toContain("checkpoint step-000200 saved");
    expect((await readdir(dirs.checkpointDir)).sort()).toEqual([".tmp-step-000200", "step-000100"]);
    const torn = path.join(dirs.checkpointDir, ".tmp-step-000200");
    expect(await readdir(torn)).toEqual(["state.json"]);

    // The half-written dir, handed over as if it were a checkpoint: refused, not used, no fresh start.
    const fooled = await providerResumingFrom(base, "fooled", torn);
    const refused = startTrain(fooled, SHORT_RUN);
    expect(await refused.exited).toMatchObject({ code: 3 });
    expect(refused.stderr.join("\n")).toMatch(/is incomplete: SHA256SUMS is missing/);

    // A new provider resumes from the last completed checkpoint.
    const next = await providerResumingFrom(base, "next", path.join(dirs.checkpointDir, "step-000100"));
    const resumed = startTrain(next, SHORT_RUN);
    expect(await runToEnd(resumed, next)).toBe(reference);
    expect(resumed.stdout[0]).toBe(`resuming at step 100 from ${next.resumeDir}`);

    // The node relaunches the job in the same work dir (an empty resume dir): it drops the
    // half-written dir and resumes from its own completed checkpoint.
    const relaunched = startTrain(dirs, SHORT_RUN);
    expect(await runToEnd(relaunched, dirs)).toBe(reference);
    expect(relaunched.stdout[0]).toBe(`resuming at step 100 from ${path.join(dirs.checkpointDir, "step-000100")}`);
    expect((await readdir(dirs.checkpointDir)).sort()).toEqual(["step-000100", "step-000200", "step-000300"]);
  });

  /** Ways a resume dir can be wrong, each with what the job must say about it. */
  const corruptions: [string, (resumeDir: string) => Promise<void>, RegExp][] = [
    [
      "has one hex digit of the weights changed in state.json",
      async (dir) => {
        const file = path.join(dir, "state.json");
        const text = await readFile(file, "utf8");
        const at = text.indexOf('"params": "') + '"params": "'.length + 5;
        await writeFile(file, text.slice(0, at) + (text[at] === "0" ? "1" : "0") + text.slice(at + 1));
      },
      /state\.json does not match its checksum in SHA256SUMS \(corrupt or truncated\)/,
    ],
    [
      "has state.json truncated",
      (dir) => truncate(path.join(dir, "state.json"), 1000),
      /state\.json does not match its checksum/,
    ],
    ["lacks SHA256SUMS", (dir) => rm(path.join(dir, "SHA256SUMS")), /is incomplete: SHA256SUMS is missing/],
    ["lacks state.json", (dir) => rm(path.join(dir, "state.json")), /is incomplete: state\.json is missing/],
    [
      "has a malformed SHA256SUMS",
      (dir) => writeFile(path.join(dir, "SHA256SUMS"), "not a checksum\n"),
      /SHA256SUMS is malformed/,
    ],
    [
      "holds weights of the wrong size, with a matching checksum",
      async (dir) => {
        const file = path.join(dir, "state.json");
        const state = JSON.parse(await readFile(file, "utf8")) as { params: string };
        state.params = state.params.slice(16);
        const text = JSON.stringify(state);
        await writeFile(file, text);
        await writeFile(
          path.join(dir, "SHA256SUMS"),
          `${createHash("sha256").update(text).digest("hex")}  state.json\n`,
        );
      },
      /params must be 321 float64 values/,
    ],
    [
      "holds a checkpoint of a run with another seed",
      async (dir) => {
        const other = await someCheckpoint({ TRAIN_SEED: "2" }, 200);
        await rm(dir, { recursive: true });
        await cp(other, dir, { recursive: true });
      },
      /belongs to another run: seed is 2, this run has 1/,
    ],
    [
      "holds the checkpoint dir itself rather than its contents",
      async (dir) => {
        const inner = path.join(dir, "step-000200");
        await mkdir(inner);
        for (const file of ["state.json", "SHA256SUMS"]) await cp(path.join(dir, file), path.join(inner, file));
        for (const file of ["state.json", "SHA256SUMS"]) await rm(path.join(dir, file));
      },
      /holds a checkpoint dir \(step-000200\) instead of a checkpoint/,
    ],
  ];

  it("pads each checkpoint with deterministic bytes when asked, checks them on resume, and gives the same result (g)", async () => {
    const reference = await straightResult(SHORT_RUN);
    const PADDED = { ...SHORT_RUN, TRAIN_CHECKPOINT_PAD_MIB: "3" };
    const checkpoint = await someCheckpoint({ TRAIN_CHECKPOINT_PAD_MIB: "3" }, 200);
    expect((await readdir(checkpoint)).sort()).toEqual(["SHA256SUMS", "pad.bin", "state.json"]);
    const pad = await readFile(path.join(checkpoint, "pad.bin"));
    expect(pad.byteLength).toBe(3 * 2 ** 20);
    expect(await readFile(path.join(checkpoint, "SHA256SUMS"), "utf8")).toMatch(
      new RegExp(`\n${createHash("sha256").update(pad).digest("hex")}  pad\\.bin\n$`),
    );
    // The same step's padding anywhere; another step's differs.
    const again = await someCheckpoint({ TRAIN_CHECKPOINT_PAD_MIB: "3" }, 200);
    expect((await readFile(path.join(again, "pad.bin"))).equals(pad)).toBe(true);
    const other = await readFile(path.join(path.dirname(again), "step-000100", "pad.bin"));
    expect(other.equals(pad)).toBe(false);

    const base = await tempDir("train-padded");
    const resumed = await providerResumingFrom(base, "resumed", checkpoint);
    expect(await runToEnd(startTrain(resumed, PADDED), resumed)).toBe(reference);

    const corrupt = await providerResumingFrom(base, "corrupt", again);
    const file = path.join(corrupt.resumeDir, "pad.bin");
    await writeFile(file, Buffer.concat([pad.subarray(0, 1000), Buffer.from([pad[1000]! ^ 1]), pad.subarray(1001)]));
    const refused = startTrain(corrupt, PADDED);
    expect(await refused.exited).toMatchObject({ code: 3 });
    expect(refused.stderr.join("\n")).toMatch(/pad\.bin does not match its checksum in SHA256SUMS/);
  });

  it.each(corruptions)("fails loudly, with exit code 3, on a resume dir that %s (d)", async (_, corrupt, message) => {
    const checkpoint = await someCheckpoint({}, 200);
    const dirs = await providerResumingFrom(await tempDir("train-corrupt"), "provider", checkpoint);
    await corrupt(dirs.resumeDir);
    const job = startTrain(dirs, SHORT_RUN);
    expect(await job.exited).toMatchObject({ code: 3, signal: null });
    expect(job.stderr[0]).toMatch(/^train\.mjs: error: /);
    expect(job.stderr.join("\n")).toMatch(message);
    // It did not start over, nor train at all.
    expect(job.stdout).toEqual([]);
    expect(await readdir(dirs.outputDir)).toEqual([]);
    expect(await readdir(dirs.checkpointDir)).toEqual([]);
  });

  it("refuses invalid settings with exit code 2", async () => {
    const base = await tempDir("train-config");
    for (const [name, value] of [
      ["TRAIN_STEPS", "0"],
      ["TRAIN_STEPS", "12abc"],
      ["TRAIN_CHECKPOINT_EVERY", "-1"],
      ["TRAIN_SEED", "4294967296"],
      ["TRAIN_STEP_DELAY_MS", "1.5"],
    ] as const) {
      const dirs = await providerDirs(base, `${name}-${value}`);
      const job = startTrain(dirs, { [name]: value });
      expect(await job.exited).toMatchObject({ code: 2 });
      expect(job.stderr.join("\n")).toContain(`train.mjs: error: ${name} must be an integer from`);
    }
  });

  it("reports progress as the node parses it, from the step it resumed at to the end (e)", async () => {
    const base = await tempDir("train-progress");
    const checkProgress = (stdout: string[], first: number): void => {
      const reports = stdout
        .filter((line) => line.startsWith(PROGRESS_PREFIX))
        .map((line) => progressSchema.parse(JSON.parse(line.slice(PROGRESS_PREFIX.length))));
      const steps = reports.map((report) => report.step!);
      expect(reports.every((report) => report.total === 300)).toBe(true);
      expect(steps[0]).toBe(first);
      expect(steps).toEqual([...steps].sort((a, b) => a - b));
      expect(reports.length).toBeGreaterThanOrEqual((300 - first) / 3);
      expect(reports.at(-1)).toEqual({ step: 300, total: 300, message: expect.stringMatching(/^done, loss \d/) });
      // Every other line is one of the job's own log lines.
      for (const line of stdout.filter((l) => !l.startsWith(PROGRESS_PREFIX))) {
        expect(line).toMatch(
          /^(starting fresh at step 0|resuming at step \d+ from .+|checkpoint step-\d{6} saved|result \{.+\})$/,
        );
      }
    };
    const fresh = await providerDirs(base, "fresh");
    const job = startTrain(fresh, SHORT_RUN);
    await runToEnd(job, fresh);
    checkProgress(job.stdout, 0);

    const resumed = await providerResumingFrom(base, "resumed", path.join(fresh.checkpointDir, "step-000200"));
    const again = startTrain(resumed, SHORT_RUN);
    await runToEnd(again, resumed);
    checkProgress(again.stdout, 200);
  });

  it("runs from its job spec in the bubblewrap sandbox, and resumes there on another work dir (f)", async ({
    skip,
  }) => {
    skip(sandbox.kind !== "bwrap", "bubblewrap is not installed");
    const { spec } = await readJobFile(specFile);
    expect(spec).toMatchObject({ command: ["node", "train.mjs"], resources: { gpus: 0 } });
    // The same job run directly, flat out: the sandbox must not change a bit of it.
    const reference = await straightResult({ ...spec.env, TRAIN_STEP_DELAY_MS: "0" });

    const base = await tempDir("train-sandbox");
    await chmod(base, 0o711); // the job's user (nobody, when the tests run as root) must reach its work dir
    const isRoot = process.getuid?.() === 0;
    const jobUser = isRoot ? { uid: 65534, gid: 65534 } : { uid: process.getuid!(), gid: process.getgid!() };
    const lines: string[] = [];
    let onStep: ((step: number) => void) | undefined;
    const start = async (name: string, delayMs: string, resumeFrom?: string): Promise<JobProcess> => {
      const workDir = path.join(base, name);
      await mkdir(workDir, { mode: 0o700 });
      // What the node will do: the input into the work dir, the checkpoint into resume/, for the job's user.
      await copyFile(script, path.join(workDir, "train.mjs"));
      await chmod(path.join(workDir, "train.mjs"), 0o644);
      if (resumeFrom) {
        await cp(resumeFrom, path.join(workDir, "resume"), { recursive: true });
        for (const file of await readdir(path.join(workDir, "resume"))) {
          await chown(path.join(workDir, "resume", file), jobUser.uid, jobUser.gid);
        }
      }
      lines.length = 0;
      const job = await startJob({
        leaseId: name,
        command: spec.command!,
        env: { ...spec.env, TRAIN_STEP_DELAY_MS: delayMs },
        workDir,
        sandbox: "bwrap",
        runtimeBinds: [nodeRuntimeBind()],
        limits: {
          cpuCores: spec.resources.cpus,
          memoryBytes: spec.resources.memoryMiB * 1024 * 1024,
          wallTimeMs: 60_000,
        },
        killGraceMs: 1_000,
        logger: silentLogger,
        onLine: (stream, line) => {
          lines.push(`${stream}: ${line}`);
          const step = stream === "stdout" ? progressStep(line) : undefined;
          if (step !== undefined) onStep?.(step);
        },
      });
      deferCleanUp(() => job.kill());
      return job;
    };

    // The first provider is stopped mid-run.
    const killAt = 700;
    const reached = new Promise<void>((resolve) => {
      onStep = (step) => step >= killAt && resolve();
    });
    const first = await start("first", "2");
    await Promise.race([
      reached,
      first.exited.then(() => {
        throw new Error(`the job exited before step ${killAt}:\n${lines.slice(-20).join("\n")}`);
      }),
    ]);
    expect(await first.kill()).toMatchObject({ reason: "killed" });
    const checkpoints = await completedCheckpoints(path.join(base, "first", "checkpoints"));
    expect(checkpoints.at(-1)?.step).toBeGreaterThanOrEqual(600);
    expect(checkpoints.at(-1)!.step).toBeLessThan(2000);

    // The second resumes from its last completed checkpoint and finishes.
    const latest = path.join(base, "first", "checkpoints", checkpoints.at(-1)!.name);
    const second = await start("second", "0", latest);
    const exit = await second.exited;
    expect(exit, lines.slice(-20).join("\n")).toMatchObject({ code: 0, reason: "exited" });
    expect(lines[0]).toBe(`stdout: resuming at step ${checkpoints.at(-1)!.step} from /work/resume`);
    expect(await readFile(path.join(base, "second", "output", "result.json"), "utf8")).toBe(reference);
  });
});
