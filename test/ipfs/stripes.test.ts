import { describe, expect, it } from "vitest";

import { takeOver, type StripeProgress } from "../../sdk/ipfs/block-stream.ts";

/** A stripe that began at block `begin` at time 0, is at block `at` now, and fetches up to `end`. */
const stripe = (begin: number, at: number, end: number): StripeProgress => ({
  begin,
  at,
  startedAt: 0,
  session: { end },
});

// What a stripe that is done (`done`, at time `now`) takes over from the others when several
// holders stream one DAG at once (StripedFetch).
describe("taking over a stripe", () => {
  it("splits a stripe going at the same pace in halves", () => {
    const other = stripe(20, 30, 42);
    expect(takeOver(stripe(0, 10, 10), [other], 1_000)).toEqual({ stripe: other, from: 36 });
  });

  it("leaves a slow holder only the block on its way", () => {
    // 13 blocks in 650 ms against one: the other holder takes 11 of the 12 left, and both end at
    // about the same time (the slow one's block in 650 ms, the 11 in 550).
    const slow = stripe(1, 2, 14);
    expect(takeOver(stripe(14, 27, 27), [slow], 650)).toEqual({ stripe: slow, from: 3 });
  });

  it("splits by pace: a holder twice as slow keeps a third", () => {
    const slower = stripe(0, 5, 17);
    expect(takeOver(stripe(20, 30, 30), [slower], 1_000)).toEqual({ stripe: slower, from: 9 });
  });

  it("takes from the stripe with the most time left, not the most blocks", () => {
    const many = stripe(0, 50, 60); // 10 left at 20 ms a block: 200 ms
    const slow = stripe(100, 102, 106); // 4 left at 500 ms a block: 2 s
    expect(takeOver(stripe(200, 210, 210), [many, slow], 1_000)?.stripe).toBe(slow);
  });

  it("takes nothing that would not save a block's time, nor from a stripe with under 4 blocks left or none yet", () => {
    // Faster than the one that is done: it ends sooner alone.
    expect(takeOver(stripe(0, 10, 10), [stripe(20, 60, 66)], 1_000)).toBeUndefined();
    // Three left, however slow: what its holder sent past a cut would be wasted.
    expect(takeOver(stripe(0, 10, 10), [stripe(20, 21, 24)], 1_000)).toBeUndefined();
    // No block yet: its pace is not known.
    expect(takeOver(stripe(0, 10, 10), [stripe(20, 20, 40)], 1_000)).toBeUndefined();
    expect(takeOver(stripe(0, 10, 10), [], 1_000)).toBeUndefined();
  });
});
