/**
 * A tenant that runs one job, for the network-namespace tests: its own process inside a host's
 * namespace (`nsenter --net`), since a test's own process stays in the machine's namespace. Its
 * argument is a JSON {@link TenantRun}. It prints each job event as a line of JSON (`event …`),
 * then `connections …`: the connections its libp2p host has to the provider that ran the job last
 * (relayed or direct), `opened …`: the remote address of every connection to that provider, in the
 * order they opened, `addresses …`: its own addresses, as peers learn them, and `result …`; it exits
 * 0 once the job completed (1 if it failed). With `untilStdinEnds` it prints the events alone, and
 * cancels the job when its stdin closes (a benchmark's tenant).
 */
import { peerIdFromString } from "@libp2p/peer-id";
import type { Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";

import { jsonLine } from "../../cli/output.ts";
import { createBatonClient } from "../../sdk/client.ts";
import { runJob } from "../../sdk/actions/runJob.ts";
import type { JobSpecInput } from "../../sdk/job-spec.ts";
import type { JobResult } from "../../sdk/tenant/job-events.ts";

export interface TenantRun {
  rpcUrl: string;
  deploymentFile: string;
  dataDir: string;
  privateKey: Hex;
  bootstrap: string[];
  listen: string[];
  spec: JobSpecInput;
  files: Record<string, string>;
  /** Wei per second, as a decimal string. */
  maxPricePerSecond: string;
  /** How many hand-offs the job may take (runJob's `retryLimit`). */
  retryLimit?: number;
  /** Runs the job until stdin closes, then cancels it and exits 0, printing its events alone (a benchmark's). */
  untilStdinEnds?: boolean;
}

const run = JSON.parse(process.argv[2]!) as TenantRun;
const json = (value: unknown): string => jsonLine(value).trimEnd();

const client = await createBatonClient({
  rpcUrl: run.rpcUrl,
  account: privateKeyToAccount(run.privateKey),
  deployment: run.deploymentFile,
  bootstrap: run.bootstrap,
  dataDir: run.dataDir,
  listen: run.listen,
});
// Every connection the tenant's host opened or accepted, in order: the relayed first, then the direct one.
const opened: { peer: string; remoteAddr: string }[] = [];
client.host.addEventListener("connection:open", ({ detail }) =>
  opened.push({ peer: detail.remotePeer.toString(), remoteAddr: detail.remoteAddr.toString() }),
);
/** Prints what the test checks of a completed job: its connections, and its result. */
async function report(result: JobResult): Promise<void> {
  const peerId = client.offers.list().find((o) => o.provider === result.leases.at(-1)!.provider)?.peerId;
  const connections = peerId
    ? client.host.getConnections(peerIdFromString(peerId)).map((c) => ({
        remoteAddr: c.remoteAddr.toString(),
        direction: c.direction,
        limited: c.limits !== undefined,
      }))
    : [];
  console.log(`connections ${json(connections)}`);
  console.log(`opened ${json(opened.filter((o) => o.peer === peerId).map((o) => o.remoteAddr))}`);
  console.log(`addresses ${json(client.host.getMultiaddrs().map(String))}`);
  console.log(`result ${json(result)}`);
}

let code = 1;
try {
  // The offers first: a job bids only to the providers the tenant heard of.
  while (client.offers.list().length === 0) await client.offers.next(AbortSignal.timeout(60_000));
  const job = await runJob(client, run.spec, {
    maxPricePerSecond: BigInt(run.maxPricePerSecond),
    files: run.files,
    ...(run.retryLimit === undefined ? {} : { retryLimit: run.retryLimit }),
  });
  job.on("*", (event) => console.log(`event ${json(event)}`));
  if (run.untilStdinEnds) {
    await new Promise((resolve) => process.stdin.on("end", resolve).resume());
    await job.cancel();
  } else {
    const result = await job.result();
    await job.settled();
    await report(result);
  }
  code = 0;
} catch (error) {
  console.log(`error ${String(error)}`);
} finally {
  await client.close();
  process.exit(code);
}
