/**
 * Baton's SDK: a client and plain actions over it, in the style of viem. Everything a script needs
 * is exported here: the client and its actions (jobs, services, audits), errors, job specs, chain
 * access and the contracts' ABIs; the CLI's tenant commands and the devnet use it too. The provider
 * node imports the modules it uses directly (mostly internals: wire protocol, IPFS, p2p), so that a
 * provider process does not load the tenant side; so do the light commands (`baton audit`,
 * `baton provider`), which must start without libp2p and Helia.
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
  compareOffers,
  findOffers,
  offerMatches,
  type FindOffersParameters,
  type FoundOffer,
  type Requirements,
} from "./actions/findOffers.ts";
export { bid, type BidParameters, type BidReturnType, type QuoteChoice } from "./actions/bid.ts";
export { openLease, type OpenLeaseParameters, type OpenLeaseReturnType } from "./actions/openLease.ts";
export {
  ensureAllowance,
  OPENING_WINDOW_S,
  reserveAllowance,
  signOpening,
  waitForOpening,
  type SignOpeningParameters,
  type SignOpeningReturnType,
} from "./actions/signOpening.ts";
export { hashOpening, leaseIdOf, type Opening } from "./chain/opening.ts";
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
export {
  DEFAULT_BATCH_RETRIES,
  runBatch,
  type BatchEvent,
  type BatchProgress,
  type BatchTask,
  type RunBatchParameters,
  type RunBatchReturnType,
  type TaskResult,
} from "./actions/runBatch.ts";
export { parseTasks } from "./tenant/batch-tasks.ts";
export { openBatchManifest } from "./tenant/batch-manifest.ts";
export { cancelJob } from "./actions/cancelJob.ts";
export {
  serve,
  type ReplicaState,
  type ReplicaStatus,
  type ServeOptions,
  type Service,
  type ServiceFetchOptions,
  type ServiceRequest,
  type ServiceResponse,
  type ServiceStats,
} from "./actions/serve.ts";
export { leaseFetch, type LeaseFetchParameters, type LeaseFetchResponse } from "./actions/leaseFetch.ts";
export { httpStreams, type HttpStreams, type HttpStreamsInit } from "./p2p/http-streams.ts";
export { withdrawCredit, type WithdrawCreditReturnType } from "./actions/withdrawCredit.ts";
export { auditJob, type AuditJobParameters, type AuditJobReturnType } from "./actions/auditJob.ts";
export { auditLease, type AuditLeaseParameters, type AuditLeaseReturnType } from "./actions/auditLease.ts";
export { auditProvider, type AuditProviderParameters, type AuditProviderReturnType } from "./actions/auditProvider.ts";
export type { AuditSnapshot, LeaseAudit, LeaseStatus } from "./chain/audit-events.ts";
export {
  checkChain,
  contracts,
  createChainClient,
  leaseStatus,
  revertOf,
  writeContract,
  type ChainClient,
  type ChainLeaseStatus,
  type CreateChainClientParameters,
} from "./chain/client.ts";
export {
  confirmedBlock,
  confirmedBlockNumber,
  waitForConfirmations,
  type TransactionFate,
  type WaitForConfirmationsParameters,
} from "./chain/confirmations.ts";
export { followOpening, type FollowOpeningParameters, type OpeningFate } from "./tenant/lease-confirmation.ts";
export { loadDeployment, loadDeploymentFile, type Deployment } from "./chain/deployments.ts";
export { devTokenAbi, leaseManagerAbi, providerRegistryAbi } from "./generated/abis.ts";
export { handOffCount } from "./hand-offs.ts";
export { createLogger, silentLogger, type CreateLoggerOptions, type Logger, type LogLevel } from "./logger.ts";
export { readJobFile, parseJobSpec, type JobFile, type JobImage, type JobSpec, type JobSpecInput } from "./job-spec.ts";
export {
  formatImageReference,
  imageKey,
  isLoopbackRegistry,
  parseImageReference,
  pinImageReference,
  type ImageDigest,
  type ImageReference,
} from "./images/reference.ts";
export {
  pinJobImage,
  resolveImageDigest,
  RESOLVE_TIMEOUT_MS,
  type ResolveImageDigestOptions,
  type ResolveImageDigestReturnType,
} from "./images/registry.ts";
export {
  addImageLayout,
  checkImageLayout,
  layoutManifestDigest,
  type AddImageLayoutParameters,
  type AddImageLayoutReturnType,
  type ImageLayout,
} from "./images/layout.ts";
export { imageDigestFromBytes32, imageDigestToBytes32, jobImageDigest } from "./images/digest.ts";
export type { JobRuntime } from "./wire/messages.ts";
export * from "./errors.ts";
