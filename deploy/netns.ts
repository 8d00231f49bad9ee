import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { rm } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * Separate hosts on one machine, for a devnet that is not one loopback (issue 21): each host a
 * Linux network namespace with its own interface on a shared "internet" (a bridge in a namespace of
 * its own), and a host `behindNat` reached only through a router namespace that masquerades its
 * traffic (iptables MASQUERADE) and lets nothing in that it did not send out first, as a home router
 * does. Nothing outside the namespaces made here is touched: no interface, route or rule of the
 * machine's own namespace changes, and nothing here can reach the machine's network.
 *
 * Each namespace is named `baton-<pid>-…` after the process that made it. {@link NetworkOfHosts.close}
 * removes them; a process killed before it could leaves them, and the next {@link startNetwork}
 * removes every `baton-<pid>-…` namespace whose process is gone.
 *
 * Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` (iproute2) and `iptables`.
 */

/** The internet's addresses: a /24 no real network routes to these namespaces, public to libp2p. */
export const INTERNET_PREFIX = "11.77.0";

export interface HostSpec {
  /** Letters, digits and dashes; at most 8, as it names interfaces (15 characters at most). */
  name: string;
  /** Behind a NAT of its own: reaches the internet through a masquerading router, is reached by nobody. */
  behindNat?: boolean;
}

export interface Host {
  name: string;
  /** Its network namespace (`/run/netns/<netns>`). */
  netns: string;
  /** The address it has on its own interface: on the internet, or on its NAT's LAN. */
  address: string;
  /** The address the internet sees its connections come from: its own, or its NAT's. */
  publicAddress: string;
  /** `argv` run inside the host's network namespace: what to spawn instead of `argv` (see {@link inNamespace}). */
  command(argv: readonly string[]): string[];
}

export interface NetworkOfHosts {
  hosts: ReadonlyMap<string, Host>;
  /** Every namespace this network made, routers and the internet's included. */
  namespaces: readonly string[];
  /** Removes every namespace it made (and so every interface and rule in them). Safe to call twice. */
  close(): Promise<void>;
}

const NAME = /^[a-z0-9-]{1,8}$/;
const OURS = /^baton-(\d+)-/;

async function ip(...args: string[]): Promise<void> {
  await run("ip", args);
}

/**
 * `argv` run in network namespace `ns` and nothing else: `nsenter --net`. Not `ip netns exec`,
 * which also gives the process a mount namespace of its own (to mount the namespace's /sys): a copy
 * of every mount of the moment, which on a machine whose mounts are private (no systemd) never sees
 * their unmounts. A provider's job work dir unmounted meanwhile then stays alive in that copy, its
 * loop device held until the process exits: a provider node waited 30 s for it, twice, in CI.
 */
export function inNamespace(ns: string, argv: readonly string[]): string[] {
  return ["nsenter", `--net=/run/netns/${ns}`, "--", ...argv];
}

/** Runs `argv` in network namespace `ns` to its end; resolves with what it printed. */
export async function runIn(ns: string, argv: readonly string[]): Promise<string> {
  const [command, ...args] = inNamespace(ns, argv);
  return (await run(command!, args)).stdout;
}

/** `ip netns list`'s names (it prints `name (id: n)` for namespaces with an id). */
export async function listNamespaces(): Promise<string[]> {
  const { stdout } = await run("ip", ["netns", "list"]);
  return stdout
    .split("\n")
    .map((line) => line.split(" ")[0]!)
    .filter(Boolean);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: alive, another user's.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Removes the namespaces of networks whose process is gone (killed before its `close`). Several
 * processes may do so at once: one that finds a namespace gone when it comes to it leaves it be.
 *
 * @returns the names this call removed.
 */
export async function removeStaleNamespaces(): Promise<string[]> {
  const stale = (await listNamespaces()).filter((name) => {
    const pid = OURS.exec(name)?.[1];
    return pid !== undefined && Number(pid) !== process.pid && !isAlive(Number(pid));
  });
  const removed: string[] = [];
  for (const name of stale) {
    try {
      await ip("netns", "delete", name);
      removed.push(name);
    } catch (error) {
      // Another process's start removed it first.
      if ((await listNamespaces()).includes(name)) throw error;
    }
  }
  return removed;
}

/**
 * Makes `hosts` on a fresh internet (see above). Every host can reach every public host; a host
 * behind a NAT can reach them too, from its router's address, and no host can open a connection to
 * it. Each namespace has its loopback up.
 *
 * @throws {Error} without root, `ip` or `iptables`, or for a bad or repeated host name; whatever was
 *   made before the failure is removed.
 * @example
 * const net = await startNetwork([{ name: "chain" }, { name: "p1", behindNat: true }]);
 * try { spawn(...net.hosts.get("p1")!.command(["node", "provider.js"])); } finally { await net.close(); }
 */
export async function startNetwork(hosts: readonly HostSpec[]): Promise<NetworkOfHosts> {
  if (process.getuid?.() !== 0) throw new Error("network namespaces need root");
  const names = new Set<string>();
  for (const { name } of hosts) {
    if (!NAME.test(name)) throw new Error(`host name ${JSON.stringify(name)}: 1–8 of a-z, 0-9 and -`);
    if (names.has(name)) throw new Error(`host ${name} is named twice`);
    names.add(name);
  }
  if (hosts.length > 200) throw new Error("at most 200 hosts");
  await removeStaleNamespaces();

  const prefix = `baton-${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
  const made: string[] = [];
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      const existing = new Set(await listNamespaces());
      for (const name of made.reverse()) if (existing.has(name)) await ip("netns", "delete", name);
    })());
  const namespace = async (suffix: string): Promise<string> => {
    const name = `${prefix}-${suffix}`;
    await ip("netns", "add", name);
    made.push(name);
    await ip("-n", name, "link", "set", "lo", "up");
    return name;
  };
  /** A veth pair from `ns` (as `inside`) to the internet's bridge (as `port`), with `address`/24. */
  const plug = async (ns: string, inside: string, port: string, address: string): Promise<void> => {
    await ip("-n", internet, "link", "add", port, "type", "veth", "peer", "name", inside, "netns", ns);
    await ip("-n", internet, "link", "set", port, "master", "br0", "up");
    await ip("-n", ns, "addr", "add", `${address}/24`, "dev", inside);
    await ip("-n", ns, "link", "set", inside, "up");
  };

  let internet = "";
  try {
    internet = await namespace("internet");
    await ip("-n", internet, "link", "add", "br0", "type", "bridge");
    await ip("-n", internet, "link", "set", "br0", "up");
    const result = new Map<string, Host>();
    let next = 1;
    for (const [index, spec] of hosts.entries()) {
      const ns = await namespace(spec.name);
      const publicAddress = `${INTERNET_PREFIX}.${next++}`;
      let address = publicAddress;
      if (!spec.behindNat) {
        await plug(ns, "eth0", `h-${spec.name}`, publicAddress);
      } else {
        // Host ⇄ router on a LAN of its own (10.<index>.0.0/24), router ⇄ internet.
        const router = await namespace(`${spec.name}-nat`);
        const lan = `10.${index + 1}.0`;
        address = `${lan}.2`;
        await plug(router, "wan", `r-${spec.name}`, publicAddress);
        await ip("-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", ns);
        await ip("-n", router, "addr", "add", `${lan}.1/24`, "dev", "lan");
        await ip("-n", router, "link", "set", "lan", "up");
        await ip("-n", ns, "addr", "add", `${address}/24`, "dev", "eth0");
        await ip("-n", ns, "link", "set", "eth0", "up");
        await ip("-n", ns, "route", "add", "default", "via", `${lan}.1`);
        // Forwarding is per namespace; /proc/sys/net shows the namespace of the process reading it.
        await runIn(router, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        const iptables = (...args: string[]) => runIn(router, ["iptables", ...args]);
        await iptables("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE");
        // In from the internet only what answers a connection from inside (a hole punch's SYN
        // included: it matches the mapping the host's own SYN made).
        await iptables(
          "-A",
          "FORWARD",
          "-i",
          "wan",
          "-o",
          "lan",
          "-m",
          "conntrack",
          "--ctstate",
          "ESTABLISHED,RELATED",
          "-j",
          "ACCEPT",
        );
        await iptables("-A", "FORWARD", "-i", "wan", "-o", "lan", "-j", "DROP");
      }
      result.set(spec.name, {
        name: spec.name,
        netns: ns,
        address,
        publicAddress,
        command: (argv) => inNamespace(ns, argv),
      });
    }
    return { hosts: result, namespaces: made, close };
  } catch (error) {
    await close().catch(() => undefined);
    throw error;
  }
}

/** Pipes two sockets both ways; either one's end or error ends both. */
function splice(a: Socket, b: Socket): void {
  a.pipe(b);
  b.pipe(a);
  a.on("error", () => b.destroy());
  b.on("error", () => a.destroy());
  a.on("close", () => b.destroy());
  b.on("close", () => a.destroy());
}

/**
 * Makes `127.0.0.1:<port>` inside `host`'s namespace reach `127.0.0.1:<target>` of this process's
 * namespace (a service the test runs there, such as the devnet's chain), without touching this
 * namespace's network: a process in the host's namespace forwards each connection to a Unix socket
 * at `socket` (file systems are shared across network namespaces), which this process forwards on.
 * `target` may be a function, read at each connection, for a service started later. The forwarder
 * in the namespace exits with this process (its stdin closes).
 */
export async function forwardFromHost(
  host: Pick<Host, "command">,
  { port, target, socket }: { port: number; target: number | (() => number); socket: string },
): Promise<{ close(): Promise<void> }> {
  await rm(socket, { force: true });
  const server = createServer((inbound) =>
    splice(inbound, connect(typeof target === "number" ? target : target(), "127.0.0.1")),
  );
  server.listen(socket);
  await once(server, "listening");
  const script = [
    'const net = require("node:net");',
    `net.createServer((s) => { const o = net.connect(${JSON.stringify(socket)});`,
    "s.pipe(o); o.pipe(s); s.on('error', () => o.destroy()); o.on('error', () => s.destroy());",
    "s.on('close', () => o.destroy()); o.on('close', () => s.destroy()); })",
    `.listen(${port}, "127.0.0.1", () => console.log("up"));`,
    'process.stdin.on("end", () => process.exit()).resume();',
  ].join(" ");
  const [command, ...args] = host.command([process.execPath, "-e", script]);
  const child = spawn(command!, args, { stdio: ["pipe", "pipe", "inherit"] });
  const [chunk] = (await Promise.race([
    once(child.stdout!, "data"),
    once(child, "exit").then(() => {
      throw new Error(`the forwarder to port ${port} exited before it listened`);
    }),
  ])) as [Buffer];
  if (chunk.toString().trim() !== "up") throw new Error(`the forwarder to port ${port} said ${chunk.toString()}`);
  return {
    async close() {
      child.kill("SIGKILL");
      server.close();
      await rm(socket, { force: true });
    },
  };
}
