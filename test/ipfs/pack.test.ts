import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, mkdir, readdir, symlink, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CheckpointCorruptError, CheckpointDirError, CheckpointTooLargeError, UserError } from "../../sdk/errors.ts";
import { Lending } from "../../sdk/ipfs/bytes.ts";
import { pack, unpack } from "../../sdk/ipfs/pack.ts";
import { collect, describeTree, exists, pieces, sampleTree, tempDir, writeTree } from "./helpers.ts";

const GiB = 2 ** 30;
let work: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  work = await tempDir("pack");
});
afterAll(async () => {
  await work.remove();
});

let counter = 0;
const fresh = (name: string): string => path.join(work.dir, `${name}-${++counter}`);

/** Builds a pack by hand, to feed unpack what our packer never would. */
function craft(
  entries: Array<{ kind?: number; mode?: number; path: string; data?: Uint8Array; size?: number }>,
  { trailer = true, entryCount, total }: { trailer?: boolean; entryCount?: number; total?: number } = {},
): Uint8Array {
  const parts: Uint8Array[] = [new Uint8Array([0x42, 0x41, 0x54, 0x4f, 0x4e, 0x50, 0x4b, 0x01])];
  let sum = 0;
  for (const entry of entries) {
    const kind = entry.kind ?? 2;
    const pathBytes = new TextEncoder().encode(entry.path);
    const data = entry.data ?? new Uint8Array();
    const header = new Uint8Array(13 + pathBytes.byteLength);
    const view = new DataView(header.buffer);
    view.setUint8(0, kind);
    view.setUint16(1, entry.mode ?? (kind === 1 ? 0o755 : 0o644));
    view.setUint16(3, pathBytes.byteLength);
    view.setBigUint64(5, BigInt(entry.size ?? data.byteLength));
    header.set(pathBytes, 13);
    parts.push(header, data);
    sum += data.byteLength;
  }
  if (trailer) {
    const end = new Uint8Array(13);
    const view = new DataView(end.buffer);
    view.setUint32(1, entryCount ?? entries.length);
    view.setBigUint64(5, BigInt(total ?? sum));
    parts.push(end);
  }
  return new Uint8Array(Buffer.concat(parts));
}

describe("pack and unpack", () => {
  it("cuts the stream into pieces of exactly the piece size (the last shorter): same bytes, same digest", async () => {
    const source = fresh("src");
    const { files, dirs } = sampleTree(3);
    await writeTree(source, files, dirs);
    const reference = await pack(source, { maxBytes: GiB });
    const expected = await collect(reference.stream);
    for (const pieceSize of [4093, 2 ** 20 - 16, 2 ** 20 + 7]) {
      const packed = await pack(source, { maxBytes: GiB, pieceSize });
      const sizes: number[] = [];
      const parts: Uint8Array[] = [];
      for await (const piece of packed.stream) {
        sizes.push(piece.byteLength);
        parts.push(new Uint8Array(piece)); // a piece is the consumer's to keep: later ones never overwrite it
      }
      expect(sizes.slice(0, -1).every((size) => size === pieceSize)).toBe(true);
      expect(sizes.at(-1)).toBeLessThanOrEqual(pieceSize);
      expect(Buffer.compare(Buffer.concat(parts), expected)).toBe(0);
      expect(packed.sha256()).toBe(reference.sha256());
      expect(packed.bytes).toBe(expected.byteLength);
    }
  });

  it("with lending, reads into a few buffers, each reused only once the reader said it is done with it", async () => {
    const source = fresh("lent");
    const { files, dirs } = sampleTree(3);
    await writeTree(source, files, dirs);
    const reference = await pack(source, { maxBytes: GiB });
    const expected = await collect(reference.stream);
    const lending = new Lending();
    const packed = await pack(source, { maxBytes: GiB, pieceSize: 4093, lending });
    const copies: Uint8Array[] = [];
    const buffers = new Set<ArrayBufferLike>();
    let held: Uint8Array | undefined;
    let position = 0;
    for await (const piece of packed.stream) {
      // The reader still holds the piece before this one: it must be as it came.
      if (held !== undefined) {
        expect(Buffer.compare(held, copies.at(-1)!)).toBe(0);
        lending.done(position);
      }
      copies.push(new Uint8Array(piece));
      buffers.add(piece.buffer);
      held = piece;
      position += piece.byteLength;
    }
    expect(Buffer.compare(Buffer.concat(copies), expected)).toBe(0);
    expect(packed.sha256()).toBe(reference.sha256());
    expect(copies.length).toBeGreaterThan(700);
    expect(buffers.size).toBeLessThanOrEqual(3);
  });

  it("round-trips a tree: names, nesting, empty files and dirs, modes normalised to 0644/0755", async () => {
    const source = fresh("src");
    const { files, dirs } = sampleTree(3);
    await writeTree(source, [...files, { path: "private.key", size: 32, mode: 0o600 }], dirs);
    const packed = await pack(source, { maxBytes: GiB });
    const bytes = await collect(packed.stream);
    expect(bytes.byteLength).toBe(packed.bytes);
    expect(packed.sha256()).toBe(createHash("sha256").update(bytes).digest("hex"));
    expect(packed.files).toBe(files.length + 1);

    const target = fresh("out");
    const result = await unpack(pieces(bytes, 100_003), target, { maxBytes: GiB });
    expect(result).toEqual({
      files: packed.files,
      entries: packed.entries,
      bytes: packed.bytes,
      sha256: packed.sha256(),
    });
    const expected = (await describeTree(source))
      .map((line) => line.replace("f 600 private.key", "f 644 private.key"))
      .sort();
    expect(await describeTree(target)).toEqual(expected);
    expect(expected).toContain("f 755 run.sh " + createHash("sha256").update("#!/bin/sh\necho hi\n").digest("hex"));
    expect(expected).toContain("d 755 logs/empty-dir");
  });

  it("gives identical bytes for identical trees, whatever their timestamps, creation order or umask bits", async () => {
    const { files, dirs } = sampleTree(2);
    const content = files.map((f) => ({ ...f, content: f.content ?? new Uint8Array(f.size ?? 0).fill(7) }));
    const a = fresh("a");
    const b = fresh("b");
    await writeTree(a, content, dirs);
    await writeTree(b, [...content].reverse(), dirs);
    await utimes(path.join(b, "model.bin"), new Date(0), new Date(0));
    await chmod(path.join(b, "meta/step.json"), 0o664);
    await chmod(path.join(b, "run.sh"), 0o700);
    const packA = await pack(a, { maxBytes: GiB });
    const packB = await pack(b, { maxBytes: GiB });
    const [bytesA, bytesB] = [await collect(packA.stream), await collect(packB.stream)];
    expect(Buffer.compare(bytesA, bytesB)).toBe(0);
    expect(packA.sha256()).toBe(packB.sha256());
  });

  it("refuses symlinks, fifos and trees over the file or byte limit, before producing a byte", async () => {
    const withLink = fresh("link");
    await writeTree(withLink, [{ path: "a.bin", size: 10 }]);
    await symlink("/etc/passwd", path.join(withLink, "passwd"));
    await expect(pack(withLink, { maxBytes: GiB })).rejects.toThrow(/symlink/);
    await expect(pack(withLink, { maxBytes: GiB })).rejects.toBeInstanceOf(CheckpointDirError);

    const linkedRoot = fresh("linked-root");
    await symlink(withLink, linkedRoot);
    await expect(pack(linkedRoot, { maxBytes: GiB })).rejects.toBeInstanceOf(CheckpointDirError);

    const withFifo = fresh("fifo");
    await writeTree(withFifo, [{ path: "a.bin", size: 10 }]);
    execFileSync("mkfifo", [path.join(withFifo, "pipe")]);
    await expect(pack(withFifo, { maxBytes: GiB })).rejects.toThrow(/special file/);

    const big = fresh("big");
    await writeTree(big, [{ path: "a.bin", size: 10_000 }]);
    await expect(pack(big, { maxBytes: 9_000 })).rejects.toThrow(/larger than 9000 bytes/);
    await expect(pack(big, { maxBytes: 10_100 })).resolves.toMatchObject({ files: 1 });

    const many = fresh("many");
    await writeTree(many, [{ path: "a" }, { path: "b" }, { path: "c/d" }]);
    await expect(pack(many, { maxBytes: GiB, maxFiles: 3 })).rejects.toThrow(/more than 3 files/);
    await expect(pack(many, { maxBytes: GiB, maxFiles: 4 })).resolves.toMatchObject({ files: 3, entries: 4 });
  });

  it("refuses a file that changes size while it is packed", async () => {
    const dir = fresh("changing");
    await writeTree(dir, [{ path: "a.bin", size: 10_000 }]);
    const packed = await pack(dir, { maxBytes: GiB });
    await writeFile(path.join(dir, "a.bin"), "short");
    await expect(collect(packed.stream)).rejects.toThrow(/changed while it was packed/);
  });

  it("unpacks a hand-made pack, and refuses path traversal, absolute paths and bad structure", async () => {
    const good = craft([
      { kind: 1, path: "d" },
      { path: "d/x", data: new Uint8Array([1, 2, 3]), mode: 0o755 },
      { path: "e", data: new Uint8Array([4]) },
    ]);
    const ok = fresh("ok");
    await expect(unpack([good], ok, { maxBytes: GiB })).resolves.toMatchObject({ files: 2, entries: 3 });

    const refusals: Array<[string, Uint8Array, RegExp]> = [
      ["parent dir", craft([{ path: "../evil", data: new Uint8Array([1]) }]), /climbs out/],
      ["nested parent dir", craft([{ kind: 1, path: "a" }, { path: "a/../../evil" }]), /climbs out/],
      ["absolute", craft([{ path: "/etc/evil" }]), /absolute/],
      ["dot", craft([{ path: "./x" }]), /climbs out/],
      ["empty component", craft([{ kind: 1, path: "a" }, { path: "a//x" }]), /empty/],
      ["NUL", craft([{ path: "a\u0000b" }]), /NUL/],
      ["missing parent", craft([{ path: "nodir/x" }]), /parent directory/],
      ["file as parent", craft([{ path: "f" }, { path: "f/x" }]), /parent directory/],
      ["duplicate", craft([{ path: "a" }, { path: "a" }]), /repeated or out of order/],
      ["out of order", craft([{ path: "b" }, { path: "a" }]), /repeated or out of order/],
      ["bad file mode", craft([{ path: "a", mode: 0o4755 }]), /bad mode/],
      ["dir with a size", craft([{ kind: 1, path: "a", size: 3 }], { total: 0 }), /bad mode or size/],
      ["unknown kind", craft([{ kind: 9, path: "a" }]), /unknown pack entry kind/],
      ["wrong trailer", craft([{ path: "a", data: new Uint8Array([1]) }], { entryCount: 2 }), /trailer/],
      ["trailing data", new Uint8Array([...craft([{ path: "a" }]), 0]), /after its end/],
      ["not a pack", new Uint8Array(64), /not a Baton checkpoint pack/],
    ];
    for (const [what, bytes, message] of refusals) {
      const target = fresh("bad");
      const error = await unpack([bytes], target, { maxBytes: GiB }).catch((e: unknown) => e);
      expect(error, what).toBeInstanceOf(CheckpointCorruptError);
      expect((error as Error).message, what).toMatch(message);
      expect(await exists(target), `${what}: no target left`).toBe(false);
    }
    // Nothing was written outside the targets.
    expect((await readdir(work.dir)).filter((n) => n.includes("evil"))).toEqual([]);
  });

  it("refuses a truncated pack wherever it is cut, and leaves no directory", async () => {
    const source = fresh("src");
    await writeTree(source, [
      { path: "a.bin", size: 5000 },
      { path: "b/c.bin", size: 3000 },
    ]);
    const bytes = await collect((await pack(source, { maxBytes: GiB })).stream);
    for (const cut of [0, 4, 8, 9, 20, 40, 2000, bytes.byteLength - 13, bytes.byteLength - 1]) {
      const target = fresh("cut");
      const error = await unpack(pieces(bytes.subarray(0, cut), 777), target, { maxBytes: GiB }).catch(
        (e: unknown) => e,
      );
      expect(error, `cut at ${cut}`).toBeInstanceOf(CheckpointCorruptError);
      expect(await exists(target)).toBe(false);
    }
  });

  it("refuses a pack over maxBytes or maxFiles, by its declared size, before reading the data", async () => {
    const huge = craft([{ path: "a", size: 2 ** 40 }], { trailer: false });
    let pulled = 0;
    const source = (async function* () {
      pulled++;
      yield huge;
      pulled++;
      throw new Error("should not read past the header");
    })();
    const target = fresh("huge");
    const error = await unpack(source, target, { maxBytes: 10 * 2 ** 20 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointTooLargeError);
    expect(pulled).toBe(1);
    expect(await exists(target)).toBe(false);

    const many = craft([{ path: "a" }, { path: "b" }, { path: "c" }]);
    await expect(unpack([many], fresh("many"), { maxBytes: GiB, maxFiles: 2 })).rejects.toBeInstanceOf(
      CheckpointTooLargeError,
    );
  });

  it("refuses to unpack into an existing directory", async () => {
    const target = fresh("exists");
    await mkdir(target);
    await expect(unpack([craft([])], target, { maxBytes: GiB })).rejects.toBeInstanceOf(UserError);
    expect(await exists(target)).toBe(true);
  });
});
