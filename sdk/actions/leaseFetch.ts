import { peerIdFromString } from "@libp2p/peer-id";

import type { BatonClient } from "../client.ts";
import { BaseError, ProtocolError, ProviderFaultError, RequestNotSentError, shortMessageOf } from "../errors.ts";
import { httpStreams, type HttpChannel, type HttpStreams } from "../p2p/http-streams.ts";
import {
  httpResponseHeadSchema,
  isUpgrade,
  PROXY_HEADER,
  UPGRADED_BODY_BYTES,
  writeHttpMessage,
} from "../wire/http.ts";

export interface LeaseFetchParameters {
  peerId: string;
  leaseId: bigint;
  method: string;
  /** Path and query, e.g. `/predict?text=hi`. */
  path: string;
  headers?: [string, string][];
  body?: AsyncIterable<Uint8Array>;
  /** Largest body accepted either way. Default 64 MiB. */
  maxBodyBytes?: number;
  /**
   * Streams to reuse (see {@link httpStreams}): a service keeps one pool for all its requests.
   * Default: a stream of its own, closed after the response.
   */
  streams?: HttpStreams;
  signal?: AbortSignal;
}

export interface LeaseFetchResponse {
  status: number;
  headers: [string, string][];
  body: AsyncGenerator<Uint8Array>;
}

/**
 * Sends one HTTP request to the server job of a lease, through its provider node
 * (`/baton/http/1.1.0`), streaming the body both ways, on a stream of `streams` when given.
 *
 * A request with an `Upgrade` header (a WebSocket handshake) resolves at the job's answer: on a
 * 101, `body` is what the job sends over the upgraded connection and the request's `body` what
 * the client sends, each until its side ends, with no size limit; the stream is not reused.
 *
 * @throws {RequestNotSentError} when the request never reached the job (no stream to the provider,
 * no job running there); a {ProviderFaultError} when it broke after the request went out.
 * @example
 * const res = await leaseFetch(client, { peerId, leaseId, method: "GET", path: "/health" });
 */
export async function leaseFetch(
  client: Pick<BatonClient, "host">,
  {
    peerId,
    leaseId,
    method,
    path,
    headers = [],
    body,
    maxBodyBytes = 64 * 1024 * 1024,
    signal,
    streams = httpStreams(client.host, { maxIdlePerPeer: 0 }),
  }: LeaseFetchParameters,
): Promise<LeaseFetchResponse> {
  let channel: HttpChannel;
  try {
    channel = await streams.acquire(peerIdFromString(peerId), signal ? { signal } : {});
  } catch (cause) {
    throw new RequestNotSentError(`cannot reach the provider ${peerId}`, { cause });
  }
  const { stream, reader } = channel;
  const upgrading = isUpgrade({ headers });
  const abort = (): void => stream.abort(new BaseError("request aborted"));
  signal?.addEventListener("abort", abort, { once: true });
  const stop = (): void => signal?.removeEventListener("abort", abort);
  /** Why the request body could not be sent, when that is what broke the request (too large, client gone). */
  let bodyError: unknown;
  try {
    const writing = writeHttpMessage(stream, { leaseId: leaseId.toString(), method, path, headers }, body, {
      maxBodyBytes: upgrading ? UPGRADED_BODY_BYTES : maxBodyBytes,
      ...(signal ? { signal } : {}),
    });
    writing.catch((error: unknown) => {
      bodyError = error;
      stream.abort(new BaseError("request body failed"));
    });
    const response = await reader.next(httpResponseHeadSchema, {
      maxBodyBytes: upgrading ? UPGRADED_BODY_BYTES : maxBodyBytes,
    });
    if (!response) throw new ProtocolError("the stream ended before an HTTP head");
    // An upgrade's request body is the client's side of the connection: it goes on after the head.
    if (!upgrading) await writing;
    const proxied = response.head.headers.find(([name]) => name.toLowerCase() === PROXY_HEADER)?.[1];
    if (proxied) {
      const text: string[] = [];
      for await (const piece of response.body) text.push(new TextDecoder().decode(piece));
      stop();
      streams.release(channel, !upgrading);
      const message = `the provider answered ${response.head.status} for lease ${leaseId}: ${text.join("")}`;
      throw proxied === "not-delivered" ? new RequestNotSentError(message) : new ProviderFaultError(message);
    }
    return {
      status: response.head.status,
      headers: response.head.headers,
      body: (async function* () {
        let whole = false;
        try {
          yield* response.body;
          whole = true;
        } finally {
          stop();
          streams.release(channel, whole && !upgrading);
        }
      })(),
    };
  } catch (error) {
    stop();
    if (error instanceof ProviderFaultError) throw error;
    streams.release(channel, false);
    if (signal?.aborted) throw signal.reason;
    throw new ProviderFaultError(`the request to lease ${leaseId} broke off`, {
      cause: bodyError ?? error,
      details: shortMessageOf(bodyError ?? error),
    });
  }
}
