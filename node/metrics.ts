import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A tiny Prometheus registry: counters and gauges with optional labels, rendered in the text
 * exposition format. Enough for a node's own metrics without pulling in a client library.
 */
type Labels = Record<string, string>;

interface Metric {
  type: "counter" | "gauge";
  help: string;
  values: Map<string, { labels: Labels; value: number }>;
}

const labelKey = (labels: Labels): string =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(",");

const escapeLabel = (value: string): string => value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

export class Metrics {
  readonly #metrics = new Map<string, Metric>();

  #metric(name: string, type: Metric["type"], help: string): Metric {
    let metric = this.#metrics.get(name);
    if (!metric) {
      metric = { type, help, values: new Map() };
      this.#metrics.set(name, metric);
    }
    return metric;
  }

  /** Adds `by` (default 1) to a counter. */
  inc(name: string, help: string, labels: Labels = {}, by = 1): void {
    const metric = this.#metric(name, "counter", help);
    const key = labelKey(labels);
    const current = metric.values.get(key);
    metric.values.set(key, { labels, value: (current?.value ?? 0) + by });
  }

  /** Sets a gauge. */
  set(name: string, help: string, value: number, labels: Labels = {}): void {
    this.#metric(name, "gauge", help).values.set(labelKey(labels), { labels, value });
  }

  /** The registry in Prometheus text format. */
  render(): string {
    const lines: string[] = [];
    for (const [name, metric] of this.#metrics) {
      lines.push(`# HELP ${name} ${metric.help}`, `# TYPE ${name} ${metric.type}`);
      for (const { labels, value } of metric.values.values()) {
        const rendered = Object.entries(labels)
          .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
          .join(",");
        lines.push(`${name}${rendered ? `{${rendered}}` : ""} ${value}`);
      }
    }
    return lines.join("\n") + "\n";
  }
}

/**
 * Serves `GET /metrics` on 127.0.0.1 only: metrics reveal earnings and load, so they are not
 * exposed beyond the machine unless an operator puts a proxy in front.
 */
export async function serveMetrics(metrics: Metrics, port: number): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer((request, response) => {
    if (request.method === "GET" && request.url === "/metrics") {
      response.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      response.end(metrics.render());
    } else {
      response.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
