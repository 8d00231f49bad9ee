import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { cp, mkdir, mkdtemp, readdir, readFile, rm, symlink, unlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { unixfs } from "@helia/unixfs";
import { CID } from "multiformats/cid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { UserError } from "../../sdk/errors.ts";
import { jobImageDigest } from "../../sdk/images/digest.ts";
import { addImageLayout, checkImageLayout, layoutManifestDigest } from "../../sdk/images/layout.ts";
import { createIpfsNode, type IpfsNode } from "../../sdk/ipfs/node.ts";
import { createBatonHost, type BatonHost } from "../../sdk/p2p/host.ts";
import { throwawayPodman, type ThrowawayPodman } from "../helpers/podman.ts";
import { installed } from "../helpers/registry.ts";

const tar = (args: string[]) => promisify(execFile)("tar", args);

describe.skipIf(!installed("podman"))(
  `addImageLayout: an OCI layout from podman into a real IPFS store${installed("podman") ? "" : " (skipped: podman is not installed)"}`,
  () => {
    let work: string;
    let podman: ThrowawayPodman;
    let host: BatonHost;
    let ipfs: IpfsNode;
    /** `podman push … oci:<layout>:one`. */
    let layout: string;

    beforeAll(async () => {
      work = await mkdtemp(path.join(os.tmpdir(), "baton-layout-test-"));
      podman = await throwawayPodman();
      host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519"), listen: [] });
      ipfs = await createIpfsNode({ host, dir: path.join(work, "ipfs") });
      await podman.buildBusybox("localhost/layout-test:one");
      layout = path.join(work, "layout");
      await podman.podman(["push", "localhost/layout-test:one", `oci:${layout}:one`]);
    });

    afterAll(async () => {
      await ipfs?.stop();
      await host?.stop();
      await Promise.allSettled([podman?.remove()]);
      await rm(work, { recursive: true, force: true });
    });

    /** A copy of the good layout to damage. */
    const copy = async (name: string): Promise<string> => {
      const dir = path.join(work, name);
      await cp(layout, dir, { recursive: true });
      return dir;
    };
    const blobPath = (dir: string, digest: string) => path.join(dir, "blobs", digest.replace(":", "/"));
    const pins = async (): Promise<number> => {
      let count = 0;
      for await (const pin of ipfs.helia.pins.ls()) count += pin ? 1 : 0;
      return count;
    };

    it("adds the layout as one pinned UnixFS directory holding exactly its files, byte for byte", async () => {
      const added = await addImageLayout({ ipfs }, { path: layout });
      const root = CID.parse(added.cid);
      expect(await ipfs.isPinned(root)).toBe(true);

      const index = JSON.parse(await readFile(path.join(layout, "index.json"), "utf8")) as {
        manifests: { digest: string }[];
      };
      expect(added.manifests).toEqual([
        { digest: index.manifests[0]!.digest, mediaType: "application/vnd.oci.image.manifest.v1+json", tag: "one" },
      ]);
      const onDisk = (await readdir(path.join(layout, "blobs", "sha256"))).sort();
      expect(added.blobs.map((b) => b.digest.slice("sha256:".length)).sort()).toEqual(onDisk);
      expect(added.bytes).toBe(added.blobs.reduce((sum, b) => sum + b.size, 0));

      const fs = unixfs(ipfs.helia);
      const names = async (cid: CID | string, at = ""): Promise<string[]> => {
        const found: string[] = [];
        for await (const entry of fs.ls(CID.parse(cid.toString()), at ? { path: at } : {})) found.push(entry.name);
        return found.sort();
      };
      expect(await names(root)).toEqual(["blobs", "index.json", "oci-layout"]);
      expect(await names(root, "blobs")).toEqual(["sha256"]);
      expect(await names(root, "blobs/sha256")).toEqual(onDisk);
      for (const name of ["oci-layout", "index.json", ...onDisk.map((hex) => `blobs/sha256/${hex}`)]) {
        const chunks: Uint8Array[] = [];
        for await (const chunk of fs.cat(root, { path: name, offline: true })) chunks.push(chunk);
        expect(Buffer.concat(chunks).equals(await readFile(path.join(layout, name))), name).toBe(true);
      }
    });

    it("a tar archive of it, flat or in one directory, is the same directory (same CID); its temp dir is removed", async () => {
      const expected = (await addImageLayout({ ipfs }, { path: layout })).cid;
      const flat = path.join(work, "flat.tar");
      await tar(["-cf", flat, "-C", layout, "."]);
      const nested = path.join(work, "nested.tar.gz");
      await tar(["-czf", nested, "-C", work, "layout"]);
      const temp = await mkdtemp(path.join(work, "tmp-"));
      const before = process.env.TMPDIR;
      process.env.TMPDIR = temp;
      try {
        expect((await addImageLayout({ ipfs }, { path: flat })).cid).toBe(expected);
        expect((await addImageLayout({ ipfs }, { path: nested })).cid).toBe(expected);
      } finally {
        if (before === undefined) delete process.env.TMPDIR;
        else process.env.TMPDIR = before;
      }
      expect(await readdir(temp)).toEqual([]);
    });

    it("leaves out what is not part of the layout (a docker save's manifest.json)", async () => {
      const dir = await copy("extra");
      await writeFile(path.join(dir, "manifest.json"), "[]");
      const expected = (await addImageLayout({ ipfs }, { path: layout })).cid;
      expect((await addImageLayout({ ipfs }, { path: dir })).cid).toBe(expected);
    });

    /** Refused in one line matching `message`, and nothing new pinned. */
    const refused = async (input: string, message: RegExp): Promise<void> => {
      const before = await pins();
      const error = await addImageLayout({ ipfs }, { path: input }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(UserError);
      expect((error as UserError).message).not.toContain("\n");
      expect((error as UserError).message).toMatch(message);
      expect(await pins()).toBe(before);
    };

    it("refuses a path that does not exist", async () => {
      await refused(path.join(work, "nope"), /nope does not exist$/);
    });

    it("refuses a directory that is not a layout", async () => {
      const dir = path.join(work, "empty");
      await mkdir(dir);
      await refused(dir, /empty is not a usable OCI image layout: it has no oci-layout/);
    });

    it("refuses an oci-layout without imageLayoutVersion", async () => {
      const dir = await copy("no-version");
      await writeFile(path.join(dir, "oci-layout"), "{}");
      await refused(dir, /oci-layout: imageLayoutVersion/);
    });

    it("refuses a layout without index.json", async () => {
      const dir = await copy("no-index");
      await unlink(path.join(dir, "index.json"));
      await refused(dir, /it has no index.json/);
    });

    it("refuses a blob whose contents are not what its name says", async () => {
      const dir = await copy("damaged");
      const [biggest] = (await checkImageLayout(layout)).blobs.sort((a, b) => b.size - a.size);
      const file = blobPath(dir, biggest!.digest);
      const bytes = await readFile(file);
      bytes[bytes.length >> 1]! ^= 0xff;
      await writeFile(file, bytes);
      const actual = createHash("sha256").update(bytes).digest("hex");
      await refused(
        dir,
        new RegExp(`blobs/sha256/${biggest!.digest.slice(7)} is damaged: its contents hash to sha256:${actual}`),
      );
    });

    it("refuses a layout missing a blob its manifest names", async () => {
      const dir = await copy("missing");
      const manifest = JSON.parse(
        await readFile(blobPath(layout, (await checkImageLayout(layout)).manifests[0]!.digest), "utf8"),
      ) as { config: { digest: string } };
      await unlink(blobPath(dir, manifest.config.digest));
      await refused(dir, new RegExp(`names ${manifest.config.digest}, which is not in blobs/sha256/`));
    });

    it("refuses a link among the blobs", async () => {
      const dir = await copy("link");
      const [blob] = (await checkImageLayout(layout)).blobs;
      await unlink(blobPath(dir, blob!.digest));
      await symlink(blobPath(layout, blob!.digest), blobPath(dir, blob!.digest));
      await refused(dir, /is not a regular file/);
    });

    it("refuses a file that is not a tar archive", async () => {
      const file = path.join(work, "not-a.tar");
      await writeFile(file, "hello");
      await refused(file, /not-a.tar is neither a directory nor a tar archive tar can unpack/);
    });

    it("names the archive, not its temp dir, when an archive holds no layout", async () => {
      const dir = path.join(work, "not-layout");
      await mkdir(dir);
      await writeFile(path.join(dir, "a"), "a");
      await writeFile(path.join(dir, "b"), "b");
      const archive = path.join(work, "not-layout.tar");
      await tar(["-cf", archive, "-C", dir, "."]);
      await refused(archive, /^\S+not-layout.tar \(unpacked\) is not a usable OCI image layout: it has no oci-layout/);
    });

    it("layoutManifestDigest: the one image its index.json lists, which is what a job by CID names in its quotes", async () => {
      const added = await addImageLayout({ ipfs }, { path: layout });
      const { digest } = added.manifests[0]!;
      expect(await layoutManifestDigest({ ipfs }, added.cid)).toBe(digest);
      expect(await jobImageDigest({ ipfs }, { cid: added.cid })).toBe(digest);
    });

    it("layoutManifestDigest refuses a layout of two images, a file, and text that is no CID", async () => {
      const two = await copy("two-images");
      await podman.buildBusybox("localhost/layout-test:two", "two");
      await podman.podman(["push", "localhost/layout-test:two", `oci:${two}:two`]);
      const { cid } = await addImageLayout({ ipfs }, { path: two });
      await expect(layoutManifestDigest({ ipfs }, cid)).rejects.toThrow(
        /index.json lists 2 images; a job's layout holds exactly one/,
      );
      const file = await ipfs.add([new TextEncoder().encode("not a layout")], { pin: true });
      await expect(layoutManifestDigest({ ipfs }, file.toString())).rejects.toThrow(/it is not a directory/);
      await expect(layoutManifestDigest({ ipfs }, "not-a-cid")).rejects.toThrow(/it is not a CID/);
    });
  },
);
