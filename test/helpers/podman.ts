import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface ThrowawayPodman {
  /** Its temp dir: every piece of podman state lives under it. */
  dir: string;
  /** Runs `podman <args>` on this store; rejects with podman's stderr on failure. */
  podman(args: string[]): Promise<string>;
  /**
   * Builds a tiny image, `FROM scratch` with a static busybox at /bin/busybox, tagged `name`. A
   * different `marker` gives a different image (a file with it is added).
   */
  buildBusybox(name: string, marker?: string): Promise<void>;
  /** `podman system reset` on this store, then its dir removed. Safe to call twice. */
  remove(): Promise<void>;
}

/**
 * Podman with a store of its own in a temp dir, so that a test neither sees nor touches the
 * machine's images: images, containers, its tmp dir, network configs and volumes all live under
 * it (`system reset` removes every network of the config dir it is given, and the engine's tmp
 * dir, so both must be ours). vfs storage: no overlay mounts to leave behind, and it works in any
 * container; the test images are a few MiB.
 */
export async function throwawayPodman(): Promise<ThrowawayPodman> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "baton-podman-"));
  const tmp = path.join(dir, "tmp");
  await mkdir(tmp);
  const store = [
    ["--root", path.join(dir, "root")],
    ["--runroot", path.join(dir, "run")],
    ["--tmpdir", path.join(dir, "libpod")],
    ["--network-config-dir", path.join(dir, "networks")],
    ["--volumepath", path.join(dir, "volumes")],
    ["--storage-driver", "vfs"],
    ["--runtime", "runc"],
    ["--events-backend", "none"],
    ["--cgroup-manager", "cgroupfs"],
  ].flat();
  // TMPDIR: where image layers are staged while built, pushed and pulled.
  const env = { ...process.env, TMPDIR: tmp };
  const podman = async (args: string[]): Promise<string> => {
    try {
      return (await run("podman", [...store, ...args], { env, maxBuffer: 16 * 1024 * 1024 })).stdout;
    } catch (error) {
      const { stderr } = error as { stderr?: string };
      throw new Error(`podman ${args.join(" ")} failed: ${stderr?.trim() ?? String(error)}`, { cause: error });
    }
  };
  let removed: Promise<void> | undefined;
  return {
    dir,
    podman,
    async buildBusybox(name, marker = "") {
      const context = await mkdtemp(path.join(dir, "context-"));
      await copyFile("/usr/bin/busybox", path.join(context, "busybox"));
      await writeFile(path.join(context, "marker"), marker);
      await writeFile(
        path.join(context, "Containerfile"),
        'FROM scratch\nCOPY busybox /bin/busybox\nCOPY marker /marker\nCMD ["/bin/busybox", "true"]\n',
      );
      await podman(["build", "--quiet", "--tag", name, context]);
    },
    remove() {
      removed ??= podman(["system", "reset", "--force"])
        .then(() => undefined)
        .finally(() => rm(dir, { recursive: true, force: true }));
      return removed;
    },
  };
}
