/**
 * Defaults of the provider node, each with the reason it is what it is. Every one can be changed in
 * the node's config file: `node/config.ts` has the key beside it. (The session heartbeat's default
 * is the protocol's, `SESSION_HEARTBEAT_MS` in `sdk/wire/protocols.ts`.)
 */

/**
 * On-chain heartbeat period. A transaction per period per provider (batched over all its leases);
 * 30 s keeps gas low while the timeout below stays far above any block-time or RPC hiccup.
 */
export const CHAIN_HEARTBEAT_PERIOD_S = 30;

/** On-chain timeout: four missed periods before anyone may slash, so a slow RPC never slashes an honest node. */
export const CHAIN_HEARTBEAT_TIMEOUT_S = 120;

/** Offers are re-published this often, and expire after three periods without a refresh. */
export const OFFER_REFRESH_MS = 5_000;
export const OFFER_TTL_MS = 3 * OFFER_REFRESH_MS;

/** A quote is usable this long: long enough for a tenant to send openLease, short enough to free capacity soon. */
export const QUOTE_TTL_S = 60;

/** How often the node reads the chain for ended leases (fencing) and quote expiry. */
export const CHAIN_POLL_MS = 1_000;

/** Earnings are claimed this often; claiming costs gas, so not more often than needed. */
export const CLAIM_INTERVAL_MS = 10 * 60_000;

/** A peer may send this many bids per window before it gets `rate-limited` refusals. */
export const BID_RATE_LIMIT = { count: 20, windowMs: 10_000 } as const;

/** A bid request must arrive within this time after its stream opens. */
export const BID_READ_TIMEOUT_MS = 5_000;

/** The first message of a lease session must arrive within this time. */
export const SESSION_OPEN_TIMEOUT_MS = 10_000;

/** Messages kept per lease so a re-attaching tenant can catch up on what it missed. */
export const SESSION_REPLAY_MESSAGES = 1_000;

/** On SIGTERM, keep heartbeating running leases this long for them to finish before stopping. */
export const DRAIN_TIMEOUT_MS = 60_000;

/** How long a new provider may take to fetch the checkpoint it resumes from before refusing the lease. */
export const RESUME_FETCH_TIMEOUT_MS = 10 * 60_000;

/** Largest single input file a job may ask the node to fetch. */
export const MAX_INPUT_BYTES = 4 * 1024 ** 3;
