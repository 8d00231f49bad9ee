import { once } from "node:events";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";

import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

import { retransmitDelayMs, startLink, type LinkShaper } from "../helpers/link.ts";

// The link shaper the link-fault tests put between a tenant and a provider, against an echo server.
let echo: Server;
let echoPort: number;
const served = new Set<Socket>();

beforeAll(async () => {
  echo = createServer((socket) => {
    served.add(socket);
    socket.on("close", () => served.delete(socket));
    socket.on("error", () => undefined);
    socket.pipe(socket);
  });
  echo.listen(0, "127.0.0.1");
  await once(echo, "listening");
  echoPort = (echo.address() as AddressInfo).port;
});
afterAll(async () => {
  for (const socket of served) socket.destroy();
  await new Promise((resolve) => echo.close(resolve));
});

async function link(
  ...args: Parameters<typeof startLink> extends [unknown, ...infer R] ? R : never
): Promise<LinkShaper> {
  const shaper = await startLink(echoPort, ...args);
  onTestFinished(() => shaper.close());
  return shaper;
}

async function dial(shaper: LinkShaper): Promise<Socket> {
  const socket = connect({ host: "127.0.0.1", port: shaper.port });
  onTestFinished(() => void socket.destroy());
  await once(socket, "connect");
  return socket;
}

/** Resolves with everything read once `bytes` bytes came, or rejects when the socket fails first. */
function read(socket: Socket, bytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      got += chunk.length;
      if (got >= bytes) {
        socket.off("data", onData);
        resolve(Buffer.concat(chunks));
      }
    };
    socket.on("data", onData);
    socket.once("error", reject);
    socket.once("close", () => reject(new Error(`closed after ${got} of ${bytes} bytes`)));
  });
}

describe("link shaper", () => {
  it("delays each direction by its one-way delay: an echo takes the round trip", async () => {
    const shaper = await link({ upMs: 60, downMs: 40 });
    const socket = await dial(shaper);
    const started = performance.now();
    socket.write("ping");
    expect((await read(socket, 4)).toString()).toBe("ping");
    const rtt = performance.now() - started;
    expect(rtt).toBeGreaterThanOrEqual(99);
    // Slack for a loaded machine; a link that ignored the delay answers in a millisecond.
    expect(rtt).toBeLessThan(1_000);
  });

  it("loss: a lost chunk arrives one retransmission later, whole and in order, each way", async () => {
    const delays = { upMs: 10, downMs: 10 };
    // Every chunk lost: the echo is held back once on the way up and once on the way down.
    const shaper = await link({ ...delays, lossPercent: 100 });
    const socket = await dial(shaper);
    const started = performance.now();
    socket.write("ping");
    expect((await read(socket, 4)).toString()).toBe("ping");
    const rtt = performance.now() - started;
    expect(rtt).toBeGreaterThanOrEqual(2 * retransmitDelayMs(delays) + 19);
    expect(rtt).toBeLessThan(2_000);
  });

  it("keeps byte order under jitter larger than the gap between writes", async () => {
    const shaper = await link({ upMs: 5, downMs: 5, jitterMs: 30 });
    const socket = await dial(shaper);
    const sent = Buffer.from(Array.from({ length: 2_000 }, (_, i) => `${i},`).join(""));
    const reading = read(socket, sent.length);
    for (let at = 0; at < sent.length; at += 97) {
      socket.write(sent.subarray(at, at + 97));
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect((await reading).equals(sent)).toBe(true);
  });

  it("carries more than its buffer without losing a byte (the sender is paused, not dropped)", async () => {
    const shaper = await link({ upMs: 1, downMs: 1 });
    const socket = await dial(shaper);
    const sent = Buffer.alloc(12 * 1024 * 1024);
    for (let i = 0; i < sent.length; i += 4) sent.writeUInt32LE(i, i);
    const reading = read(socket, sent.length);
    socket.write(sent);
    expect((await reading).equals(sent)).toBe(true);
  });

  it("caps its bandwidth, shared by its connections as an uplink is", async () => {
    const bytesPerS = 4 * 1024 * 1024;
    const shaper = await link({ upMs: 0, downMs: 0, downBytesPerS: bytesPerS });
    const sockets = await Promise.all([dial(shaper), dial(shaper)]);
    const sent = sockets.map((_, n) => Buffer.alloc(2 * 1024 * 1024, n + 1));
    const started = performance.now();
    const reading = sockets.map((socket, n) => read(socket, sent[n]!.length));
    sockets.forEach((socket, n) => socket.write(sent[n]!));
    const received = await Promise.all(reading);
    const elapsedS = (performance.now() - started) / 1000;
    received.forEach((bytes, n) => expect(bytes.equals(sent[n]!)).toBe(true));
    // Both echoes' 4 MiB went down one 4 MiB/s wire: a second at least (half that if each
    // connection had a wire of its own, a few ms uncapped); slack above for a loaded machine.
    expect(elapsedS).toBeGreaterThanOrEqual(0.95);
    expect(elapsedS).toBeLessThan(10);
  });

  it("stall: nothing comes through, the connection stays open, and heal delivers what was held, in order", async () => {
    const shaper = await link();
    const socket = await dial(shaper);
    socket.write("a");
    expect((await read(socket, 1)).toString()).toBe("a");
    shaper.stall();
    const reading = read(socket, 2);
    socket.write("bc");
    const early = await Promise.race([reading, new Promise((resolve) => setTimeout(resolve, 300, "silent"))]);
    expect(early).toBe("silent");
    // A connection made during the stall is held too.
    const late = await dial(shaper);
    const lateReading = read(late, 1);
    late.write("d");
    expect(shaper.open).toBe(2);
    shaper.heal();
    expect((await reading).toString()).toBe("bc");
    expect((await lateReading).toString()).toBe("d");
  });

  it("cut: open connections are reset, new ones reset at once; heal lets new ones through", async () => {
    const shaper = await link();
    const socket = await dial(shaper);
    const failed = new Promise<Error>((resolve) => socket.once("error", resolve));
    shaper.cut();
    expect(((await failed) as NodeJS.ErrnoException).code).toBe("ECONNRESET");
    const refused = connect({ host: "127.0.0.1", port: shaper.port });
    onTestFinished(() => void refused.destroy());
    const error = await new Promise<NodeJS.ErrnoException>((resolve) => refused.once("error", resolve));
    expect(error.code).toBe("ECONNRESET");
    expect(shaper.open).toBe(0);
    shaper.heal();
    const again = await dial(shaper);
    again.write("e");
    expect((await read(again, 1)).toString()).toBe("e");
  });

  it("close: resets every connection and stops listening", async () => {
    const shaper = await startLink(echoPort);
    const socket = await dial(shaper);
    const failed = new Promise<Error>((resolve) => socket.once("error", resolve));
    await shaper.close();
    expect(((await failed) as NodeJS.ErrnoException).code).toBe("ECONNRESET");
    const refused = connect({ host: "127.0.0.1", port: shaper.port });
    const error = await new Promise<NodeJS.ErrnoException>((resolve) => refused.once("error", resolve));
    expect(error.code).toBe("ECONNREFUSED");
  });
});
