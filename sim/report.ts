import {
  drawJobs,
  simulateMarket,
  type MarketResult,
  type MarketRun,
  type Model,
  type ProviderGroup,
} from "./market.ts";
import type { DefaultSource, Scenario } from "./scenario.ts";

/**
 * The whole simulation of a scenario: each failure rate, each model on the same trace, the provider
 * run with droppers, and what follows for collateral and timeouts. Plain data, printed as tables or
 * JSON and drawn as charts.
 */

export type ModelName = Model | "hyperscaler";
export const MODEL_NAMES: readonly ModelName[] = ["baton", "level1", "level2", "hyperscaler"];
export const MODEL_LABELS: Record<ModelName, string> = {
  baton: "Baton (Level 3)",
  level1: "Level 1 (restart from scratch)",
  level2: "Level 2 (network volume)",
  hyperscaler: "on-demand hyperscaler",
};

export interface Quantiles {
  p50: number;
  p95: number;
  p99: number;
}

export interface ModelSummary {
  model: ModelName;
  /** Dollars the tenants spent per useful GPU-hour: compute + their gas + storage − compensation. */
  costPerUsefulHour: number;
  /** Compute alone per useful GPU-hour (what the provider was paid, before compensation). */
  computePerUsefulHour: number;
  tenant: MarketResult["tenant"];
  usefulHours: number;
  billedHours: number;
  lostHours: number;
  failures: number;
  jobs: MarketResult["jobs"];
  completionHours: Quantiles;
  /** Completion time over the job's length. */
  slowdown: Quantiles;
}

export interface DroppingVerdict {
  kind: "walk-away" | "hand-back";
  /** The dropper's net earnings less the honest provider's, dollars per provider-hour (> 0: dropping pays). */
  advantagePerHour: number;
  pays: boolean;
  /**
   * The collateral at which dropping stops paying (it pays below, not above), from the slashes its
   * drops cost; null when dropping costs no slash, so that no collateral changes it.
   */
  breakEvenCollateralUsd: number | null;
}

/** The provider run at one heartbeat timeout: honest providers against droppers. */
export interface ProviderOutcome {
  heartbeatTimeoutS: number;
  groups: ProviderGroup[];
  dropping: DroppingVerdict[];
  /**
   * The most collateral at which an honest provider still earns (net ≥ 0): below 0 it loses money at
   * any collateral; null when it was never slashed, so the collateral does not matter to it.
   */
  honestBreakEvenCollateralUsd: number | null;
}

export interface RateResult {
  failuresPerHour: number;
  models: Record<ModelName, ModelSummary>;
  /** The scenario's timeout first, then the sweep's. */
  providers: ProviderOutcome[];
  /** Baton: what slashes paid tenants against what the work they lost had cost, in dollars. */
  compensation: { paidUsd: number; lostWorkUsd: number };
  /** Problems the simulated escrow's conservation checks found in any Baton run (empty when money is conserved). */
  escrowProblems: string[];
}

export interface SimulationReport {
  scenario: Scenario;
  defaults: DefaultSource[];
  rates: RateResult[];
  /** The on-chain heartbeat's gas per leased GPU-hour at periods from 30 s to 1 h (DESIGN: what liveness costs). */
  heartbeatCost: { periodS: number; usdPerGpuHour: number; shareOfPrice: number }[];
  elapsedS: number;
}

export function quantiles(sorted: Float64Array): Quantiles {
  const at = (q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : NaN);
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99) };
}

function summarise(result: MarketResult): ModelSummary {
  const useful = result.usefulHours || NaN;
  return {
    model: result.model,
    costPerUsefulHour: result.tenant.total / useful,
    computePerUsefulHour: result.tenant.compute / useful,
    tenant: result.tenant,
    usefulHours: result.usefulHours,
    billedHours: result.billedHours,
    lostHours: result.lostHours,
    failures: result.failures,
    jobs: result.jobs,
    completionHours: quantiles(result.completionHours),
    slowdown: quantiles(result.slowdowns),
  };
}

function hyperscaler(scenario: Scenario, lengthsHours: Float64Array): ModelSummary {
  const usefulHours = lengthsHours.reduce((sum, l) => sum + l, 0);
  const compute = usefulHours * scenario.prices.hyperscalerUsdPerHour;
  const ones = new Float64Array(lengthsHours.length).fill(1);
  return {
    model: "hyperscaler",
    costPerUsefulHour: scenario.prices.hyperscalerUsdPerHour,
    computePerUsefulHour: scenario.prices.hyperscalerUsdPerHour,
    tenant: { compute, gas: 0, storage: 0, compensation: 0, total: compute },
    usefulHours,
    billedHours: usefulHours,
    lostHours: 0,
    failures: 0,
    jobs: { arrived: lengthsHours.length, finished: lengthsHours.length, gaveUp: 0, unfinished: 0 },
    completionHours: quantiles(lengthsHours),
    slowdown: quantiles(ones),
  };
}

function verdicts(scenario: Scenario, groups: ProviderGroup[]): DroppingVerdict[] {
  const honest = groups.find((g) => g.kind === "honest");
  if (!honest) return [];
  return groups
    .filter((g): g is ProviderGroup & { kind: DroppingVerdict["kind"] } => g.kind !== "honest")
    .map((g) => {
      const advantagePerHour = g.net - honest.net;
      // A dropper's earnings fall by each dollar of collateral times its slashed drops per hour (its
      // other slashes, from failures, an honest provider pays too).
      const pays = advantagePerHour > 0;
      return {
        kind: g.kind,
        advantagePerHour,
        pays,
        breakEvenCollateralUsd:
          g.dropSlashesPerHour > 0 ? scenario.lease.collateralUsd + advantagePerHour / g.dropSlashesPerHour : null,
      };
    });
}

function providerOutcome(scenario: Scenario, result: MarketResult): ProviderOutcome {
  const honest = result.providers.find((g) => g.kind === "honest");
  return {
    heartbeatTimeoutS: result.heartbeatTimeoutS ?? scenario.lease.heartbeatTimeoutS,
    groups: result.providers,
    dropping: verdicts(scenario, result.providers),
    honestBreakEvenCollateralUsd:
      honest && honest.slashesPerHour > 0 ? scenario.lease.collateralUsd + honest.net / honest.slashesPerHour : null,
  };
}

/** Runs markets on up to `threads` worker threads (1: in this thread), results in the order of `runs`. */
export async function runMarkets(
  scenario: Scenario,
  runs: MarketRun[],
  threads: number,
  onDone?: () => void,
): Promise<MarketResult[]> {
  if (threads <= 1 || runs.length <= 1) {
    return runs.map((run) => {
      const result = simulateMarket(scenario, run);
      onDone?.();
      return result;
    });
  }
  const { Worker } = await import("node:worker_threads");
  // Compiled to dist/, the worker is JavaScript too.
  const file = new URL(import.meta.url.endsWith(".ts") ? "./worker.ts" : "./worker.js", import.meta.url);
  const results: MarketResult[] = new Array<MarketResult>(runs.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(threads, runs.length) }, () => new Worker(file));
  try {
    await Promise.all(
      workers.map(
        (worker) =>
          new Promise<void>((resolve, reject) => {
            const give = (): void => {
              if (next >= runs.length) return resolve();
              const id = next++;
              worker.postMessage({ id, scenario, run: runs[id] });
            };
            worker.on("message", ({ id, result }: { id: number; result: MarketResult }) => {
              results[id] = result;
              onDone?.();
              give();
            });
            worker.once("error", reject);
            worker.once("exit", (code) => reject(new Error(`a simulation worker exited with code ${code}`)));
            give();
          }),
      ),
    );
  } finally {
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
  return results;
}

export interface SimulateOptions {
  defaults?: DefaultSource[];
  /** Worker threads to run the markets on; 1 runs them in this thread. */
  threads?: number;
  onProgress?: (done: number, of: number) => void;
}

export async function simulate(
  scenario: Scenario,
  { defaults = [], threads = 1, onProgress }: SimulateOptions = {},
): Promise<SimulationReport> {
  const started = performance.now();
  const lengthsHours = Float64Array.from(drawJobs(scenario).lengths, (l) => l / 3600).sort();
  const timeouts = [scenario.lease.heartbeatTimeoutS, ...scenario.lease.timeoutSweepS];
  const perRate: MarketRun[] = [
    { model: "baton", failuresPerHour: 0, droppers: false },
    { model: "level1", failuresPerHour: 0, droppers: false },
    { model: "level2", failuresPerHour: 0, droppers: false },
    ...timeouts.map((heartbeatTimeoutS) => ({
      model: "baton" as const,
      failuresPerHour: 0,
      droppers: true,
      heartbeatTimeoutS,
    })),
  ];
  const runs = scenario.failureRatesPerHour.flatMap((failuresPerHour) =>
    perRate.map((run) => ({ ...run, failuresPerHour })),
  );
  let done = 0;
  const results = await runMarkets(scenario, runs, threads, () => onProgress?.(++done, runs.length));
  const price = scenario.prices.gpuUsdPerHour;
  const rates = scenario.failureRatesPerHour.map((failuresPerHour, i): RateResult => {
    const [baton, level1, level2, ...providerRuns] = results.slice(i * perRate.length, (i + 1) * perRate.length) as [
      MarketResult,
      MarketResult,
      MarketResult,
      ...MarketResult[],
    ];
    return {
      failuresPerHour,
      models: {
        baton: summarise(baton),
        level1: summarise(level1),
        level2: summarise(level2),
        hyperscaler: hyperscaler(scenario, lengthsHours),
      },
      providers: providerRuns.map((run) => providerOutcome(scenario, run)),
      compensation: { paidUsd: baton.tenant.compensation, lostWorkUsd: baton.lostHours * price },
      escrowProblems: [baton, ...providerRuns].flatMap((run) => run.escrowProblems),
    };
  });
  const { gas, prices } = scenario;
  const heartbeatUsd = (gas.heartbeat + 21_000) * gas.priceGwei * 1e-9 * gas.ethUsd;
  const heartbeatCost = [30, 60, 300, 900, 3600].map((periodS) => {
    const usdPerGpuHour = (heartbeatUsd * 3600) / periodS;
    return { periodS, usdPerGpuHour, shareOfPrice: usdPerGpuHour / prices.gpuUsdPerHour };
  });
  return { scenario, defaults, rates, heartbeatCost, elapsedS: (performance.now() - started) / 1000 };
}
