import { once } from "node:events";
import http from "node:http";
import path from "node:path";
import { Readable, type Duplex } from "node:stream";

import type { Connection, Stream } from "@libp2p/interface";

import { shortMessageOf } from "../sdk/errors.ts";
import { protocols } from "../sdk/wire/protocols.ts";
import {
  forwardable,
  headerPairs,
  httpReader,
  httpRequestHeadSchema,
  isUpgrade,
  PROXY_HEADER,
  UPGRADED_BODY_BYTES,
  writeHttpMessage,
  type HttpMessage,
  type HttpRequestHead,
} from "../sdk/wire/http.ts";
import type { NodeComponents } from "./components.ts";
import { HTTP_SOCKET_NAME } from "./sandbox/runner.ts";

/** The largest request or response body the proxy passes, either way. */
export const MAX_HTTP_BODY_BYTES = 64 * 1024 * 1024;

export interface HttpProxy {
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Serves `/baton/http/1.1.0`: a lease's tenant sends HTTP requests to the server job of its lease,
 * which listens on `$BATON_HTTP_SOCKET` in its work dir; requests and responses stream through,
 * one after another on a stream, each checked on its own (a stream may serve several leases).
 * Only the libp2p peer that started the lease may use it (the Noise handshake proves who it is),
 * and only while the job runs.
 */
export function httpProxy(components: Pick<NodeComponents, "host" | "store" | "log" | "metrics">): HttpProxy {
  const { host, store, log, metrics } = components;
  // Connections to the jobs' sockets are reused across requests, as a reverse proxy does.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  /** A reply of the node itself; `delivered` says whether the job may have seen the request. */
  const reply = async (stream: Stream, status: number, message: string, delivered = false): Promise<void> => {
    const body = new TextEncoder().encode(JSON.stringify({ error: message }));
    await writeHttpMessage(
      stream,
      {
        status,
        headers: [
          ["content-type", "application/json"],
          [PROXY_HEADER, delivered ? "maybe-delivered" : "not-delivered"],
        ],
      },
      (async function* () {
        yield body;
      })(),
      { maxBodyBytes: MAX_HTTP_BODY_BYTES },
    );
  };

  /**
   * One exchange: the request to the job, its response back. False when the stream cannot go on
   * (a response cut half-way: the stream is reset then, for the tenant to see the cut; an upgrade,
   * whose stream ends with it).
   */
  const exchange = async (
    stream: Stream,
    connection: Connection,
    { head, body }: HttpMessage<HttpRequestHead>,
  ): Promise<boolean> => {
    const started = performance.now();
    let status = 0;
    try {
      const row = store.httpRoute(BigInt(head.leaseId));
      if (!row || row.tenantPeer !== connection.remotePeer.toString()) {
        status = 403;
        await reply(stream, 403, `lease ${head.leaseId} is not this peer's lease on this node`);
        return true;
      }
      if (row.state !== "running") {
        status = 503;
        await reply(stream, 503, `lease ${head.leaseId} has no running job (${row.state})`);
        return true;
      }
      if (isUpgrade(head)) {
        status = await tunnel(stream, path.join(row.workDir, HTTP_SOCKET_NAME), { head, body });
        return false;
      }
      const response = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const request = http.request({
          agent,
          socketPath: path.join(row.workDir, HTTP_SOCKET_NAME),
          method: head.method,
          path: head.path,
          headers: Object.fromEntries(head.headers),
        });
        request.once("response", resolve);
        request.once("error", reject);
        Readable.from(body)
          .once("error", (error) => request.destroy(error))
          .pipe(request);
      });
      status = response.statusCode ?? 502;
      const headers = headerPairs(response.rawHeaders);
      await writeHttpMessage(stream, { status, headers: forwardable(headers) }, response, {
        maxBodyBytes: MAX_HTTP_BODY_BYTES,
      });
      return true;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const reason = shortMessageOf(error);
      if (status === 0) {
        // Nothing sent yet: say why. Once a response started, all we can do is cut the stream.
        status = code === "ENOENT" || code === "ECONNREFUSED" ? 503 : 502;
        const message =
          status === 503 ? "the job's server is not listening (yet)" : `the job's server failed: ${reason}`;
        return await reply(stream, status, message, status !== 503).then(
          () => true,
          () => false,
        );
      }
      log.debug("http response cut", { error });
      stream.abort(error as Error);
      return false;
    } finally {
      metrics.httpRequests.inc({ status: String(status) });
      log.debug("http request", { status, ms: Math.round(performance.now() - started) });
    }
  };

  /**
   * An upgrade (a WebSocket handshake): the request goes to the job on a connection of its own; on
   * a 101 the stream carries the upgraded connection both ways until either side ends it, and then
   * ends itself. Any other answer is passed on as a response and ends the stream (the tenant is
   * still sending what it meant for the upgraded connection). Resolves with the job's status.
   */
  const tunnel = async (
    stream: Stream,
    socketPath: string,
    { head, body }: HttpMessage<HttpRequestHead>,
  ): Promise<number> => {
    const answer = await new Promise<{ response: http.IncomingMessage; socket?: Duplex; rest?: Buffer }>(
      (resolve, reject) => {
        const request = http.request({
          agent: false,
          socketPath,
          method: head.method,
          path: head.path,
          headers: Object.fromEntries(head.headers),
        });
        request.once("upgrade", (response, socket, rest) => resolve({ response, socket, rest }));
        request.once("response", (response) => resolve({ response }));
        request.once("error", reject);
        request.end();
      },
    );
    const { response, socket, rest } = answer;
    const status = response.statusCode ?? 502;
    const headers = headerPairs(response.rawHeaders);
    if (!socket) {
      await writeHttpMessage(stream, { status, headers: forwardable(headers) }, response, {
        maxBodyBytes: MAX_HTTP_BODY_BYTES,
      });
      await stream.close().catch(() => undefined);
      return status;
    }
    // The 101's own headers (Upgrade, Connection, Sec-WebSocket-Accept) are the handshake: all go.
    const fromJob = (async function* () {
      if (rest && rest.byteLength > 0) yield rest;
      for await (const chunk of socket) yield chunk as Buffer;
    })();
    const toJob = (async () => {
      for await (const piece of body) if (!socket.write(piece)) await once(socket, "drain");
      socket.end();
    })().catch(() => socket.destroy());
    try {
      await writeHttpMessage(stream, { status, headers }, fromJob, { maxBodyBytes: UPGRADED_BODY_BYTES });
      await stream.close().catch(() => undefined);
    } catch (error) {
      stream.abort(error as Error);
    } finally {
      socket.destroy();
      await toJob;
    }
    return status;
  };

  /** Answers the requests on a stream one after another, until the tenant closes it. */
  const handle = async (stream: Stream, connection: Connection): Promise<void> => {
    const reader = httpReader(stream);
    for (;;) {
      let message: HttpMessage<HttpRequestHead> | undefined;
      try {
        message = await reader.next(httpRequestHeadSchema, {
          maxBodyBytes: (head) => (isUpgrade(head) ? UPGRADED_BODY_BYTES : MAX_HTTP_BODY_BYTES),
        });
      } catch (error) {
        if (stream.status !== "open") return;
        metrics.httpRequests.inc({ status: "400" });
        await reply(stream, 400, `unreadable request: ${shortMessageOf(error)}`).catch(() => undefined);
        break;
      }
      if (!message) break;
      if (!(await exchange(stream, connection, message))) return;
      // The job may answer before reading the whole request body: what is left of it goes, so that
      // the next request's head comes next; a body that cannot be read to its end ends the stream.
      if (
        !(await reader.skipBody().then(
          () => true,
          () => false,
        ))
      )
        break;
    }
    await stream.close().catch(() => undefined);
  };

  return {
    // 1.0.0's tenants send one request and close: the same handler serves them.
    start: () =>
      host.handle([protocols.http, protocols.httpOneShot], (stream, connection) => void handle(stream, connection), {
        maxInboundStreams: 1_024,
      }),
    async stop() {
      await host.unhandle([protocols.http, protocols.httpOneShot]);
      agent.destroy();
    },
  };
}
