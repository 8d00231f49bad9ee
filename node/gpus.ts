import { execFile } from "node:child_process";
import { promisify } from "node:util";

import { ProviderFaultError, UserError } from "../sdk/errors.ts";

const run = promisify(execFile);

/** One GPU as the node sees it. */
export interface Gpu {
  index: number;
  model: string;
  vramMiB: number;
  vramUsedMiB: number;
  utilizationPercent: number;
  driver: string;
  uuid: string;
  /** A stand-in for tests and development; labelled in every offer. */
  fake: boolean;
}

const QUERY = "index,name,memory.total,memory.used,utilization.gpu,driver_version,uuid";

/**
 * Parses `nvidia-smi --query-gpu=<QUERY> --format=csv,noheader,nounits`. Fields nvidia-smi cannot
 * read print as "[N/A]" or "[Not Supported]"; they become 0 rather than failing the whole node.
 */
export function parseNvidiaSmi(csv: string): Gpu[] {
  const number = (field: string | undefined): number => {
    const value = Number(field);
    return Number.isFinite(value) ? value : 0;
  };
  return csv
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0)
    .map((line) => {
      const [index, model, total, used, utilization, driver, uuid] = line.split(",").map((f) => f.trim());
      if (index === undefined || !/^\d+$/.test(index) || !model) {
        throw new ProviderFaultError(`unexpected nvidia-smi line: ${line}`);
      }
      return {
        index: Number(index),
        model,
        vramMiB: number(total),
        vramUsedMiB: number(used),
        utilizationPercent: number(utilization),
        driver: driver ?? "",
        uuid: uuid ?? "",
        fake: false,
      };
    });
}

export interface DetectGpusOptions {
  /** Defaults to `nvidia-smi` on PATH. */
  nvidiaSmi?: string;
  signal?: AbortSignal;
}

/**
 * Lists the machine's NVIDIA GPUs with nvidia-smi. A machine without nvidia-smi has no GPUs: the
 * empty list, not an error. nvidia-smi present but failing (driver not loaded) is an error.
 */
export async function detectGpus({ nvidiaSmi = "nvidia-smi", signal }: DetectGpusOptions = {}): Promise<Gpu[]> {
  try {
    const { stdout } = await run(nvidiaSmi, [`--query-gpu=${QUERY}`, "--format=csv,noheader,nounits"], {
      signal,
      timeout: 15_000,
    });
    return parseNvidiaSmi(stdout);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new ProviderFaultError(`nvidia-smi failed: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Fake GPUs from a spec like `2xFake-A100-80GB` or `1xFakeGPU:24576` (count × model, optional VRAM
 * in MiB after a colon). Only for tests and development; every offer marks them as fake.
 */
export function fakeGpus(spec: string): Gpu[] {
  const match = /^(\d+)x([A-Za-z0-9_.-]+)(?::(\d+))?$/.exec(spec.trim());
  if (!match) throw new UserError(`fake GPU spec must look like "2xFakeGPU" or "2xFakeGPU:24576", got "${spec}"`);
  const count = Number(match[1]);
  if (count < 1 || count > 64) throw new UserError(`fake GPU count must be 1 to 64, got ${count}`);
  return Array.from({ length: count }, (_, index) => ({
    index,
    model: match[2]!,
    vramMiB: match[3] ? Number(match[3]) : 24_576,
    vramUsedMiB: 0,
    utilizationPercent: 0,
    driver: "fake",
    uuid: `GPU-fake-${index}`,
    fake: true,
  }));
}

export interface GpuRequirements {
  gpus: number;
  gpuModel?: string;
  minVramMiB?: number;
}

/** Whether a GPU satisfies a job's model and VRAM requirements. */
export function gpuMatches(gpu: Gpu, requirements: GpuRequirements): boolean {
  if (requirements.gpuModel && !gpu.model.toLowerCase().includes(requirements.gpuModel.toLowerCase())) return false;
  if (requirements.minVramMiB !== undefined && gpu.vramMiB < requirements.minVramMiB) return false;
  return true;
}

/**
 * Hands out whole GPUs. A holder (a quote nonce, then its lease) keeps its GPUs until released or,
 * for a reservation, until it expires, so a quote that is never used frees its capacity by itself.
 */
export class GpuAllocator {
  readonly #gpus: Gpu[];
  readonly #holders = new Map<string, { indices: number[]; expiresAt: number | undefined }>();
  readonly #onChange: (() => void) | undefined;

  constructor(gpus: Gpu[], onChange?: () => void) {
    this.#gpus = gpus;
    this.#onChange = onChange;
  }

  get all(): readonly Gpu[] {
    return this.#gpus;
  }

  #expire(now: number): void {
    let changed = false;
    for (const [holder, held] of this.#holders) {
      if (held.expiresAt !== undefined && held.expiresAt <= now) {
        this.#holders.delete(holder);
        changed = true;
      }
    }
    if (changed) this.#onChange?.();
  }

  /** Indices of GPUs nobody holds. */
  free(now = Date.now()): number[] {
    this.#expire(now);
    const taken = new Set([...this.#holders.values()].flatMap((h) => h.indices));
    return this.#gpus.map((g) => g.index).filter((i) => !taken.has(i));
  }

  /** Whether any set of this machine's GPUs could ever satisfy the requirements. */
  canEverSatisfy(requirements: GpuRequirements): boolean {
    return this.#gpus.filter((g) => gpuMatches(g, requirements)).length >= requirements.gpus;
  }

  /**
   * Reserves GPUs for `holder`; `expiresAt` (ms) makes it a reservation that lapses by itself.
   * Returns the indices, or undefined when not enough matching GPUs are free.
   */
  reserve(holder: string, requirements: GpuRequirements, expiresAt?: number, now = Date.now()): number[] | undefined {
    const free = new Set(this.free(now));
    const matching = this.#gpus.filter((g) => free.has(g.index) && gpuMatches(g, requirements));
    if (matching.length < requirements.gpus) return undefined;
    const indices = matching.slice(0, requirements.gpus).map((g) => g.index);
    this.#holders.set(holder, { indices, expiresAt });
    this.#onChange?.();
    return indices;
  }

  /** Moves a reservation to a new holder with no expiry (a quote became a lease). */
  commit(reservation: string, holder: string): number[] | undefined {
    const held = this.#holders.get(reservation);
    if (!held) return undefined;
    this.#holders.delete(reservation);
    this.#holders.set(holder, { indices: held.indices, expiresAt: undefined });
    return held.indices;
  }

  /** Claims specific GPUs for a holder, e.g. when a restarted node re-adopts a running lease. */
  adopt(holder: string, indices: number[]): void {
    this.#holders.set(holder, { indices, expiresAt: undefined });
    this.#onChange?.();
  }

  /** Frees what `holder` holds; whether it held anything. */
  release(holder: string): boolean {
    const held = this.#holders.delete(holder);
    if (held) this.#onChange?.();
    return held;
  }
}
