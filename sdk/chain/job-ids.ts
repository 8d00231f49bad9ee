import { encodePacked, keccak256, type Hex } from "viem";

/**
 * The job id a job's holders' leases are opened under (see `sdk/tenant/holders.ts`): derived from
 * the job's own, so that an auditor finds them from the job alone (`auditJob`'s `holders`), and
 * they never join the job's line of leases.
 *
 * @example
 * const holders = await auditLeases(scope, { jobId: holdJobId(jobId) });
 */
export function holdJobId(jobId: Hex): Hex {
  return keccak256(encodePacked(["bytes32", "string"], [jobId, "baton:hold"]));
}
