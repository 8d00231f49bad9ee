import type { PeerId, PrivateKey, Stream } from "@libp2p/interface";
import type { Multiaddr } from "@multiformats/multiaddr";
import { recoverTypedDataAddress } from "viem";

import { quoteDomain, quoteTypes } from "../chain/quote.ts";
import { BaseError, ProtocolError } from "../errors.ts";
import type { BatonHost } from "../p2p/host.ts";
import { openStream } from "../p2p/open-stream.ts";
import { openMessage, parseBody, sealMessage } from "./envelope.ts";
import { readMessages, request, writeMessage } from "./framing.ts";
import {
  bidResponseSchema,
  providerMessageSchemas,
  quoteReleasedSchema,
  type Bid,
  type BidResponse,
  type ProviderMessage,
  type ProviderMessageType,
  type TenantMessage,
  type TenantMessageType,
} from "./messages.ts";
import { maxMessageBytes, protocols } from "./protocols.ts";

/**
 * Sends a bid to one provider and returns its verified answer: a quote whose EIP-712 signature
 * recovers to the provider it names and that matches the bid (tenant, job, price, image), or a
 * refusal.
 *
 * @throws {ProtocolError} when the answer is malformed, badly signed, or does not match the bid.
 */
export async function requestQuote(
  host: BatonHost,
  peer: PeerId,
  key: PrivateKey,
  bid: Bid,
  options: { signal?: AbortSignal; address?: Multiaddr; freshConnection?: boolean } = {},
): Promise<BidResponse> {
  const bytes = await sealMessage(key, host.peerId.toString(), "bid", bid);
  const reply = await request(host, options.address ?? peer, protocols.bid, bytes, {
    maxBytes: maxMessageBytes.quote,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.freshConnection ? { freshConnection: true } : {}),
  });
  const opened = await openMessage(reply, {
    maxBytes: maxMessageBytes.quote,
    types: ["bid-response"],
    from: peer.toString(),
  });
  const response = parseBody(bidResponseSchema, opened);
  if (response.kind === "quote") {
    const { quote } = response;
    if (quote.tenant !== bid.tenant || quote.jobId !== bid.jobId || quote.pricePerSecond > bid.maxPricePerSecond) {
      throw new ProtocolError("quote does not match the bid");
    }
    // The lease would commit the provider to another image than the job's: never opened.
    if (quote.image !== bid.image) {
      throw new ProtocolError("quote names another image than the bid", {
        details: `quoted ${quote.image}, asked for ${bid.image}`,
      });
    }
    const signer = await recoverTypedDataAddress({
      domain: quoteDomain(bid.chainId, bid.leaseManager),
      types: quoteTypes,
      primaryType: "Quote",
      message: quote,
      signature: response.signature,
    });
    if (signer !== quote.provider) throw new ProtocolError("quote not signed by its provider", { details: signer });
  }
  return response;
}

/**
 * Gives back quotes of `peer` that the tenant will not open (see `quoteReleaseSchema`); returns the
 * nonces the provider freed.
 *
 * @throws {ProtocolError} when the answer is malformed or not signed by `peer`.
 */
export async function releaseQuotes(
  host: BatonHost,
  peer: PeerId,
  key: PrivateKey,
  nonces: readonly bigint[],
  options: { signal?: AbortSignal } = {},
): Promise<bigint[]> {
  const bytes = await sealMessage(key, host.peerId.toString(), "quote-release", { nonces });
  const reply = await request(host, peer, protocols.quoteRelease, bytes, {
    maxBytes: maxMessageBytes.quoteRelease,
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const opened = await openMessage(reply, {
    maxBytes: maxMessageBytes.quoteRelease,
    types: ["quote-released"],
    from: peer.toString(),
  });
  return parseBody(quoteReleasedSchema, opened).released;
}

export type ProviderEvent = {
  [T in ProviderMessageType]: { type: T; body: ProviderMessage<T> };
}[ProviderMessageType];

export interface LeaseSession {
  /** The provider's verified messages, in order, until the session ends. */
  messages: AsyncGenerator<ProviderEvent>;
  /** Sends a signed message to the provider. */
  send<T extends TenantMessageType>(type: T, body: TenantMessage<T>): Promise<void>;
  /** Closes the session (the job keeps running on the provider). */
  close(): Promise<void>;
  stream: Stream;
}

/**
 * Opens a lease session with a provider and sends its first message (`start` or `attach`).
 * Messages not signed by that provider, or failing their schema, end the session with an error.
 */
export async function openLeaseSession<T extends "start" | "attach">(
  host: BatonHost,
  peer: PeerId,
  key: PrivateKey,
  first: { type: T; body: TenantMessage<T> },
  options: { signal?: AbortSignal; address?: Multiaddr } = {},
): Promise<LeaseSession> {
  const stream = await openStream(
    host,
    options.address ?? peer,
    protocols.lease,
    options.signal ? { signal: options.signal } : {},
  );
  const raw = readMessages(stream, maxMessageBytes.lease);
  const me = host.peerId.toString();
  const send = async <U extends TenantMessageType>(type: U, body: TenantMessage<U>): Promise<void> =>
    writeMessage(stream, await sealMessage(key, me, type, body));
  async function* messages(): AsyncGenerator<ProviderEvent> {
    for await (const bytes of raw) {
      const opened = await openMessage(bytes, {
        maxBytes: maxMessageBytes.lease,
        types: Object.keys(providerMessageSchemas),
        from: peer.toString(),
      });
      const type = opened.type as ProviderMessageType;
      yield { type, body: parseBody(providerMessageSchemas[type], opened) } as ProviderEvent;
    }
  }
  await send(first.type, first.body);
  return {
    messages: messages(),
    send,
    close: () => stream.close().catch(() => stream.abort(new BaseError("close failed"))),
    stream,
  };
}
