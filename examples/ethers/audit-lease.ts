/**
 * Auditing a lease with ethers v6 and Baton's TypeChain bindings, without Baton's SDK: reads one
 * lease's state and events and prints who served it, what it paid and how it ended.
 *
 *   node examples/ethers/audit-lease.ts --rpc-url http://127.0.0.1:8545 \
 *     --deployment deployments/31337.json --lease 1
 *
 * In a project that installed Baton as a package, the bindings are `baton/ethers` (ethers is a peer
 * dependency: the project's own). Everything is read at one block, so the lease's state and its
 * events describe the same moment. Each event is fetched with one `eth_getLogs` from the lease's
 * opening (the opening itself from the deployment's block), which a local chain serves whole; public
 * RPC nodes cap the range of a query, which `baton audit` handles by reading in pages.
 */
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";

import { formatUnits, JsonRpcProvider, Network } from "ethers";

import { DevToken__factory, LeaseManager__factory } from "../../sdk/generated/ethers/index.ts";

/** `Lease.Status` in contracts/types/Lease.sol, in its order: the bindings give the number only. */
const STATUS = ["none", "active", "closing", "completed", "closed", "expired", "slashed"] as const;

const { values } = parseArgs({
  options: {
    "rpc-url": { type: "string" },
    deployment: { type: "string" },
    lease: { type: "string" },
  },
});
if (!values["rpc-url"] || !values.deployment || !values.lease) {
  throw new Error("usage: audit-lease.ts --rpc-url URL --deployment FILE --lease ID");
}
const leaseId = BigInt(values.lease);
// The fields of deployments/<chain id>.json this audit needs (the deploy module writes the file).
const deployment = JSON.parse(await readFile(values.deployment, "utf8")) as {
  chainId: number;
  deployBlock: string;
  contracts: { leaseManager: string; paymentToken: string };
};

// A static network: ethers then asks no chain id of its own, and retries nothing forever when the
// node is unreachable; the chain id is checked once below, so a wrong URL fails with a clear error.
const provider = new JsonRpcProvider(values["rpc-url"], undefined, {
  staticNetwork: Network.from(deployment.chainId),
});
try {
  const chainId = BigInt(await provider.send("eth_chainId", []));
  if (chainId !== BigInt(deployment.chainId)) {
    throw new Error(`${values["rpc-url"]} serves chain ${chainId}, the deployment is on chain ${deployment.chainId}`);
  }
  const head = await provider.getBlockNumber();
  const manager = LeaseManager__factory.connect(deployment.contracts.leaseManager, provider);
  // decimals() and symbol(): optional in ERC-20, but every common token has them; the dev token's
  // bindings include them.
  const paymentToken = DevToken__factory.connect(deployment.contracts.paymentToken, provider);

  const lease = await manager.getLease(leaseId, { blockTag: head });
  const [opening] = await manager.queryFilter(
    manager.filters.LeaseOpened(leaseId),
    Number(deployment.deployBlock),
    head,
  );
  if (lease.status === 0n || !opening) throw new Error(`no lease ${leaseId} in this deployment as of block ${head}`);

  const since = opening.blockNumber;
  const { filters } = manager;
  const [heartbeats, settlements, closeRequests, completions, expiries, slashes] = await Promise.all([
    manager.queryFilter(filters.HeartbeatRecorded(leaseId), since, head),
    manager.queryFilter(filters.EarningsSettled(leaseId), since, head),
    manager.queryFilter(filters.LeaseCloseRequested(leaseId), since, head),
    manager.queryFilter(filters.LeaseCompleted(leaseId), since, head),
    manager.queryFilter(filters.LeaseExpired(leaseId), since, head),
    manager.queryFilter(filters.LeaseSlashed(leaseId), since, head),
  ]);
  const sum = (amounts: bigint[]): bigint => amounts.reduce((total, amount) => total + amount, 0n);
  const paid = sum(settlements.map((log) => log.args.amount));
  // Each way a lease ends refunds what its tenant deposited and the provider did not earn.
  const refunded = sum([...closeRequests, ...completions, ...expiries, ...slashes].map((log) => log.args.refund));

  const [decimals, symbol] = await Promise.all([
    paymentToken.decimals({ blockTag: head }),
    paymentToken.symbol({ blockTag: head }),
  ]);
  const tokens = (amount: bigint): string => `${formatUnits(amount, decimals)} ${symbol}`;
  const lines = [
    `lease ${leaseId} of job ${lease.jobId}, as of block ${head}`,
    `status      ${STATUS[Number(lease.status)]}`,
    `provider    ${lease.provider}`,
    `tenant      ${lease.tenant}`,
    `opened      block ${since}`,
    `heartbeats  ${heartbeats.length}`,
    `paid        ${tokens(paid)} to the provider`,
    `refunded    ${tokens(refunded)} to the tenant`,
    ...completions.map((log) => `result      ${log.args.resultCid}`),
    ...slashes.map((log) => `slashed by  ${log.args.caller}`),
  ];
  console.log(lines.join("\n"));
} finally {
  provider.destroy();
}
