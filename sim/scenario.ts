import { readFile } from "node:fs/promises";
import path from "node:path";

import { parse as parseYaml } from "yaml";
import { z } from "zod";

import { UserError } from "../sdk/errors.ts";

/**
 * A market scenario: what `baton simulate` reads from a YAML file, every field optional. Defaults
 * come from Baton's own measurements in `bench/results/*.json` where a bench wrote them (gas per
 * operation, failure detection and hand-off time, checkpoint publish and fetch throughput), else
 * from the figures the README publishes; the rest are stated assumptions, each with its reason.
 * Holders (issue 15, point 2) are not built yet, so a checkpoint lives with the tenant and its provider only.
 */

/** Where `bench/*.ts` write their results in a checkout. */
export const BENCH_RESULTS_DIR = path.resolve(import.meta.dirname, "..", "bench", "results");

/** A figure a default was taken from, for the report. */
export interface DefaultSource {
  field: string;
  value: number;
  from: string;
}

/** Gas per operation, execution only (a receipt's gasUsed less 21,000), from `bench:gas`. */
const README_GAS = {
  openLease: 150_554,
  openLeaseFor: 205_272,
  heartbeat: 9_090,
  claim: 39_555,
  finish: 52_941,
  ackClose: 23_246,
  slash: 82_426,
} as const;

/** `bench/results/gas.json` figure names, by the scenario's gas field (a prefix of the name). */
const GAS_FIGURES: Record<keyof typeof README_GAS, string> = {
  openLease: "openLease (median",
  openLeaseFor: "openLeaseFor closing",
  heartbeat: "heartbeat, 1 lease",
  claim: "claim, 1 lease (median",
  finish: "finish",
  ackClose: "heartbeat acknowledging a close",
  slash: "slashMissedHeartbeat (median",
};

interface Figure {
  name: string;
  value: number;
}

async function readFigures(dir: string, name: string): Promise<Figure[]> {
  try {
    const data = JSON.parse(await readFile(path.join(dir, `${name}.json`), "utf8")) as { figures?: unknown };
    return Array.isArray(data.figures) ? (data.figures as Figure[]).filter((f) => typeof f.value === "number") : [];
  } catch {
    return [];
  }
}

/** The measured figures a scenario's defaults are taken from, and where each came from. */
export interface MeasuredDefaults {
  gas: Record<keyof typeof README_GAS, number>;
  detectCrashS: number;
  handOffS: number;
  publishMBps: number;
  fetchMBps: number;
  sources: DefaultSource[];
}

/**
 * Reads `bench/results/{gas,failover,checkpoint}.json` in `dir`; a figure no bench wrote falls back
 * to the README's published one.
 */
export async function measuredDefaults(dir = BENCH_RESULTS_DIR): Promise<MeasuredDefaults> {
  const [gasFigures, failover, checkpoint] = await Promise.all(
    ["gas", "failover", "checkpoint"].map((name) => readFigures(dir, name)),
  );
  const sources: DefaultSource[] = [];
  const pick = (field: string, figures: Figure[], match: (name: string) => boolean, file: string, fallback: number) => {
    const figure = figures.find((f) => match(f.name));
    const value = figure?.value ?? fallback;
    sources.push({
      field,
      value,
      from: figure ? `bench/results/${file}: ${figure.name}` : "built in: the README's bench figure",
    });
    return value;
  };
  const gas = Object.fromEntries(
    Object.entries(GAS_FIGURES).map(([field, prefix]) => [
      field,
      pick(
        `gas.${field}`,
        gasFigures!,
        (name) => name.startsWith(prefix),
        "gas.json",
        README_GAS[field as keyof typeof README_GAS],
      ),
    ]),
  ) as MeasuredDefaults["gas"];
  // bench:failover at 0-s blocks (figures without a block-time suffix); README: 1.62 s kill → running
  // again, of which detection is about 1 s (the session's 500 ms heartbeats, a reset stream, a ping).
  const detectCrashS = pick(
    "baton.detectCrashS",
    failover!,
    (n) => n === "detection p50 (kill → failed)",
    "failover.json",
    1,
  );
  const againS = pick(
    "kill → running again",
    failover!,
    (n) => n === "kill → running again p50",
    "failover.json",
    1.62,
  );
  const handOffS = Math.max(0, againS - detectCrashS);
  sources.push({ field: "baton.handOffS", value: handOffS, from: "kill → running again less detection" });
  // bench:checkpoint at its largest size, which a training checkpoint is closest to.
  const largest = (suffix: string) => (name: string) =>
    name.endsWith(suffix) && name.startsWith(`${largestSize(checkpoint!)} MiB:`);
  const publishMBps = pick(
    "checkpoint.publishMBps",
    checkpoint!,
    largest("publish (pack+encrypt+add+pin)"),
    "checkpoint.json",
    70,
  );
  const fetchMBps = pick(
    "checkpoint.fetchMBps",
    checkpoint!,
    largest("fetch provider → tenant (restore)"),
    "checkpoint.json",
    33,
  );
  return { gas, detectCrashS, handOffS, publishMBps, fetchMBps, sources };
}

function largestSize(figures: Figure[]): number {
  const sizes = figures.map((f) => Number(/^(\d+) MiB:/.exec(f.name)?.[1] ?? 0));
  return Math.max(0, ...sizes);
}

const positive = z.number().positive();
const share = z.number().min(0).max(1);
const bps = z.number().int().min(0).max(10_000);

/** The scenario's schema, with the measured defaults filled in. */
export function scenarioSchema(measured: MeasuredDefaults) {
  const { gas } = measured;
  return z
    .object({
      seed: z.number().int().min(0).default(1),
      /** Simulated days of job arrivals; jobs still running then may finish in as many days again. */
      days: positive.max(3650).default(365),
      providers: z.number().int().min(1).max(100_000).default(1000),
      /** Failures per provider-hour swept, crashes and hangs together: 0.1 % to 10 %. */
      failureRatesPerHour: z.array(z.number().min(0).max(1)).min(1).max(20).default([0.001, 0.003, 0.01, 0.03, 0.1]),
      failures: z
        .object({
          /** Share of failures that are silent hangs (the node stops answering) rather than crashes. */
          hangShare: share.default(0.3),
          /** A crashed machine is back (rebooted, node restarted from its database) after this, on average. */
          crashDowntimeMinutes: positive.default(10),
          /** A hung machine is back after this, on average: someone has to notice and reboot it. */
          hangDowntimeMinutes: positive.default(60),
        })
        .strict()
        .prefault({}),
      jobs: z
        .object({
          /** Offered load: the GPU-hours of work arriving, as a share of the market's GPU-hours. */
          load: z.number().positive().max(0.95).default(0.6),
          /** Job lengths (useful GPU-hours at one GPU) are log-normal, clipped to [min, max]. */
          medianHours: positive.default(4),
          sigma: z.number().min(0).max(3).default(1),
          minHours: positive.default(0.25),
          maxHours: positive.default(72),
          /** From a lease's (or an instance's) start to its job running, paid, in every model. */
          startS: z.number().min(0).default(0),
          /** A tenant gives a job up after this many failures (the SDK's `retryLimit`, set for long jobs). */
          giveUpAfterFailures: z.number().int().min(0).default(20),
        })
        .strict()
        .prefault({}),
      checkpoint: z
        .object({
          intervalMinutes: positive.default(30),
          sizeMiB: positive.default(2048),
          /** Provider side: pack + encrypt + add + pin. */
          publishMBps: positive.default(measured.publishMBps),
          /** Provider → tenant, and tenant → the next provider on a hand-off. */
          fetchMBps: positive.default(measured.fetchMBps),
          /**
           * A resume's cost besides the transfer, in seconds: the new provider's fetch round trips
           * and unpacking before the job runs again. The simulation's restore is this plus the
           * checkpoint's size at fetchMBps.
           */
          restoreS: z.number().min(0).default(0),
        })
        .strict()
        .prefault({}),
      baton: z
        .object({
          /** Kill → failed: a reset stream and a failed ping. */
          detectCrashS: z.number().min(0).default(measured.detectCrashS),
          /** A hung node answers nothing: failed after the liveness rule's 10 s of silence. */
          detectHangS: z.number().min(0).default(10),
          /** Failed → the new lease opens (bid, signed opening); then the job starts (jobs.startS) and fetches its checkpoint. */
          handOffS: z.number().min(0).default(measured.handOffS),
        })
        .strict()
        .prefault({}),
      level1: z
        .object({ noticeMinutes: z.number().min(0).default(30) })
        .strict()
        .prefault({}),
      level2: z
        .object({
          noticeMinutes: z.number().min(0).default(30),
          /** A network volume's write and read throughput. */
          volumeMBps: positive.default(200),
          /** What the volume costs while the job runs (a common network-volume price). */
          volumeUsdPerGBMonth: z.number().min(0).default(0.07),
        })
        .strict()
        .prefault({}),
      prices: z
        .object({
          /** A consumer GPU on a P2P market (DESIGN: $0.35/h). */
          gpuUsdPerHour: positive.default(0.35),
          /** On-demand from a hyperscaler with no failures (AWS g5.xlarge, one A10G, us-east-1). */
          hyperscalerUsdPerHour: positive.default(1.006),
          /** A provider's power and upkeep per busy GPU-hour. */
          operatingUsdPerHour: z.number().min(0).default(0.05),
        })
        .strict()
        .prefault({}),
      lease: z
        .object({
          collateralUsd: z.number().min(0).default(5),
          heartbeatPeriodS: positive.default(30),
          heartbeatTimeoutS: positive.default(120),
          tenantShareBps: bps.default(5_000),
          callerShareBps: bps.default(1_000),
          claimIntervalMinutes: positive.default(10),
          /**
           * Other timeouts to run the provider run at, e.g. [900, 3600]: one past a crashed machine's
           * reboot, one past a hang's (each adds a market run per failure rate).
           */
          timeoutSweepS: z.array(positive).max(5).default([]),
        })
        .strict()
        .refine((lease) => lease.tenantShareBps + lease.callerShareBps <= 10_000, {
          message: "tenantShareBps + callerShareBps must be at most 10000",
          path: ["tenantShareBps"],
        })
        .refine((lease) => lease.heartbeatPeriodS <= lease.heartbeatTimeoutS / 2, {
          message: "heartbeatPeriodS must be at most half of heartbeatTimeoutS (the contract's rule)",
          path: ["heartbeatPeriodS"],
        })
        .refine((lease) => lease.timeoutSweepS.every((t) => lease.heartbeatPeriodS <= t / 2), {
          message: "every timeout swept must be at least twice heartbeatPeriodS (the contract's rule)",
          path: ["timeoutSweepS"],
        })
        .prefault({}),
      gas: z
        .object({
          /** An L2's gas price: 30k gas then costs about $0.002. */
          priceGwei: z.number().min(0).default(0.02),
          ethUsd: positive.default(3000),
          openLease: positive.default(gas.openLease),
          openLeaseFor: positive.default(gas.openLeaseFor),
          heartbeat: positive.default(gas.heartbeat),
          claim: positive.default(gas.claim),
          finish: positive.default(gas.finish),
          ackClose: positive.default(gas.ackClose),
          slash: positive.default(gas.slash),
        })
        .strict()
        .prefault({}),
      dropping: z
        .object({
          /** Share of providers in the provider run that walk away from leases (and as many that hand them back). */
          share: z.number().min(0).max(0.5).default(0.1),
          /** Better offers from outside the market, per provider-hour: an idle provider takes one, a dropper drops a lease for it. */
          outsideOffersPerHour: z.number().min(0).default(0.02),
          /** What an outside offer pays, as a multiple of the market price. */
          outsidePremium: positive.default(1.5),
        })
        .strict()
        .prefault({}),
    })
    .strict()
    .refine((s) => s.jobs.minHours <= s.jobs.maxHours, {
      message: "jobs.minHours must be at most jobs.maxHours",
      path: ["jobs", "minHours"],
    });
}

export type Scenario = z.output<ReturnType<typeof scenarioSchema>>;
export type ScenarioInput = z.input<ReturnType<typeof scenarioSchema>>;

/**
 * Validates a scenario object (YAML already parsed).
 *
 * @throws {UserError} naming each field that is wrong.
 */
export function parseScenario(value: unknown, measured: MeasuredDefaults, source = "scenario"): Scenario {
  const parsed = scenarioSchema(measured).safeParse(value ?? {});
  if (!parsed.success) throw new UserError(`${source} is invalid`, { details: z.prettifyError(parsed.error) });
  return parsed.data;
}

/** Reads and validates a scenario file; no file means every default. */
export async function loadScenario(file: string | undefined, measured: MeasuredDefaults): Promise<Scenario> {
  if (file === undefined) return parseScenario({}, measured);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (cause) {
    throw new UserError(`cannot read the scenario file ${file}`, { cause });
  }
  let value: unknown;
  try {
    value = parseYaml(text);
  } catch (cause) {
    throw new UserError(`${file} is not YAML`, { cause, details: (cause as Error).message });
  }
  return parseScenario(value, measured, file);
}
