import { appendFile, mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { UserError } from "../../sdk/errors.ts";
import { openBatchManifest, type TaskResult } from "../../sdk/tenant/batch-manifest.ts";

/** A done task's result from lease `leaseId`. */
function result(taskId: string, leaseId = "1"): TaskResult {
  return {
    taskId,
    state: "done",
    exitCode: 0,
    outputCid: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    provider: "0x0000000000000000000000000000000000000001",
    leaseId,
    durationMs: 52,
    cost: "1000",
    attempts: 1,
    at: 1,
  };
}

describe("batch manifest", () => {
  let dir: string;
  let file: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "baton-batch-manifest-"));
    file = path.join(dir, "batches", "b1", "manifest.jsonl");
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("records each task once: a second result for it is refused, also when both arrive together", async () => {
    const manifest = await openBatchManifest(file);
    expect(await manifest.record(result("1"))).toBe(true);
    const [a, b] = await Promise.all([manifest.record(result("2", "7")), manifest.record(result("2", "8"))]);
    expect([a, b]).toEqual([true, false]);
    expect(await manifest.record(result("1", "9"))).toBe(false);
    await manifest.close();
    const lines = (await readFile(file, "utf8")).trimEnd().split("\n");
    expect(lines.map((l) => JSON.parse(l) as TaskResult).map((r) => [r.taskId, r.leaseId])).toEqual([
      ["1", "1"],
      ["2", "7"],
    ]);
  });

  it("refuses a result that is not one, writing nothing", async () => {
    const manifest = await openBatchManifest(file);
    await expect(manifest.record({ ...result("a"), attempts: 0 })).rejects.toThrow("not a task result");
    expect(await manifest.record(result("a"))).toBe(true);
    await manifest.close();
    expect((await readFile(file, "utf8")).trimEnd().split("\n")).toHaveLength(1);
  });

  it("reopens with the results recorded, and still refuses their duplicates", async () => {
    const first = await openBatchManifest(file);
    await first.record(result("a"));
    await first.record({ ...result("b"), state: "failed", exitCode: 3, attempts: 3, logs: ["boom"] });
    await first.close();
    const again = await openBatchManifest(file);
    expect([...again.results.keys()]).toEqual(["a", "b"]);
    expect(again.results.get("b")?.logs).toEqual(["boom"]);
    expect(await again.record(result("a", "2"))).toBe(false);
    expect(await again.record(result("c"))).toBe(true);
    await again.close();
  });

  it("drops a last line cut short by a crash, so its task runs again", async () => {
    const first = await openBatchManifest(file);
    await first.record(result("a"));
    await first.close();
    await appendFile(file, JSON.stringify(result("b")).slice(0, 40));
    const again = await openBatchManifest(file);
    expect([...again.results.keys()]).toEqual(["a"]);
    expect(await again.record(result("b"))).toBe(true);
    await again.close();
    expect((await readFile(file, "utf8")).trimEnd().split("\n")).toHaveLength(2);
  });

  it("refuses a damaged line and a task recorded twice, with the line number", async () => {
    await (await openBatchManifest(file)).close();
    await appendFile(file, `${JSON.stringify(result("a"))}\n{"taskId": "b"}\n`);
    await expect(openBatchManifest(file)).rejects.toThrow(`batch manifest ${file}:2 is not a task result`);
    await rm(file);
    await appendFile(file, `${JSON.stringify(result("a"))}\n${JSON.stringify(result("a", "2"))}\n`);
    const error = await openBatchManifest(file).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UserError);
    expect((error as UserError).shortMessage).toBe(`batch manifest ${file}:2 records task a twice`);
  });
});
