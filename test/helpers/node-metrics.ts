import { runIn, type Host } from "../../deploy/netns.ts";
import type { Spawned } from "../../deploy/processes.ts";

/**
 * A provider node's Prometheus metrics, read where the node runs: on this machine's loopback, or
 * inside its host's network namespace (its metrics listen on that host's 127.0.0.1).
 */
export async function nodeMetrics(node: Spawned, host?: Host): Promise<string> {
  const started = node.lines.find((line) => line.includes('"msg":"provider node started"'));
  if (!started) throw new Error("the node has not said it started");
  const { metricsPort } = JSON.parse(started) as { metricsPort?: number };
  if (metricsPort === undefined) throw new Error("the node serves no metrics");
  const url = `http://127.0.0.1:${metricsPort}/metrics`;
  if (!host) return (await fetch(url)).text();
  return runIn(host.netns, [
    process.execPath,
    "-e",
    `fetch("${url}").then((r) => r.text()).then((t) => process.stdout.write(t))`,
  ]);
}

/** The block-stream bytes a node has sent since it started, by connection: through a relay, or direct. */
export async function blockBytesSent(node: Spawned, host?: Host): Promise<{ relayed: number; direct: number }> {
  const text = await nodeMetrics(node, host);
  const counter = (path: string): number =>
    Number(new RegExp(`^baton_block_stream_bytes_sent_total\\{path="${path}"\\} (\\S+)$`, "m").exec(text)?.[1] ?? 0);
  return { relayed: counter("relayed"), direct: counter("direct") };
}
