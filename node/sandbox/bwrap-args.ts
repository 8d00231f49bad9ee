import { existsSync, lstatSync, readlinkSync } from "node:fs";
import path from "node:path";

import { SANDBOX_HOSTNAME, SANDBOX_WORK_DIR } from "./constants.ts";

/** A host path bound into the sandbox. */
export interface SandboxBind {
  hostPath: string;
  sandboxPath: string;
}

/**
 * NVIDIA device nodes that are not one GPU but the driver's shared interfaces: every CUDA process
 * needs `nvidiactl` and `nvidia-uvm`; `nvidia-uvm-tools` (profilers) and `nvidia-modeset` are used
 * by some libraries and harmless without a GPU node.
 */
export const NVIDIA_CONTROL_DEVICES = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"] as const;

/**
 * The device nodes to bind for a job leased `gpus`: `/dev/nvidia<i>` for each of its GPUs and the
 * control devices, each only if it exists under `devDir` (a machine without a driver, or fake GPUs
 * in development, has none). With no GPUs, no NVIDIA node at all is bound: a CPU job cannot even
 * talk to the driver. Other GPUs' nodes are never bound, so the job cannot open them whatever it
 * sets `CUDA_VISIBLE_DEVICES` to.
 *
 * `gpus` are device minor numbers, which on almost every machine are nvidia-smi's indices; see
 * `runner.ts` for the exception.
 *
 * @example
 * gpuDeviceBinds([0, 2]) // [{ hostPath: "/dev/nvidia0", sandboxPath: "/dev/nvidia0" }, …, "/dev/nvidiactl", …]
 */
export function gpuDeviceBinds(gpus: readonly number[], devDir = "/dev"): SandboxBind[] {
  if (gpus.length === 0) return [];
  const names = [
    ...[...new Set(gpus)].sort((a, b) => a - b).map((index) => `nvidia${index}`),
    ...NVIDIA_CONTROL_DEVICES,
  ];
  return names
    .filter((name) => existsSync(path.join(devDir, name)))
    .map((name) => ({ hostPath: path.join(devDir, name), sandboxPath: `/dev/${name}` }));
}

/** How the host's top-level system dirs appear in the sandbox: read-only, or as the same symlink. */
export type SystemEntry = { kind: "bind"; path: string } | { kind: "symlink"; path: string; target: string };

/** Top-level dirs that hold programs and libraries. Nothing else of the host's root is bound. */
const SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/**
 * The host's program and library dirs as they should appear in the sandbox: on a merged-/usr
 * system `/bin` is a symlink to `usr/bin`, and the sandbox gets the same symlink; otherwise the
 * dir is bound read-only. Dirs the host does not have are left out.
 */
export function systemEntries(root = "/"): SystemEntry[] {
  const entries: SystemEntry[] = [];
  for (const dir of SYSTEM_DIRS) {
    const hostPath = path.join(root, dir);
    let stat;
    try {
      stat = lstatSync(hostPath);
    } catch {
      continue;
    }
    if (stat.isSymbolicLink()) entries.push({ kind: "symlink", path: dir, target: readlinkSync(hostPath) });
    else if (stat.isDirectory()) entries.push({ kind: "bind", path: dir });
  }
  return entries;
}

/**
 * Files of the host's /etc that ordinary programs need, bound read-only when they exist: the
 * dynamic linker's cache, name-service and TLS configuration, time zone, Debian's `alternatives`
 * symlinks (through which `/usr/bin/awk` and friends resolve). Never `shadow`, `ld.so.preload`,
 * the host's `passwd`/`group`/`hosts` (the sandbox gets its own), nor anything with credentials.
 */
export const ETC_FILES = [
  "/etc/ld.so.cache",
  "/etc/ld.so.conf",
  "/etc/ld.so.conf.d",
  "/etc/nsswitch.conf",
  "/etc/host.conf",
  "/etc/gai.conf",
  "/etc/protocols",
  "/etc/services",
  "/etc/ssl",
  "/etc/ca-certificates",
  "/etc/pki",
  "/etc/crypto-policies",
  "/etc/localtime",
  "/etc/timezone",
  "/etc/alternatives",
  "/etc/os-release",
  "/etc/mime.types",
] as const;

/** Only with network access: where DNS servers are. */
export const ETC_NETWORK_FILES = ["/etc/resolv.conf"] as const;

/** Files synthesised for the sandbox and passed to bwrap through file descriptors. */
export interface SandboxDataFile {
  sandboxPath: string;
  content: string;
}

export interface BwrapArgsPlan {
  /** Host path of the job's work dir, bound read-write at /work. */
  workDir: string;
  network: boolean;
  /** Environment of the job, exactly (bwrap starts from an empty one). */
  env: Record<string, string>;
  system: SystemEntry[];
  etcFiles: readonly string[];
  devices: SandboxBind[];
  runtimeBinds: SandboxBind[];
  /** The fd numbers each data file will arrive on, in order. */
  dataFiles: { fd: number; file: SandboxDataFile }[];
  /** Whether bwrap supports `--disable-userns` (0.8.0 and later). */
  disableUserns: boolean;
  /**
   * Size of a tmpfs of its own at /dev/shm (needs bwrap's `--size`, 0.6.0 and later); /dev is
   * then read-only. Without it /dev/shm is a dir in bwrap's /dev tmpfs, with no size of its own.
   */
  shmBytes?: number;
}

/**
 * bubblewrap's options for one job (everything before `--`), meant to be passed through
 * `--args FD` so that the job's environment never appears on a command line in `ps`.
 *
 * The sandbox: new user, pid, ipc, uts and cgroup namespaces, and a net namespace (only loopback)
 * unless `network`; an empty read-only root holding the host's program and library dirs
 * (read-only), a few /etc files, a fresh /proc, a minimal /dev plus the job's GPU nodes and a
 * bounded /dev/shm, and the
 * work dir, the only writable place, at /work and (its `tmp/`) at /tmp. It dies with the node.
 */
export function bwrapArgs(plan: BwrapArgsPlan): string[] {
  const args = [
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    ...(plan.network ? [] : ["--unshare-net"]),
    ...(plan.disableUserns ? ["--disable-userns"] : []),
    "--hostname",
    SANDBOX_HOSTNAME,
    "--die-with-parent",
    "--new-session",
    "--clearenv",
  ];
  for (const [name, value] of Object.entries(plan.env)) args.push("--setenv", name, value);
  for (const entry of plan.system) {
    if (entry.kind === "bind") args.push("--ro-bind", entry.path, entry.path);
    else args.push("--symlink", entry.target, entry.path);
  }
  args.push("--perms", "0755", "--dir", "/etc");
  for (const file of plan.etcFiles) args.push("--ro-bind-try", file, file);
  for (const { fd, file } of plan.dataFiles)
    args.push("--perms", "0644", "--ro-bind-data", String(fd), file.sandboxPath);
  args.push("--proc", "/proc", "--dev", "/dev");
  for (const device of plan.devices) args.push("--dev-bind", device.hostPath, device.sandboxPath);
  if (plan.shmBytes !== undefined) {
    // Shared memory (PyTorch's DataLoader passes batches through it) lives in RAM, outside the
    // memory rlimit: give it a bound, and make the rest of /dev read-only so it cannot be used instead.
    args.push("--size", String(plan.shmBytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev");
  }
  for (const bind of plan.runtimeBinds) args.push("--ro-bind", bind.hostPath, bind.sandboxPath);
  args.push(
    "--bind",
    plan.workDir,
    SANDBOX_WORK_DIR,
    "--bind",
    path.join(plan.workDir, "tmp"),
    "/tmp",
    "--symlink",
    "../tmp",
    "/var/tmp",
    "--chdir",
    SANDBOX_WORK_DIR,
    // Last: the root and the dirs bwrap created in it (/etc, /opt, /var) become read-only.
    "--remount-ro",
    "/",
  );
  return args;
}
