import { describe, expect, it } from "vitest";

import { runJob } from "../../sdk/actions/runJob.ts";
import type { BatonClient } from "../../sdk/client.ts";
import { UserError } from "../../sdk/errors.ts";
import { MAX_SPEC_MESSAGE_BYTES } from "../../sdk/wire/messages.ts";

/*
 * runJob's refusals of bad input, before the client is used at all: the client given throws on any
 * use, so a refusal that reached the store, IPFS or the chain would show as that throw instead.
 */

const untouchable = new Proxy({} as BatonClient, {
  get(_target, property) {
    throw new Error(`the client was used (${String(property)}) before the input was checked`);
  },
});

describe("runJob refuses bad input before it does anything", () => {
  it("refuses a spec too large for the lease message that starts its job", async () => {
    // Each value within the schema's 8 KiB; together, and escaped as they travel, over the message.
    const env = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`PAD_${i}`, '"'.repeat(8000)]));
    const error = await runJob(untouchable, { command: ["true"], env }, { maxPricePerSecond: 1n }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(UserError);
    expect((error as UserError).message).toMatch(
      new RegExp(`^the job spec takes \\d+ bytes as sent, over the ${MAX_SPEC_MESSAGE_BYTES} `),
    );
  });

  it.each([
    [{ holders: 9 }, /replication.holders must be a whole number from 0 to 8/],
    [{ holders: 1.5 }, /replication.holders must be a whole number/],
    [{ holders: 0, tenantCopy: "none" as const }, /needs at least one holder/],
    [{ holders: 1, diskGiB: 0.01 }, /replication.diskGiB must be from 0.0625/],
    [{ holders: 0, unpack: true }, /replication.unpack needs at least one holder/],
  ])("refuses replication %j", async (replication, message) => {
    const error = await runJob(untouchable, { command: ["true"] }, { maxPricePerSecond: 1n, replication }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(UserError);
    expect((error as UserError).message).toMatch(message);
  });

  it("refuses more checkpoints to keep than a holder keeps", async () => {
    const error = await runJob(
      untouchable,
      { command: ["true"] },
      { maxPricePerSecond: 1n, keepCheckpoints: 17, replication: { holders: 1 } },
    ).catch((e: unknown) => e);
    expect((error as UserError).message).toMatch(/a holder keeps at most 16 checkpoints/);
  });
});
