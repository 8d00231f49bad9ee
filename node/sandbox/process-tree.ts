import { readdirSync, readFileSync } from "node:fs";

/** One process as `/proc/<pid>/stat` describes it. */
export interface ProcessEntry {
  pid: number;
  ppid: number;
  pgid: number;
  /** R, S, D, Z (zombie: dead, waiting to be reaped), … */
  state: string;
  /** Clock ticks after boot when it started: with the pid, names one process even after pid reuse. */
  startTime: number;
  /** CPU so far in clock ticks: its own (user + system), and that of the children it reaped. */
  cpuTicks: { own: number; reaped: number };
}

/** One process from its `/proc/<pid>/stat`, or undefined when it is gone. */
export function processEntry(pid: number): ProcessEntry | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
  // Field N of stat(5) is at N - 3 here: the state (field 3) comes first.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const number = (field: number): number => Number(fields[field - 3]);
  return {
    pid,
    ppid: number(4),
    pgid: number(5),
    state: fields[0] ?? "",
    startTime: number(22),
    cpuTicks: { own: number(14) + number(15), reaped: number(16) + number(17) },
  };
}

/**
 * A snapshot of every process this one can see, from `/proc`. Processes that exit while it is
 * read are skipped. Linux only, like the rest of the sandbox.
 */
export function processTable(): ProcessEntry[] {
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .flatMap((name) => processEntry(Number(name)) ?? []);
}

/**
 * The children of `pid` (from the kernel's own list, `/proc/<pid>/task/<pid>/children`, without
 * reading the whole table: a job's start asks for them, on a node that may run hundreds of processes).
 */
export function childrenOf(pid: number): ProcessEntry[] {
  let list: string;
  try {
    list = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8");
  } catch {
    // A kernel built without CONFIG_PROC_CHILDREN.
    return processTable().filter((entry) => entry.ppid === pid);
  }
  return list
    .split(" ")
    .filter((word) => word !== "")
    .flatMap((child) => processEntry(Number(child)) ?? []);
}

/** Pids of every process below `root` (its children, their children, …), not `root` itself. */
export function descendants(root: number, table: ProcessEntry[] = processTable()): number[] {
  const children = new Map<number, number[]>();
  for (const entry of table) {
    const list = children.get(entry.ppid);
    if (list) list.push(entry.pid);
    else children.set(entry.ppid, [entry.pid]);
  }
  const found: number[] = [];
  const queue = [...(children.get(root) ?? [])];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    found.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return found;
}

/**
 * Whether the process `pid` that started at `startTime` still runs: false once it is a zombie or
 * gone (and its pid possibly reused).
 */
export function stillRunning(pid: number, startTime: number): boolean {
  const entry = processEntry(pid);
  return entry !== undefined && entry.startTime === startTime && entry.state !== "Z";
}

/** Pids of the live (not zombie) members of process group `pgid`. */
export function groupMembers(pgid: number, table: ProcessEntry[] = processTable()): number[] {
  return table.filter((entry) => entry.pgid === pgid && entry.state !== "Z").map((entry) => entry.pid);
}

/**
 * Sends `signal` to a pid (or, negative, a process group); false when there is no such process or
 * it may not be signalled. Never throws: it runs from timers, where a throw would take the node down.
 */
export function trySignal(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}
