import { ProviderFaultError, UserError } from "../../sdk/errors.ts";

/**
 * bubblewrap is not installed (or not where the node was told to look). The provider's setup is
 * at fault: it must install it or choose the unsafe mode on purpose.
 */
export class BubblewrapMissingError extends ProviderFaultError {
  override name = "BubblewrapMissingError";

  constructor(bwrapPath: string, options: { cause?: unknown } = {}) {
    super("bubblewrap (bwrap) is not installed: jobs cannot be sandboxed", {
      details:
        `no executable at "${bwrapPath}". Install it (Debian/Ubuntu: \`apt-get install bubblewrap\`; ` +
        'Fedora/RHEL: `dnf install bubblewrap`), or pass `sandbox: "unsafe-none"` to run jobs without ' +
        "isolation, which is only safe for your own jobs, never a tenant's.",
      cause: options.cause,
    });
  }
}

/** A host tool the runner needs (prlimit, taskset, nice, sh) is missing. The provider's setup. */
export class SandboxToolMissingError extends ProviderFaultError {
  override name = "SandboxToolMissingError";
}

/**
 * The sandbox could not be set up, so the job never started: bubblewrap refused (user namespaces
 * disabled, a bind source missing or unreadable) or the process could not be spawned. `details`
 * holds what bubblewrap printed.
 */
export class SandboxSetupError extends ProviderFaultError {
  override name = "SandboxSetupError";
}

/** The job's options are invalid (env names, reserved variables, paths). The caller's fault. */
export class InvalidJobOptionsError extends UserError {
  override name = "InvalidJobOptionsError";
}
