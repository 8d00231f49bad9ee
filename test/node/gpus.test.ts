import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";

import { detectGpus, fakeGpus, GpuAllocator, parseNvidiaSmi } from "../../node/gpus.ts";

// Captured from `nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,driver_version,uuid
// --format=csv,noheader,nounits` on a two-GPU machine, with one field nvidia-smi could not read.
const TWO_GPUS = `0, NVIDIA H100 80GB HBM3, 81559, 1, 0, 550.54.15, GPU-3b8c1f7e-0000-0000-0000-000000000000
1, NVIDIA A100-SXM4-40GB, 40960, 512, [N/A], 550.54.15, GPU-9a1d2c3b-0000-0000-0000-000000000000
`;

describe("GPU detection", () => {
  it("parses nvidia-smi's CSV, tolerating unreadable fields", () => {
    const gpus = parseNvidiaSmi(TWO_GPUS);
    expect(gpus).toHaveLength(2);
    expect(gpus[0]).toMatchObject({ index: 0, model: "NVIDIA H100 80GB HBM3", vramMiB: 81559, fake: false });
    expect(gpus[1]).toMatchObject({ index: 1, vramUsedMiB: 512, utilizationPercent: 0, driver: "550.54.15" });
  });

  it("finds no GPU (not an error) where nvidia-smi does not exist", async () => {
    expect(await detectGpus({ nvidiaSmi: "/nonexistent/nvidia-smi" })).toEqual([]);
  });

  it("runs nvidia-smi and reports its failure clearly", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "baton-smi-"));
    try {
      const ok = path.join(dir, "ok-smi");
      await writeFile(ok, `#!/bin/sh\ncat <<'CSV'\n${TWO_GPUS}CSV\n`);
      await chmod(ok, 0o755);
      expect((await detectGpus({ nvidiaSmi: ok })).map((g) => g.index)).toEqual([0, 1]);
      const broken = path.join(dir, "broken-smi");
      await writeFile(
        broken,
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2\nexit 9\n",
      );
      await chmod(broken, 0o755);
      await expect(detectGpus({ nvidiaSmi: broken })).rejects.toThrow("nvidia-smi failed");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("makes labelled fake GPUs only from an explicit spec", () => {
    const gpus = fakeGpus("2xFake-A100:40960");
    expect(gpus.map((g) => [g.index, g.model, g.vramMiB, g.fake])).toEqual([
      [0, "Fake-A100", 40960, true],
      [1, "Fake-A100", 40960, true],
    ]);
    expect(() => fakeGpus("lots")).toThrow("fake GPU spec");
    expect(() => fakeGpus("0xFake")).toThrow("1 to 64");
  });
});

describe("GPU allocation", () => {
  it("hands out whole GPUs, matching model and VRAM, and never the same GPU twice", () => {
    const allocator = new GpuAllocator([...parseNvidiaSmi(TWO_GPUS)]);
    expect(allocator.reserve("a", { gpus: 1, gpuModel: "a100" })).toEqual([1]);
    expect(allocator.reserve("b", { gpus: 1, gpuModel: "a100" })).toBeUndefined();
    expect(allocator.reserve("c", { gpus: 1, minVramMiB: 80_000 })).toEqual([0]);
    expect(allocator.free()).toEqual([]);
    allocator.release("a");
    expect(allocator.free()).toEqual([1]);
    expect(allocator.canEverSatisfy({ gpus: 3 })).toBe(false);
  });

  it("lets a quote's reservation lapse, and keeps a committed lease's GPUs", () => {
    let changes = 0;
    const allocator = new GpuAllocator(fakeGpus("2xFake"), () => changes++);
    expect(allocator.reserve("quote-1", { gpus: 2 }, 1_000, 0)).toEqual([0, 1]);
    expect(allocator.free(999)).toEqual([]);
    expect(allocator.free(1_000)).toEqual([0, 1]);
    expect(allocator.reserve("quote-2", { gpus: 1 }, 5_000, 1_000)).toEqual([0]);
    expect(allocator.commit("quote-2", "lease-7")).toEqual([0]);
    expect(allocator.free(10_000)).toEqual([1]);
    expect(changes).toBeGreaterThanOrEqual(3);
  });
});
