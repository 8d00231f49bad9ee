import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { backoffDelay, poll, pollUntil, sleep, withRetry } from "../../sdk/utils/retry.ts";

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

/** A task that fails `failures` times, then resolves with the attempt number; records when each attempt began. */
function flaky(failures: number) {
  const startedAt: number[] = [];
  const task = async (attempt: number): Promise<number> => {
    startedAt.push(Date.now());
    if (attempt <= failures) throw new Error(`failure ${attempt}`);
    return attempt;
  };
  return { task, startedAt };
}

/** The pauses between consecutive attempts. */
const pauses = (startedAt: number[]): number[] => startedAt.slice(1).map((at, i) => at - startedAt[i]!);

describe("backoffDelay", () => {
  it("doubles from 100 ms by default and stops at the cap", () => {
    expect([1, 2, 3, 4].map((n) => backoffDelay(n))).toEqual([100, 200, 400, 800]);
    expect(backoffDelay(20)).toBe(5_000);
    expect(backoffDelay(3, { delayMs: 50, backoff: 3, maxDelayMs: 300 })).toBe(300);
  });

  it("keeps a steady pace with a backoff of 1", () => {
    expect([1, 2, 5].map((n) => backoffDelay(n, { delayMs: 200, backoff: 1 }))).toEqual([200, 200, 200]);
  });
});

describe("sleep", () => {
  it("resolves at once for no time, and after the time otherwise", async () => {
    await sleep(0);
    let done = false;
    void sleep(100).then(() => (done = true));
    await vi.advanceTimersByTimeAsync(99);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(done).toBe(true);
  });

  it("rejects with the signal's reason when it aborts, or was aborted before", async () => {
    const controller = new AbortController();
    const slept = sleep(10_000, { signal: controller.signal });
    const reason = new Error("stop");
    controller.abort(reason);
    await expect(slept).rejects.toBe(reason);
    await expect(sleep(0, { signal: controller.signal })).rejects.toBe(reason);
  });
});

describe("withRetry", () => {
  it("returns the first success without pausing", async () => {
    const { task, startedAt } = flaky(0);
    await expect(withRetry(task)).resolves.toBe(1);
    expect(startedAt).toHaveLength(1);
  });

  it("tries again after failures, pausing by the backoff", async () => {
    const { task, startedAt } = flaky(3);
    const result = withRetry(task, { delayMs: 10, backoff: 2 });
    await vi.runAllTimersAsync();
    await expect(result).resolves.toBe(4);
    expect(pauses(startedAt)).toEqual([10, 20, 40]);
  });

  it("throws the last error once the attempts are used up", async () => {
    const { task, startedAt } = flaky(10);
    const result = withRetry(task, { attempts: 3, delayMs: 1 });
    const settled = expect(result).rejects.toThrow("failure 3");
    await vi.runAllTimersAsync();
    await settled;
    expect(startedAt).toHaveLength(3);
  });

  it("throws at once an error shouldRetry refuses", async () => {
    const { task, startedAt } = flaky(10);
    const result = withRetry(task, { shouldRetry: (error) => (error as Error).message !== "failure 2", delayMs: 1 });
    const settled = expect(result).rejects.toThrow("failure 2");
    await vi.runAllTimersAsync();
    await settled;
    expect(startedAt).toHaveLength(2);
  });

  it("pauses as a delay function says, per failure", async () => {
    const { task, startedAt } = flaky(3);
    const result = withRetry(task, { delayMs: (error) => ((error as Error).message === "failure 2" ? 0 : 30) });
    await vi.runAllTimersAsync();
    await expect(result).resolves.toBe(4);
    expect(pauses(startedAt)).toEqual([30, 0, 30]);
  });

  it("gives up after a try that ends past the time limit", async () => {
    const { task, startedAt } = flaky(100);
    const result = withRetry(task, { delayMs: 100, backoff: 1, timeoutMs: 250 });
    const settled = expect(result).rejects.toThrow("failure 4");
    await vi.runAllTimersAsync();
    await settled;
    expect(startedAt.map((at) => at - startedAt[0]!)).toEqual([0, 100, 200, 300]);
  });

  it("ends the pause at once when the signal aborts, with its reason, and never starts with an aborted signal", async () => {
    const controller = new AbortController();
    const { task, startedAt } = flaky(100);
    const result = withRetry(task, { delayMs: 60_000, signal: controller.signal });
    await vi.advanceTimersByTimeAsync(0);
    const reason = new Error("cancelled");
    controller.abort(reason);
    await expect(result).rejects.toBe(reason);
    expect(startedAt).toHaveLength(1);
    await expect(withRetry(task, { signal: controller.signal })).rejects.toBe(reason);
    expect(startedAt).toHaveLength(1);
  });
});

describe("poll", () => {
  it("returns what the look found, waiting as each look says", async () => {
    const lookedAt: number[] = [];
    const result = poll((attempt) => {
      lookedAt.push(Date.now());
      return attempt === 3 ? { done: true, value: "found" } : { done: false, waitMs: attempt * 7 };
    });
    await vi.runAllTimersAsync();
    await expect(result).resolves.toBe("found");
    expect(pauses(lookedAt)).toEqual([7, 14]);
  });

  it("returns undefined when the time or the attempts run out first", async () => {
    const byTime = poll(() => ({ done: false }), { delayMs: 50, backoff: 1, timeoutMs: 120 });
    const byCount = poll(() => ({ done: false }), { attempts: 2, delayMs: 1 });
    await vi.runAllTimersAsync();
    await expect(byTime).resolves.toBeUndefined();
    await expect(byCount).resolves.toBeUndefined();
  });

  it("ends with the look's error", async () => {
    await expect(
      poll(() => {
        throw new Error("broken");
      }),
    ).rejects.toThrow("broken");
  });
});

describe("pollUntil", () => {
  it("says whether the condition came true within the time", async () => {
    let ready = false;
    setTimeout(() => (ready = true), 500);
    const met = pollUntil(() => ready, { delayMs: 100, backoff: 1, timeoutMs: 1_000 });
    const never = pollUntil(async () => false, { delayMs: 100, backoff: 1, timeoutMs: 1_000 });
    await vi.runAllTimersAsync();
    await expect(met).resolves.toBe(true);
    await expect(never).resolves.toBe(false);
  });
});
