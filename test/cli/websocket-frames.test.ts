import { describe, expect, it } from "vitest";

import { closeFrame, frameBoundaries, SERVICE_RESTART } from "../../cli/websocket-frames.ts";

/** A frame with `length` payload bytes, masked or not, with the shortest length encoding. */
function frame(length: number, masked = false): Uint8Array {
  const extended =
    length < 126
      ? []
      : length < 65_536
        ? [length >> 8, length & 0xff]
        : [0, 0, 0, 0, 0, length >> 16, (length >> 8) & 0xff, length & 0xff];
  const code = length < 126 ? length : length < 65_536 ? 126 : 127;
  return Uint8Array.from([
    0x82,
    (masked ? 0x80 : 0) | code,
    ...extended,
    ...(masked ? [1, 2, 3, 4] : []),
    ...new Uint8Array(length),
  ]);
}

describe("frameBoundaries", () => {
  it("knows where frames of every length encoding end, however the bytes are split", () => {
    const bytes = Uint8Array.from([...frame(0), ...frame(5), ...frame(300, true), ...frame(70_000), ...frame(125)]);
    const ends = new Set<number>();
    let at = 0;
    for (const f of [frame(0), frame(5), frame(300, true), frame(70_000), frame(125)]) ends.add((at += f.byteLength));
    for (const step of [1, 7, 1000, bytes.byteLength]) {
      const boundaries = frameBoundaries();
      const seen: number[] = [];
      for (let offset = 0; offset < bytes.byteLength; offset += step) {
        const chunk = bytes.subarray(offset, offset + step);
        boundaries.feed(chunk);
        if (boundaries.atBoundary) seen.push(offset + chunk.byteLength);
      }
      expect(seen.every((end) => ends.has(end))).toBe(true);
      expect(seen.at(-1)).toBe(bytes.byteLength);
    }
  });

  it("is not at a boundary inside a header or a payload", () => {
    const boundaries = frameBoundaries();
    expect(boundaries.atBoundary).toBe(true);
    boundaries.feed(frame(300).subarray(0, 3));
    expect(boundaries.atBoundary).toBe(false);
    boundaries.feed(frame(300).subarray(3, 100));
    expect(boundaries.atBoundary).toBe(false);
    boundaries.feed(frame(300).subarray(100));
    expect(boundaries.atBoundary).toBe(true);
  });
});

describe("closeFrame", () => {
  it("is a server's close frame: opcode 8, unmasked, the code, then the reason", () => {
    expect([...closeFrame(SERVICE_RESTART, "go")]).toEqual([0x88, 4, 0x03, 0xf4, 0x67, 0x6f]);
    expect(closeFrame(1000, "x".repeat(500)).byteLength).toBe(2 + 2 + 123);
  });
});
