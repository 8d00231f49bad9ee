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
