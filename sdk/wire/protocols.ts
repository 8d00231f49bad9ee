/**
 * Every libp2p protocol id and gossipsub topic Baton speaks, with the largest message each accepts.
 * Versioned so that incompatible changes get a new id instead of confusing old peers.
 */
export const PROTOCOL_PREFIX = "/baton";

export const protocols = {
  /** Request/response: a tenant's bid, answered by a signed quote or a reasoned refusal. */
  bid: `${PROTOCOL_PREFIX}/bid/1.0.0`,
  /**
   * Request/response: a tenant giving back quotes it will not open, so that their GPUs are free at
   * once rather than when the quotes expire.
   */
  quoteRelease: `${PROTOCOL_PREFIX}/quote-release/1.0.0`,
  /** Long-lived stream: a lease's job spec in, heartbeats, logs, checkpoints and the result out. */
  lease: `${PROTOCOL_PREFIX}/lease/1.0.0`,
  /**
   * HTTP requests and their responses, one after another on a stream, between a tenant and the
   * server jobs of its leases (1.0.0 carried one request per stream; a node still answers it).
   */
  http: `${PROTOCOL_PREFIX}/http/1.1.0`,
  httpOneShot: `${PROTOCOL_PREFIX}/http/1.0.0`,
  /**
   * Request/response: a tenant asking for a lane to the server job of its lease, a TLS connection
   * straight to the job's socket, keyed by a secret given here (sdk/p2p/http-lanes.ts).
   */
  httpLane: `${PROTOCOL_PREFIX}/http-lane/1.0.0`,
  /** A DAG's blocks in order on one stream, each checked against its CID (sdk/ipfs/block-stream.ts). */
  blocks: `${PROTOCOL_PREFIX}/blocks/1.0.0`,
  /**
   * Request/response: a peer asking a holder for a block lane, `/baton/blocks/1.0.0` on a TLS
   * connection beside libp2p, keyed by a secret given here (sdk/ipfs/block-lanes.ts).
   */
  blocksLane: `${PROTOCOL_PREFIX}/blocks-lane/1.0.0`,
} as const;

export const topics = {
  /**
   * Gossipsub: providers' signed offers, in messages gossipsub does not sign itself (its
   * `StrictNoSign` policy; version 1 was gossiped with `StrictSign`).
   */
  offers: `${PROTOCOL_PREFIX}/offers/2.0.0`,
} as const;

/**
 * Size limits, in bytes, of one framed message. A job spec with its env fits in 64 KiB; an offer
 * lists at most 64 GPUs and 64 image keys of up to 600 characters (about 45 KiB in its envelope at
 * most); log lines are capped by the node before they are sent.
 */
export const maxMessageBytes = {
  offer: 64 * 1024,
  bid: 16 * 1024,
  quote: 8 * 1024,
  /** A release of quotes, or its answer: at most 16 nonces (`MAX_RELEASED_QUOTES`). */
  quoteRelease: 2 * 1024,
  lease: 64 * 1024,
  /** An HTTP head (method, path, headers), or one piece of a body. */
  http: 64 * 1024,
  /** A lane's request or its answer (a port and a key). */
  httpLane: 1024,
  /** A block lane's request (empty) or its answer (a port and a key). */
  blocksLane: 1024,
} as const;

/**
 * Default period of the off-chain heartbeats on a lease session: DESIGN.md's 500 ms lets a tenant
 * suspect a dead provider within ~1.5 s. A provider may choose another (its offers say which); a
 * tenant that has not seen its offer assumes this one.
 */
export const SESSION_HEARTBEAT_MS = 500;
