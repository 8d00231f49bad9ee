import { getEventListeners } from "node:events";

import { describe, expect, it } from "vitest";

import { linkedSignal } from "../../sdk/utils/linked-signal.ts";

describe("linkedSignal", () => {
  it("aborts with the reason of the first source that aborts, and lets go of the others", () => {
    const a = new AbortController();
    const b = new AbortController();
    const { signal } = linkedSignal([a.signal, b.signal]);
    expect(signal.aborted).toBe(false);
    const reason = new Error("b went");
    b.abort(reason);
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toBe(reason);
    expect(getEventListeners(a.signal, "abort")).toHaveLength(0);
  });

  it("is aborted at once when a source already is", () => {
    const a = new AbortController();
    a.abort(new Error("gone before"));
    const { signal } = linkedSignal([new AbortController().signal, a.signal], 60_000);
    expect(signal.aborted).toBe(true);
    expect((signal.reason as Error).message).toBe("gone before");
  });

  it("aborts with a TimeoutError after its timeout, as AbortSignal.timeout does", async () => {
    const source = new AbortController();
    const { signal } = linkedSignal([source.signal], 20);
    await new Promise((resolve) => signal.addEventListener("abort", resolve));
    expect((signal.reason as DOMException).name).toBe("TimeoutError");
    expect(getEventListeners(source.signal, "abort")).toHaveLength(0);
  });

  it("after release, neither a source nor the timeout aborts it, and no listener is left on the sources", async () => {
    const source = new AbortController();
    const { signal, release } = linkedSignal([source.signal], 20);
    expect(getEventListeners(source.signal, "abort")).toHaveLength(1);
    release();
    expect(getEventListeners(source.signal, "abort")).toHaveLength(0);
    source.abort(new Error("late"));
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(signal.aborted).toBe(false);
  });
});
