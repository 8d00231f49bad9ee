import { randomBytes } from "node:crypto";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";

import { shortMessageOf } from "../sdk/errors.ts";
import { tcpHostOf } from "../sdk/p2p/http-lanes.ts";
import { serve } from "../sdk/wire/framing.ts";
import { httpLaneRequestSchema, laneServerOptions, PROXY_HEADER, type HttpLane } from "../sdk/wire/http.ts";
import { maxMessageBytes, protocols } from "../sdk/wire/protocols.ts";
import type { NodeComponents } from "./components.ts";
import { HTTP_SOCKET_NAME } from "./sandbox/runner.ts";

export interface HttpLanes {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Where lanes are served (after `start`), or undefined when they are not. */
  address(): { host: string; port: number } | undefined;
}

/** How often open lanes are checked against their leases: one that ended is cut within this. */
const SWEEP_MS = 1_000;
/**
 * A job that closes its connection this long after its last bytes, with no request on it, closed
 * an idle connection; one that closes sooner may be ending its answer that way.
 */
const IDLE_GAP_MS = 100;
/**
 * How long a lane whose job closed its connection waits for its tenant to close it (the SDK closes
 * an idle one after 4 s) before it is cut: meanwhile any request on it is answered `not-delivered`.
 */
const LANE_CLOSE_MS = 30_000;

interface Ticket {
  leaseId: bigint;
  tenantPeer: string;
  key: Buffer;
}

/**
 * Serves HTTP lanes: a lease's tenant asks over libp2p (`/baton/http-lane/1.0.0`, so the Noise
 * handshake proves who it is) and gets a port and a pre-shared key; a TLS connection to that port
 * with that key is joined to the job's socket, and from there the node only copies bytes. That takes
 * the node out of each request's path: no framing, no head parsing, no libp2p stream, which is most
 * of what a request cost the node on `/baton/http/1.1.0` (that path stays, for upgrades, relayed
 * nodes and tenants from before lanes).
 *
 * Only the tenant of a running lease gets a key, and a lane is cut when its lease stops running (the
 * job's socket closing, or the sweep). A lane whose job is not listening gets a 503 marked
 * `not-delivered`, as the libp2p path answers, so the tenant may send the request elsewhere.
 */
export function httpLanes(
  components: Pick<NodeComponents, "config" | "host" | "store" | "log" | "metrics">,
): HttpLanes {
  const { config, host, store, log, metrics } = components;
  const tickets = new Map<string, Ticket>();
  /** Identity of each lane's connection, set in the PSK callback, read once the handshake is done. */
  const identities = new WeakMap<tls.TLSSocket, string>();
  const open = new Map<tls.TLSSocket, bigint>();
  const listenHost = config.listen.map(tcpHostOf).find((at) => at !== undefined);
  let server: tls.Server | undefined;
  let sweep: NodeJS.Timeout | undefined;

  /** The lease's route when its tenant may use it now. */
  const route = (leaseId: bigint, tenantPeer: string): { workDir: string } | { status: number; message: string } => {
    const row = store.httpRoute(leaseId);
    if (!row || row.tenantPeer !== tenantPeer) {
      return { status: 403, message: `lease ${leaseId} is not this peer's lease on this node` };
    }
    if (row.state !== "running") return { status: 503, message: `lease ${leaseId} has no running job (${row.state})` };
    return { workDir: row.workDir };
  };

  const ask = async (message: Uint8Array, remotePeer: { toString(): string }): Promise<Uint8Array> => {
    const answer = (lane: HttpLane): Uint8Array => new TextEncoder().encode(JSON.stringify(lane));
    let parsed;
    try {
      parsed = httpLaneRequestSchema.safeParse(JSON.parse(new TextDecoder().decode(message)) as unknown);
    } catch {
      parsed = undefined;
    }
    if (!parsed?.success) return answer({ kind: "refusal", status: 400, message: "unreadable lane request" });
    const port = server?.address();
    if (!port || typeof port === "string") return answer({ kind: "refusal", status: 503, message: "no lanes here" });
    const leaseId = BigInt(parsed.data.leaseId);
    const tenantPeer = remotePeer.toString();
    const allowed = route(leaseId, tenantPeer);
    if ("status" in allowed) return answer({ kind: "refusal", ...allowed });
    // One key per lease and tenant: asking again (a gateway restarted) gives the same.
    let identity = [...tickets].find(([, t]) => t.leaseId === leaseId && t.tenantPeer === tenantPeer)?.[0];
    if (identity === undefined) {
      identity = randomBytes(16).toString("hex");
      tickets.set(identity, { leaseId, tenantPeer, key: randomBytes(32) });
    }
    return answer({ kind: "lane", port: port.port, identity, key: tickets.get(identity)!.key.toString("hex") });
  };

  /** Joins a lane whose handshake passed to its job's socket, or answers why it cannot. */
  const join = (lane: tls.TLSSocket): void => {
    const ticket = tickets.get(identities.get(lane) ?? "");
    lane.on("error", () => lane.destroy());
    if (!ticket) return void lane.destroy();
    const allowed = route(ticket.leaseId, ticket.tenantPeer);
    if ("status" in allowed) {
      metrics.httpLanes.inc({ outcome: "refused" });
      return refuse(lane, allowed.status, allowed.message);
    }
    const job = net.connect(path.join(allowed.workDir, HTTP_SOCKET_NAME));
    let joined = false;
    /** Bytes went to the job since its last answer: a request it has, or part of one. */
    let sent = false;
    /** When the job last sent bytes (or the lane joined it). */
    let answeredAt = 0;
    /** The job closed the connection while it had no request (its keep-alive ran out). */
    let idle = false;
    /** The job's socket refused a request's bytes: the job had closed it before they came. */
    let unread = false;
    let backstop: NodeJS.Timeout | undefined;
    // The tenant may send a request on a connection just as the job's server closes it (a server's
    // keep-alive runs out after a few seconds, often before the tenant's). Such a request never
    // reached the job: it is answered 503 `not-delivered`, which the tenant may send elsewhere even
    // when it is a POST, where a cut lane would fail it as maybe delivered. So a lane whose job closed
    // while idle stays open, answering its next request so, until its tenant closes it (the SDK does
    // after 4 s idle); and so is a request the job's socket refused (EPIPE: closed before it came).
    // A request the job's socket took and the job closed on unanswered may have been read: its lane
    // is ended, and the tenant does not send it again unless it may. A job that closes right after
    // its answer ends the lane too: that may be how its answer ends. A tenant gone closes the job's
    // connection; a job socket that never connected leaves the lane to carry the refusal.
    lane.once("close", () => {
      open.delete(lane);
      clearTimeout(backstop);
      job.destroy();
    });
    job.once("end", () => {
      idle = !sent && performance.now() - answeredAt >= IDLE_GAP_MS;
    });
    job.on("error", (error: NodeJS.ErrnoException) => {
      if (joined) {
        unread = sent && error.code === "EPIPE";
        return;
      }
      metrics.httpLanes.inc({ outcome: "not-listening" });
      log.debug("lane's job not listening", { leaseId: ticket.leaseId, error: shortMessageOf(error) });
      refuse(lane, 503, "the job's server is not listening (yet)");
    });
    job.once("close", () => {
      if (!joined) return;
      if (unread) refuse(lane, 503, "the job's server closed the connection before it read the request");
      else if (!idle) lane.end();
      // The tenant closes its end once it has ours; one that does not is cut.
      backstop = setTimeout(() => lane.destroy(), LANE_CLOSE_MS);
      backstop.unref();
    });
    job.once("connect", () => {
      joined = true;
      answeredAt = performance.now();
      // Each answer goes out at once: a lane carries small requests and answers, one at a time.
      lane.setNoDelay(true);
      metrics.httpLanes.inc({ outcome: "joined" });
      open.set(lane, ticket.leaseId);
      lane.on("data", (chunk: Buffer) => {
        if (job.readableEnded || job.destroyed) {
          if (!lane.writableEnded) refuse(lane, 503, "the job's server closed this connection");
          return;
        }
        sent = true;
        if (!job.write(chunk)) lane.pause();
      });
      job.on("drain", () => lane.resume());
      lane.once("end", () => job.end());
      job.on("data", () => {
        sent = false;
        answeredAt = performance.now();
      });
      // The job's end of the connection is passed on once it closed (above), not always as the lane's end.
      job.pipe(lane, { end: false });
    });
  };

  return {
    async start() {
      if (config.httpLanePort === null || listenHost === undefined) return;
      server = tls.createServer(
        laneServerOptions((socket, identity) => {
          const ticket = tickets.get(identity);
          if (!ticket) return null;
          identities.set(socket, identity);
          return ticket.key;
        }),
        join,
      );
      server.on("tlsClientError", (error) => {
        metrics.httpLanes.inc({ outcome: "bad-handshake" });
        log.debug("lane handshake failed", { error: shortMessageOf(error) });
      });
      const listening = server;
      await new Promise<void>((resolve, reject) => {
        listening.once("error", reject);
        listening.listen(config.httpLanePort ?? 0, listenHost.replace(/^\[|\]$/g, ""), () => {
          listening.off("error", reject);
          resolve();
        });
      });
      await serve(host, protocols.httpLane, ask, { maxBytes: maxMessageBytes.httpLane, timeoutMs: 10_000 });
      sweep = setInterval(() => {
        for (const [identity, ticket] of tickets) {
          if ("status" in route(ticket.leaseId, ticket.tenantPeer)) tickets.delete(identity);
        }
        for (const [lane, leaseId] of open) {
          if (![...tickets.values()].some((t) => t.leaseId === leaseId)) lane.destroy();
        }
      }, SWEEP_MS);
      sweep.unref();
    },
    async stop() {
      clearInterval(sweep);
      if (!server) return;
      await host.unhandle(protocols.httpLane);
      for (const lane of open.keys()) lane.destroy();
      const closing = server;
      await new Promise<void>((resolve) => closing.close(() => resolve()));
      server = undefined;
    },
    address() {
      const at = server?.address();
      return at && typeof at !== "string" ? { host: at.address, port: at.port } : undefined;
    },
  };
}

/** Answers a lane's first request with the node's own response, and ends the lane. */
function refuse(lane: tls.TLSSocket, status: number, message: string): void {
  const body = JSON.stringify({ error: message });
  lane.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? "Error"}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `${PROXY_HEADER}: not-delivered\r\nconnection: close\r\n\r\n${body}`,
  );
}
