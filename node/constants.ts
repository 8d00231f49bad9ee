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

/**
 * Earnings owed (payment-token base units) below which no claim is sent: 0, any amount. The floor
 * worth a claim's gas depends on the token's decimals and on gas prices, which only the operator
 * knows. Either way a node with nothing owed (an idle one) sends no claim.
 */
export const CLAIM_MIN_AMOUNT = 0n;

/**
 * Gas balance (wei) below which the node warns in its log: 0.01 ETH. On an L2 at ~0.01 gwei that
 * pays ~33,000 heartbeats of ~30k gas (11 days at the default 30 s period); on Ethereum at 10 gwei,
 * ~33: raise it there. Run dry, the node cannot heartbeat and its leases turn slashable.
 */
export const LOW_GAS_BALANCE_WEI = 10n ** 16n;

/** A peer may send this many bids per window before it gets `rate-limited` refusals. */
export const BID_RATE_LIMIT = { count: 20, windowMs: 10_000 } as const;

/** A bid request must arrive within this time after its stream opens. */
export const BID_READ_TIMEOUT_MS = 5_000;

/** The first message of a lease session must arrive within this time. */
export const SESSION_OPEN_TIMEOUT_MS = 10_000;

/** Messages kept per lease so a re-attaching tenant can catch up on what it missed. */
export const SESSION_REPLAY_MESSAGES = 1_000;

/**
 * The drain's grace: on SIGTERM, running leases go on (heartbeated, their jobs running) this long,
 * for them to finish; then each is handed back (see below). A minute lets short jobs end, and a
 * supervisor's stop timeout must cover it plus the hand-back (`deploy/baton-provider.service`).
 */
export const DRAIN_TIMEOUT_MS = 60_000;

/**
 * How long a lease handed back at the end of a drain waits for its tenant's close, which the node
 * acknowledges, before the node finishes the lease itself (so that it ends cleanly rather than
 * turning slashable once the node is gone). The SDK closes as soon as it is told: one transaction,
 * a few blocks on any chain plus an RPC retry, well within 30 s.
 */
export const HAND_BACK_TIMEOUT_MS = 30_000;

/**
 * After a drain in which jobs ended, how long the node goes on serving before it stops: a finished
 * job's output lives only in this node's IPFS store until its tenant, told by the result, fetches
 * it. Nothing tells the node that the fetch is done (the tenant leaves the session on the result),
 * so it waits this long: an output of tens of MB comes over in a second or two even on a loaded
 * machine; a larger one needs a longer linger.
 */
export const DRAIN_OUTPUT_LINGER_MS = 10_000;

/** How long a new provider may take to fetch the checkpoint it resumes from before refusing the lease. */
export const RESUME_FETCH_TIMEOUT_MS = 10 * 60_000;

/** Largest single input file a job may ask the node to fetch. */
export const MAX_INPUT_BYTES = 4 * 1024 ** 3;

/**
 * The largest disk quota (`resources.diskGiB`) the node gives a job; a bid for more is refused. A
 * provider's disk holds the quotas of all its leases and its image cache: 100 GiB lets a job keep a
 * large model and its checkpoints on a machine with a 1–2 TB disk.
 */
export const MAX_JOB_DISK_GIB = 100;

/**
 * How often the usage of a work dir is measured where the node cannot give it a file system of its
 * own (not root): a job writing at disk speed goes at most a few GiB over before it is stopped, and
 * a walk of a small tree every 2 s costs nothing.
 */
export const DISK_USAGE_INTERVAL_MS = 2_000;

/**
 * The pause after a measurement is at least this many times as long as the measurement took: a
 * job that makes millions of files makes each walk slow, and the node then spends at most a tenth
 * of one thread on walking it.
 */
export const DISK_USAGE_PAUSE_FACTOR = 10;

/**
 * The longest a tenant's signed opening may leave before its deadline: the node starts the job on it
 * before it is mined, and stops the job if it is not mined by then, so this bounds the compute it
 * risks on an opening that fails (a tenant that cannot pay after all). Two minutes covers a few
 * 12-second blocks and a resend; the SDK asks for less (`OPENING_WINDOW_S`).
 */
export const MAX_OPENING_WINDOW_S = 120;
