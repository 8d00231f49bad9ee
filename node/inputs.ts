import { mkdir, open } from "node:fs/promises";
import path from "node:path";

import type { Multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";

import type { IpfsNode } from "../sdk/ipfs/node.ts";
import type { JobSpec } from "../sdk/job-spec.ts";

/**
 * Fetches a job's inputs by CID (from the tenant, or any peer that has them) into its work dir,
 * each file at most `maxBytes`, readable by the job's user. Paths were validated by the spec
 * schema (relative, no `..`).
 */
export async function fetchInputs(
  ipfs: IpfsNode,
  spec: JobSpec,
  workDir: string,
  { providers, maxBytes, signal }: { providers: Multiaddr[]; maxBytes: number; signal: AbortSignal },
): Promise<void> {
  for (const input of spec.inputs) {
    const target = path.join(workDir, input.path);
    await mkdir(path.dirname(target), { recursive: true, mode: 0o755 });
    // "w": a start retried after a refusal finds the earlier attempt's copy, and replaces it.
    const file = await open(target, "w", 0o644);
    try {
      for await (const chunk of ipfs.cat(CID.parse(input.cid), { providers, maxBytes, signal }))
        await file.write(chunk);
    } finally {
      await file.close();
    }
  }
}
