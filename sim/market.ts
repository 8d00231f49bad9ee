import { Escrow, KEEPER, toUsd, usd } from "./escrow.ts";
import { EventQueue } from "./event-queue.ts";
import { randomStream, type Random } from "./random.ts";
import type { Scenario } from "./scenario.ts";

/**
 * One simulated market: providers that crash and hang, jobs that arrive, and one way of surviving a
 * provider's death. The failure trace (each provider's failures and downtimes, each outside offer,
 * each job's arrival and length) is drawn from streams keyed by the seed and the provider or job,
 * so every model sees the same trace; only what the market does about it differs.
 *
 * - `baton` (Level 3): the SDK notices within seconds, leases another provider and resumes from the
 *   last checkpoint the tenant holds. Money moves through the simulated escrow by the contracts' rules.
 * - `level1`: a failure restarts the job from scratch on another provider once a person notices, as
 *   on a plain P2P market; billed per second until the provider died.
 * - `level2`: the same, but the job restarts from its last checkpoint on a network volume.
 */
export type Model = "baton" | "level1" | "level2";

export interface MarketRun {
  model: Model;
  failuresPerHour: number;
  /** Providers that drop leases (the provider run), else every provider is honest. */
  droppers: boolean;
  /** The on-chain heartbeat timeout, when not the scenario's (the provider run's sweep). */
  heartbeatTimeoutS?: number;
  /** Given jobs and kills instead of random ones (a run to check against the real system). */
  trace?: Trace;
}

/** Jobs and provider deaths given one by one: no random failures, no outside offers. */
export interface Trace {
  jobs: { arrivalS: number; lengthS: number }[];
  /** The provider serving job `job` stops at `atS`, for `downS` seconds (Infinity: for good). */
  kills: { job: number; atS: number; downS: number }[];
}

/** What a provider does with a lease when a better offer comes: keep it, walk away, or hand it back. */
export const PROVIDER_KINDS = ["honest", "walk-away", "hand-back"] as const;
export type ProviderKind = (typeof PROVIDER_KINDS)[number];

export interface ProviderGroup {
  kind: ProviderKind;
  providers: number;
  /** Per provider-hour of simulated time, in dollars. */
  leaseEarnings: number;
  outsideEarnings: number;
  operating: number;
  gas: number;
  slashed: number;
  net: number;
  /** Slashes per provider-hour, any cause. */
  slashesPerHour: number;
  dropsPerHour: number;
  /** Slashes of leases the provider dropped, per provider-hour. */
  dropSlashesPerHour: number;
}

export interface MarketResult extends MarketRun {
  jobs: { arrived: number; finished: number; gaveUp: number; unfinished: number };
  /** Useful GPU-hours: the lengths of finished jobs. */
  usefulHours: number;
  /** Dollars the tenants spent: compute paid to providers, their own gas, volume storage, less slash compensation. */
  tenant: { compute: number; gas: number; storage: number; compensation: number; total: number };
  /** Compute hours billed (paid seconds of every lease or instance). */
  billedHours: number;
  /** Hours of work done and thrown away (since the last safe checkpoint), and the restore time paid. */
  lostHours: number;
  failures: number;
  /** Finished jobs' completion time (arrival → result) over their length, sorted. */
  slowdowns: Float64Array;
  /** Finished jobs' completion times in hours, sorted. */
  completionHours: Float64Array;
  providers: ProviderGroup[];
  /** Problems the escrow's conservation check found (Baton only; empty when money is conserved). */
  escrowProblems: string[];
  /** Gas of heartbeats alone, in dollars per useful GPU-hour. */
  heartbeatGasPerUsefulHour: number;
  /** With a trace: each job's completion time (arrival → result) and the seconds its leases were paid. */
  perJob?: { completionS: number[]; paidS: number[] };
}

const ARRIVAL = 0;
const FAIL = 1;
const RECOVER = 2;
const DONE = 3;
const READY = 4;
const OFFER = 5;
const OUTSIDE_END = 6;
const KILL = 7;

const HOUR = 3600;

/** The mean of the clipped log-normal job length, from a fixed stream of draws (the arrival rate needs it). */
function meanJobSeconds(scenario: Scenario): number {
  const random = randomStream(scenario.seed, "job-length-mean");
  let sum = 0;
  const n = 20_000;
  for (let i = 0; i < n; i++) sum += jobLength(scenario, random);
  return sum / n;
}

function jobLength(scenario: Scenario, random: Random): number {
  const { medianHours, sigma, minHours, maxHours } = scenario.jobs;
  return Math.min(maxHours, Math.max(minHours, random.logNormal(medianHours, sigma))) * HOUR;
}

/** The jobs of a scenario: arrival times and lengths in seconds, drawn up front from their own stream. */
export function drawJobs(scenario: Scenario): { arrivals: number[]; lengths: number[] } {
  // Every run of a report draws the same jobs: draw them once per thread.
  const key = JSON.stringify([scenario.seed, scenario.days, scenario.providers, scenario.jobs]);
  const cached = drawn.get(key);
  if (cached) return cached;
  const random = randomStream(scenario.seed, "jobs");
  const arrivalEnd = scenario.days * 24 * HOUR;
  const arrivalMean = meanJobSeconds(scenario) / (scenario.jobs.load * scenario.providers);
  const arrivals: number[] = [];
  const lengths: number[] = [];
  for (let t = random.exponential(arrivalMean); t < arrivalEnd; t += random.exponential(arrivalMean)) {
    arrivals.push(t);
    lengths.push(jobLength(scenario, random));
  }
  drawn.clear();
  drawn.set(key, { arrivals, lengths });
  return { arrivals, lengths };
}

const drawn = new Map<string, { arrivals: number[]; lengths: number[] }>();

/** Whole seconds between two times, as the chain counts them (timestamps are whole seconds). */
const seconds = (from: number, to: number): number => Math.max(0, Math.floor(to) - Math.floor(from));

export function simulateMarket(scenario: Scenario, run: MarketRun): MarketResult {
  const { model, failuresPerHour } = run;
  const s = scenario;
  const P = s.providers;
  const { trace } = run;
  const arrivalEnd = trace ? 0 : s.days * 24 * HOUR;
  // A trace runs until its jobs are done (nothing random keeps the queue going).
  const horizon = trace ? Infinity : 2 * arrivalEnd;
  const ckptBytes = s.checkpoint.sizeMiB * 1024 * 1024;
  const interval = s.checkpoint.intervalMinutes * 60;
  const lag =
    model === "baton"
      ? ckptBytes / (s.checkpoint.publishMBps * 1e6) + ckptBytes / (s.checkpoint.fetchMBps * 1e6)
      : ckptBytes / (s.level2.volumeMBps * 1e6);
  const restore =
    model === "baton"
      ? s.checkpoint.restoreS + ckptBytes / (s.checkpoint.fetchMBps * 1e6)
      : ckptBytes / (s.level2.volumeMBps * 1e6);
  const notice = model === "level1" ? s.level1.noticeMinutes * 60 : s.level2.noticeMinutes * 60;
  const price = usd(s.prices.gpuUsdPerHour / HOUR);
  const collateral = usd(s.lease.collateralUsd);
  const period = s.lease.heartbeatPeriodS;
  const timeout = run.heartbeatTimeoutS ?? s.lease.heartbeatTimeoutS;
  const gasUsd = (gas: number): number => (gas + 21_000) * s.gas.priceGwei * 1e-9 * s.gas.ethUsd;

  const { arrivals, lengths } = trace
    ? { arrivals: trace.jobs.map((j) => j.arrivalS), lengths: trace.jobs.map((j) => j.lengthS) }
    : drawJobs(s);
  const J = arrivals.length;
  let resolved = 0;
  const progress = new Float64Array(J); // safe progress at the current segment's start (seconds of work)
  const runFrom = new Float64Array(J); // when the current segment's work begins (after the restore)
  const segStart = new Float64Array(J);
  const lease = new Int32Array(J).fill(-1);
  const onProvider = new Int32Array(J).fill(-1);
  const jobEpoch = new Int32Array(J);
  const failuresOf = new Int32Array(J);
  const finishedAt = new Float64Array(J).fill(-1);
  const gaveUp = new Uint8Array(J);
  const paidSeconds = new Float64Array(J);

  // Providers: a third stream each for failures and outside offers, the same in every model.
  const kinds = new Uint8Array(P);
  if (run.droppers) {
    const n = Math.round(s.dropping.share * P);
    for (let p = 0; p < n; p++) kinds[p] = 1;
    for (let p = n; p < 2 * n; p++) kinds[p] = 2;
  }
  const failRandom = Array.from({ length: P }, (_, p) =>
    randomStream(s.seed, `provider-failures:${failuresPerHour}:${p}`),
  );
  const offerRandom = Array.from({ length: P }, (_, p) => randomStream(s.seed, `provider-offers:${p}`));
  const downUntil = new Float64Array(P);
  const outsideUntil = new Float64Array(P);
  const jobOf = new Int32Array(P).fill(-1);
  const pooled = new Uint8Array(P);
  const pool: number[] = [];
  const busySeconds = new Float64Array(P);
  const outsideSeconds = new Float64Array(P);
  const providerGas = new Float64Array(P);
  const drops = new Float64Array(P);
  const slashes = new Float64Array(P);
  const dropSlashes = new Float64Array(P);

  const escrow = new Escrow({
    providers: P,
    tenantShareBps: s.lease.tenantShareBps,
    callerShareBps: s.lease.callerShareBps,
  });
  let computeUnits = 0n; // level 1/2: what instances were billed
  let billedSeconds = 0;
  let lostSeconds = 0;
  let failures = 0;
  let tenantGas = 0;
  let storageUsd = 0;
  let heartbeatGas = 0;

  const queue = new EventQueue();
  const waitingResumes: number[] = [];
  let resumeHead = 0;
  const waitingNew: number[] = [];
  let newHead = 0;

  const available = (p: number, t: number): boolean => jobOf[p] === -1 && downUntil[p]! <= t && outsideUntil[p]! <= t;
  const offerPool = (p: number, t: number): void => {
    if (!pooled[p] && available(p, t)) {
      pooled[p] = 1;
      pool.push(p);
    }
  };
  const takeProvider = (t: number): number => {
    while (pool.length) {
      const p = pool.pop()!;
      pooled[p] = 0;
      if (available(p, t)) return p;
    }
    return -1;
  };

  const volumeUsdPerSecond = (s.level2.volumeUsdPerGBMonth * ckptBytes) / 1e9 / (30 * 24 * HOUR);

  const start = (j: number, p: number, t: number): void => {
    jobEpoch[j]! += 1;
    onProvider[j] = p;
    jobOf[p] = j;
    const resuming = progress[j]! > 0;
    // A hand-off's bid and signed opening come before its lease; then, on the lease's time, the job
    // starts and (when it resumes) fetches its checkpoint, from the tenant or from the volume.
    const opens = model === "baton" && failuresOf[j]! > 0 ? t + s.baton.handOffS : t;
    segStart[j] = opens;
    let begins = opens + s.jobs.startS;
    if (resuming && model !== "level1") begins += restore;
    if (model === "baton") {
      const remaining = lengths[j]! - progress[j]! + (begins - opens);
      // The SDK deposits the job's whole maximum duration: here twice what is left and an hour.
      const deposit = price * BigInt(Math.ceil(2 * remaining + HOUR));
      lease[j] = escrow.open(p, Math.floor(opens), price, deposit, collateral);
      if (failuresOf[j] === 0) tenantGas += gasUsd(s.gas.openLease);
      else providerGas[p]! += gasUsd(s.gas.openLeaseFor);
    }
    runFrom[j] = begins;
    queue.push(begins + lengths[j]! - progress[j]!, DONE, j, jobEpoch[j]);
  };

  const dispatch = (t: number): void => {
    while (resumeHead < waitingResumes.length || newHead < waitingNew.length) {
      const p = takeProvider(t);
      if (p < 0) return;
      const j = resumeHead < waitingResumes.length ? waitingResumes[resumeHead++]! : waitingNew[newHead++]!;
      start(j, p, t);
    }
  };

  /** What a segment on provider `p` cost on chain besides its opening: heartbeats and claims. */
  const segmentGas = (p: number, from: number, to: number): void => {
    const hb = Math.floor((to - from) / period) * gasUsd(s.gas.heartbeat);
    heartbeatGas += hb;
    providerGas[p]! += hb + Math.ceil((to - from) / (s.lease.claimIntervalMinutes * 60)) * gasUsd(s.gas.claim);
  };

  const endSegment = (j: number, p: number, t: number): void => {
    busySeconds[p]! += t - segStart[j]!;
    jobOf[p] = -1;
    onProvider[j] = -1;
    if (model === "baton") segmentGas(p, segStart[j]!, t);
    else {
      const paid = seconds(segStart[j]!, t);
      billedSeconds += paid;
      paidSeconds[j]! += paid;
      computeUnits += BigInt(paid) * price;
      if (model === "level2") storageUsd += (t - segStart[j]!) * volumeUsdPerSecond;
    }
  };

  const finish = (j: number, t: number): void => {
    const p = onProvider[j]!;
    if (model === "baton") {
      billedSeconds += seconds(segStart[j]!, t);
      paidSeconds[j]! += seconds(segStart[j]!, t);
      escrow.finish(lease[j]!, Math.floor(t));
      providerGas[p]! += gasUsd(s.gas.finish);
    }
    endSegment(j, p, t);
    finishedAt[j] = t;
    resolved += 1;
    offerPool(p, t);
  };

  /** Provider `p` stops serving job `j` at `t`: it died, or it dropped the lease. */
  const interrupt = (j: number, p: number, t: number, cause: "crash" | "hang" | "walk-away" | "hand-back"): void => {
    jobEpoch[j]! += 1;
    failures += 1;
    failuresOf[j]! += 1;
    const done = progress[j]! + Math.max(0, t - runFrom[j]!);
    const restorePaid = Math.max(0, Math.min(t, runFrom[j]!) - segStart[j]!);
    let safe = progress[j]!;
    if (model !== "level1") {
      // The last checkpoint that was safe (held by the tenant, or on the volume) when the provider stopped.
      const doneThen = progress[j]! + Math.max(0, t - lag - runFrom[j]!);
      safe = Math.max(safe, Math.floor(doneThen / interval) * interval);
    } else {
      safe = 0;
    }
    lostSeconds += done - safe + restorePaid;
    progress[j] = safe;
    let readyAt = t + notice;
    if (model === "baton") {
      const detect = cause === "hang" ? s.baton.detectHangS : cause === "hand-back" ? 0 : s.baton.detectCrashS;
      readyAt = t + detect;
      const lastHeartbeat = Math.floor(segStart[j]!) + Math.floor((t - segStart[j]!) / period) * period;
      billedSeconds += seconds(segStart[j]!, lastHeartbeat);
      paidSeconds[j]! += seconds(segStart[j]!, lastHeartbeat);
      // The new provider's openLeaseFor ends the lease as the tenant's own call would (`_endForTenant`).
      const closedAt = readyAt + s.baton.handOffS;
      const back = cause === "walk-away" ? Infinity : cause === "hand-back" ? t : downUntil[p]!;
      if (closedAt > lastHeartbeat + timeout) {
        escrow.slash(lease[j]!, lastHeartbeat, KEEPER);
        slashes[p]! += 1;
        if (cause === "walk-away") dropSlashes[p]! += 1;
      } else {
        escrow.close(lease[j]!, lastHeartbeat);
        if (back <= closedAt + timeout) {
          escrow.acknowledgeClose(lease[j]!);
          providerGas[p]! += gasUsd(s.gas.ackClose);
        } else {
          // The SDK slashes once the deadline passes (`lease-settlement.ts`): the tenant is the caller.
          escrow.slash(lease[j]!, lastHeartbeat, "tenant");
          tenantGas += gasUsd(s.gas.slash);
          slashes[p]! += 1;
          if (cause === "walk-away") dropSlashes[p]! += 1;
        }
      }
    }
    endSegment(j, p, t);
    if (failuresOf[j]! > s.jobs.giveUpAfterFailures) {
      gaveUp[j] = 1;
      resolved += 1;
      return;
    }
    queue.push(readyAt, READY, j);
  };

  // One arrival in the queue at a time keeps the heap as small as the market.
  if (J > 0) queue.push(arrivals[0]!, ARRIVAL, 0);
  const failMean = failuresPerHour > 0 && !trace ? HOUR / failuresPerHour : 0;
  const offerMean = s.dropping.outsideOffersPerHour > 0 && !trace ? HOUR / s.dropping.outsideOffersPerHour : 0;
  for (const [index, kill] of (trace?.kills ?? []).entries()) queue.push(kill.atS, KILL, index);
  for (let p = 0; p < P; p++) {
    pooled[p] = 1;
    pool.push(P - 1 - p);
    if (failMean) queue.push(failRandom[p]!.exponential(failMean), FAIL, p);
    if (offerMean) queue.push(offerRandom[p]!.exponential(offerMean), OFFER, p);
  }

  let now = 0;
  // Until every job has finished or been given up, or as long again as jobs arrived.
  for (let event = queue.pop(); event && event.time <= horizon; event = queue.pop()) {
    if (resolved === J && event.time >= arrivalEnd) break;
    now = event.time;
    const { kind, subject } = event;
    switch (kind) {
      case ARRIVAL:
        if (subject + 1 < J) queue.push(arrivals[subject + 1]!, ARRIVAL, subject + 1);
        waitingNew.push(subject);
        dispatch(now);
        break;
      case READY:
        waitingResumes.push(subject);
        dispatch(now);
        break;
      case DONE:
        if (event.epoch !== jobEpoch[subject]) break;
        finish(subject, now);
        dispatch(now);
        break;
      case FAIL: {
        const random = failRandom[subject]!;
        const hang = random.next() < s.failures.hangShare;
        const downtime = random.exponential(
          (hang ? s.failures.hangDowntimeMinutes : s.failures.crashDowntimeMinutes) * 60,
        );
        downUntil[subject] = now + downtime;
        const j = jobOf[subject]!;
        if (j >= 0) interrupt(j, subject, now, hang ? "hang" : "crash");
        queue.push(now + downtime, RECOVER, subject);
        break;
      }
      case RECOVER:
        if (failMean) queue.push(now + failRandom[subject]!.exponential(failMean), FAIL, subject);
        offerPool(subject, now);
        dispatch(now);
        break;
      case OFFER: {
        const random = offerRandom[subject]!;
        const length = jobLength(s, random);
        queue.push(now + random.exponential(offerMean), OFFER, subject);
        if (downUntil[subject]! > now || outsideUntil[subject]! > now) break;
        const j = jobOf[subject]!;
        if (j >= 0) {
          if (kinds[subject] === 0) break;
          drops[subject]! += 1;
          interrupt(j, subject, now, kinds[subject] === 1 ? "walk-away" : "hand-back");
        }
        outsideUntil[subject] = now + length;
        outsideSeconds[subject]! += length;
        queue.push(now + length, OUTSIDE_END, subject);
        dispatch(now);
        break;
      }
      case OUTSIDE_END:
        offerPool(subject, now);
        dispatch(now);
        break;
      case KILL: {
        const kill = trace!.kills[subject]!;
        const p = onProvider[kill.job]!;
        if (p < 0) break;
        downUntil[p] = now + kill.downS;
        interrupt(kill.job, p, now, "crash");
        if (Number.isFinite(kill.downS)) queue.push(now + kill.downS, RECOVER, p);
        dispatch(now);
        break;
      }
    }
  }

  // Providers claim what they earned; leases still running stay in the escrow, where the check counts them.
  if (model === "baton") for (let p = 0; p < P; p++) escrow.claim(p);

  const finishedJobs: number[] = [];
  let usefulSeconds = 0;
  let unfinished = 0;
  let gaveUpCount = 0;
  for (let j = 0; j < J; j++) {
    if (finishedAt[j]! >= 0) {
      finishedJobs.push(j);
      usefulSeconds += lengths[j]!;
    } else if (gaveUp[j]) gaveUpCount += 1;
    else unfinished += 1;
  }
  // Filled by hand: Float64Array.from with a mapping function is ten times slower here.
  const slowdowns = new Float64Array(finishedJobs.length);
  const completionHours = new Float64Array(finishedJobs.length);
  for (let i = 0; i < finishedJobs.length; i++) {
    const j = finishedJobs[i]!;
    slowdowns[i] = (finishedAt[j]! - arrivals[j]!) / lengths[j]!;
    completionHours[i] = (finishedAt[j]! - arrivals[j]!) / HOUR;
  }
  slowdowns.sort();
  completionHours.sort();
  const usefulHours = usefulSeconds / HOUR;

  const compute = model === "baton" ? toUsd(escrow.earned.reduce((sum, e) => sum + e, 0n)) : toUsd(computeUnits);
  const compensation = model === "baton" ? toUsd(escrow.compensation) : 0;
  const total = compute + tenantGas + storageUsd - compensation;

  const simulatedHours = Math.min(now, horizon) / HOUR;
  const providers: ProviderGroup[] = [];
  if (model === "baton") {
    for (const [index, kind] of PROVIDER_KINDS.entries()) {
      const members = [...kinds.keys()].filter((p) => kinds[p] === index);
      if (members.length === 0) continue;
      const perHour = (sum: number) => sum / members.length / simulatedHours;
      const sum = (f: (p: number) => number) => members.reduce((acc, p) => acc + f(p), 0);
      const leaseEarnings = perHour(sum((p) => toUsd(escrow.earned[p]!)));
      const outsideEarnings = perHour(
        sum((p) => (outsideSeconds[p]! / HOUR) * s.prices.gpuUsdPerHour * s.dropping.outsidePremium),
      );
      const operating = perHour(
        sum((p) => ((busySeconds[p]! + outsideSeconds[p]!) / HOUR) * s.prices.operatingUsdPerHour),
      );
      const gas = perHour(sum((p) => providerGas[p]!));
      const slashed = perHour(sum((p) => toUsd(escrow.slashed[p]!)));
      providers.push({
        kind,
        providers: members.length,
        leaseEarnings,
        outsideEarnings,
        operating,
        gas,
        slashed,
        net: leaseEarnings + outsideEarnings - operating - gas - slashed,
        slashesPerHour: perHour(sum((p) => slashes[p]!)),
        dropsPerHour: perHour(sum((p) => drops[p]!)),
        dropSlashesPerHour: perHour(sum((p) => dropSlashes[p]!)),
      });
    }
  }

  return {
    ...run,
    jobs: { arrived: J, finished: finishedJobs.length, gaveUp: gaveUpCount, unfinished },
    usefulHours,
    tenant: { compute, gas: tenantGas, storage: storageUsd, compensation, total },
    billedHours: billedSeconds / HOUR,
    lostHours: lostSeconds / HOUR,
    failures,
    slowdowns,
    completionHours,
    providers,
    escrowProblems: model === "baton" ? escrow.check() : [],
    heartbeatGasPerUsefulHour: usefulHours > 0 ? heartbeatGas / usefulHours : 0,
    ...(trace
      ? {
          perJob: {
            completionS: arrivals.map((a, j) => (finishedAt[j]! >= 0 ? finishedAt[j]! - a : NaN)),
            paidS: [...paidSeconds],
          },
        }
      : {}),
  };
}
