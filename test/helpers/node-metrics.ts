import { runIn, type Host } from "../../deploy/netns.ts";
import type { Spawned } from "../../deploy/processes.ts";

/**
 * A provider node's Prometheus metrics, as Prometheus scrapes them, read where the node runs: on
 * this machine's loopback, or inside its host's network namespace (its metrics listen on that
 * host's 127.0.0.1).
 */
export async function nodeMetrics(node: Spawned, host?: Host): Promise<string> {
  const line = await node.waitFor(/metrics on http:\/\/127\.0\.0\.1:\d+\/metrics/);
  const url = /(http:\S+)/.exec(line)![1]!;
  if (!host) return (await fetch(url)).text();
  return runIn(host.netns, [
    process.execPath,
    "-e",
    `fetch("${url}").then((r) => r.text()).then((t) => process.stdout.write(t))`,
  ]);
}

/** One sample's value in a scrape (`series` with its labels, exactly as exposed); NaN if absent. */
export function sample(metrics: string, series: string): number {
  const line = metrics.split("\n").find((l) => l.startsWith(`${series} `));
  return Number(line?.slice(series.length + 1));
}

/**
 * The block-stream bytes a node has sent since it started, by path: through a relay, or direct (on a
 * direct libp2p connection or a block lane), and of those on a block lane.
 */
export async function blockBytesSent(
  node: Spawned,
  host?: Host,
): Promise<{ relayed: number; direct: number; lane: number }> {
  const metrics = await nodeMetrics(node, host);
  // A counter with labels has no sample until its first increment.
  const sent = (path: string): number => sample(metrics, `baton_block_stream_bytes_sent_total{path="${path}"}`) || 0;
  return { relayed: sent("relayed"), direct: sent("direct") + sent("lane"), lane: sent("lane") };
}
