/**
 * Baton's errors. One base class, in the style of viem's BaseError: a short message for people,
 * optional details, the standard `cause`, and a fixed `name` per subclass. They are grouped by
 * what the caller should do about them:
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
}

/** The provider's fault: the job should move to another provider. */
export class ProviderFaultError extends BaseError {
  override name = "ProviderFaultError";
}

/** The caller's fault: bad input or configuration. */
export class UserError extends BaseError {
  override name = "UserError";
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
