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
 *   ?delay=MS on either           waits MS ms before answering (≤ 10 s), to keep a request in flight
 *   GET  /stream?text=…&n=N&every=MS   server-sent events: N predictions (≤ 10,000), one every MS ms,
 *                                 as a model streams its tokens
 *
 * Every answer carries `x-baton-lease` (the lease of the replica that served it).
 */
import { rmSync } from "node:fs";
import http from "node:http";
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
  if (url.pathname === "/stream") return stream(url, res);
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

const socket = process.env.BATON_HTTP_SOCKET;
if (socket) {
  rmSync(socket, { force: true });
  server.listen(socket, () => console.log(`serving on ${socket}`));
} else {
  const port = Number(process.env.PORT ?? 8080);
  server.listen(port, "127.0.0.1", () => console.log(`serving on 127.0.0.1:${port}`));
}
process.on("SIGTERM", () => server.close(() => process.exit(0)));
