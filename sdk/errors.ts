import type { BidRefusalReason, SessionRefusalReason } from "./wire/messages.ts";

/**
 * Baton's errors: every error the SDK and the node throw is one of these. One base class, in the
 * style of viem's BaseError: a short message for people, optional details, the standard `cause`,
 * and a fixed `name` per subclass. They are grouped by what the caller should do about them:
 *
 * - {@link ProviderFaultError}: the provider misbehaved or vanished; the SDK re-leases elsewhere.
 * - {@link UserError}: bad input or configuration; fix it and retry, nothing to re-lease.
 * - {@link ProtocolError}: a peer sent something malformed, oversized or badly signed; drop it.
 * - {@link ChainError}: the chain or RPC refused or is unreachable.
 */
export interface BaseErrorOptions {
  details?: string;
  cause?: unknown;
}

export class BaseError extends Error {
  override name = "BaseError";
  readonly shortMessage: string;
  readonly details: string | undefined;

  constructor(shortMessage: string, options: BaseErrorOptions = {}) {
    const message = options.details ? `${shortMessage}\n\nDetails: ${options.details}` : shortMessage;
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.shortMessage = shortMessage;
    this.details = options.details;
  }

  /**
   * Follows this error's `cause` chain (this error first): the first error `match` accepts, or
   * `undefined`; without `match`, the innermost cause. Like viem's `BaseError.walk`.
   *
   * @example
   * const reverted = error.walk((e) => e instanceof ContractFunctionRevertedError);
   */
  walk(match?: (error: unknown) => boolean): unknown {
    return walk(this, match);
  }
}

/** {@link BaseError.walk} for any thrown value: ours, viem's, or a plain `Error` with a `cause`. */
export function walk(error: unknown, match?: (error: unknown) => boolean): unknown {
  if (match?.(error)) return error;
  const cause = typeof error === "object" && error !== null ? (error as { cause?: unknown }).cause : undefined;
  if (cause !== undefined) return walk(cause, match);
  return match ? undefined : error;
}

/** What to tell a person about any thrown value: a Baton error's short message (no details), else its message. */
export function shortMessageOf(error: unknown): string {
  if (error instanceof BaseError) return error.shortMessage;
  return error instanceof Error ? error.message : String(error);
}

/** One of our errors on one line: its short message, then its details (joined, in parentheses). */
export function oneLineOf(error: BaseError): string {
  const details = error.details
    ?.split("\n")
    .map((line) => line.trim())
    .filter(Boolean)
    .join(" ");
  return details ? `${error.shortMessage} (${details})` : error.shortMessage;
}

/** The provider's fault: the job should move to another provider. */
export class ProviderFaultError extends BaseError {
  override name = "ProviderFaultError";
}

/** The caller's fault: bad input or configuration. */
export class UserError extends BaseError {
  override name = "UserError";
}

/**
 * No provider offers or quotes what the job needs just now: every one is busy, refused, stayed
 * silent, or none offers at all. A job's first lease fails on it, unless it is {@link unreachable};
 * a hand-off looks again for a while (`HAND_OFF_SEARCH_MS`), as providers free up and re-publish
 * their offers.
 */
export class NoProviderError extends UserError {
  override name = "NoProviderError";
  /**
   * Providers offered, and none refused, but none could be reached (a dial that failed, a stream
   * reset, no answer in time): a passing fault more often than an empty market, worth another look.
   */
  readonly unreachable: boolean;

  constructor(shortMessage: string, options: BaseErrorOptions & { unreachable?: boolean } = {}) {
    super(shortMessage, options);
    this.unreachable = options.unreachable ?? false;
  }
}

/** Why an image reference could not be pinned to a digest. */
export type ImageResolutionFailure = "not-found" | "unauthorized" | "unreachable" | "timeout" | "bad-response";

/**
 * A registry reference could not be pinned to a digest when a job was submitted: the image or its
 * tag does not exist, the registry wants credentials, cannot be reached or did not answer in time,
 * or answered something that is not a manifest with a sha256 digest. The job is not submitted.
 */
export class ImageResolutionError extends UserError {
  override name = "ImageResolutionError";
  readonly reason: ImageResolutionFailure;

  constructor(reason: ImageResolutionFailure, shortMessage: string, options: BaseErrorOptions = {}) {
    super(shortMessage, options);
    this.reason = reason;
  }
}

/**
 * Another node process already runs on this data dir. Two nodes on one dir would sign quotes from
 * the same nonce counter and heartbeat the same leases: the second refuses to start instead.
 */
export class DataDirInUseError extends UserError {
  override name = "DataDirInUseError";
}

/** A message from the network failed its schema, size limit or signature. */
export class ProtocolError extends BaseError {
  override name = "ProtocolError";
}

/** The chain (or its RPC endpoint) refused a call or could not be reached. */
export class ChainError extends BaseError {
  override name = "ChainError";
}

/**
 * Nobody served a checkpoint's blocks within the stall timeout. A ProviderFaultError: the CID was
 * announced by a peer that owes it (the provider that published it, or the tenant holding it for a
 * re-lease), so its absence means that peer vanished or lied, and the caller moves on to another.
 */
export class CheckpointUnavailableError extends ProviderFaultError {
  override name = "CheckpointUnavailableError";
}

/**
 * A checkpoint's bytes failed verification: tampered, truncated, reordered or appended ciphertext,
 * a malformed or truncated pack, a path that escapes the target, or a digest that does not match
 * the announced one. Anything on the network can produce it, so it is a ProtocolError: drop it.
 */
export class CheckpointCorruptError extends ProtocolError {
  override name = "CheckpointCorruptError";
}

/**
 * The checkpoint was not sealed with this job key. A ProtocolError rather than a UserError: the key
 * check lives in the (unencrypted) header, so a peer that alters the header causes it too.
 */
export class CheckpointKeyError extends ProtocolError {
  override name = "CheckpointKeyError";
}

/** A checkpoint from the network is larger (bytes or files) than the caller allows. */
export class CheckpointTooLargeError extends ProtocolError {
  override name = "CheckpointTooLargeError";
}

/**
 * A checkpoint directory cannot be packed: it holds a symlink, a device or another special file,
 * an unusable name, or more files or bytes than allowed. The job wrote it, so it is the user's.
 */
export class CheckpointDirError extends UserError {
  override name = "CheckpointDirError";
}

/** The job spent its budget: no more deposits or top-ups are allowed. Every lease was settled first. */
export class BudgetExhaustedError extends UserError {
  override name = "BudgetExhaustedError";
}

/**
 * The job could not be kept running: more providers failed it than its retry limit allows, or the
 * job itself exited with an error. `cause` says which.
 */
export class JobFailedError extends BaseError {
  override name = "JobFailedError";
}

/** The job was cancelled by its tenant. */
export class JobCancelledError extends UserError {
  override name = "JobCancelledError";
}

/**
 * A node refuses a peer's bid or lease session, for a reason from the wire protocol's lists (the
 * peer acts on it: another provider, or a fix on its side). The node answers with it and logs it.
 */
export class RefusalError<Reason extends BidRefusalReason | SessionRefusalReason> extends BaseError {
  override name = "RefusalError";
  readonly reason: Reason;

  constructor(reason: Reason, message: string) {
    super(message);
    this.reason = reason;
  }
}

/** The request never reached the provider (no stream could be opened): it is safe to send again anywhere. */
export class RequestNotSentError extends ProviderFaultError {
  override name = "RequestNotSentError";
}

/** A request failed on a replica after it went out, and was not sent again: doing so could repeat its effect. */
export class RequestNotRetriedError extends BaseError {
  override name = "RequestNotRetriedError";
}

/** No replica was ready within the request's deadline. */
export class NoReplicaError extends BaseError {
  override name = "NoReplicaError";
}

/** Every ready replica has its most requests in flight and the queue for a free one is full: try again shortly. */
export class ServiceBusyError extends BaseError {
  override name = "ServiceBusyError";
}
