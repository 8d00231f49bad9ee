// The explorer's pages, drawn from its JSON API (cli/explorer/api.ts). Charts are uPlot's, the
// job's lineage is laid out by dagre; both are served by `baton explorer` itself (no CDN). Every
// figure links to the transaction it came from, whose page names its block. The page redraws
// itself when the server says the index moved (server-sent events), so it follows the chain live.

const main = document.getElementById("main");
const asOf = document.getElementById("as-of");

/** An element with attributes and children (strings become text, never HTML). */
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) element.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

const short = (hex) => (hex.length > 14 ? `${hex.slice(0, 8)}…${hex.slice(-4)}` : hex);
const when = (seconds) => new Date(seconds * 1000).toISOString().replace("T", " ").replace(".000Z", " UTC");
/** A token amount in whole tokens (18 decimals), to 4 places. */
const tokens = (wei) => {
  const value = BigInt(wei);
  const whole = value / 10n ** 18n;
  const fraction = (value % 10n ** 18n).toString().padStart(18, "0").slice(0, 4);
  return `${whole}.${fraction}`;
};
/** A link to where a figure came from: its transaction (whose page names the block). */
const sourceLink = (source, text) =>
  h("a", { href: `/tx/${source.txHash}`, title: `transaction ${source.txHash}, block ${source.blockNumber}` }, text);
const blockOf = (source) => h("span", {}, " (", sourceLink(source, `block ${source.blockNumber}`), ")");
const providerLink = (address) => h("a", { href: `/provider/${address}` }, short(address));
const leaseLink = (id) => h("a", { href: `/lease/${id}` }, `lease ${id}`);
/** A lease link that fits a lineage graph's box: an id of `openLeaseFor` (19–20 digits) shortened, named whole for screen readers. */
const briefLeaseLink = (id) =>
  id.length > 12
    ? h(
        "a",
        { href: `/lease/${id}`, title: `lease ${id}`, "aria-label": `lease ${id}` },
        `lease ${id.slice(0, 6)}…${id.slice(-4)}`,
      )
    : leaseLink(id);
const jobLink = (id) => h("a", { href: `/job/${id}` }, short(id));
const stat = (label, value, id) => h("div", {}, h("dt", {}, label), h("dd", { "data-figure": id }, value));
const table = (caption, head, rows) =>
  h(
    "div",
    { class: "table" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          head.map((cell) => h("th", { scope: "col" }, cell)),
        ),
      ),
      h(
        "tbody",
        {},
        rows.map((cells) =>
          h(
            "tr",
            {},
            cells.map((cell) => h("td", {}, cell)),
          ),
        ),
      ),
    ),
  );

async function load(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (response.status === 404) return undefined;
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function notFound(what) {
  document.title = `Not found · Baton explorer`;
  return [
    h("h1", {}, `${what} not found`),
    h("p", { role: "alert" }, `The index holds no ${what.toLowerCase()}. It may not exist, or not be indexed yet.`),
    h("p", {}, h("a", { href: "/" }, "Back to the network")),
  ];
}

/** A cumulative count over time, as uPlot draws it (one series per label). */
function timeChart(title, series) {
  const times = [...new Set(series.flatMap((s) => s.times))].sort((a, b) => a - b);
  const container = h("figure", { class: "chart", "aria-label": title }, h("figcaption", {}, title));
  if (times.length === 0) return container;
  const data = [times, ...series.map((s) => times.map((t) => s.times.filter((x) => x <= t).length))];
  const width = Math.min(main.clientWidth - 16, 900);
  new uPlot(
    {
      width,
      height: 220,
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.colour, width: 2 }))],
      axes: [{}, { label: "count" }],
    },
    data,
    container,
  );
  return container;
}

async function networkPage() {
  const net = await load("/api/network");
  document.title = "Network · Baton explorer";
  return [
    h("h1", {}, "Network"),
    h(
      "dl",
      { class: "stats" },
      stat("Providers", net.providers.length, "providers"),
      stat("Bonded stake", tokens(net.totalStake), "stake"),
      stat("Live leases", net.liveLeases, "live-leases"),
      stat("Leases", net.leases.total, "leases"),
      stat("Slashes", net.slashes.length, "slashes"),
    ),
    timeChart("Leases opened and slashes over time", [
      { label: "leases opened", colour: "#0b57d0", times: net.openings.map((o) => o.timestamp) },
      { label: "slashes", colour: "#a50e0e", times: net.slashes.map((s) => s.timestamp) },
    ]),
    table(
      "Providers",
      ["provider", "peer id", "stake", "leases", "completed", "slashed"],
      net.providers.map((p) => [
        providerLink(p.provider),
        short(p.peerId),
        tokens(p.stake),
        p.counters.leasesOpened,
        p.counters.leasesCompleted,
        p.counters.leasesSlashed,
      ]),
    ),
    table(
      "Slashes",
      ["lease", "caller", "compensation", "when"],
      net.slashes.map((s) => [
        leaseLink(s.leaseId),
        short(s.args.caller),
        sourceLink(s, tokens(s.args.compensation)),
        [when(s.timestamp), blockOf(s)],
      ]),
    ),
  ];
}

async function providerPage(address) {
  const p = await load(`/api/provider/${address}`);
  if (p === undefined) return notFound("Provider");
  document.title = `Provider ${short(p.provider)} · Baton explorer`;
  return [
    h("h1", {}, `Provider ${p.provider}`),
    h("p", {}, `Peer id ${p.peerId}`),
    h(
      "dl",
      { class: "stats" },
      stat("Leases opened", p.counters.leasesOpened, "leases-opened"),
      stat("Leases completed", p.counters.leasesCompleted, "leases-completed"),
      stat("Leases slashed", p.counters.leasesSlashed, "leases-slashed"),
      stat("Bonded stake", tokens(p.stake), "stake"),
      stat("Uptime (ended leases not slashed)", p.uptime === null ? "–" : `${Math.round(p.uptime * 100)}%`, "uptime"),
      stat("Earnings settled", tokens(p.earnings.settled), "earned"),
      stat("Claimed", tokens(p.earnings.claimed), "claimed"),
    ),
    timeChart("Earnings settlements over time", [
      { label: "settlements", colour: "#146c2e", times: p.earnings.settlements.map((s) => s.timestamp) },
    ]),
    table(
      "Leases",
      ["lease", "job", "status", "heartbeats", "opened"],
      p.leases.map((l) => [
        leaseLink(l.leaseId),
        jobLink(l.jobId),
        h("span", { class: `status-${l.status}` }, l.status),
        l.heartbeats,
        sourceLink(l.opened, when(l.opened.timestamp)),
      ]),
    ),
    table(
      "Slash record",
      ["lease", "compensation to tenant", "caller", "block"],
      p.slashes.map((s) => [
        leaseLink(s.lease_id),
        tokens(s.compensation),
        short(s.caller),
        sourceLink({ txHash: s.tx_hash, blockNumber: s.block_number }, `block ${s.block_number}`),
      ]),
    ),
    h("h2", {}, "History"),
    h(
      "ol",
      { class: "timeline" },
      p.history.map((e) => h("li", {}, `${e.name} `, e.leaseId === null ? "" : leaseLink(e.leaseId), blockOf(e))),
    ),
  ];
}

/** What a lease event says, in words, with its payment when it moves money. */
function describe(e) {
  const a = e.args;
  switch (e.name) {
    case "LeaseOpened":
      return `opened with a deposit of ${tokens(a.deposit)}`;
    case "HeartbeatRecorded":
      return "heartbeat";
    case "CheckpointCommitted":
      return `checkpoint ${a.cid}`;
    case "EarningsSettled":
      return `paid ${tokens(a.amount)} to the provider`;
    case "LeaseToppedUp":
      return `topped up by ${tokens(a.amount)}`;
    case "LeaseCloseRequested":
      return `close requested, ${tokens(a.refund)} refunded`;
    case "LeaseClosed":
      return "closed";
    case "LeaseCompleted":
      return `finished with result ${a.resultCid}, ${tokens(a.refund)} refunded`;
    case "LeaseExpired":
      return `expired, ${tokens(a.refund)} refunded`;
    case "LeaseSlashed":
      return `slashed by ${short(a.caller)}: ${tokens(a.compensation)} to the tenant`;
    default:
      return e.name;
  }
}

/** The lanes of a lease's timeline chart, one per kind of event. */
const LANES = ["LeaseOpened", "HeartbeatRecorded", "CheckpointCommitted", "EarningsSettled", "end"];
const LANE_NAMES = ["opened", "heartbeat", "checkpoint", "payment", "close / finish / slash"];
const ENDS = new Set(["LeaseCloseRequested", "LeaseClosed", "LeaseCompleted", "LeaseExpired", "LeaseSlashed"]);

function leaseChart(timeline) {
  const times = [...new Set(timeline.map((e) => e.timestamp))].sort((a, b) => a - b);
  const lane = (e) => LANES.indexOf(ENDS.has(e.name) ? "end" : e.name);
  const data = [
    times,
    ...LANES.map((_, i) => times.map((t) => (timeline.some((e) => e.timestamp === t && lane(e) === i) ? i : null))),
  ];
  const container = h("figure", { class: "chart", "aria-label": "The lease's events over time" });
  container.append(h("figcaption", {}, "Timeline: opened, heartbeats, checkpoints, payments, end"));
  const colours = ["#0b57d0", "#334e68", "#b44d12", "#146c2e", "#a50e0e"];
  new uPlot(
    {
      width: Math.min(main.clientWidth - 16, 900),
      height: 200,
      series: [
        {},
        ...LANES.map((_, i) => ({
          label: LANE_NAMES[i],
          stroke: colours[i],
          width: 0,
          points: { show: true, size: 9, fill: colours[i] },
        })),
      ],
      axes: [
        {},
        {
          size: 150,
          splits: () => LANES.map((_, i) => i),
          values: (_, ticks) => ticks.map((t) => LANE_NAMES[t] ?? ""),
        },
      ],
      scales: { y: { range: [-0.5, LANES.length - 0.5] } },
    },
    data,
    container,
  );
  return container;
}

async function leasePage(id) {
  const l = await load(`/api/lease/${id}`);
  if (l === undefined) return notFound(`Lease ${id}`);
  document.title = `Lease ${l.leaseId} · Baton explorer`;
  return [
    h("h1", {}, `Lease ${l.leaseId}`),
    h(
      "dl",
      { class: "stats" },
      stat("Status", h("span", { class: `status-${l.status}` }, l.status), "status"),
      stat("Provider", providerLink(l.provider), "provider"),
      stat("Job", jobLink(l.jobId), "job"),
      stat("Heartbeats", l.heartbeats, "heartbeats"),
      stat("Checkpoints", l.checkpoints, "checkpoints"),
      stat("Deposit", sourceLink(l.opened, tokens(l.deposit)), "deposit"),
      stat("Paid to provider", tokens(l.paidToProvider), "paid"),
      stat("Predecessor", l.predecessor === "0" ? "none" : leaseLink(l.predecessor), "predecessor"),
      stat("Successor", l.successor === null ? "none" : leaseLink(l.successor), "successor"),
    ),
    leaseChart(l.timeline),
    h("h2", {}, "Events"),
    h(
      "ol",
      { class: "timeline", "aria-label": "The lease's events in chain order" },
      l.timeline.map((e) => h("li", { "data-event": e.name }, when(e.timestamp), ": ", describe(e), blockOf(e))),
    ),
  ];
}

/** The job's lineage: leases as nodes, hand-offs as edges, laid out by dagre. */
function lineageGraph(job) {
  const graph = new dagre.graphlib.Graph();
  graph.setGraph({ rankdir: "LR", nodesep: 30, ranksep: 140, marginx: 10, marginy: 10 });
  graph.setDefaultEdgeLabel(() => ({}));
  for (const l of job.leases) graph.setNode(String(l.leaseId), { width: 170, height: 74, lease: l });
  for (const handOff of job.handOffs) {
    graph.setEdge(String(handOff.from), String(handOff.to), { handOff, width: 120, height: 20, labelpos: "c" });
  }
  dagre.layout(graph);
  const { width, height } = graph.graph();
  const container = h("div", { class: "lineage", style: `width:${width}px;height:${height}px`, role: "img" });
  container.setAttribute("aria-label", "The job's lineage graph; the list below says the same in words");
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("aria-hidden", "true");
  container.append(svg);
  for (const e of graph.edges()) {
    const edge = graph.edge(e);
    const line = document.createElementNS(svgNs, "polyline");
    line.setAttribute("points", edge.points.map((p) => `${p.x},${p.y}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#b44d12");
    line.setAttribute("stroke-width", "3");
    svg.append(line);
    const checkpoint = edge.handOff.checkpoint;
    container.append(
      h(
        "span",
        { class: "edge-label", style: `left:${edge.x}px;top:${edge.y}px`, "data-hand-off": `${e.v}-${e.w}` },
        checkpoint === null ? "hand-off" : `resumed from ${short(checkpoint.cid)}`,
      ),
    );
  }
  for (const id of graph.nodes()) {
    const node = graph.node(id);
    const l = node.lease;
    container.append(
      h(
        "div",
        {
          class: `node ${l.status}`,
          style: `left:${node.x - node.width / 2}px;top:${node.y - node.height / 2}px;width:${node.width}px;height:${node.height}px`,
          "data-lease": l.leaseId,
        },
        briefLeaseLink(l.leaseId),
        h("br"),
        providerLink(l.provider),
        h("br"),
        h("span", { class: `status-${l.status}` }, l.status),
      ),
    );
  }
  // The graph keeps its laid-out size and scrolls sideways inside a narrow screen, not the page.
  return h("div", { class: "lineage-scroll" }, container);
}

async function jobPage(id) {
  const job = await load(`/api/job/${id}`);
  if (job === undefined) return notFound("Job");
  document.title = `Job ${short(job.jobId)} · Baton explorer`;
  return [
    h("h1", {}, `Job ${job.jobId}`),
    h(
      "dl",
      { class: "stats" },
      stat("Leases", job.leases.length, "leases"),
      stat("Hand-offs", job.handOffs.length, "hand-offs"),
      stat("Slashes", job.slashes.length, "slashes"),
    ),
    h("h2", {}, "Lineage"),
    lineageGraph(job),
    h(
      "ol",
      { class: "timeline", "aria-label": "Hand-offs" },
      job.handOffs.map((handOff) =>
        h(
          "li",
          {},
          leaseLink(handOff.from),
          " handed off to ",
          leaseLink(handOff.to),
          handOff.checkpoint === null
            ? ", which started afresh"
            : [", which resumed from checkpoint ", sourceLink(handOff.checkpoint, handOff.checkpoint.cid)],
          blockOf(handOff.opened),
        ),
      ),
    ),
    table(
      "Slashes",
      ["lease", "provider", "compensation to tenant", "block"],
      job.slashes.map((s) => [
        leaseLink(s.lease_id),
        providerLink(s.provider),
        tokens(s.compensation),
        sourceLink({ txHash: s.tx_hash, blockNumber: s.block_number }, `block ${s.block_number}`),
      ]),
    ),
  ];
}

async function transactionPage(hash) {
  const tx = await load(`/api/tx/${hash}`);
  if (tx === undefined) return notFound("Transaction");
  document.title = `Transaction ${short(tx.txHash)} · Baton explorer`;
  return [
    h("h1", {}, `Transaction ${tx.txHash}`),
    h("p", {}, `In block ${tx.blockNumber}, ${when(tx.timestamp)}`),
    table(
      "Events",
      ["event", "lease", "arguments"],
      tx.events.map((e) => [e.name, e.leaseId === null ? "" : leaseLink(e.leaseId), JSON.stringify(e.args)]),
    ),
  ];
}

function page() {
  const path = location.pathname;
  const match = (re) => re.exec(path)?.[1];
  if (path === "/") return networkPage();
  const provider = match(/^\/provider\/(0x[0-9a-fA-F]{40})$/);
  if (provider) return providerPage(provider);
  const lease = match(/^\/lease\/(\d+)$/);
  if (lease) return leasePage(lease);
  const job = match(/^\/job\/(0x[0-9a-fA-F]{64})$/);
  if (job) return jobPage(job);
  const tx = match(/^\/tx\/(0x[0-9a-fA-F]{64})$/);
  if (tx) return transactionPage(tx);
  return notFound("Page");
}

let drawing = Promise.resolve();
function draw() {
  drawing = drawing.then(async () => {
    try {
      const content = await page();
      main.replaceChildren(...content);
    } catch (error) {
      main.replaceChildren(
        h("h1", {}, "The explorer could not load this page"),
        h("p", { role: "alert" }, error.message),
      );
    }
  });
  return drawing;
}

const events = new EventSource("/api/events");
events.addEventListener("indexed", (message) => {
  asOf.textContent = `indexed to block ${JSON.parse(message.data).asOf}`;
  void draw();
});
void draw().then(() => document.body.setAttribute("data-ready", "true"));
