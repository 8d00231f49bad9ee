import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { summary } from "../../cli/job-display.ts";
import { createIpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost } from "../../sdk/p2p/host.ts";
import { jobRecordSchema } from "../../sdk/tenant/job-store.ts";
import { throwawayPodman, type ThrowawayPodman } from "../helpers/podman.ts";
import { spawnScript, stopAll } from "../helpers/processes.ts";
import { installed } from "../helpers/registry.ts";

/** Runs `baton …` to completion: its exit code and what it wrote to each stream. */
async function baton(args: string[]) {
  const run = spawnScript("cli/baton.ts", args);
  const { code } = await run.closed;
  return { code, stdout: run.stdout, stderr: run.stderr };
}

describe.skipIf(!installed("podman"))(
  `baton image add${installed("podman") ? "" : " (skipped: podman is not installed)"}`,
  () => {
    let work: string;
    let podman: ThrowawayPodman;
    let layout: string;

    beforeAll(async () => {
      work = await mkdtemp(path.join(os.tmpdir(), "baton-image-cli-"));
      podman = await throwawayPodman();
      await podman.buildBusybox("localhost/cli-test:one");
      layout = path.join(work, "layout");
      await podman.podman(["push", "localhost/cli-test:one", `oci:${layout}:one`]);
    });

    afterAll(async () => {
      await stopAll();
      await Promise.allSettled([podman?.remove()]);
      await rm(work, { recursive: true, force: true });
    });

    it("adds a podman-made layout to the data dir's IPFS store, pinned, and prints its CID (--json and text alike)", async () => {
      const dataDir = path.join(work, "tenant");
      const json = await baton(["image", "add", layout, "--data-dir", dataDir, "--json"]);
      expect(json.code, json.stderr.join("\n")).toBe(0);
      const added = JSON.parse(json.stdout.join("\n")) as { cid: string; manifests: { tag?: string }[]; blobs: [] };
      expect(added.manifests).toMatchObject([{ tag: "one" }]);
      expect(added.blobs.length).toBeGreaterThanOrEqual(3);

      const text = await baton(["image", "add", layout, "--data-dir", dataDir]);
      expect(text.code).toBe(0);
      expect(text.stderr).toEqual([]);
      expect(text.stdout[0]).toBe(added.cid);
      expect(text.stdout).toContain(`in a job spec: image: { cid: ${added.cid} }`);

      // The store the tenant's client opens: the layout is there, pinned, after the command ended.
      const host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519"), listen: [] });
      const ipfs = await createIpfsNode({ host, dir: path.join(dataDir, "ipfs") });
      try {
        expect(await ipfs.isPinned(CID.parse(added.cid))).toBe(true);
        expect(await ipfs.has(CID.parse(added.cid))).toBe(true);
      } finally {
        await ipfs.stop();
        await host.stop();
      }
    });

    it("a missing path, a directory that is not a layout, a damaged blob: one error line each, exit 1", async () => {
      const notLayout = await mkdtemp(path.join(work, "plain-"));
      const damaged = path.join(work, "damaged");
      await podman.podman(["push", "localhost/cli-test:one", `oci:${damaged}:one`]);
      const index = JSON.parse(await readFile(path.join(damaged, "index.json"), "utf8")) as {
        manifests: { digest: string }[];
      };
      const manifest = path.join(damaged, "blobs", index.manifests[0]!.digest.replace(":", "/"));
      await writeFile(manifest, (await readFile(manifest, "utf8")).replace("layers", "Layers"));

      const dataDir = path.join(work, "tenant-errors");
      const results = await Promise.all(
        [path.join(work, "nope"), notLayout, damaged].map((input) =>
          baton(["image", "add", input, "--data-dir", dataDir]),
        ),
      );
      const expected = [
        /^error: \S+\/nope does not exist$/,
        /^error: \S+plain-\w+ is not a usable OCI image layout: it has no oci-layout/,
        /^error: \S+damaged is not a usable OCI image layout: blobs\/sha256\/[a-f0-9]{64} is damaged/,
      ];
      for (const [i, result] of results.entries()) {
        expect(result.code, result.stderr.join("\n")).toBe(1);
        expect(result.stdout).toEqual([]);
        expect(result.stderr).toHaveLength(1);
        expect(result.stderr[0]).toMatch(expected[i]!);
      }
    });
  },
);

describe("job summary", () => {
  it("shows the image every lease ran: a pinned reference, or cid:<cid>", () => {
    const record = (image: unknown) =>
      jobRecordSchema.parse({
        version: 1,
        jobId: `0x${"c".repeat(64)}`,
        spec: image === undefined ? { command: ["true"] } : { image },
        key: "k",
        createdAt: 0,
        state: "completed",
        options: { retryLimit: 1, keepCheckpoints: 1, exclude: [] },
        leases: [],
        safe: [],
        deposited: "0",
        handOffs: 0,
      });
    const digest = `sha256:${"d".repeat(64)}`;
    expect(summary(record(`127.0.0.1:5000/train@${digest}`), new Map()).split("\n")[1]).toBe(
      `image 127.0.0.1:5000/train@${digest}`,
    );
    expect(summary(record({ cid: "bafyimage" }), new Map()).split("\n")[1]).toBe("image cid:bafyimage");
    expect(summary(record(undefined), new Map())).not.toContain("image");
  });
});
