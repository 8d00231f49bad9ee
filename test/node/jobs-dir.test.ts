import { chmod, mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import { afterEach, describe, expect, it } from "vitest";

import { prepareJobsDir } from "../../node/jobs-dir.ts";
import { UserError } from "../../sdk/errors.ts";
import { createLogger } from "../../sdk/logger.ts";
import { NOBODY_GID, NOBODY_UID } from "../../node/sandbox/constants.ts";

const nobody = { uid: NOBODY_UID, gid: NOBODY_GID };
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A fresh dir under the OS temp dir with `mode`, and a data dir inside it. */
async function dataDirUnder(mode: number): Promise<{ parent: string; dataDir: string }> {
  const parent = await mkdtemp(path.join(os.tmpdir(), "baton-jobs-dir-"));
  dirs.push(parent);
  await chmod(parent, mode);
  const dataDir = path.join(parent, "provider");
  await mkdir(dataDir, { mode: 0o700 });
  return { parent, dataDir };
}

function recordingLog() {
  const lines: Record<string, unknown>[] = [];
  return { lines, log: createLogger("test", { write: (line) => lines.push(JSON.parse(line)) }) };
}

describe("where job work dirs go", () => {
  it("under the data dir, made searchable but not listable, when the job user can pass through every dir above it", async () => {
    const { dataDir } = await dataDirUnder(0o711);
    const jobsDir = await prepareJobsDir({ dataDir, configured: undefined, jobUser: nobody, log: recordingLog().log });
    expect(jobsDir).toBe(path.join(dataDir, "jobs"));
    expect((await stat(dataDir)).mode & 0o777).toBe(0o711);
  });

  it("under the data dir, as it is, when jobs run as the node's own user", async () => {
    const { dataDir } = await dataDirUnder(0o700);
    const jobsDir = await prepareJobsDir({
      dataDir,
      configured: undefined,
      jobUser: undefined,
      log: recordingLog().log,
    });
    expect(jobsDir).toBe(path.join(dataDir, "jobs"));
    expect((await stat(dataDir)).mode & 0o777).toBe(0o700);
  });

  it("in a dir of its own under the fallback root, said in the log, when a dir above the data dir is 0700", async () => {
    const { parent, dataDir } = await dataDirUnder(0o700);
    const { parent: elsewhere } = await dataDirUnder(0o711);
    const fallbackRoot = path.join(elsewhere, "var", "jobs");
    const { lines, log } = recordingLog();
    const jobsDir = await prepareJobsDir({ dataDir, configured: undefined, jobUser: nobody, log, fallbackRoot });
    expect(path.dirname(jobsDir)).toBe(fallbackRoot);
    expect((await stat(jobsDir)).isDirectory()).toBe(true);
    expect(lines).toContainEqual(expect.objectContaining({ jobsDir, blockedAt: parent, mode: "700" }));
    // The same data dir gets the same place after a restart; another data dir another one.
    expect(await prepareJobsDir({ dataDir, configured: undefined, jobUser: nobody, log, fallbackRoot })).toBe(jobsDir);
    const other = await dataDirUnder(0o700);
    const otherJobs = await prepareJobsDir({
      dataDir: other.dataDir,
      configured: undefined,
      jobUser: nobody,
      log,
      fallbackRoot,
    });
    expect(otherJobs).not.toBe(jobsDir);
  });

  it("refuses a configured jobsDir the job user cannot reach, and says what to change", async () => {
    const { parent, dataDir } = await dataDirUnder(0o700);
    const configured = path.join(parent, "work");
    const attempt = prepareJobsDir({ dataDir, configured, jobUser: nobody, log: recordingLog().log });
    await expect(attempt).rejects.toBeInstanceOf(UserError);
    await expect(attempt).rejects.toThrow(
      `jobs cannot run under ${configured}: their user (uid ${NOBODY_UID}) cannot pass through ${parent} (mode 0700)`,
    );
    await expect(attempt).rejects.toThrow(/chmod o\+x|jobsDir in config.yaml/);
  });
});
