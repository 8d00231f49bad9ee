import { peerIdFromString } from "@libp2p/peer-id";

import type { BatonClient } from "../client.ts";
import { BaseError, ProviderFaultError, RequestNotSentError, shortMessageOf } from "../errors.ts";
import { httpResponseHeadSchema, PROXY_HEADER, readHttpMessage, writeHttpMessage } from "../wire/http.ts";
import { protocols } from "../wire/protocols.ts";

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
  signal?: AbortSignal;
}

export interface LeaseFetchResponse {
  status: number;
  headers: [string, string][];
  body: AsyncGenerator<Uint8Array>;
}

/**
 * Sends one HTTP request to the server job of a lease, through its provider node
 * (`/baton/http/1.0.0`), streaming the body both ways.
 *
 * @throws {RequestNotSentError} when the request never reached the job (no stream to the provider,
 * no job running there); a {ProviderFaultError} when it broke after the request went out.
 * @example
 * const res = await leaseFetch(client, { peerId, leaseId, method: "GET", path: "/health" });
 */
export async function leaseFetch(
  client: BatonClient,
  { peerId, leaseId, method, path, headers = [], body, maxBodyBytes = 64 * 1024 * 1024, signal }: LeaseFetchParameters,
): Promise<LeaseFetchResponse> {
  let stream;
  try {
    // negotiateFully: false sends the protocol id with the request head: one round trip less per request.
    stream = await client.host.dialProtocol(peerIdFromString(peerId), protocols.http, {
      negotiateFully: false,
      ...(signal ? { signal } : {}),
    });
  } catch (cause) {
    throw new RequestNotSentError(`cannot reach the provider ${peerId}`, { cause });
  }
  const opened = stream;
  const abort = (): void => opened.abort(new BaseError("request aborted"));
  signal?.addEventListener("abort", abort, { once: true });
  try {
    const writing = writeHttpMessage(opened, { leaseId: leaseId.toString(), method, path, headers }, body, {
      maxBodyBytes,
      ...(signal ? { signal } : {}),
    });
    writing.catch(() => opened.abort(new BaseError("request body failed")));
    const response = await readHttpMessage(opened, httpResponseHeadSchema, { maxBodyBytes });
    await writing;
    const proxied = response.head.headers.find(([name]) => name.toLowerCase() === PROXY_HEADER)?.[1];
    if (proxied) {
      const text: string[] = [];
      for await (const piece of response.body) text.push(new TextDecoder().decode(piece));
      const message = `the provider answered ${response.head.status} for lease ${leaseId}: ${text.join("")}`;
      throw proxied === "not-delivered" ? new RequestNotSentError(message) : new ProviderFaultError(message);
    }
    const stop = (): void => signal?.removeEventListener("abort", abort);
    return {
      status: response.head.status,
      headers: response.head.headers,
      body: (async function* () {
        try {
          yield* response.body;
        } finally {
          stop();
          await opened.close().catch(() => undefined);
        }
      })(),
    };
  } catch (error) {
    signal?.removeEventListener("abort", abort);
    opened.abort(new BaseError("request failed"));
    if (signal?.aborted) throw signal.reason;
    if (error instanceof ProviderFaultError) throw error;
    throw new ProviderFaultError(`the request to lease ${leaseId} broke off`, {
      cause: error,
      details: shortMessageOf(error),
    });
  }
}
