import { createHash, randomBytes } from "node:crypto";
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

/** A temporary directory and a function that removes it. */
export async function tempDir(prefix: string): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `baton-${prefix}-`));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

export interface TreeFile {
  path: string;
  /** Size in bytes of random content; or `content`. */
  size?: number;
  content?: Uint8Array;
  mode?: number;
}

/** Writes files (and their parent directories) under `root`; `dirs` adds empty directories. */
export async function writeTree(root: string, files: TreeFile[], dirs: string[] = []): Promise<void> {
  await mkdir(root, { recursive: true });
  for (const dir of dirs) await mkdir(path.join(root, dir), { recursive: true });
  for (const file of files) {
    const full = path.join(root, file.path);
    await mkdir(path.dirname(full), { recursive: true });
    await writeFile(full, file.content ?? randomBytes(file.size ?? 0));
    await chmod(full, file.mode ?? 0o644);
  }
  // Directories as the pack normalises them, whatever the umask.
  const chmodDirs = async (dir: string): Promise<void> => {
    await chmod(dir, 0o755);
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) await chmodDirs(path.join(dir, entry.name));
    }
  };
  for (const entry of await readdir(root, { withFileTypes: true })) {
    if (entry.isDirectory()) await chmodDirs(path.join(root, entry.name));
  }
}

/** A checkpoint-like tree of about `mib` MiB: a big "model" file, some shards, small files, an empty dir. */
export function sampleTree(mib: number): { files: TreeFile[]; dirs: string[] } {
  const MiB = 1024 * 1024;
  return {
    files: [
      { path: "model.bin", size: Math.max(0, mib - 2) * MiB + 12_345 },
      { path: "optim/shard-0.bin", size: MiB + 7 },
      { path: "optim/shard-1.bin", size: MiB - 3 },
      { path: "meta/step.json", content: new TextEncoder().encode('{"step":7}') },
      { path: "meta/empty", size: 0 },
      { path: "run.sh", content: new TextEncoder().encode("#!/bin/sh\necho hi\n"), mode: 0o755 },
      { path: "ünïcødé/ファイル.txt", size: 100 },
    ],
    dirs: ["logs/empty-dir"],
  };
}

/**
 * One line per entry under `root`, sorted: type, mode bits and the SHA-256 of each file. Two
 * trees with the same listing have the same names, kinds, permissions and contents.
 */
export async function describeTree(root: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (relative: string): Promise<void> => {
    for (const name of (await readdir(path.join(root, relative))).sort()) {
      const entry = relative ? `${relative}/${name}` : name;
      const full = path.join(root, entry);
      const stats = await lstat(full);
      const mode = (stats.mode & 0o777).toString(8);
      if (stats.isDirectory()) {
        out.push(`d ${mode} ${entry}`);
        await visit(entry);
      } else if (stats.isFile()) {
        out.push(
          `f ${mode} ${entry} ${createHash("sha256")
            .update(await readFile(full))
            .digest("hex")}`,
        );
      } else {
        out.push(`? ${entry}`);
      }
    }
  };
  await visit("");
  return out.sort();
}

/** Reads a whole byte stream into one array. */
export async function collect(source: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const part of source) parts.push(part);
  return new Uint8Array(Buffer.concat(parts));
}

/** Yields `bytes` in pieces of `size`, like a network would. */
export async function* pieces(bytes: Uint8Array, size = 64 * 1024): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.byteLength; i += size) yield bytes.subarray(i, i + size);
}

/** Whether `file` exists. */
export async function exists(file: string): Promise<boolean> {
  return lstat(file).then(
    () => true,
    () => false,
  );
}
