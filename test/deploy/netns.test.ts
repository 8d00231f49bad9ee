import { execFile, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { promisify } from "node:util";

import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";

import {
  listNamespaces,
  removeStaleNamespaces,
  startNetwork,
  type Host,
  type NetworkOfHosts,
} from "../../deploy/netns.ts";
import type { PeerRole } from "../helpers/netns-peer.ts";

const run = promisify(execFile);

// Real namespaces, veth pairs, a bridge and iptables' NAT: root only (CI runs as root).
const root = process.getuid?.() === 0;

/**
 * A TCP server in `host`'s namespace (a child Node process) that answers each connection with the
 * address it came from, then closes it.
 */
async function startEchoAddress(host: Host, port: number): Promise<void> {
  const script = `require("node:net").createServer((s) => s.end(s.remoteAddress)).listen(${port}, "0.0.0.0", () => console.log("up"))`;
  const [command, ...args] = host.command([process.execPath, "-e", script]);
  const child = spawn(command!, args, { stdio: ["ignore", "pipe", "inherit"] });
  onTestFinished(() => void child.kill("SIGKILL"));
  const [chunk] = (await once(child.stdout, "data")) as [Buffer];
  expect(chunk.toString()).toBe("up\n");
}

/** What `from` reads from `address:port` (a connection made inside its namespace), or the error's code. */
async function dial(from: Host, address: string, port: number): Promise<string> {
  const script = `const s = require("node:net").connect(${port}, "${address}"); let got = ""; s.on("data", (d) => (got += d)); s.on("end", () => console.log(got)); s.on("error", (e) => console.log(e.code)); s.setTimeout(2000, () => { console.log("TIMEOUT"); s.destroy(); })`;
  const [command, ...args] = from.command([process.execPath, "-e", script]);
  const { stdout } = await run(command!, args);
  return stdout.trim();
}

describe.skipIf(!root)("startNetwork: hosts in network namespaces, one behind a NAT", () => {
  let net: NetworkOfHosts;
  let chain: Host;
  let tenant: Host;
  let home: Host;

  beforeAll(async () => {
    net = await startNetwork([{ name: "chain" }, { name: "tenant" }, { name: "home", behindNat: true }]);
    chain = net.hosts.get("chain")!;
    tenant = net.hosts.get("tenant")!;
    home = net.hosts.get("home")!;
  });
  afterAll(() => net?.close());

  it("gives public hosts their own internet address and a NATed one a LAN address behind its router's", () => {
    expect(chain.address).toBe(chain.publicAddress);
    expect(chain.address).toMatch(/^11\.77\.0\.\d+$/);
    expect(home.address).toMatch(/^10\.\d+\.0\.2$/);
    expect(home.publicAddress).toMatch(/^11\.77\.0\.\d+$/);
    expect(new Set([chain.address, tenant.address, home.publicAddress]).size).toBe(3);
  });

  it("public hosts reach each other directly; the NATed host reaches them from its router's address", async () => {
    await startEchoAddress(chain, 8545);
    expect(await dial(tenant, chain.address, 8545)).toBe(tenant.address);
    expect(await dial(home, chain.address, 8545)).toBe(home.publicAddress);
  });

  it("nobody opens a connection to the NATed host: not to its LAN address, not through its router", async () => {
    await startEchoAddress(home, 4001);
    expect(await dial(home, "127.0.0.1", 4001)).toBe("127.0.0.1");
    expect(await dial(tenant, home.address, 4001)).toMatch(/^(ENETUNREACH|EHOSTUNREACH|TIMEOUT)$/);
    expect(await dial(tenant, home.publicAddress, 4001)).toMatch(/^(ECONNREFUSED|TIMEOUT)$/);
  });

  it("no host reaches the machine's own loopback services", async () => {
    // Its own loopback only: nothing listens on 9 in a fresh namespace.
    expect(await dial(tenant, "127.0.0.1", 9)).toBe("ECONNREFUSED");
  });

  it("close removes every namespace it made, routers and the internet's included", async () => {
    const other = await startNetwork([{ name: "a" }, { name: "b", behindNat: true }]);
    expect(other.namespaces).toHaveLength(4);
    expect(await listNamespaces()).toEqual(expect.arrayContaining([...other.namespaces]));
    await other.close();
    const left = await listNamespaces();
    expect(other.namespaces.filter((name) => left.includes(name))).toEqual([]);
    // This network's are untouched.
    expect(left).toEqual(expect.arrayContaining([...net.namespaces]));
  });

  it("the namespaces of a process killed before its close are removed by the next start", async () => {
    const script = [
      `import("${new URL("../../deploy/netns.ts", import.meta.url).pathname}")`,
      `.then(({ startNetwork }) => startNetwork([{ name: "gone" }]))`,
      `.then((n) => { console.log(JSON.stringify(n.namespaces)); setInterval(() => {}, 1000); })`,
    ].join("");
    const child = spawn(process.execPath, ["--experimental-strip-types", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    onTestFinished(() => void child.kill("SIGKILL"));
    const [chunk] = (await once(child.stdout, "data")) as [Buffer];
    const left = JSON.parse(chunk.toString()) as string[];
    child.kill("SIGKILL");
    await once(child, "exit");
    expect(await listNamespaces()).toEqual(expect.arrayContaining(left));
    // Removed here, or by another test file's start meanwhile: either way by a start.
    const removed = await removeStaleNamespaces();
    const after = await listNamespaces();
    expect(removed.filter((name) => after.includes(name))).toEqual([]);
    expect(left.filter((name) => after.includes(name))).toEqual([]);
    expect(after).toEqual(expect.arrayContaining([...net.namespaces]));
  });
});

describe.skipIf(root)("startNetwork without root", () => {
  it("says what it needs", async () => {
    await expect(startNetwork([{ name: "a" }])).rejects.toThrow("network namespaces need root");
  });
});

/** A `test/helpers/netns-peer.ts` process in `host`'s namespace; resolves once it printed `ready`. */
async function startPeer(host: Host, role: PeerRole): Promise<{ child: ChildProcess; ready: Ready; lines: string[] }> {
  const script = new URL("../helpers/netns-peer.ts", import.meta.url).pathname;
  const [command, ...args] = host.command([
    process.execPath,
    "--disable-warning=ExperimentalWarning",
    script,
    JSON.stringify(role),
  ]);
  const child = spawn(command!, args, { stdio: ["ignore", "pipe", "inherit"] });
  onTestFinished(() => void child.kill("SIGKILL"));
  const lines: string[] = [];
  const ready = await new Promise<Ready>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      lines.push(line);
      if (line.startsWith("ready ")) resolve(JSON.parse(line.slice("ready ".length)) as Ready);
    });
    child.once("exit", (code) =>
      reject(new Error(`${role.role} exited ${code} before it was ready: ${lines.join("\n")}`)),
    );
  });
  return { child, ready, lines };
}

interface Ready {
  peerId: string;
  addresses: string[];
}

describe.skipIf(!root)("a peer behind a NAT, reached through a relay and then directly", () => {
  let net: NetworkOfHosts;
  beforeAll(async () => {
    net = await startNetwork([{ name: "relay" }, { name: "tenant" }, { name: "home", behindNat: true }]);
  });
  afterAll(() => net?.close());

  it("the dialler's first connection goes through the relay; the NATed peer then dials it directly, and new streams take that connection", async () => {
    const relayHost = net.hosts.get("relay")!;
    const home = net.hosts.get("home")!;
    const tenant = net.hosts.get("tenant")!;
    const relay = await startPeer(relayHost, { role: "relay", listen: ["/ip4/0.0.0.0/tcp/4001"] });
    const relayAddress = `/ip4/${relayHost.address}/tcp/4001/p2p/${relay.ready.peerId}`;
    const listener = await startPeer(home, {
      role: "listener",
      listen: ["/ip4/0.0.0.0/tcp/4001", `${relayAddress}/p2p-circuit`],
    });
    const target = `${relayAddress}/p2p-circuit/p2p/${listener.ready.peerId}`;
    const dialler = await startPeer(tenant, {
      role: "dialler",
      // Nothing announced: libp2p tells peers its interface's public address once AutoNAT has
      // confirmed it (the relay dialled it back), and the NATed peer dials that.
      listen: ["/ip4/0.0.0.0/tcp/4001"],
      target,
      waitMs: 20_000,
    });
    const [code] = (await once(dialler.child, "exit")) as [number | null];
    expect(code).toBe(0);
    const outcome = JSON.parse(dialler.lines.at(-1)!) as {
      relayed: string;
      direct: string | null;
      echoConnection: string;
    };
    expect(outcome.relayed).toBe(target);
    // Direct, from the NAT's public address (the port is the router's mapping).
    expect(outcome.direct).toMatch(
      new RegExp(`^/ip4/${home.publicAddress.replaceAll(".", "\\.")}/tcp/\\d+/p2p/${listener.ready.peerId}$`),
    );
    expect(outcome.echoConnection).toBe(outcome.direct);
  });
});
