/**
 * Defaults for the checkpoint layer, each with the reason it is what it is.
 */

const MiB = 1024 * 1024;

/**
 * UnixFS leaf size. Bitswap refuses messages over 4 MiB, a single 6 MiB block never arrives, and
 * Kubo refuses blocks over 1 MiB without `allow-big-block`: 1 MiB leaves pass everywhere and match
 * @helia/unixfs's own default.
 */
export const BLOCK_SIZE = MiB;

/**
 * Leaves a fetch asks for at once (the UnixFS exporter's `blockReadConcurrency`; its default is a
 * whole DAG node's children, up to 174). Bitswap's sender reads and encodes every block of a
 * want-list before it sends the first byte, so up to 174 MiB went out as one batch: the receiver
 * sat idle meanwhile and the sender held it all in memory; fetching 1 GiB on a 2-vCPU machine,
 * bitswap logged its 10 s stream timeouts, and once the fetch stalled for good. 32 keeps both ends
 * busy (256 MiB fetches, interleaved runs: 8 and 16 were slower, 64 no faster) and bounds a batch
 * to 32 MiB.
 */
export const FETCH_BLOCK_CONCURRENCY = 32;

/**
 * Plaintext bytes per sealed chunk: 1 MiB less the 16-byte GCM tag, so that a sealed chunk is
 * exactly one {@link BLOCK_SIZE} leaf (the 44-byte header is a leaf of its own). Publishing then
 * never re-cuts the ciphertext into leaves, and a restore opens each leaf as it is, without
 * joining pieces of two. The overhead (the tag) stays at 0.0015 %, and a reader buffers at most
 * one chunk before it can check it. Readers take the chunk size from the header: checkpoints
 * sealed with 1 MiB chunks (before this) open as before.
 */
export const ENCRYPTION_CHUNK_SIZE = MiB - 16;

/** The largest chunk size a reader accepts from a header: bounds its buffer, whatever a peer says. */
export const MAX_ENCRYPTION_CHUNK_SIZE = 16 * MiB;

/**
 * How long a fetch may go without receiving a block before it counts as unavailable. It is a
 * stall timeout, not a deadline: a large checkpoint moving at 5 MiB/s gets a leaf every 200 ms,
 * while a CID nobody has never delivers its root. 30 s covers a loaded machine's first dial.
 */
export const DEFAULT_STALL_TIMEOUT_MS = 30_000;

/**
 * The largest checkpoint (or job output) a provider publishes or resumes from, and a tenant fetches:
 * 8 GiB covers a 7B-parameter model's fp16 weights and Adam state shards.
 */
export const MAX_CHECKPOINT_BYTES = 8 * 1024 ** 3;

/** The most entries (files and directories) a checkpoint may hold unless the caller says otherwise. */
export const DEFAULT_MAX_FILES = 100_000;

/** Linux's PATH_MAX: a pack path longer than this could not be created anyway. */
export const MAX_PATH_BYTES = 4_096;

/** Linux's NAME_MAX. */
export const MAX_NAME_BYTES = 255;

/** Read size for checkpoint files: one leaf, so the importer rarely has to join pieces. */
export const FILE_READ_SIZE = MiB;

/** One Kubo RPC call (a 1 MiB block, a pin of a local DAG) on a healthy node takes well under this. */
export const DEFAULT_KUBO_CALL_TIMEOUT_MS = 60_000;

/** Blocks uploaded to Kubo at once: enough to hide per-request latency without flooding the node. */
export const KUBO_PUT_CONCURRENCY = 4;
