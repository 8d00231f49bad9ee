/**
 * Baton's SDK: a client and plain actions over it, in the style of viem.
 *
 * @example
 * import { createBatonClient, runJob, readJobFile } from "baton/sdk";
 * const client = await createBatonClient({ rpcUrl, account, deployment, bootstrap, dataDir: ".baton/tenant" });
 * const { spec, files } = await readJobFile("examples/train/train.yaml");
 * const job = await runJob(client, spec, { maxPricePerSecond: parseEther("0.001"), files });
 * for await (const event of job) console.log(event.type);
 */
export { createBatonClient, type BatonClient, type CreateBatonClientParameters, type OfferBook } from "./client.ts";
export {
  findOffers,
  offerMatches,
  type FindOffersParameters,
  type FoundOffer,
  type Requirements,
} from "./actions/findOffers.ts";
export { bid, type BidParameters, type BidReturnType, type QuoteChoice } from "./actions/bid.ts";
export { openLease, type OpenLeaseParameters, type OpenLeaseReturnType } from "./actions/openLease.ts";
export { watchLease, type LeaseWatch, type LeaseWatchEvent, type WatchLeaseParameters } from "./actions/watchLease.ts";
export {
  runJob,
  type JobEvent,
  type JobEventType,
  type JobHandle,
  type JobResult,
  type JobStatus,
  type RunJobOptions,
} from "./actions/runJob.ts";
export { attachJob, type AttachOptions } from "./actions/attachJob.ts";
export { cancelJob } from "./actions/cancelJob.ts";
export { withdrawCredit, type WithdrawCreditReturnType } from "./actions/withdrawCredit.ts";
export { auditJob, type AuditJobParameters, type AuditJobReturnType } from "./actions/auditJob.ts";
export { auditLease } from "./actions/auditLease.ts";
export { auditProvider } from "./actions/auditProvider.ts";
export { readJobFile, parseJobSpec, type JobFile, type JobSpec, type JobSpecInput } from "./job-spec.ts";
export * from "./errors.ts";
