/**
 * The reverse proxy users would otherwise deploy, as a reference for `bench:serve`: nginx (the
 * Debian package) as two hops in front of a job's Unix socket, client → nginx → nginx over TLS →
 * the socket, each hop with keep-alive upstream connections, as a load balancer in front of a
 * remote server would be set up.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { promisify } from "node:util";

import { selfSignedCertificate } from "../deploy/certificate.ts";

export interface NginxPair {
  /** The outer hop's port on 127.0.0.1 (plain HTTP). */
  port: number;
  /** The master processes (their workers are their children). */
  pids: number[];
  stop(): Promise<void>;
}

/** Whether nginx is on the PATH (or in /usr/sbin, where Debian puts it). */
export async function nginxBinary(): Promise<string | undefined> {
  for (const candidate of ["nginx", "/usr/sbin/nginx"]) {
    const found = await promisify(execFile)(candidate, ["-v"]).then(
      () => true,
      () => false,
    );
    if (found) return candidate;
  }
  return undefined;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Resolves once something accepts connections on `port` (nginx gives no other sign it is up). */
async function listening(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nginx did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** One nginx instance (master + one worker, like one core of a proxy machine) serving `server`. */
function config(dir: string, name: string, upstream: string, server: string): string {
  const at = (file: string) => path.join(dir, `${name}-${file}`);
  return `
${process.getuid?.() === 0 ? "user root;" : ""}
worker_processes 1;
daemon off;
pid ${at("nginx.pid")};
error_log ${at("error.log")} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${at("body")};
  proxy_temp_path ${at("proxy")};
  fastcgi_temp_path ${at("fastcgi")};
  uwsgi_temp_path ${at("uwsgi")};
  scgi_temp_path ${at("scgi")};
  keepalive_requests 1000000;
  upstream next { ${upstream} keepalive 64; keepalive_requests 1000000; }
  server {
    ${server}
    location / {
      proxy_pass $scheme_next://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_session_reuse on;
    }
  }
}
`;
}

/** Starts the two hops in front of `socket`, with a fresh self-signed certificate for the inner one. */
export async function startNginxPair(binary: string, socket: string, dir: string): Promise<NginxPair> {
  await mkdir(dir, { recursive: true });
  const { certFile: cert, keyFile: key } = await selfSignedCertificate(dir);
  const [outerPort, innerPort] = [await freePort(), await freePort()];
  const inner = config(
    dir,
    "inner",
    `server unix:${socket};`,
    `listen 127.0.0.1:${innerPort} ssl; ssl_certificate ${cert}; ssl_certificate_key ${key};`,
  ).replace("$scheme_next", "http");
  const outer = config(dir, "outer", `server 127.0.0.1:${innerPort};`, `listen 127.0.0.1:${outerPort};`).replace(
    "$scheme_next",
    "https",
  );
  const children: ChildProcess[] = [];
  for (const [name, text] of [
    ["inner", inner],
    ["outer", outer],
  ] as const) {
    const file = path.join(dir, `${name}.conf`);
    await writeFile(file, text);
    children.push(spawn(binary, ["-e", path.join(dir, `${name}-error.log`), "-c", file], { stdio: "inherit" }));
  }
  await Promise.all([listening(innerPort, 10_000), listening(outerPort, 10_000)]);
  return {
    port: outerPort,
    pids: children.map((c) => c.pid!),
    async stop() {
      await Promise.all(
        children.map(async (child) => {
          if (child.exitCode !== null) return;
          const exited = new Promise((resolve) => child.once("exit", resolve));
          child.kill("SIGQUIT");
          await exited;
        }),
      );
    },
  };
}
