import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

/** A JSON-RPC request as the proxy saw it. */
export interface ProxiedRequest {
  method: string;
  params: unknown[];
}

/** What the proxy does with a request instead of forwarding it. */
export type RpcFault =
  /** Answers with a JSON-RPC error (`-32603 internal error`), as an overloaded node does. */
  | "error"
  /** Closes the connection without an answer. */
  | "drop"
  /** Never answers (until the proxy stops). */
  | "blackhole"
  /**
   * Answers as a node one transaction behind does: the nonce `eth_getTransactionCount` and
   * `eth_fillTransaction` give is one less than the chain's.
   */
  | "behind";

export interface RpcProxy {
  url: string;
  /** Where requests go; settable, for a proxy started before its chain. */
  target: string;
  /** Every request received, in order (a batch counts each of its calls). */
  requests: ProxiedRequest[];
  /** Applies `fault` to the next `count` calls of `method` (`*`: any method). */
  fail(method: string, fault: RpcFault, count?: number): void;
  /** Ends every fault: requests held by a black hole are dropped, new ones forwarded. */
  heal(): void;
  stop(): Promise<void>;
}

export interface RpcProxyOptions {
  /** Refuses `eth_getLogs` spanning more blocks than this, as public RPC nodes do (error -32005). */
  maxLogRange?: bigint;
}

interface Call {
  jsonrpc: "2.0";
  id: number | string | null;
  method: string;
  params?: unknown[];
}

/**
 * A JSON-RPC proxy on 127.0.0.1 in front of a chain, for tests of what public endpoints do: cap
 * `eth_getLogs` ranges and fail chosen calls. Everything else is forwarded unchanged.
 */
export async function startRpcProxy(target = "", options: RpcProxyOptions = {}): Promise<RpcProxy> {
  const requests: ProxiedRequest[] = [];
  const faults: { method: string; fault: RpcFault; left: number }[] = [];
  const sockets = new Set<Socket>();
  const held = new Set<ServerResponse>();

  const faultFor = (method: string): RpcFault | undefined => {
    const entry = faults.find((f) => f.left > 0 && (f.method === method || f.method === "*"));
    if (!entry) return undefined;
    entry.left -= 1;
    return entry.fault;
  };

  const rangeRefusal = (call: Call): string | undefined => {
    if (options.maxLogRange === undefined || call.method !== "eth_getLogs") return undefined;
    const filter = (call.params?.[0] ?? {}) as { fromBlock?: string; toBlock?: string };
    if (!filter.fromBlock?.startsWith("0x") || !filter.toBlock?.startsWith("0x")) {
      return `eth_getLogs needs explicit block numbers here (max range ${options.maxLogRange})`;
    }
    const span = BigInt(filter.toBlock) - BigInt(filter.fromBlock) + 1n;
    return span > options.maxLogRange ? `block range too large: ${span} > ${options.maxLogRange} blocks` : undefined;
  };

  const forward = async (body: string): Promise<string> => {
    const response = await fetch(proxy.target, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    return response.text();
  };

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const parsed = JSON.parse(body) as Call | Call[];
    const calls = Array.isArray(parsed) ? parsed : [parsed];
    for (const call of calls) requests.push({ method: call.method, params: call.params ?? [] });

    const fault = calls.map((call) => faultFor(call.method)).find((f) => f !== undefined);
    if (fault === "drop") {
      request.socket.destroy();
      return;
    }
    if (fault === "blackhole") {
      held.add(response);
      return;
    }
    const refusals = calls.map(rangeRefusal);
    let answer: string;
    if (fault === "error") {
      answer = JSON.stringify(
        calls.map((call) => ({ jsonrpc: "2.0", id: call.id, error: { code: -32603, message: "internal error" } })),
      );
    } else if (refusals.some((r) => r !== undefined)) {
      answer = JSON.stringify(
        await Promise.all(
          calls.map(async (call, i) =>
            refusals[i]
              ? { jsonrpc: "2.0", id: call.id, error: { code: -32005, message: refusals[i] } }
              : (JSON.parse(await forward(JSON.stringify(call))) as unknown),
          ),
        ),
      );
    } else if (fault === "behind") {
      answer = JSON.stringify(
        await Promise.all(
          calls.map(async (call) => {
            const reply = JSON.parse(await forward(JSON.stringify(call))) as {
              result?: string | { tx: { nonce: string } };
            };
            const before = (nonce: string) => `0x${(BigInt(nonce) - 1n).toString(16)}`;
            if (call.method === "eth_getTransactionCount" && typeof reply.result === "string") {
              reply.result = before(reply.result);
            }
            if (call.method === "eth_fillTransaction" && typeof reply.result === "object") {
              reply.result.tx.nonce = before(reply.result.tx.nonce);
            }
            return reply;
          }),
        ),
      );
    } else {
      answer = await forward(body);
    }
    if (!Array.isArray(parsed) && answer.startsWith("[")) answer = JSON.stringify((JSON.parse(answer) as unknown[])[0]);
    response.writeHead(200, { "content-type": "application/json" }).end(answer);
  };

  const server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      response.writeHead(502).end(String(error));
    });
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;

  const proxy: RpcProxy = {
    url: `http://127.0.0.1:${port}`,
    target,
    requests,
    fail(method, fault, count = 1) {
      faults.push({ method, fault, left: count });
    },
    heal() {
      faults.length = 0;
      for (const response of held) response.destroy();
      held.clear();
    },
    async stop() {
      for (const response of held) response.destroy();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
