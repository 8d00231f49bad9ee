import { createHash } from "node:crypto";
import { chmod, mkdir, realpath, stat } from "node:fs/promises";
import path from "node:path";

import { UserError } from "../sdk/errors.ts";
import type { Logger } from "../sdk/logger.ts";

/** Where job work dirs go when the data dir sits where the job user cannot pass (one dir per data dir). */
export const FALLBACK_JOBS_ROOT = "/var/lib/baton/jobs";

export interface PrepareJobsDirParameters {
  dataDir: string;
  /** `jobsDir` from the node's config, if set. */
  configured: string | undefined;
  /** Who jobs run as; `undefined` when they run as the node's own user (nothing to check). */
  jobUser: { uid: number; gid: number } | undefined;
  log: Logger;
  /** Tests put the fallback elsewhere. */
  fallbackRoot?: string;
}

/**
 * Makes the directory that holds job work dirs and returns it. Jobs of a node running as root run
 * as an unprivileged user (nobody), and bubblewrap, started as that user, must pass through every
 * directory above a work dir to bind it. A data dir inside a 0700 home (root's, on most servers; 0750
 * on Ubuntu) would make every job fail to start, which tenants only see as a refusal.
 *
 * So: `<dataDir>/jobs` (the data dir made searchable, not listable) when the job user can pass
 * through every directory above it; otherwise, unless `jobsDir` is configured, a directory of its
 * own under {@link FALLBACK_JOBS_ROOT}, said in the log. A configured `jobsDir` the job user cannot
 * reach is refused with what to change.
 *
 * @throws {UserError} when the job user cannot reach the configured (or fallback) directory.
 */
export async function prepareJobsDir({
  dataDir,
  configured,
  jobUser,
  log,
  fallbackRoot = FALLBACK_JOBS_ROOT,
}: PrepareJobsDirParameters): Promise<string> {
  const preferred = configured === undefined ? path.join(dataDir, "jobs") : path.resolve(configured);
  if (!jobUser) {
    await mkdir(preferred, { recursive: true, mode: 0o700 });
    return preferred;
  }
  if (configured === undefined) await searchable(dataDir);
  await mkdir(preferred, { recursive: true, mode: 0o711 });
  await searchable(preferred);
  const blocked = await blockingDir(preferred, jobUser);
  if (!blocked) return preferred;
  if (configured !== undefined) throw unreachable(preferred, blocked, jobUser);

  const fallback = await fallbackJobsDir(dataDir, fallbackRoot);
  for (const dir of [path.dirname(fallbackRoot), fallbackRoot, fallback]) {
    await mkdir(dir, { recursive: true, mode: 0o711 });
    await searchable(dir);
  }
  const stillBlocked = await blockingDir(fallback, jobUser);
  if (stillBlocked) throw unreachable(fallback, stillBlocked, jobUser);
  log.info("job work dirs are outside the data dir: the job user cannot pass through a directory above it", {
    jobsDir: fallback,
    blockedAt: blocked.dir,
    mode: blocked.mode.toString(8),
  });
  return fallback;
}

/** The directory of `dataDir`'s jobs under the fallback root: one per data dir, the same after a restart. */
export async function fallbackJobsDir(dataDir: string, fallbackRoot = FALLBACK_JOBS_ROOT): Promise<string> {
  const id = createHash("sha256")
    .update(await realpath(dataDir))
    .digest("hex")
    .slice(0, 16);
  return path.join(fallbackRoot, id);
}

/** Adds search (not read) permission for group and others. */
async function searchable(dir: string): Promise<void> {
  const mode = (await stat(dir)).mode & 0o777;
  if ((mode & 0o011) !== 0o011) await chmod(dir, mode | 0o011);
}

/** The first directory from `/` down to `dir` that `user` may not search, by its mode bits. */
export async function blockingDir(
  dir: string,
  user: { uid: number; gid: number },
): Promise<{ dir: string; mode: number } | undefined> {
  const parts = path.resolve(dir).split(path.sep).filter(Boolean);
  for (let i = 0; i <= parts.length; i++) {
    const current = path.sep + parts.slice(0, i).join(path.sep);
    const info = await stat(current);
    const mode = info.mode & 0o777;
    const bit = info.uid === user.uid ? 0o100 : info.gid === user.gid ? 0o010 : 0o001;
    if ((mode & bit) === 0) return { dir: current, mode };
  }
  return undefined;
}

function unreachable(dir: string, blocked: { dir: string; mode: number }, user: { uid: number }): UserError {
  return new UserError(
    `jobs cannot run under ${dir}: their user (uid ${user.uid}) cannot pass through ${blocked.dir} (mode ${blocked.mode.toString(8).padStart(4, "0")}). ` +
      `Let it pass (chmod o+x ${blocked.dir}) or set jobsDir in config.yaml to a directory it can reach, such as ${FALLBACK_JOBS_ROOT}`,
  );
}
