import { createServer, connect, type AddressInfo, type Socket } from "node:net";

/**
 * Bytes one direction of one connection may hold (delayed or stalled) before its sender is paused.
 * A link's buffer is what the kernel's socket buffers would hold: a few MiB is more than 200 ms of
 * loopback-speed traffic needs, and bounds what a stalled link keeps in memory.
 */
const MAX_QUEUED_BYTES = 4 * 1024 * 1024;

/** One-way delay of each direction: `up` is client → target (tenant → provider), `down` the reply. */
export interface LinkDelay {
  upMs: number;
  downMs: number;
  /** Up to this much more, at random per chunk, each way; bytes still arrive in order. */
  jitterMs?: number;
  /**
   * Chunks lost, in percent, each way. TCP delivers a lost segment once it is sent again and holds
   * back what follows it meanwhile, so a lost chunk arrives one retransmission later: Linux's
   * minimum retransmission timeout (200 ms) plus a round trip ({@link retransmitDelayMs}), with
   * every chunk behind it. A chunk is what one read returned (a few segments at most for small
   * messages such as heartbeats), so the loss of bulk transfers is understated.
   */
  lossPercent?: number;
  /**
   * The link's bandwidth each way, in bytes per second, shared by all its connections as a host's
   * uplink is: each chunk leaves after the ones before it, in any connection, have had their time
   * on the wire. Unlimited when absent.
   */
  upBytesPerS?: number;
  downBytesPerS?: number;
}

/** How much later a lost chunk arrives on a link with these delays: see {@link LinkDelay.lossPercent}. */
export function retransmitDelayMs({ upMs, downMs }: LinkDelay): number {
  return 200 + upMs + downMs;
}

export interface LinkShaper {
  /** The port to dial instead of the target's. */
  port: number;
  /** `/ip4/127.0.0.1/tcp/<port>`: what the shaped peer announces. */
  multiaddr: string;
  /** Connections accepted so far, and open now. */
  readonly accepted: number;
  readonly open: number;
  /** Sets the one-way delays, for chunks received from now on. */
  delay(delay: LinkDelay): void;
  /**
   * The link goes silent: nothing is forwarded either way, connections stay open, new ones are
   * accepted and held. What was sent meanwhile arrives at {@link heal}, as TCP retransmits it.
   */
  stall(): void;
  /**
   * A partition that ends connections: every open one is reset on both sides (RST), and new ones
   * are reset as soon as they arrive, until {@link heal}.
   */
  cut(): void;
  /** Forwards again (held bytes first, in order); delays stay as set. */
  heal(): void;
  /**
   * The next `count` connections are accepted and then reset at their first bytes, as a link that
   * drops a flow mid-handshake does (a connection the dialler made, not one refused).
   */
  resetNext(count: number): void;
  /** Resets every connection and stops listening. */
  close(): Promise<void>;
}

type Mode = "forward" | "stalled" | "cut";

/**
 * A TCP proxy on 127.0.0.1 in front of `targetPort` that adds a one-way delay per direction, caps
 * its bandwidth if asked, and fails the link on demand, in userspace: this kernel has no netem.
 * Each chunk is released at `max(previous release, arrival + delay + jitter)`, so order is kept
 * and the delay is latency; a capped direction also holds it until the wire is free, plus its own
 * time on it. A direction holding {@link MAX_QUEUED_BYTES} pauses its sender, and one whose
 * receiver is full waits for it to drain, as TCP would.
 *
 * @example
 * const link = await startLink(providerPort, { upMs: 100, downMs: 100, jitterMs: 10 });
 * try { ... link.cut(); ... link.heal(); } finally { await link.close(); }
 */
export async function startLink(
  /** Or where to find it at each connection: for a target started after the link (a devnet's chain). */
  targetPort: number | (() => number),
  initial: LinkDelay = { upMs: 0, downMs: 0 },
  { port = 0 }: { port?: number } = {},
): Promise<LinkShaper> {
  let delay = { jitterMs: 0, lossPercent: 0, ...initial };
  let mode: Mode = "forward";
  let accepted = 0;
  let toReset = 0;
  const pipes = new Set<Pipe>();
  /** Every open socket, both ends; `clients` are the accepted ones. */
  const sockets = new Set<Socket>();
  const clients = new Set<Socket>();
  /** When each direction's wire is free again, for a capped one (see {@link LinkDelay.upBytesPerS}). */
  const wireFreeAt = { up: 0, down: 0 };

  /** One direction of one connection. */
  class Pipe {
    readonly #queue: { bytes: Buffer; at: number }[] = [];
    #queued = 0;
    #lastAt = 0;
    #timer: NodeJS.Timeout | undefined;
    #waitingForDrain = false;
    #ended = false;
    to: Socket | undefined;
    readonly from: Socket;
    readonly direction: "up" | "down";

    constructor(from: Socket, direction: "up" | "down") {
      this.from = from;
      this.direction = direction;
      from.on("data", (bytes: Buffer) => {
        const lost = Math.random() * 100 < delay.lossPercent;
        const oneWayMs = this.direction === "up" ? delay.upMs : delay.downMs;
        let at = Math.max(
          this.#lastAt,
          Date.now() + oneWayMs + Math.random() * delay.jitterMs + (lost ? retransmitDelayMs(delay) : 0),
        );
        const bytesPerS = this.direction === "up" ? delay.upBytesPerS : delay.downBytesPerS;
        if (bytesPerS !== undefined) {
          at = Math.max(at, wireFreeAt[this.direction]) + (bytes.length / bytesPerS) * 1000;
          wireFreeAt[this.direction] = at;
        }
        this.#lastAt = at;
        this.#queue.push({ bytes, at });
        this.#queued += bytes.length;
        if (this.#queued >= MAX_QUEUED_BYTES) from.pause();
        this.pump();
      });
      from.on("end", () => {
        this.#ended = true;
        this.pump();
      });
    }

    /** Releases every chunk that is due, and sets a timer for the next. */
    pump(): void {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      if (mode !== "forward" || !this.to || this.to.connecting || this.to.destroyed || this.#waitingForDrain) return;
      const now = Date.now();
      while (this.#queue.length > 0 && this.#queue[0]!.at <= now) {
        const { bytes } = this.#queue.shift()!;
        this.#queued -= bytes.length;
        if (this.#queued < MAX_QUEUED_BYTES / 2 && this.from.isPaused()) this.from.resume();
        if (!this.to.write(bytes)) {
          this.#waitingForDrain = true;
          this.to.once("drain", () => {
            this.#waitingForDrain = false;
            this.pump();
          });
          return;
        }
      }
      if (this.#queue.length > 0) {
        this.#timer = setTimeout(() => this.pump(), this.#queue[0]!.at - now);
      } else if (this.#ended && !this.to.writableEnded) {
        this.to.end();
      }
    }

    stop(): void {
      clearTimeout(this.#timer);
      this.#queue.length = 0;
    }
  }

  const reset = (socket: Socket): void => {
    if (!socket.destroyed) socket.resetAndDestroy();
  };
  const pendingDials = new Set<() => void>();

  // Half-open allowed: a FIN travels through the queue behind the bytes sent before it.
  const server = createServer({ allowHalfOpen: true }, (client) => {
    accepted += 1;
    if (mode === "cut") return reset(client);
    if (toReset > 0) {
      toReset -= 1;
      client.on("error", () => {});
      client.once("data", () => reset(client));
      return;
    }
    const up = new Pipe(client, "up");
    let down: Pipe | undefined;
    const ends = [client];
    const forget = (): void => {
      up.stop();
      down?.stop();
      pipes.delete(up);
      if (down) pipes.delete(down);
      clients.delete(client);
      for (const socket of ends) sockets.delete(socket);
    };
    // One side reset or failed: the other learns it the same way.
    const resetBoth = (): void => {
      forget();
      for (const socket of ends) reset(socket);
    };
    clients.add(client);
    sockets.add(client);
    pipes.add(up);
    client.on("error", resetBoth);
    client.on("close", () => {
      if (ends.every((s) => s.destroyed)) forget();
    });
    // The target is dialled only while the link forwards: a connection made during a stall
    // reaches nobody until it heals, as a SYN lost on the way would.
    const dial = (): void => {
      if (client.destroyed) return;
      const target = connect({
        host: "127.0.0.1",
        port: typeof targetPort === "number" ? targetPort : targetPort(),
        allowHalfOpen: true,
      });
      ends.push(target);
      sockets.add(target);
      up.to = target;
      down = new Pipe(target, "down");
      down.to = client;
      pipes.add(down);
      target.on("connect", () => up.pump());
      target.on("error", resetBoth);
      target.on("close", () => {
        if (ends.every((s) => s.destroyed)) forget();
      });
    };
    if (mode === "forward") dial();
    else pendingDials.add(dial);
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  const listening = (server.address() as AddressInfo).port;

  return {
    port: listening,
    multiaddr: `/ip4/127.0.0.1/tcp/${listening}`,
    get accepted() {
      return accepted;
    },
    get open() {
      return clients.size;
    },
    delay(next) {
      delay = { jitterMs: 0, lossPercent: 0, ...next };
    },
    stall() {
      if (mode === "forward") mode = "stalled";
    },
    cut() {
      mode = "cut";
      pendingDials.clear();
      for (const pipe of pipes) pipe.stop();
      pipes.clear();
      for (const socket of sockets) reset(socket);
      sockets.clear();
      clients.clear();
    },
    resetNext(count) {
      toReset = count;
    },
    heal() {
      mode = "forward";
      for (const dial of pendingDials) dial();
      pendingDials.clear();
      for (const pipe of pipes) pipe.pump();
    },
    async close() {
      mode = "cut";
      pendingDials.clear();
      for (const pipe of pipes) pipe.stop();
      for (const socket of sockets) reset(socket);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago, for a peer that must listen on a port known
 * before it starts (the shaped provider: its link forwards there, and it announces the link). The
 * port is released before it is returned, so another process may take it meanwhile; on loopback
 * with ephemeral ports handed out in turn, that is rare, and the peer then fails to start loudly.
 */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
