/**
 * Baton example server job: a small deterministic text classifier behind HTTP, for `serve`.
 *
 * The model is a two-layer network over hashed character trigrams, its weights drawn from a seeded
 * generator (SERVE_SEED), so every replica on every provider answers the same input with the same
 * bytes, and nothing is downloaded. It listens on $BATON_HTTP_SOCKET (the provider node proxies
 * its tenant's requests there; the job needs no network), or on $PORT when run by hand.
 *
 *   GET  /health                  200 once the model is loaded
 *   GET  /predict?text=…          {"label","scores","model"}
 *   POST /predict {"text": "…"}   the same, for longer inputs
 *   GET  /stream?text=…&n=N&every=MS   server-sent events: N predictions (≤ 10,000), one every MS ms,
 *                                 as a model streams its tokens
 *   ?delay=MS on any of these     waits MS ms before answering (≤ 10 s), to keep a request in flight
 *   SERVE_IDLE_CLOSE_MS=MS        closes a connection idle MS ms, unannounced (as some servers do)
 *   GET  /ws?every=MS             a WebSocket: each text message is answered with its prediction;
 *                                 with `every`, also {"tick": i} every MS ms, as a server that pushes
 *
 * Every answer carries `x-baton-lease` (the lease of the replica that served it).
 */
import { createHash } from "node:crypto";
import { rmSync } from "node:fs";
import http from "node:http";
import { clearInterval, setInterval } from "node:timers";
import { setTimeout as sleep } from "node:timers/promises";
import { URL } from "node:url";

const FEATURES = 256;
const HIDDEN = 32;
const LABELS = ["negative", "neutral", "positive", "question"];
const seed = Number(process.env.SERVE_SEED ?? 1);

function mulberry32(a) {
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = mulberry32(seed);
const w1 = Float64Array.from({ length: FEATURES * HIDDEN }, () => (random() - 0.5) * 0.2);
const w2 = Float64Array.from({ length: HIDDEN * LABELS.length }, () => (random() - 0.5) * 0.5);

function features(text) {
  const x = new Float64Array(FEATURES);
  const s = ` ${text.toLowerCase()} `;
  for (let i = 0; i + 3 <= s.length; i++) {
    let h = 2166136261;
    for (let j = i; j < i + 3; j++) h = Math.imul(h ^ s.charCodeAt(j), 16777619);
    x[(h >>> 0) % FEATURES] += 1;
  }
  return x;
}

function predict(text) {
  const x = features(text);
  const h = new Float64Array(HIDDEN);
  for (let j = 0; j < HIDDEN; j++) {
    let sum = 0;
    for (let i = 0; i < FEATURES; i++) sum += x[i] * w1[i * HIDDEN + j];
    h[j] = Math.max(0, sum);
  }
  const logits = LABELS.map((_, k) => {
    let sum = 0;
    for (let j = 0; j < HIDDEN; j++) sum += h[j] * w2[j * LABELS.length + k];
    return sum;
  });
  const max = Math.max(...logits);
  const exps = logits.map((l) => Math.exp(l - max));
  const total = exps.reduce((a, b) => a + b, 0);
  const scores = exps.map((e) => Number((e / total).toFixed(6)));
  return { label: LABELS[scores.indexOf(Math.max(...scores))], scores, model: `mlp-trigram-seed${seed}` };
}

const send = (res, status, body) => {
  res.writeHead(status, { "content-type": "application/json", "x-baton-lease": process.env.BATON_LEASE_ID ?? "local" });
  res.end(JSON.stringify(body));
};

/** Server-sent events: one prediction per event, each on a longer prefix of the text. */
async function stream(url, res) {
  const text = url.searchParams.get("text") ?? "";
  const n = Math.min(10_000, Math.max(1, Number(url.searchParams.get("n") ?? 10) || 10));
  const every = Math.min(10_000, Math.max(0, Number(url.searchParams.get("every") ?? 100) || 0));
  res.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-baton-lease": process.env.BATON_LEASE_ID ?? "local",
  });
  for (let i = 0; i < n && !res.destroyed; i++) {
    const lease = process.env.BATON_LEASE_ID ?? "local";
    res.write(`data: ${JSON.stringify({ i, lease, ...predict(`${text} ${i}`) })}\n\n`);
    if (every > 0) await sleep(every);
  }
  res.end();
}

/** Answers one request; throws when the client goes away mid-body (see below). */
async function handle(req, res) {
  const url = new URL(req.url ?? "/", "http://job");
  const delay = Math.min(10_000, Math.max(0, Number(url.searchParams.get("delay") ?? 0) || 0));
  if (url.pathname === "/health") return send(res, 200, { ok: true });
  if (url.pathname === "/stream") {
    if (delay > 0) await sleep(delay);
    return stream(url, res);
  }
  if (url.pathname !== "/predict") return send(res, 404, { error: "not found" });
  let text;
  if (req.method === "GET") text = url.searchParams.get("text") ?? "";
  else if (req.method === "POST") {
    const chunks = [];
    let size = 0;
    for await (const chunk of req) {
      size += chunk.length;
      if (size > 1024 * 1024) return send(res, 413, { error: "body over 1 MiB" });
      chunks.push(chunk);
    }
    try {
      text = String(JSON.parse(Buffer.concat(chunks).toString("utf8")).text ?? "");
    } catch {
      return send(res, 400, { error: 'body must be JSON: {"text": "…"}' });
    }
  } else return send(res, 405, { error: "GET or POST" });
  if (delay > 0) {
    // Said on stdout (the tenant sees it as a log line), so a caller can tell the request is here.
    console.log(`holding ${req.method} /predict for ${delay} ms`);
    await sleep(delay);
  }
  send(res, 200, predict(text));
}

// A request whose client went away mid-body (a proxy cut it: too large, client gone) ends here,
// not in an unhandled rejection that would take every other request down with the process.
const server = http.createServer((req, res) => {
  handle(req, res).catch((error) => {
    console.log(`request ${req.method} ${req.url} broke off: ${error.message}`);
    res.destroy();
  });
});
server.on("upgrade", webSocket);
// SERVE_IDLE_CLOSE_MS: a connection idle this long is closed unannounced (no Keep-Alive header says
// when), as some servers close theirs (gunicorn after 2 s), often before their client would.
const idleCloseMs = Number(process.env.SERVE_IDLE_CLOSE_MS ?? 0);
if (idleCloseMs > 0) {
  server.keepAliveTimeout = 0;
  server.on("connection", (connection) => connection.setTimeout(idleCloseMs, () => connection.destroy()));
}

/** A server's text frame (unmasked, unfragmented). */
function textFrame(text) {
  const payload = Buffer.from(text);
  const n = payload.length;
  const header =
    n < 126
      ? Buffer.from([0x81, n])
      : n < 65536
        ? Buffer.from([0x81, 126, n >> 8, n & 0xff])
        : Buffer.concat([Buffer.from([0x81, 127]), Buffer.from(new BigUint64Array([BigInt(n)]).buffer).reverse()]);
  return Buffer.concat([header, payload]);
}

/**
 * A WebSocket at /ws (RFC 6455), written out here so that the job needs no package: the handshake,
 * then each client frame (masked) unmasked and answered. Messages fit one frame each (as browsers
 * and Node send short text).
 */
function webSocket(req, socket) {
  const url = new URL(req.url ?? "/", "http://job");
  const key = req.headers["sec-websocket-key"];
  if (url.pathname !== "/ws" || req.headers.upgrade?.toLowerCase() !== "websocket" || !key) {
    socket.end("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    return;
  }
  const lease = process.env.BATON_LEASE_ID ?? "local";
  const accept = createHash("sha1").update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
      `sec-websocket-accept: ${accept}\r\nx-baton-lease: ${lease}\r\n\r\n`,
  );
  const every = Math.min(10_000, Math.max(0, Number(url.searchParams.get("every") ?? 0) || 0));
  let tick = 0;
  const ticker =
    every > 0 ? setInterval(() => socket.write(textFrame(JSON.stringify({ tick: tick++, lease }))), every) : undefined;
  socket.on("close", () => clearInterval(ticker));
  socket.on("error", () => socket.destroy());
  let buffered = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    for (;;) {
      if (buffered.length < 2) return;
      const opcode = buffered[0] & 0x0f;
      let length = buffered[1] & 0x7f;
      let at = 2;
      if (length === 126) {
        if (buffered.length < 4) return;
        length = buffered.readUInt16BE(2);
        at = 4;
      } else if (length === 127) {
        if (buffered.length < 10) return;
        length = Number(buffered.readBigUInt64BE(2));
        at = 10;
      }
      if (buffered.length < at + 4 + length) return;
      const mask = buffered.subarray(at, at + 4);
      const payload = Buffer.from(buffered.subarray(at + 4, at + 4 + length)).map((byte, i) => byte ^ mask[i % 4]);
      buffered = buffered.subarray(at + 4 + length);
      if (opcode === 0x1) socket.write(textFrame(JSON.stringify({ lease, ...predict(payload.toString("utf8")) })));
      else if (opcode === 0x9) socket.write(Buffer.concat([Buffer.from([0x8a, payload.length]), payload]));
      else if (opcode === 0x8) {
        socket.end(Buffer.concat([Buffer.from([0x88, payload.length]), payload]));
        return;
      }
    }
  });
}

const socket = process.env.BATON_HTTP_SOCKET;
if (socket) {
  rmSync(socket, { force: true });
  server.listen(socket, () => console.log(`serving on ${socket}`));
} else {
  const port = Number(process.env.PORT ?? 8080);
  server.listen(port, "127.0.0.1", () => console.log(`serving on 127.0.0.1:${port}`));
}
process.on("SIGTERM", () => server.close(() => process.exit(0)));
