import { mkdir } from "node:fs/promises";
import path from "node:path";

import type { Command } from "commander";

import { DEFAULT_DATA_DIR } from "./job.ts";
import { formatBytes, printJson } from "./output.ts";
import { examples } from "./program.ts";

interface AddOptions {
  dataDir: string;
  json?: boolean;
}

/**
 * Adds an OCI image layout to the tenant's IPFS store, offline: no key, no chain, no peers. The
 * store is the one the tenant's client opens, which serves the layout to the job's providers.
 */
async function add(layout: string, options: AddOptions): Promise<void> {
  const [{ addImageLayout }, { TENANT_IPFS_DIR }, { createIpfsNode }, { createBatonHost }, { generateKeyPair }] =
    await Promise.all([
      import("../sdk/images/layout.ts"),
      import("../sdk/client.ts"),
      import("../sdk/ipfs/node.ts"),
      import("../sdk/p2p/host.ts"),
      import("@libp2p/crypto/keys"),
    ]);
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  // A host that listens nowhere and dials no one: the IPFS node needs one, and nothing is served now.
  const host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519"), listen: [] });
  try {
    const ipfs = await createIpfsNode({ host, dir: path.join(options.dataDir, TENANT_IPFS_DIR) });
    try {
      const added = await addImageLayout({ ipfs }, { path: layout });
      if (options.json) return printJson(added);
      const images = added.manifests.map((m) => m.tag ?? m.digest).join(", ");
      process.stdout.write(
        `${added.cid}\n` +
          `added ${layout} (${images}; ${added.blobs.length} blobs, ${formatBytes(added.bytes)}) to ${options.dataDir}\n` +
          `in a job spec: image: { cid: ${added.cid} }\n`,
      );
    } finally {
      await ipfs.stop();
    }
  } finally {
    await host.stop();
  }
}

/** `baton image …`: container images for jobs. */
export function imageCommands(program: Command): void {
  const image = program.command("image").description("container images for jobs");

  examples(
    image
      .command("add")
      .description(
        "check an OCI image layout (a directory, or a tar archive of one) and add it to the tenant's IPFS store; " +
          "prints its CID, for a job spec's `image: { cid }`",
      )
      .argument(
        "<layout>",
        "the layout's directory (`podman push IMAGE oci:DIR:TAG` writes one) or a tar archive of it",
      )
      .option("--data-dir <dir>", "the tenant's state, whose IPFS store gets the image", DEFAULT_DATA_DIR)
      .option("--json", "print the CID, the layout's images and its blobs as JSON"),
    [
      "podman push localhost/train:latest oci:train-image:latest && baton image add train-image",
      "baton image add train-image.tar --json",
    ],
  ).action(add);
}
