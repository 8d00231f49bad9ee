import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { NodeStore, type LeaseRow } from "../../node/store.ts";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-store-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const lease = (leaseId: bigint): LeaseRow => ({
  leaseId,
  jobId: "0x" + "ab".repeat(32),
  tenant: "0x0000000000000000000000000000000000000001",
  tenantPeer: "12D3KooWTenant",
  state: "running",
  gpus: [0, 1],
  spec: { command: ["train"] },
  workDir: "/tmp/w",
  pid: 42,
  startedAt: Number(leaseId),
  endedAt: null,
  exitCode: null,
  reason: null,
  chainPeriodS: 30,
  lastChainHeartbeat: null,
  pendingCheckpointCid: null,
  resultCid: null,
  jobKey: null,
});

describe("node store", () => {
  it("keeps leases, quotes and nonces across reopen", () => {
    const file = path.join(dir, "node.db");
    const store = new NodeStore(file);
    expect([store.nextNonce(), store.nextNonce()]).toEqual([0n, 1n]);
    store.insertLease(lease(7n));
    store.insertLease(lease(8n));
    store.updateLease(8n, { state: "fenced", pid: null, reason: "slashed" });
    store.saveQuote({ nonce: 1n, jobId: "0x01", tenant: "0x02", gpus: [1], expiresAt: 10 });
    store.close();

    const reopened = new NodeStore(file);
    expect(reopened.nextNonce()).toBe(2n);
    expect(reopened.leases().map((l) => l.leaseId)).toEqual([7n]);
    expect(reopened.getLease(8n)).toMatchObject({ state: "fenced", pid: null, reason: "slashed", gpus: [0, 1] });
    expect(reopened.getQuote(1n)?.gpus).toEqual([1]);
    reopened.pruneQuotes(11);
    expect(reopened.getQuote(1n)).toBeUndefined();
    reopened.close();
  });

  it("rolls back a failed transaction whole", () => {
    const store = new NodeStore(path.join(dir, "node.db"));
    expect(() =>
      store.transaction(() => {
        store.insertLease(lease(1n));
        store.insertLease(lease(1n));
      }),
    ).toThrow();
    expect(store.getLease(1n)).toBeUndefined();
    store.close();
  });

  it("never hands out a nonce twice, even when the writer is SIGKILLed mid-stream", async () => {
    const file = path.join(dir, "node.db");
    const script = `
      import { NodeStore } from ${JSON.stringify(path.resolve("node/store.ts"))};
      const store = new NodeStore(${JSON.stringify(file)});
      for (;;) { const n = store.nextNonce(); process.stdout.write(n + "\\n"); }
    `;
    const child = spawn(process.execPath, [
      "--disable-warning=ExperimentalWarning",
      "--input-type=module",
      "-e",
      script,
    ]);
    const seen: bigint[] = [];
    let buffer = "";
    await new Promise<void>((resolve) => {
      child.stdout.on("data", (chunk: Buffer) => {
        buffer += chunk.toString();
        const lines = buffer.split("\n");
        buffer = lines.pop()!;
        for (const line of lines) seen.push(BigInt(line));
        if (seen.length >= 200 && child.exitCode === null) child.kill("SIGKILL");
      });
      child.once("exit", () => resolve());
    });
    expect(seen.length).toBeGreaterThanOrEqual(200);
    const store = new NodeStore(file);
    const next = store.nextNonce();
    expect(next).toBeGreaterThan(seen[seen.length - 1]!);
    store.close();
  });
});
