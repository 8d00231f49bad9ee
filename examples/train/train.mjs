// @ts-check
/**
 * Baton example job: a small neural network (8 → 32 ReLU → 1) fitted by mini-batch Adam to a
 * regression task whose data come from a seeded PRNG. Plain JavaScript with only `node:` built-ins,
 * so that it runs in the provider's sandbox, where nothing but the Node binary is bound in, and
 * needs nothing downloaded. Shipped to the provider as the single input file `train.mjs`.
 *
 * Deterministic: the final `result.json` is the same, byte for byte, whether the job ran straight
 * through or was killed (SIGKILL, at any point, checkpoint writes included) and resumed from its
 * last completed checkpoint any number of times, on this machine or another. Only IEEE-754
 * operations that are correctly rounded everywhere are used (+ − × ÷ and `Math.sqrt`; no `exp`,
 * `tanh`, `pow`, whose results may differ between engines), in a fixed order; the PRNG is
 * xoshiro128** on 32-bit integers; nothing depends on the clock.
 *
 * Environment (all optional):
 *   TRAIN_STEPS             optimiser steps in all (default 2000)
 *   TRAIN_CHECKPOINT_EVERY  steps between checkpoints (default 200); does not change the result
 *   TRAIN_SEED              seed of data, initial weights and batch order, 0 … 2^32−1 (default 1)
 *   TRAIN_STEP_DELAY_MS     sleep after each step, to make a run slow enough to kill (default 0)
 *   TRAIN_CHECKPOINT_PAUSE_MS  sleep in the middle of each checkpoint write, for tests (default 0)
 *   TRAIN_CHECKPOINT_PAD_MIB   MiB of padding in each checkpoint (`pad.bin`, default 0), to stand in
 *                           for a real model's size: deterministic bytes (AES-256-CTR keyed by the
 *                           seed and step), checked on resume; they do not change the result
 *   BATON_CHECKPOINT_DIR, BATON_RESUME_DIR, BATON_OUTPUT_DIR  set by the provider node; when unset,
 *                           `checkpoints/`, `resume/` and `output/` under the current directory
 *                           (the node's work-dir layout), so `node train.mjs` runs anywhere.
 * (The knobs are TRAIN_*, not BATON_*: a job spec may not set BATON_* variables, the node does.)
 *
 * Checkpoint protocol (see examples/README.md):
 * - Every TRAIN_CHECKPOINT_EVERY steps, and after the last step, the state is written into
 *   `$BATON_CHECKPOINT_DIR/.tmp-step-NNNNNN/` (`state.json`, `pad.bin` if asked for, then
 *   `SHA256SUMS`, which lists them), each file and the
 *   dir fsynced, then renamed to `step-NNNNNN` and the parent fsynced. A name that starts with "."
 *   is a checkpoint in progress; a `step-*` dir is complete. Only the newest 3 are kept.
 * - `$BATON_RESUME_DIR` is one checkpoint: it holds the contents of a `step-*` dir (not the dir
 *   itself). Empty or absent: start fresh. Anything else must be a valid checkpoint of this run
 *   (same seed, steps and model), or the job fails with exit code 3: it never silently starts over.
 * - Completed checkpoints already in `$BATON_CHECKPOINT_DIR` (the node relaunched the job in the
 *   same work dir) count too: the job resumes from the newest of those and the resume dir.
 *   Leftover `.tmp-*` dirs are deleted.
 * - Progress: `BATON_PROGRESS {"step":N,"total":M,…}` on stdout. The end: `$BATON_OUTPUT_DIR/result.json`,
 *   `{ steps, seed, loss, weightsSha256 }`, written atomically.
 *
 * Exit codes: 0 done; 2 invalid TRAIN_* setting; 3 unusable checkpoint; 1 anything else.
 */
import { createCipheriv, createHash } from "node:crypto";
import {
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** Names this checkpoint format; a checkpoint of another format is refused. */
const FORMAT = "baton-example-train/1";

// The task and the model. Changing any of these changes the result (and is refused on resume).
const INPUTS = 8;
const HIDDEN = 32;
const TEACHER_HIDDEN = 16;
const SAMPLES = 4096;
const BATCH = 32;
/** Learning rate: a linear warm-up over WARMUP_STEPS, then halved every DECAY_EVERY steps. */
const LEARNING_RATE = 0.01;
const WARMUP_STEPS = 100;
const DECAY_EVERY = 500;
const BETA1 = 0.9;
const BETA2 = 0.999;
const EPSILON = 1e-8;
const NOISE = 0.05;

/** Checkpoint dirs kept in $BATON_CHECKPOINT_DIR: the node may still be uploading the older ones. */
const KEEP_CHECKPOINTS = 3;
/** A state.json larger than this is refused before it is read (a real one is about 16 KiB). */
const MAX_STATE_BYTES = 16 * 1024 * 1024;
const STATE_FILE = "state.json";
const SUMS_FILE = "SHA256SUMS";
const PAD_FILE = "pad.bin";
const CHECKPOINT_NAME = /^step-(\d{6,})$/;
const TMP_PREFIX = ".tmp-";

// Parameter layout in one Float64Array: W1 (HIDDEN × INPUTS, row-major), b1, W2, b2.
const W1 = 0;
const B1 = W1 + HIDDEN * INPUTS;
const W2 = B1 + HIDDEN;
const B2 = W2 + HIDDEN;
const PARAMS = B2 + 1;

const EXIT_FAILED = 1;
const EXIT_BAD_CONFIG = 2;
const EXIT_BAD_CHECKPOINT = 3;

class JobError extends Error {
  /**
   * @param {string} message
   * @param {number} exitCode
   */
  constructor(message, exitCode) {
    super(message);
    this.name = "JobError";
    this.exitCode = exitCode;
  }
}

/** @param {string} message */
const checkpointError = (message) => new JobError(message, EXIT_BAD_CHECKPOINT);

// ---------------------------------------------------------------------------------------------
// Configuration

/**
 * @param {string} name
 * @param {number} fallback
 * @param {number} min
 * @param {number} max
 */
function intFromEnv(name, fallback, min, max) {
  const text = process.env[name];
  if (text === undefined || text === "") return fallback;
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new JobError(`${name} must be an integer from ${min} to ${max}, got "${text}"`, EXIT_BAD_CONFIG);
  }
  return Number(text);
}

/** @param {string} name @param {string} fallback */
const dirFromEnv = (name, fallback) => path.resolve(process.env[name] || fallback);

function readConfig() {
  return {
    steps: intFromEnv("TRAIN_STEPS", 2000, 1, 1e9),
    checkpointEvery: intFromEnv("TRAIN_CHECKPOINT_EVERY", 200, 1, 1e9),
    seed: intFromEnv("TRAIN_SEED", 1, 0, 2 ** 32 - 1),
    stepDelayMs: intFromEnv("TRAIN_STEP_DELAY_MS", 0, 0, 60_000),
    checkpointPauseMs: intFromEnv("TRAIN_CHECKPOINT_PAUSE_MS", 0, 0, 600_000),
    checkpointPadMiB: intFromEnv("TRAIN_CHECKPOINT_PAD_MIB", 0, 0, 16_384),
    checkpointDir: dirFromEnv("BATON_CHECKPOINT_DIR", "checkpoints"),
    resumeDir: dirFromEnv("BATON_RESUME_DIR", "resume"),
    outputDir: dirFromEnv("BATON_OUTPUT_DIR", "output"),
  };
}

// ---------------------------------------------------------------------------------------------
// PRNG: xoshiro128** (Blackman & Vigna), seeded through splitmix32. Integer arithmetic only.

/** @param {number} seed */
function splitmix32(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** @param {number} x @param {number} k */
const rotl = (x, k) => (x << k) | (x >>> (32 - k));

/** @param {Uint32Array} s the 4-word state, advanced in place */
function nextU32(s) {
  const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
  const t = s[1] << 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 11);
  return result;
}

/** A uniform float in [-1, 1), exact: a 32-bit integer scaled by a power of two. */
const uniform = (/** @type {Uint32Array} */ s) => nextU32(s) / 2 ** 31 - 1;

/** A uniform integer in [0, n) for n ≤ 2^21 (the product stays below 2^53, so it is exact). */
const below = (/** @type {Uint32Array} */ s, /** @type {number} */ n) => Math.floor((nextU32(s) * n) / 2 ** 32);

/** Three independent generator states from one seed: data, initial weights, batch order. */
function seedStreams(/** @type {number} */ seed) {
  const next = splitmix32(seed);
  const stream = () => {
    const s = Uint32Array.of(next(), next(), next(), next());
    if (s.every((word) => word === 0)) s[0] = 1; // xoshiro's one forbidden state
    return s;
  };
  return { data: stream(), init: stream(), batches: stream() };
}

// ---------------------------------------------------------------------------------------------
// Data and model

/** A fixed random "teacher" network with ReLU, plus a little uniform noise, labels the inputs. */
function makeDataset(/** @type {Uint32Array} */ rng) {
  const teacher = new Float64Array(TEACHER_HIDDEN * INPUTS + 2 * TEACHER_HIDDEN + 1);
  for (let i = 0; i < teacher.length; i++) teacher[i] = uniform(rng);
  const x = new Float64Array(SAMPLES * INPUTS);
  const y = new Float64Array(SAMPLES);
  for (let n = 0; n < SAMPLES; n++) {
    for (let k = 0; k < INPUTS; k++) x[n * INPUTS + k] = uniform(rng);
    let out = teacher[teacher.length - 1];
    for (let j = 0; j < TEACHER_HIDDEN; j++) {
      let a = teacher[TEACHER_HIDDEN * INPUTS + j];
      for (let k = 0; k < INPUTS; k++) a += teacher[j * INPUTS + k] * x[n * INPUTS + k];
      if (a > 0) out += teacher[TEACHER_HIDDEN * INPUTS + TEACHER_HIDDEN + j] * a;
    }
    y[n] = out + NOISE * uniform(rng);
  }
  return { x, y };
}

function initialParams(/** @type {Uint32Array} */ rng) {
  const params = new Float64Array(PARAMS);
  const scale1 = Math.sqrt(6 / (INPUTS + HIDDEN));
  const scale2 = Math.sqrt(6 / (HIDDEN + 1));
  for (let i = 0; i < HIDDEN * INPUTS; i++) params[W1 + i] = scale1 * uniform(rng);
  for (let j = 0; j < HIDDEN; j++) params[W2 + j] = scale2 * uniform(rng);
  return params;
}

/**
 * The model's output for sample `n`; fills `hidden` with the ReLU activations.
 * @param {Float64Array} params @param {Float64Array} x @param {number} n @param {Float64Array} hidden
 */
function forward(params, x, n, hidden) {
  let out = params[B2];
  for (let j = 0; j < HIDDEN; j++) {
    let a = params[B1 + j];
    for (let k = 0; k < INPUTS; k++) a += params[W1 + j * INPUTS + k] * x[n * INPUTS + k];
    hidden[j] = a > 0 ? a : 0;
    out += params[W2 + j] * hidden[j];
  }
  return out;
}

/** Mean squared error over the whole data set, summed in sample order. */
function datasetLoss(/** @type {Float64Array} */ params, /** @type {{ x: Float64Array, y: Float64Array }} */ data) {
  const hidden = new Float64Array(HIDDEN);
  let sum = 0;
  for (let n = 0; n < SAMPLES; n++) {
    const err = forward(params, data.x, n, hidden) - data.y[n];
    sum += err * err;
  }
  return sum / SAMPLES;
}

/** The learning rate of step `step` (0-based); powers of ½ by repeated halving, which is exact. */
function learningRate(/** @type {number} */ step) {
  let rate = step < WARMUP_STEPS ? (LEARNING_RATE * (step + 1)) / WARMUP_STEPS : LEARNING_RATE;
  for (let i = Math.min(Math.floor(step / DECAY_EVERY), 1100); i > 0; i--) rate *= 0.5;
  return rate;
}

/**
 * Everything the rest of the run depends on. The data set is not in it: it is regenerated from
 * the seed.
 * @typedef {{ step: number, params: Float64Array, adamM: Float64Array, adamV: Float64Array,
 *   beta1Power: number, beta2Power: number, batchRng: Uint32Array }} TrainState
 */

/** One optimiser step: a mini-batch drawn with `state.batchRng`, backpropagation, Adam. */
function trainStep(
  /** @type {TrainState} */ state,
  /** @type {{ x: Float64Array, y: Float64Array }} */ data,
  /** @type {Float64Array} */ grad,
  /** @type {Float64Array} */ hidden,
) {
  const { params, adamM, adamV } = state;
  grad.fill(0);
  let lossSum = 0;
  for (let b = 0; b < BATCH; b++) {
    const n = below(state.batchRng, SAMPLES);
    const err = forward(params, data.x, n, hidden) - data.y[n];
    lossSum += err * err;
    const g = (2 * err) / BATCH;
    grad[B2] += g;
    for (let j = 0; j < HIDDEN; j++) {
      if (hidden[j] === 0) continue;
      grad[W2 + j] += g * hidden[j];
      const gh = g * params[W2 + j];
      grad[B1 + j] += gh;
      for (let k = 0; k < INPUTS; k++) grad[W1 + j * INPUTS + k] += gh * data.x[n * INPUTS + k];
    }
  }
  const rate = learningRate(state.step);
  state.beta1Power *= BETA1;
  state.beta2Power *= BETA2;
  const correction1 = 1 - state.beta1Power;
  const correction2 = 1 - state.beta2Power;
  for (let i = 0; i < PARAMS; i++) {
    const g = grad[i];
    adamM[i] = BETA1 * adamM[i] + (1 - BETA1) * g;
    adamV[i] = BETA2 * adamV[i] + (1 - BETA2) * g * g;
    params[i] -= (rate * (adamM[i] / correction1)) / (Math.sqrt(adamV[i] / correction2) + EPSILON);
  }
  state.step += 1;
  return lossSum / BATCH;
}

// ---------------------------------------------------------------------------------------------
// Exact float64 encoding: little-endian IEEE-754 bytes, as hex (independent of the host's order).

function float64Bytes(/** @type {Float64Array} */ values) {
  const bytes = Buffer.alloc(values.length * 8);
  for (let i = 0; i < values.length; i++) bytes.writeDoubleLE(values[i], i * 8);
  return bytes;
}

/** @param {string} hex @param {number} count @param {string} what */
function float64sFromHex(hex, count, what) {
  if (typeof hex !== "string" || hex.length !== count * 16 || !/^[0-9a-f]*$/.test(hex)) {
    throw checkpointError(`${what} must be ${count} float64 values as ${count * 16} lower-case hex digits`);
  }
  const bytes = Buffer.from(hex, "hex");
  const values = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    values[i] = bytes.readDoubleLE(i * 8);
    if (!Number.isFinite(values[i])) throw checkpointError(`${what}[${i}] is not a finite number`);
  }
  return values;
}

const sha256 = (/** @type {string | Buffer} */ data) => createHash("sha256").update(data).digest("hex");

// ---------------------------------------------------------------------------------------------
// Checkpoints

const checkpointName = (/** @type {number} */ step) => `step-${String(step).padStart(6, "0")}`;

/** What a checkpoint must agree on with this run to be resumed by it. */
function runIdentity(/** @type {{ steps: number, seed: number }} */ config) {
  return {
    format: FORMAT,
    totalSteps: config.steps,
    seed: config.seed,
    model: { inputs: INPUTS, hidden: HIDDEN, samples: SAMPLES, batch: BATCH },
  };
}

/** Writes a file and flushes it to disk before returning. */
function writeFileDurable(/** @type {string} */ file, /** @type {string | Buffer} */ data) {
  const fd = openSync(file, "wx", 0o600);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes `mib` MiB of padding for the checkpoint of `step` (AES-256-CTR over zeros, keyed by the
 * run's seed and the step: the same bytes wherever it runs, unlike any other step's), flushed to
 * disk, 1 MiB at a time. Returns its SHA-256.
 * @param {string} file @param {number} mib @param {number} seed @param {number} step
 */
function writePadding(file, mib, seed, step) {
  const cipher = createCipheriv(
    "aes-256-ctr",
    createHash("sha256").update(`pad ${seed} ${step}`).digest(),
    Buffer.alloc(16),
  );
  const hash = createHash("sha256");
  const zeros = Buffer.alloc(2 ** 20);
  const fd = openSync(file, "wx", 0o600);
  try {
    for (let i = 0; i < mib; i++) {
      const chunk = cipher.update(zeros);
      hash.update(chunk);
      writeSync(fd, chunk);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** The SHA-256 of a file, read 1 MiB at a time (padding can be gigabytes). */
function sha256OfFile(/** @type {string} */ file) {
  const hash = createHash("sha256");
  const buffer = Buffer.alloc(2 ** 20);
  const fd = openSync(file, "r");
  try {
    for (let read = readSync(fd, buffer); read > 0; read = readSync(fd, buffer)) hash.update(buffer.subarray(0, read));
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** Flushes a directory's entries (a rename into it, a file created in it) to disk. */
function fsyncDir(/** @type {string} */ dir) {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The completed checkpoints in `dir`, oldest first. */
function listCheckpoints(/** @type {string} */ dir) {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((entry) => {
      const match = CHECKPOINT_NAME.exec(entry.name);
      return match && entry.isDirectory() ? [{ name: entry.name, step: Number(match[1]) }] : [];
    })
    .sort((a, b) => a.step - b.step);
}

/**
 * Commits the state as `step-NNNNNN`: written under a `.tmp-` name, flushed, renamed into place.
 * @param {TrainState} state @param {ReturnType<typeof readConfig>} config
 */
async function saveCheckpoint(state, config) {
  const name = checkpointName(state.step);
  const tmp = path.join(config.checkpointDir, TMP_PREFIX + name);
  const final = path.join(config.checkpointDir, name);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { mode: 0o700 });
  const text =
    JSON.stringify(
      {
        ...runIdentity(config),
        step: state.step,
        params: float64Bytes(state.params).toString("hex"),
        adamM: float64Bytes(state.adamM).toString("hex"),
        adamV: float64Bytes(state.adamV).toString("hex"),
        beta1Power: float64Bytes(Float64Array.of(state.beta1Power)).toString("hex"),
        beta2Power: float64Bytes(Float64Array.of(state.beta2Power)).toString("hex"),
        batchRng: [...state.batchRng],
      },
      null,
      1,
    ) + "\n";
  writeFileDurable(path.join(tmp, STATE_FILE), text);
  // Test hook: the job can be killed here, with a half-written checkpoint on disk.
  if (config.checkpointPauseMs > 0) {
    console.log(`checkpoint ${name} half-written`);
    await sleep(config.checkpointPauseMs);
  }
  const pad =
    config.checkpointPadMiB > 0
      ? `${writePadding(path.join(tmp, PAD_FILE), config.checkpointPadMiB, config.seed, state.step)}  ${PAD_FILE}\n`
      : "";
  // `sha256sum -c SHA256SUMS` checks it by hand.
  writeFileDurable(path.join(tmp, SUMS_FILE), `${sha256(text)}  ${STATE_FILE}\n${pad}`);
  fsyncDir(tmp);
  renameSync(tmp, final);
  fsyncDir(config.checkpointDir);
  console.log(`checkpoint ${name} saved`);
  for (const old of listCheckpoints(config.checkpointDir).slice(0, -KEEP_CHECKPOINTS)) {
    rmSync(path.join(config.checkpointDir, old.name), { recursive: true, force: true });
  }
}

/**
 * Reads and checks the checkpoint whose files are in `dir`; throws (exit 3) on anything amiss.
 * @param {string} dir @param {ReturnType<typeof readConfig>} config @returns {TrainState}
 */
function loadCheckpoint(dir, config) {
  const where = `checkpoint ${dir}`;
  const sumsPath = path.join(dir, SUMS_FILE);
  const statePath = path.join(dir, STATE_FILE);
  for (const file of [statePath, sumsPath]) {
    let stat;
    try {
      stat = lstatSync(file);
    } catch {
      throw checkpointError(`${where} is incomplete: ${path.basename(file)} is missing`);
    }
    if (!stat.isFile()) throw checkpointError(`${where}: ${path.basename(file)} is not a regular file`);
    if (stat.size > MAX_STATE_BYTES) throw checkpointError(`${where}: ${path.basename(file)} is too large`);
  }
  const sums = readFileSync(sumsPath, "utf8");
  const listed = /^([0-9a-f]{64}) {2}state\.json\n(?:([0-9a-f]{64}) {2}pad\.bin\n)?$/.exec(sums);
  if (!listed) throw checkpointError(`${where}: ${SUMS_FILE} is malformed`);
  // Padding stands in for a model's weights: checked like them, though nothing reads it.
  if (listed[2] !== undefined) {
    let padSha256;
    try {
      padSha256 = sha256OfFile(path.join(dir, PAD_FILE));
    } catch {
      throw checkpointError(`${where} is incomplete: ${PAD_FILE} is missing`);
    }
    if (padSha256 !== listed[2]) {
      throw checkpointError(`${where}: ${PAD_FILE} does not match its checksum in ${SUMS_FILE} (corrupt or truncated)`);
    }
  }
  const bytes = readFileSync(statePath);
  if (sha256(bytes) !== listed[1]) {
    throw checkpointError(`${where}: ${STATE_FILE} does not match its checksum in ${SUMS_FILE} (corrupt or truncated)`);
  }
  /** @type {any} */
  let saved;
  try {
    saved = JSON.parse(bytes.toString("utf8"));
  } catch {
    throw checkpointError(`${where}: ${STATE_FILE} is not valid JSON`);
  }
  if (typeof saved !== "object" || saved === null) throw checkpointError(`${where}: ${STATE_FILE} is not an object`);
  const expected = runIdentity(config);
  for (const key of /** @type {(keyof typeof expected)[]} */ (Object.keys(expected))) {
    if (JSON.stringify(saved[key]) !== JSON.stringify(expected[key])) {
      throw checkpointError(
        `${where} belongs to another run: ${key} is ${JSON.stringify(saved[key])}, this run has ` +
          JSON.stringify(expected[key]),
      );
    }
  }
  const { step, batchRng } = saved;
  if (!Number.isSafeInteger(step) || step < 0 || step > config.steps) {
    throw checkpointError(`${where}: step must be an integer from 0 to ${config.steps}`);
  }
  if (
    !Array.isArray(batchRng) ||
    batchRng.length !== 4 ||
    !batchRng.every((word) => Number.isInteger(word) && word >= 0 && word < 2 ** 32) ||
    batchRng.every((word) => word === 0)
  ) {
    throw checkpointError(`${where}: batchRng must be 4 unsigned 32-bit integers, not all zero`);
  }
  return {
    step,
    params: float64sFromHex(saved.params, PARAMS, `${where}: params`),
    adamM: float64sFromHex(saved.adamM, PARAMS, `${where}: adamM`),
    adamV: float64sFromHex(saved.adamV, PARAMS, `${where}: adamV`),
    beta1Power: float64sFromHex(saved.beta1Power, 1, `${where}: beta1Power`)[0],
    beta2Power: float64sFromHex(saved.beta2Power, 1, `${where}: beta2Power`)[0],
    batchRng: Uint32Array.from(batchRng),
  };
}

/**
 * The state to continue from: the newest of the checkpoints left in the checkpoint dir by an
 * earlier run in this work dir and the one in the resume dir; none means a fresh start.
 * @param {ReturnType<typeof readConfig>} config @returns {{ state: TrainState, from: string } | undefined}
 */
function findResumeState(config) {
  // Half-written checkpoints of an earlier run here are never used: they go.
  for (const entry of readdirSync(config.checkpointDir)) {
    if (entry.startsWith(TMP_PREFIX)) rmSync(path.join(config.checkpointDir, entry), { recursive: true, force: true });
  }
  /** @type {{ state: TrainState, from: string }[]} */
  const found = [];
  const local = listCheckpoints(config.checkpointDir).at(-1);
  if (local) {
    const dir = path.join(config.checkpointDir, local.name);
    const state = loadCheckpoint(dir, config);
    if (state.step !== local.step) throw checkpointError(`checkpoint ${dir} holds step ${state.step}`);
    found.push({ state, from: dir });
  }
  /** @type {string[]} */
  let entries = [];
  try {
    entries = readdirSync(config.resumeDir);
  } catch (error) {
    if (/** @type {NodeJS.ErrnoException} */ (error).code !== "ENOENT") throw error;
  }
  if (entries.length > 0) {
    if (!entries.includes(STATE_FILE) && entries.some((entry) => CHECKPOINT_NAME.test(entry))) {
      throw checkpointError(
        `resume dir ${config.resumeDir} holds a checkpoint dir (${entries.join(", ")}) instead of a checkpoint: ` +
          `put the contents of one step-* dir (${STATE_FILE}, ${SUMS_FILE}) in it`,
      );
    }
    found.push({ state: loadCheckpoint(config.resumeDir, config), from: config.resumeDir });
  }
  // The newest wins; on a tie, the local one (listed first).
  return found.reduce(
    (best, next) => (best === undefined || next.state.step > best.state.step ? next : best),
    found[0],
  );
}

// ---------------------------------------------------------------------------------------------
// The job

/** @param {Record<string, unknown>} progress */
const reportProgress = (progress) => console.log(`BATON_PROGRESS ${JSON.stringify(progress)}`);

/** Writes result.json atomically, so that a reader never sees half of it. */
function writeResult(/** @type {string} */ outputDir, /** @type {object} */ result) {
  const file = path.join(outputDir, "result.json");
  const tmp = path.join(outputDir, ".result.json.tmp");
  rmSync(tmp, { force: true });
  writeFileDurable(tmp, JSON.stringify(result, null, 2) + "\n");
  renameSync(tmp, file);
  fsyncDir(outputDir);
}

async function main() {
  const config = readConfig();
  for (const dir of [config.checkpointDir, config.outputDir]) mkdirSync(dir, { recursive: true });

  const streams = seedStreams(config.seed);
  const data = makeDataset(streams.data);
  const resumed = findResumeState(config);
  /** @type {TrainState} */
  const state = resumed?.state ?? {
    step: 0,
    params: initialParams(streams.init),
    adamM: new Float64Array(PARAMS),
    adamV: new Float64Array(PARAMS),
    beta1Power: 1,
    beta2Power: 1,
    batchRng: streams.batches,
  };
  console.log(resumed ? `resuming at step ${state.step} from ${resumed.from}` : "starting fresh at step 0");
  const total = config.steps;
  const progressEvery = Math.max(1, Math.floor(total / 100));
  reportProgress({ step: state.step, total });

  const grad = new Float64Array(PARAMS);
  const hidden = new Float64Array(HIDDEN);
  while (state.step < total) {
    const batchLoss = trainStep(state, data, grad, hidden);
    if (state.step % config.checkpointEvery === 0 || state.step === total) await saveCheckpoint(state, config);
    if (state.step % progressEvery === 0 && state.step < total) {
      reportProgress({ step: state.step, total, message: `batch loss ${batchLoss.toPrecision(6)}` });
    }
    if (config.stepDelayMs > 0) await sleep(config.stepDelayMs);
  }

  const loss = datasetLoss(state.params, data);
  const result = {
    steps: total,
    seed: config.seed,
    loss: loss.toPrecision(17),
    weightsSha256: sha256(float64Bytes(state.params)),
  };
  writeResult(config.outputDir, result);
  reportProgress({ step: total, total, message: `done, loss ${loss.toPrecision(6)}` });
  console.log(`result ${JSON.stringify(result)}`);
}

main().catch((/** @type {unknown} */ error) => {
  const message = error instanceof Error ? error.message : String(error);
  console.error(`train.mjs: error: ${message}`);
  if (!(error instanceof JobError) && error instanceof Error && error.stack) console.error(error.stack);
  process.exitCode = error instanceof JobError ? error.exitCode : EXIT_FAILED;
});
