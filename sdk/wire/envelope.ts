import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from "node:crypto";

import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { z } from "zod";

import { BaseError, ProtocolError } from "../errors.ts";

/**
 * Every Baton message travels in a signed envelope. The body is carried as the exact JSON string
 * that was signed, so the receiver verifies the signature over the bytes it received, before it
 * parses the body: nothing unauthenticated reaches a schema, a database or a chain call.
 *
 * The signature is the sender's libp2p (Ed25519) key over `baton/1 \0 type \0 body`, which binds
 * each message to its type; a provider's peer id is in turn bound to its Ethereum address by the
 * registry, and a tenant's by the Ethereum signature in its session's first message.
 */
const envelopeSchema = z.object({
  v: z.literal(1),
  t: z.string().min(1).max(32),
  f: z.string().min(1).max(128),
  b: z.string(),
  s: z.string().max(256),
});

export interface OpenedEnvelope {
  type: string;
  /** The signer's peer id. */
  from: string;
  /** The parsed, not yet validated body. */
  body: unknown;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function signingInput(type: string, body: string): Uint8Array {
  return encoder.encode(`baton/1\0${type}\0${body}`);
}

/** JSON with bigints as decimal strings: amounts travel as strings and are parsed back by schemas. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
}

/**
 * Signs `body` as a message of `type` from the holder of `key`.
 *
 * @example
 * const bytes = await sealMessage(privateKey, peerId.toString(), "heartbeat", { seq: 1 });
 */
export async function sealMessage(key: PrivateKey, from: string, type: string, body: unknown): Promise<Uint8Array> {
  const b = toJson(body);
  const signature = sign(null, signingInput(type, b), signingKeyOf(key));
  return encoder.encode(JSON.stringify({ v: 1, t: type, f: from, b, s: Buffer.from(signature).toString("base64") }));
}

/*
 * Envelopes are signed with Ed25519 keys only (their signatures are the 64 bytes `openMessage`
 * checks for). Each key is made into a Node key object once, here, and used by Node's crypto
 * directly: libp2p's own `sign` and `verify` import the key from a JWK on every call, which costs
 * more than the signature, on every message a lease sends or receives.
 */
const signingKeys = new WeakMap<PrivateKey, KeyObject>();

function signingKeyOf(key: PrivateKey): KeyObject {
  let object = signingKeys.get(key);
  if (object) return object;
  if (key.type !== "Ed25519") throw new BaseError(`messages are signed with Ed25519 keys, not ${key.type}`);
  // libp2p's raw Ed25519 private key is the 32-byte seed followed by the public key.
  object = createPrivateKey({
    format: "jwk",
    key: {
      kty: "OKP",
      crv: "Ed25519",
      d: Buffer.from(key.raw.subarray(0, 32)).toString("base64url"),
      x: Buffer.from(key.raw.subarray(32)).toString("base64url"),
    },
  });
  signingKeys.set(key, object);
  return object;
}

const verifyingKeys = new Map<string, KeyObject>();
const MAX_CACHED_KEYS = 4096;

function verifyingKeyOf(peerId: string): KeyObject {
  let object = verifyingKeys.get(peerId);
  if (object) return object;
  let parsed;
  try {
    parsed = peerIdFromString(peerId);
  } catch (cause) {
    throw new ProtocolError("message sender is not a valid peer id", { details: peerId, cause });
  }
  const key = parsed.publicKey;
  if (!key) {
    throw new ProtocolError("message sender's peer id does not embed its public key", { details: peerId });
  }
  if (key.type !== "Ed25519") {
    throw new ProtocolError(`message sender's key is ${key.type}, not Ed25519`, { details: peerId });
  }
  object = createPublicKey({
    format: "jwk",
    key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(key.raw).toString("base64url") },
  });
  if (verifyingKeys.size >= MAX_CACHED_KEYS) verifyingKeys.delete(verifyingKeys.keys().next().value!);
  verifyingKeys.set(peerId, object);
  return object;
}

export interface OpenMessageOptions {
  /** Largest accepted message, in bytes. */
  maxBytes: number;
  /** Accept only these message types. */
  types?: readonly string[];
  /** Accept only messages signed by this peer (usually the connection's remote peer). */
  from?: string;
}

/**
 * Checks size, envelope shape, sender and signature, in that order, and returns the body parsed as
 * JSON but not yet validated: pass it to the type's schema next.
 *
 * @throws {ProtocolError} for anything oversized, malformed, unexpected or badly signed.
 */
export async function openMessage(bytes: Uint8Array, options: OpenMessageOptions): Promise<OpenedEnvelope> {
  if (bytes.byteLength > options.maxBytes) {
    throw new ProtocolError("message too large", { details: `${bytes.byteLength} > ${options.maxBytes} bytes` });
  }
  let envelope: z.infer<typeof envelopeSchema>;
  try {
    envelope = envelopeSchema.parse(JSON.parse(decoder.decode(bytes)));
  } catch (cause) {
    throw new ProtocolError("malformed message envelope", { cause });
  }
  if (options.types && !options.types.includes(envelope.t)) {
    throw new ProtocolError("unexpected message type", { details: envelope.t });
  }
  if (options.from !== undefined && envelope.f !== options.from) {
    throw new ProtocolError("message signed by another peer than the one that sent it", {
      details: `${envelope.f} on a stream from ${options.from}`,
    });
  }
  const signature = Buffer.from(envelope.s, "base64");
  const key = verifyingKeyOf(envelope.f);
  // Ed25519 signatures are 64 bytes; Node's verify may throw on other input instead of saying no.
  let valid = false;
  if (signature.byteLength === 64) {
    try {
      valid = verify(null, signingInput(envelope.t, envelope.b), key, signature);
    } catch {
      // not a signature: `valid` stays false
    }
  }
  if (!valid) throw new ProtocolError("bad message signature", { details: `${envelope.t} from ${envelope.f}` });
  let body: unknown;
  try {
    body = JSON.parse(envelope.b);
  } catch (cause) {
    throw new ProtocolError("message body is not JSON", { cause });
  }
  return { type: envelope.t, from: envelope.f, body };
}

/**
 * Validates a message body against its schema.
 *
 * @throws {ProtocolError} naming the first problems found.
 */
export function parseBody<S extends z.ZodType>(schema: S, opened: OpenedEnvelope): z.output<S> {
  const parsed = schema.safeParse(opened.body);
  if (!parsed.success) {
    throw new ProtocolError(`invalid ${opened.type} message`, { details: z.prettifyError(parsed.error) });
  }
  return parsed.data;
}
