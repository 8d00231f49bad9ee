/**
 * `npm run bench:checkpoint`: what moving a checkpoint through IPFS costs, all measured in one run
 * on one machine, printed and written to bench/results/checkpoint.json (`--out DIR` for elsewhere).
 *
 * For checkpoints of 16, 256 and 1024 MiB (`--sizes 16,256` for fewer, `--quick` for 16 MiB and a
 * short training job), each a few files of random (incompressible) bytes in a temp dir:
 *
 * - raw references: SHA-256 and AES-256-GCM (node:crypto, one hash / one GCM stream over the
 *   checkpoint's files, read 1 MiB at a time like the packer reads them), and a disk write of the
 *   same bytes ending in fsync;
 * - publish: `publishCheckpoint` (pack, encrypt, add to the file-system blockstore, pin) on the
 *   provider's node, against min(SHA-256, AES, disk) — publishing does all three, so it can at
 *   best match the slowest; target ≥ 50 % of it;
 * - provider → tenant fetch: `restoreCheckpoint` (fetch by the block stream, /baton/blocks/1.0.0, on
 *   the provider's block lane: sdk/ipfs/block-lanes.ts; decrypt, verify, unpack) on a second host
 *   and IPFS node in its own process and data dir,
 *   over 127.0.0.1 TCP (the connection is dialled before the clock starts), beside raw loopback
 *   TCP between the same two processes (a plain socket pushing the same number of bytes); target
 *   ≥ 150 MB/s, Helia's published node-to-node TCP figure. Beside it: the CPU time each process
 *   spent per MiB fetched (all its threads), up to 256 MiB the same restore by bitswap alone
 *   (`via: "bitswap"`: the fallback, and what any IPFS peer does; interleaved with the stream's
 *   runs), and the same restore again once every block is in the tenant's store, which is the
 *   restore's own share (decrypt, verify, unpack) without the network; and, interleaved with them,
 *   what a tenant does with each checkpoint it copies (`verifyCheckpoint`: the same fetch into its
 *   store, decrypted and hashed against the announced digest, pinned, nothing unpacked). The
 *   restore is a new provider's path on a hand-off, the verify a tenant's on every checkpoint. A
 *   fetch that fails is run again (twice at most per size) and reported in the fetch row's note;
 * - the checkpoint overhead of the example job (examples/train/train.mjs) as a share of its wall
 *   time, against CheckFreq's 3.5 % bound. The job runs as a child process, round-robin, in three
 *   variants: (a) no checkpoints but the final one, (b) checkpoints every N steps into
 *   $BATON_CHECKPOINT_DIR with nobody watching, (c) as (b) with the provider's own watcher
 *   (node/checkpoints.ts `watchCheckpoints`, on a real IPFS node) capturing and publishing each
 *   one. (c) vs (b) is what Baton's capture adds to the job — the same job, the same checkpoint
 *   writes, only the watcher differs; (c) vs (a) is everything checkpointing costs the job, which
 *   is what CheckFreq bounds. Both are differences of wall times, so on a job this light they can
 *   come out slightly negative: run-to-run noise is larger than the cost. Hence also the summed
 *   publish time over the job's wall time, which is positive by construction (the publishing runs
 *   beside the job, on the other core, so this is an upper bound of what it could cost the job).
 *
 * - holders behind links of their own (`--holders-mib N`, default 64, 16 with `--quick`, 0 to leave
 *   it out): a checkpoint fetched and pinned by 4 holder processes, each reachable only through a
 *   userspace link capped at `--holder-mb-s` (default 8 MB/s, a 64 Mbit/s uplink), restored from
 *   1, 2 and 4 of them at once, and from 4 of which one has a quarter of the bandwidth, beside what
 *   their links carry together: what fetching a stripe from each holder gains when the holders'
 *   uplinks, not the CPU, are the limit.
 *
 * Each throughput is the median of 3 runs. Units: 1 MB = 10^6 bytes, 1 MiB = 2^20 bytes; all
 * throughputs are in MB/s, sizes in MiB (150 MB/s = 143 MiB/s). The machine's load averages at
 * the start and the end go into the JSON (`machine.loadAverage`) and the printout: on a shared
 * machine other work lowers every figure, the references with them, so compare ratios from one
 * run. `--no-job` leaves the example job out; `--cpu-prof DIR` writes a V8 CPU profile of each
 * process (provider.cpuprofile, tenant.cpuprofile) covering the throughput part.
 *
 * What limits the fetch: CPU per byte, in JavaScript, on both ends; not the network, the block
 * size or flow control. Bitswap (what "fetch by bitswap alone" still measures) cost the tenant
 * ~19-26 ms of CPU per MiB and the provider ~12-22 ms: want-lists of 32 blocks, each block encoded
 * twice by the sender to size its message, a stream per message, every message joined and copied
 * to decode it. The fetch now goes by /baton/blocks/1.0.0 (sdk/ipfs/block-stream.ts): one stream,
 * the blocks in the order the reader needs them, each hashed (in the thread pool) and compared
 * with the CID the receiver expects next, stored, and decrypted and unpacked while the rest
 * arrives. Measured on the 2 shared vCPUs this was written on (load average 10-30 from other
 * sessions' tests, which inflates CPU per MiB too), per MiB:
 * - the floor was libp2p itself: a bare stream between the same two hosts (Noise ChaCha20-Poly1305,
 *   yamux, TCP; 1 MiB sends, nothing else done with the bytes) costs the sender ~2-3 ms and the
 *   receiver ~3.5-5 ms of CPU (quiet: 1.9-2.1 and 4.6-4.9, at most 229 MB/s). The stream now runs
 *   on a block lane where the holder serves one (sdk/ipfs/block-lanes.ts: Node's TLS beside
 *   libp2p, ECDHE-PSK-CHACHA20-POLY1305), whose floor is 0.85 ms for the sender and 1.6 for the
 *   receiver (680 MB/s);
 * - provider serving the stream: ~4-8 ms on libp2p, ~4-4.5 on a lane (256 MiB and 1 GiB; 7.5 at
 *   16 MiB, where the lane's setup and the first blocks weigh more): the floor, plus reading each
 *   block from its file;
 * - tenant fetching into its store (`cat`): ~10-13 ms on libp2p: the floor, the copy of each block
 *   out of the frames into a buffer of its own (a fresh 1 MiB buffer costs 0.3-0.6 ms of page
 *   faults here), SHA-256 against the CID (~0.8 ms, thread pool), the block file (temp + rename,
 *   ~1 ms, and 1-1.6 ms of the kernel's to create a file in /tmp here); then the restore adds
 *   AES-GCM (thread pool), SHA-256 of the pack and the unpacked files (the "blocks already local"
 *   row: ~5-6 ms, ~130-210 MB/s). On a lane the whole restore costs the tenant 12-15 ms, of which
 *   ~3 ms the kernel's.
 * On two cores shared by both processes, provider + tenant at ~16-20 ms per MiB capped the fetch
 * near 100-125 MB/s even with every thread busy all the time (the fetch row's note works this out
 * from each run). A third of that was V8's full GCs (perf: concurrent marking and sweeping): a
 * fresh 1 MiB buffer per block, received, read back or read from a file, waited a few ms in a queue
 * or a write, long enough to be promoted, and a promoted buffer goes only in a full GC, which marks
 * the whole heap (164 of them on the tenant in six 256 MiB fetches). Blocks now go through a few
 * reused buffers (BufferPool and Lending in sdk/ipfs/bytes.ts: a fetch's receive buffers go back
 * once written and decrypted, a lane's send buffers once TLS took them, a publish's pieces once
 * encrypted): 19-44 full GCs in the same fetches, the tenant at 7-9 ms per MiB, the provider at
 * 1.1-1.9 ms, 150-230 MB/s. Earlier fixes, still in sdk/ipfs: pin records in SQLite
 * (sdk/ipfs/datastore.ts) instead of a file per block; FsBlockstore read a block as 16 pieces that
 * it-to-buffer joined by re-copying the buffer so far each time (now one read); the UnixFS
 * exporter's want-lists are bounded by FETCH_BLOCK_CONCURRENCY for the bitswap fallback.
 *
 * Publish is, per byte: a read straight into the pack's piece (one encryption chunk, 1 MiB − 16),
 * SHA-256 of the pack on the event loop, AES-GCM of the piece in the thread pool (WebCrypto, three
 * chunks at once) giving exactly one 1 MiB leaf, the leaf's SHA-256 in the thread pool, and its
 * block file. Nothing is re-cut or copied between the stages. It used to be all on the event loop
 * (90-135 MB/s): a read into a fresh buffer, AES-GCM in 1 MiB `update` calls (each a fresh 1 MiB
 * output: see rawAesGcm), a copy into 1 MiB leaves (the 44-byte header shifted every leaf), the
 * leaf's SHA-256, the file; its profile showed the loop busy ~75 % of the time and GC ~20 %. A
 * fresh piece per chunk still brought a full GC every ~15 MiB (7.5 ms of CPU per MiB); pieces lent
 * to the encryption from a pool brought it to ~4 ms, about the sum of the raw work.
 */
import { createCipheriv, createHash, randomBytes, randomFillSync } from "node:crypto";
import { mkdir, mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { Session } from "node:inspector/promises";
import { createServer, connect, type AddressInfo, type Server } from "node:net";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { multiaddr } from "@multiformats/multiaddr";
import { CID } from "multiformats/cid";

import { spawnScript, stopAll, type Spawned } from "../deploy/processes.ts";
import { watchCheckpoints } from "../node/checkpoints.ts";
import { leasePins } from "../node/lease-pins.ts";
import { Metrics } from "../node/metrics.ts";
import { NodeStore } from "../node/store.ts";
import { publishCheckpoint, restoreCheckpoint, verifyCheckpoint } from "../sdk/ipfs/checkpoint.ts";
import { generateJobKey } from "../sdk/ipfs/crypto.ts";
import { createIpfsNode, type IpfsNode } from "../sdk/ipfs/node.ts";
import { silentLogger, type Logger } from "../sdk/logger.ts";
import { createBatonHost, type BatonHost } from "../sdk/p2p/host.ts";
import { peerIdOf } from "../sdk/p2p/open-stream.ts";
import { startLink, type LinkDelay, type LinkShaper } from "../test/helpers/link.ts";
import { median, printTable, writeResults, type Figure } from "./report.ts";

const MiB = 2 ** 20;
const MB = 1e6;
const READ_SIZE = MiB;
const AES_SLICE = 64 * 1024;
const REPEATS = 3;
/** Helia's published node-to-node throughput over TCP. */
const HELIA_FETCH_MB_S = 150;
/** CheckFreq (Mohan et al., FAST '21) keeps checkpoint overhead within 3.5 % of training time. */
const CHECKFREQ_PERCENT = 3.5;
/** The longest one fetch (one request to the tenant) may take before the bench gives up. */
const FETCH_TIMEOUT_MS = 600_000;
/**
 * The restore from the local store is timed up to this size: its cost per byte does not depend on
 * the size, and at 1 GiB it would add most of a minute to the run.
 */
const LOCAL_RESTORE_MAX_MIB = 256;
/**
 * The same restore by bitswap alone (the fallback, and what any IPFS peer does) is timed up to
 * this size: beside the block stream it shows what the stream gains, and at 1 GiB it would add
 * minutes.
 */
const BITSWAP_MAX_MIB = 256;
/** Failed fetches tolerated per size (each is reported) before the bench gives up. */
const MAX_FETCH_FAILURES = 2;

/**
 * The example job: train.yaml's pace (10 ms a step) with 600 steps (train.yaml: 2000) and a
 * checkpoint every 60 (train.yaml: 200), so each run commits 10 checkpoints in about 7 s.
 */
const TRAIN_FULL = { steps: 600, checkpointEvery: 60, stepDelayMs: 10, rounds: 2 };
const TRAIN_QUICK = { steps: 100, checkpointEvery: 20, stepDelayMs: 2, rounds: 1 };

const round = (value: number, digits = 1): number => Math.round(value * 10 ** digits) / 10 ** digits;
const mbPerS = (bytes: number, ms: number): number => bytes / MB / (ms / 1000);

// ---------------------------------------------------------------------------------------------
// The tenant: a second host and IPFS node in its own process, driven by JSON lines on stdin.

interface TenantRequest {
  id: number;
  /** `hold`: fetch and pin the checkpoint, then serve it for as long as this process runs. */
  op: "restore" | "verify" | "tcp" | "hold";
  /** restore, verify, hold: the checkpoint and where it is (restore: from all of them at once). */
  cid?: string;
  keyHex?: string;
  sha256?: string;
  maxBytes?: number;
  providers?: string[];
  /** restore: then restore it again from the local store, timed on its own. */
  again?: boolean;
  /** restore: how to fetch (see FetchOptions.via). */
  via?: "stream" | "bitswap";
  /** tcp: where to connect. */
  port?: number;
}

interface TenantReply {
  id: number;
  ms: number;
  /** The tenant's CPU time (user + system) over `ms`. */
  cpuMs: number;
  bytes: number;
  /** restore: the same restore again, now with every block in the local store, and its CPU time. */
  localMs?: number;
  localCpuMs?: number;
  /** hold: where the holder listens (with its peer id). */
  address?: string;
  error?: string;
}

async function runTenant(dir: string): Promise<void> {
  let current: { host: BatonHost; ipfs: IpfsNode } | undefined;
  /** What `hold` requests made: serving until this process ends. */
  const holding: { host: BatonHost; ipfs: IpfsNode }[] = [];
  let stopping: Promise<void> | undefined;
  const profile = process.env.BATON_BENCH_CPU_PROF ? await startCpuProfile() : undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      for (const node of [...holding, ...(current ? [current] : [])]) {
        await node.ipfs.stop();
        await node.host.stop();
      }
      await profile?.(path.join(process.env.BATON_BENCH_CPU_PROF!, "tenant.cpuprofile"));
      process.exit(0);
    })());
  process.once("SIGTERM", () => void stop());
  process.once("SIGINT", () => void stop());
  // A failed fetch of a DAG with inner nodes can leave a rejected promise nobody awaits inside
  // ipfs-unixfs-exporter (seen: LoadBlockFailedError "Want was aborted"), which would kill this
  // process; the failed restore itself still reports its error below.
  process.on("unhandledRejection", (error) => console.error("tenant: unhandled rejection:", error));

  const handle = async (request: TenantRequest): Promise<Omit<TenantReply, "id">> => {
    if (request.op === "tcp") {
      const cpu = process.cpuUsage();
      const started = performance.now();
      const bytes = await receiveTcp(request.port!);
      return { ms: performance.now() - started, cpuMs: cpuMsSince(cpu), bytes };
    }
    // A new peer (key, host, store) for each fetch. Re-fetching blocks from a peer that already
    // sent them stalls: @helia/bitswap's ledger keeps them as "sent" and drops the new want.
    const store = path.join(dir, `tenant-${request.id}`);
    const host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
    const ipfs = await createIpfsNode({ host, dir: path.join(store, "ipfs") });
    const providers = request.providers!.map((address) => multiaddr(address));
    if (request.op === "hold") {
      holding.push({ host, ipfs });
      for (const provider of providers) await host.dial(provider);
      const cpu = process.cpuUsage();
      const started = performance.now();
      const { bytes } = await ipfs.fetchAndPin(CID.parse(request.cid!), {
        providers,
        maxBytes: request.maxBytes!,
        signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
      });
      return {
        ms: performance.now() - started,
        cpuMs: cpuMsSince(cpu),
        bytes,
        address: host.getMultiaddrs()[0]!.toString(),
      };
    }
    current = { host, ipfs };
    try {
      for (const provider of providers) await host.dial(provider);
      const cpu = process.cpuUsage();
      const started = performance.now();
      if (request.op === "verify") {
        const { bytes } = await verifyCheckpoint(
          ipfs,
          new Uint8Array(Buffer.from(request.keyHex!, "hex")),
          CID.parse(request.cid!),
          {
            expectedSha256: request.sha256!,
            maxBytes: request.maxBytes!,
            providers,
            signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
          },
        );
        return { ms: performance.now() - started, cpuMs: cpuMsSince(cpu), bytes };
      }
      const restore = (target: string) =>
        restoreCheckpoint(ipfs, new Uint8Array(Buffer.from(request.keyHex!, "hex")), CID.parse(request.cid!), target, {
          expectedSha256: request.sha256!,
          maxBytes: request.maxBytes!,
          providers,
          signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
          ...(request.via ? { via: request.via } : {}),
        });
      const restored = await restore(path.join(store, "restored"));
      const ms = performance.now() - started;
      const cpuMs = cpuMsSince(cpu);
      if (!request.again) return { ms, cpuMs, bytes: restored.bytes };
      await rm(path.join(store, "restored"), { recursive: true, force: true });
      // The fetched blocks are still in the store (unpinned): the restore's own share of the work.
      const localCpu = process.cpuUsage();
      const localStarted = performance.now();
      await restore(path.join(store, "restored-again"));
      const localMs = performance.now() - localStarted;
      return { ms, cpuMs, bytes: restored.bytes, localMs, localCpuMs: cpuMsSince(localCpu) };
    } finally {
      current = undefined;
      await ipfs.stop();
      await host.stop();
      await rm(store, { recursive: true, force: true });
    }
  };

  createInterface({ input: process.stdin }).on("line", (line) => {
    const request = JSON.parse(line) as TenantRequest;
    void handle(request).then(
      (reply) => console.log(JSON.stringify({ id: request.id, ...reply })),
      (error: Error) =>
        console.log(JSON.stringify({ id: request.id, ms: 0, cpuMs: 0, bytes: 0, error: String(error.stack) })),
    );
  });
  console.log(JSON.stringify({ ready: true }));
}

/**
 * Starts V8's CPU profiler in this process (`--cpu-prof DIR`: `node --cpu-prof` is refused in
 * NODE_OPTIONS, so the tenant process could not be profiled from outside); the function it returns
 * stops it and writes the profile, to open in Chrome's DevTools or speedscope.
 */
async function startCpuProfile(): Promise<(file: string) => Promise<void>> {
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.setSamplingInterval", { interval: 500 });
  await session.post("Profiler.start");
  return async (file) => {
    const { profile } = await session.post("Profiler.stop");
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, JSON.stringify(profile));
    session.disconnect();
  };
}

function cpuMsSince(start: NodeJS.CpuUsage): number {
  const { user, system } = process.cpuUsage(start);
  return (user + system) / 1000;
}

/** Connects to 127.0.0.1:port and reads until the server ends; resolves with the bytes read. */
function receiveTcp(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    const socket = connect(port, "127.0.0.1");
    socket.on("data", (chunk: Buffer) => (bytes += chunk.byteLength));
    socket.on("end", () => resolve(bytes));
    socket.on("error", reject);
  });
}

class Tenant {
  readonly #process: Spawned;
  #next = 1;

  constructor(dir: string, cpuProfileDir: string | undefined) {
    this.#process = spawnScript(
      "bench/checkpoint.ts",
      ["--tenant", dir],
      cpuProfileDir === undefined ? {} : { BATON_BENCH_CPU_PROF: path.resolve(cpuProfileDir) },
    );
  }

  ready(): Promise<string> {
    return this.#process.waitFor(/^\{"ready":true/, 60_000);
  }

  async request(request: Omit<TenantRequest, "id">): Promise<TenantReply> {
    const id = this.#next++;
    this.#process.child.stdin!.write(JSON.stringify({ id, ...request }) + "\n");
    const reply = JSON.parse(await this.#process.waitFor(new RegExp(`^\\{"id":${id},`), FETCH_TIMEOUT_MS));
    if ((reply as TenantReply).error) throw new Error(`tenant: ${(reply as TenantReply).error}`);
    return reply as TenantReply;
  }

  stop(): Promise<void> {
    return this.#process.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Raw references

/** Random checkpoint files adding up to exactly `mib` MiB: two weight shards, optimiser, state. */
async function writeCheckpoint(dir: string, mib: number): Promise<string[]> {
  const total = mib * MiB;
  const state = 64 * 1024;
  const optimiser = Math.floor((total - state) / 4);
  const shard = Math.floor((total - state - optimiser) / 2);
  const sizes: Array<[string, number]> = [
    ["model-00001-of-00002.bin", shard],
    ["model-00002-of-00002.bin", total - state - optimiser - shard],
    ["optimizer.bin", optimiser],
    ["trainer_state.bin", state],
  ];
  await mkdir(dir, { recursive: true });
  const buffer = Buffer.allocUnsafe(READ_SIZE);
  const files: string[] = [];
  for (const [name, size] of sizes) {
    const file = path.join(dir, name);
    const handle = await open(file, "w");
    try {
      for (let left = size; left > 0;) {
        const n = Math.min(left, buffer.byteLength);
        randomFillSync(buffer, 0, n);
        await handle.write(buffer, 0, n);
        left -= n;
      }
    } finally {
      await handle.close();
    }
    files.push(file);
  }
  return files;
}

/** Reads the files 1 MiB at a time into one buffer, handing each piece to `sink`; resolves with ms. */
async function timedRead(files: string[], sink: (chunk: Buffer) => void, end: () => void): Promise<number> {
  const buffer = Buffer.allocUnsafe(READ_SIZE);
  const started = performance.now();
  for (const file of files) {
    const handle = await open(file, "r");
    try {
      for (;;) {
        const { bytesRead } = await handle.read(buffer, 0, buffer.byteLength, null);
        if (bytesRead === 0) break;
        sink(buffer.subarray(0, bytesRead));
      }
    } finally {
      await handle.close();
    }
  }
  end();
  return performance.now() - started;
}

function rawSha256(files: string[]): Promise<number> {
  const hash = createHash("sha256");
  return timedRead(
    files,
    (chunk) => hash.update(chunk),
    () => hash.digest(),
  );
}

/**
 * GCM over the files, fed in 64 KiB slices of each 1 MiB read. Whole 1 MiB `update` calls run
 * 3-4× slower here: each returns a fresh 1 MiB buffer, which malloc maps anew and the kernel
 * page-faults in (on this VM 1 MiB slices gave ~0.9 GB/s, 64 KiB ones ~3.5 GB/s, in memory).
 */
function rawAesGcm(files: string[]): Promise<number> {
  const cipher = createCipheriv("aes-256-gcm", randomBytes(32), randomBytes(12));
  return timedRead(
    files,
    (chunk) => {
      for (let i = 0; i < chunk.byteLength; i += AES_SLICE) cipher.update(chunk.subarray(i, i + AES_SLICE));
    },
    () => {
      cipher.final();
      cipher.getAuthTag();
    },
  );
}

/** Writes `bytes` random bytes to a new file in 1 MiB writes and fsyncs it; resolves with ms. */
async function rawDiskWrite(dir: string, bytes: number): Promise<number> {
  const buffer = randomBytes(READ_SIZE);
  const file = path.join(dir, `disk-${randomBytes(4).toString("hex")}.bin`);
  const started = performance.now();
  const handle = await open(file, "w");
  try {
    for (let left = bytes; left > 0; left -= buffer.byteLength) {
      await handle.write(buffer, 0, Math.min(left, buffer.byteLength));
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
  const ms = performance.now() - started;
  await rm(file, { force: true });
  return ms;
}

/** A server that sends `bytes` bytes to each connection and closes it. */
async function tcpSource(bytes: number): Promise<Server> {
  const chunk = randomBytes(MiB);
  const server = createServer((socket) => {
    let sent = 0;
    const pump = (): void => {
      while (sent < bytes) {
        const n = Math.min(chunk.byteLength, bytes - sent);
        sent += n;
        if (!socket.write(n === chunk.byteLength ? chunk : chunk.subarray(0, n)))
          return void socket.once("drain", pump);
      }
      socket.end();
    };
    socket.on("error", () => socket.destroy());
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

// ---------------------------------------------------------------------------------------------
// The example job

type Variant = "no checkpoints" | "checkpoints, no watcher" | "checkpoints + watcher";
const VARIANTS: Variant[] = ["no checkpoints", "checkpoints, no watcher", "checkpoints + watcher"];

interface JobRun {
  wallMs: number;
  published: number;
  publishMs: number;
}

/** A logger that hands each "checkpoint published" entry's duration to `onPublish`. */
function publishTimer(onPublish: (ms: number) => void): Logger {
  const logger: Logger = {
    ...silentLogger,
    info: (message, fields) => {
      if (message === "checkpoint published" && typeof fields?.ms === "number") onPublish(fields.ms);
    },
    child: () => logger,
  };
  return logger;
}

async function runJob(
  dir: string,
  variant: Variant,
  config: typeof TRAIN_FULL,
  ipfs: IpfsNode,
  key: Uint8Array,
): Promise<JobRun> {
  const checkpointDir = path.join(dir, "checkpoints");
  await mkdir(checkpointDir, { recursive: true });
  let published = 0;
  let publishMs = 0;
  const rejected: string[] = [];
  // The provider's record of what a lease pins, as the watcher keeps it on a node.
  const store = variant === "checkpoints + watcher" ? new NodeStore(path.join(dir, "node.db")) : undefined;
  const watcher = store
    ? watchCheckpoints({
        dir: checkpointDir,
        key,
        ipfs,
        maxBytes: 64 * MiB,
        log: publishTimer((ms) => (publishMs += ms)),
        metrics: new Metrics(),
        onPublished: () => published++,
        onRejected: (name, reason) => rejected.push(`${name}: ${reason}`),
        pins: leasePins({ store, ipfs }, 1n),
      })
    : undefined;
  try {
    const started = performance.now();
    const job = spawnScript("examples/train/train.mjs", [], {
      TRAIN_STEPS: String(config.steps),
      TRAIN_CHECKPOINT_EVERY: String(variant === "no checkpoints" ? config.steps : config.checkpointEvery),
      TRAIN_SEED: "1",
      TRAIN_STEP_DELAY_MS: String(config.stepDelayMs),
      BATON_CHECKPOINT_DIR: checkpointDir,
      BATON_RESUME_DIR: path.join(dir, "resume"),
      BATON_OUTPUT_DIR: path.join(dir, "output"),
    });
    const { code } = await job.exited;
    const wallMs = performance.now() - started;
    if (code !== 0) throw new Error(`the example job exited with ${code}:\n${job.lines.slice(-20).join("\n")}`);
    await watcher?.settle();
    if (rejected.length > 0) throw new Error(`the watcher rejected checkpoints: ${rejected.join("; ")}`);
    return { wallMs, published, publishMs };
  } finally {
    await watcher?.stop();
    store?.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The run

interface SizeResult {
  sizeMiB: number;
  ciphertextBytes: number;
  ms: Record<string, number[]>;
  /**
   * CPU milliseconds per MiB fetched (all of a process's threads), for each fetch, each restore
   * from local blocks, and each fetch by bitswap alone.
   */
  cpuMsPerMiB: {
    /** The provider's, publishing (per MiB of checkpoint). */
    publish: number[];
    provider: number[];
    tenant: number[];
    tenantLocalRestore: number[];
    bitswapProvider: number[];
    bitswapTenant: number[];
    verifyProvider: number[];
    verifyTenant: number[];
  };
  /** Fetches that failed (and were tried again), with their errors. */
  fetchFailures: string[];
}

async function measureSize(
  work: string,
  sizeMiB: number,
  provider: { host: BatonHost; ipfs: IpfsNode },
  tenant: Tenant,
): Promise<SizeResult> {
  const dir = path.join(work, `checkpoint-${sizeMiB}`);
  console.log(`${sizeMiB} MiB: writing the checkpoint …`);
  const files = await writeCheckpoint(dir, sizeMiB);
  const bytes = sizeMiB * MiB;
  const ms: Record<string, number[]> = {
    sha256: [],
    aes: [],
    disk: [],
    publish: [],
    tcp: [],
    fetch: [],
    local: [],
    bitswap: [],
    verify: [],
  };
  const cpuMsPerMiB: SizeResult["cpuMsPerMiB"] = {
    publish: [],
    provider: [],
    tenant: [],
    tenantLocalRestore: [],
    bitswapProvider: [],
    bitswapTenant: [],
    verifyProvider: [],
    verifyTenant: [],
  };

  console.log(`${sizeMiB} MiB: raw SHA-256, AES-256-GCM, disk write …`);
  // One pass untimed: the first runs here were 2-10× slower (malloc's arena growing page by page).
  await rawSha256(files);
  await rawAesGcm(files);
  for (let i = 0; i < REPEATS; i++) {
    ms.sha256!.push(await rawSha256(files));
    ms.aes!.push(await rawAesGcm(files));
    ms.disk!.push(await rawDiskWrite(work, bytes));
  }

  console.log(`${sizeMiB} MiB: publish …`);
  const key = generateJobKey();
  let published: Awaited<ReturnType<typeof publishCheckpoint>> | undefined;
  for (let i = 0; i < REPEATS; i++) {
    if (published) {
      // Not timed: drop the previous copy, so that the store holds one checkpoint at a time.
      await provider.ipfs.unpin(published.cid);
      await provider.ipfs.gc();
    }
    const started = performance.now();
    const cpu = process.cpuUsage();
    published = await publishCheckpoint(provider.ipfs, key, dir, { maxBytes: 2 * bytes });
    ms.publish!.push(performance.now() - started);
    cpuMsPerMiB.publish.push(cpuMsSince(cpu) / sizeMiB);
  }
  await rm(dir, { recursive: true, force: true });

  console.log(`${sizeMiB} MiB: loopback TCP and fetch …`);
  const server = await tcpSource(published!.size);
  try {
    for (let i = 0; i < REPEATS; i++) {
      const reply = await tenant.request({ op: "tcp", port: (server.address() as AddressInfo).port });
      if (reply.bytes !== published!.size) throw new Error(`loopback TCP delivered ${reply.bytes} bytes`);
      ms.tcp!.push(reply.ms);
    }
  } finally {
    server.close();
  }
  const address = provider.host.getMultiaddrs()[0]!.toString();
  const fetchFailures: string[] = [];
  /**
   * One restore on the tenant, or (`verify`) one fetch as a tenant copies each checkpoint: false if
   * it failed (counted, reported, and run again).
   */
  const fetchOnce = async (via: "stream" | "bitswap" | "verify"): Promise<boolean> => {
    const cpu = process.cpuUsage();
    let reply: TenantReply;
    try {
      reply = await tenant.request({
        op: via === "verify" ? "verify" : "restore",
        cid: published!.cid.toString(),
        keyHex: Buffer.from(key).toString("hex"),
        sha256: published!.plaintextSha256,
        maxBytes: 2 * bytes,
        providers: [address],
        again: via === "stream" && sizeMiB <= LOCAL_RESTORE_MAX_MIB,
        ...(via === "verify" ? {} : { via }),
      });
    } catch (error) {
      // Counted and reported, not hidden: a fetch that fails is a finding, but one failure
      // should not cost the whole run its figures.
      fetchFailures.push(`${via}: ${(error as Error).message.split("\n")[0]!}`);
      console.log(`${sizeMiB} MiB: fetch failed (${fetchFailures.length}): ${fetchFailures.at(-1)}`);
      if (fetchFailures.length > MAX_FETCH_FAILURES) throw error;
      return false;
    }
    const mib = published!.size / MiB;
    if (via === "bitswap") {
      ms.bitswap!.push(reply.ms);
      cpuMsPerMiB.bitswapProvider.push(cpuMsSince(cpu) / mib);
      cpuMsPerMiB.bitswapTenant.push(reply.cpuMs / mib);
      return true;
    }
    if (via === "verify") {
      ms.verify!.push(reply.ms);
      cpuMsPerMiB.verifyProvider.push(cpuMsSince(cpu) / mib);
      cpuMsPerMiB.verifyTenant.push(reply.cpuMs / mib);
      return true;
    }
    // The provider's CPU over the whole request; it has nothing to do but serve the fetch.
    cpuMsPerMiB.provider.push(cpuMsSince(cpu) / mib);
    cpuMsPerMiB.tenant.push(reply.cpuMs / mib);
    ms.fetch!.push(reply.ms);
    if (reply.localMs !== undefined) ms.local!.push(reply.localMs);
    if (reply.localCpuMs !== undefined) cpuMsPerMiB.tenantLocalRestore.push(reply.localCpuMs / mib);
    return true;
  };
  // Interleaved, so that a change in the machine's load falls on both alike.
  const withBitswap = sizeMiB <= BITSWAP_MAX_MIB;
  while (ms.fetch!.length < REPEATS || ms.verify!.length < REPEATS || (withBitswap && ms.bitswap!.length < REPEATS)) {
    if (ms.fetch!.length < REPEATS) await fetchOnce("stream");
    if (ms.verify!.length < REPEATS) await fetchOnce("verify");
    if (withBitswap && ms.bitswap!.length < REPEATS) await fetchOnce("bitswap");
  }
  await provider.ipfs.unpin(published!.cid);
  await provider.ipfs.gc();
  return { sizeMiB, ciphertextBytes: published!.size, ms, cpuMsPerMiB, fetchFailures };
}

/** How many holders a fetch takes from at once, in the holders' part. */
const HOLDER_COUNTS = [1, 2, 4];

interface HoldersResult {
  sizeMiB: number;
  ciphertextBytes: number;
  /** Each holder's link, MB/s. */
  capMBps: number;
  /** Restore times (ms) by run: `1`, `2`, `4` holders, and `4, one slow` (its link at a quarter). */
  ms: Record<string, number[]>;
}

/**
 * Holders behind links of their own: a checkpoint of `sizeMiB` published here, fetched and pinned
 * by holder processes (each its own host and IPFS node), each reachable only through a link capped
 * at `capMBps` (test/helpers/link.ts), as a provider's uplink would be. The tenant restores it from
 * 1, 2 and 4 of them at once, and from 4 of which one has a quarter of the bandwidth: what striping
 * gains when the holders' links, not the CPU, are the limit.
 */
async function measureHolders(
  work: string,
  sizeMiB: number,
  capMBps: number,
  provider: { host: BatonHost; ipfs: IpfsNode },
  tenant: Tenant,
): Promise<HoldersResult> {
  const count = Math.max(...HOLDER_COUNTS);
  const dir = path.join(work, "checkpoint-holders");
  console.log(`holders: ${sizeMiB} MiB on ${count} holders, each behind a link of ${capMBps} MB/s …`);
  await writeCheckpoint(dir, sizeMiB);
  const key = generateJobKey();
  const published = await publishCheckpoint(provider.ipfs, key, dir, { maxBytes: 2 * sizeMiB * MiB });
  await rm(dir, { recursive: true, force: true });
  const checkpoint = {
    cid: published.cid.toString(),
    keyHex: Buffer.from(key).toString("hex"),
    sha256: published.plaintextSha256,
    maxBytes: 2 * sizeMiB * MiB,
  };
  const holders = Array.from({ length: count }, (_, i) => new Tenant(path.join(work, `holder-${i}`), undefined));
  const links: LinkShaper[] = [];
  const capped = (mbPerSecond: number): LinkDelay => ({ upMs: 0, downMs: 0, downBytesPerS: mbPerSecond * MB });
  const ms: Record<string, number[]> = {};
  try {
    await Promise.all(holders.map((holder) => holder.ready()));
    const addresses: string[] = [];
    for (const holder of holders) {
      const held = await holder.request({
        op: "hold",
        ...checkpoint,
        providers: [provider.host.getMultiaddrs()[0]!.toString()],
      });
      const address = multiaddr(held.address!);
      const port = Number(address.getComponents().find((c) => c.name === "tcp")!.value);
      const link = await startLink(port, capped(capMBps));
      links.push(link);
      addresses.push(`${link.multiaddr}/p2p/${peerIdOf(address)!.toString()}`);
    }
    const runs = [
      ...HOLDER_COUNTS.map((holdersAtOnce) => ({ name: `${holdersAtOnce}`, holdersAtOnce, slow: false })),
      { name: `${count}, one slow`, holdersAtOnce: count, slow: true },
    ];
    // Interleaved, so that a change in the machine's load falls on every run alike.
    for (let i = 0; i < REPEATS; i++) {
      for (const run of runs) {
        links.at(-1)!.delay(capped(run.slow ? capMBps / 4 : capMBps));
        const reply = await tenant.request({
          op: "restore",
          ...checkpoint,
          providers: addresses.slice(0, run.holdersAtOnce),
        });
        (ms[run.name] ??= []).push(reply.ms);
        console.log(`holders: ${run.name}: ${round(mbPerS(published.size, reply.ms))} MB/s`);
      }
    }
  } finally {
    for (const link of links) await link.close();
    for (const holder of holders) await holder.stop();
  }
  await provider.ipfs.unpin(published.cid);
  await provider.ipfs.gc();
  return { sizeMiB, ciphertextBytes: published.size, capMBps, ms };
}

function holdersFigures({ sizeMiB, ciphertextBytes, capMBps, ms }: HoldersResult): Figure[] {
  const count = Math.max(...HOLDER_COUNTS);
  const rate = (name: string): number => round(mbPerS(ciphertextBytes, median(ms[name]!)));
  return [
    ...HOLDER_COUNTS.map((holdersAtOnce) => ({
      name: `${sizeMiB} MiB from ${holdersAtOnce} holder${holdersAtOnce > 1 ? "s at once" : ""}, ${capMBps} MB/s links`,
      value: rate(`${holdersAtOnce}`),
      unit: "MB/s",
      reference: { value: holdersAtOnce * capMBps, label: holdersAtOnce > 1 ? "their links together" : "its link" },
      note:
        holdersAtOnce > 1
          ? "restoreCheckpoint given every holder: a stripe of the blocks from each (StripedFetch)"
          : "restoreCheckpoint from one holder, through its capped link",
    })),
    {
      name: `${sizeMiB} MiB from ${count} holders, one of them at ${capMBps / 4} MB/s`,
      value: rate(`${count}, one slow`),
      unit: "MB/s",
      reference: { value: (count - 1 + 1 / 4) * capMBps, label: "their links together" },
      note: "a stripe that is done takes over the back of the one with the most time left, at the pace each kept: the slow holder costs a block or so, not its share",
    },
  ];
}

function sizeFigures(result: SizeResult): Figure[] {
  const { sizeMiB, ciphertextBytes, ms, cpuMsPerMiB, fetchFailures } = result;
  const bytes = sizeMiB * MiB;
  const rate = (name: string, of = bytes): number => round(mbPerS(of, median(ms[name]!)));
  const sha = rate("sha256");
  const aes = rate("aes");
  const disk = rate("disk");
  const slowest = Math.min(sha, aes, disk);
  const tcp = rate("tcp", ciphertextBytes);
  const providerCpu = round(median(cpuMsPerMiB.provider));
  const tenantCpu = round(median(cpuMsPerMiB.tenant));
  // Both processes share the machine's cores: with every thread of both busy all the time, the
  // CPU they spend per MiB between them caps the rate (a bound, not a forecast).
  const cores = os.cpus().length;
  const ceilingOf = (cpuMs: number): number => round(MiB / MB / (cpuMs / cores / 1000));
  const ceiling = ceilingOf(providerCpu + tenantCpu);
  const verifyProviderCpu = round(median(cpuMsPerMiB.verifyProvider));
  const verifyTenantCpu = round(median(cpuMsPerMiB.verifyTenant));
  const label = `${sizeMiB} MiB:`;
  const stream = rate("fetch", ciphertextBytes);
  return [
    { name: `${label} raw SHA-256 (read + hash)`, value: sha, unit: "MB/s" },
    { name: `${label} raw AES-256-GCM (read + encrypt)`, value: aes, unit: "MB/s" },
    { name: `${label} raw disk write + fsync`, value: disk, unit: "MB/s" },
    {
      name: `${label} publish (pack+encrypt+add+pin)`,
      value: rate("publish"),
      unit: "MB/s",
      reference: { value: slowest, label: "min(SHA, AES, disk)" },
      target: { value: round(slowest / 2), atMost: false },
      note: "target: 50 % of the slowest raw reference",
    },
    { name: `${label} publish CPU time`, value: round(median(cpuMsPerMiB.publish)), unit: "ms per MiB" },
    { name: `${label} raw loopback TCP`, value: tcp, unit: "MB/s" },
    {
      name: `${label} fetch provider → tenant (restore)`,
      value: stream,
      unit: "MB/s",
      reference: { value: tcp, label: "raw loopback TCP" },
      target: { value: HELIA_FETCH_MB_S, atMost: false },
      note:
        `what a new provider does on a hand-off: by the block stream (/baton/blocks/1.0.0) on a block lane, ` +
        `decrypted, verified and unpacked into files; target: Helia's published node-to-node TCP figure, ` +
        `${HELIA_FETCH_MB_S} MB/s; the CPU time below (provider + tenant, all threads) caps it at ` +
        `${ceiling} MB/s on ${cores} cores` +
        (fetchFailures.length > 0 ? `; ${fetchFailures.length} fetch(es) FAILED and were run again` : ""),
    },
    {
      name: `${label} fetch provider → tenant (verify + pin)`,
      value: rate("verify", ciphertextBytes),
      unit: "MB/s",
      reference: { value: tcp, label: "raw loopback TCP" },
      target: { value: HELIA_FETCH_MB_S, atMost: false },
      note:
        `what a tenant does with each checkpoint (tenantCopy "full": verifyCheckpoint): the same stream into its ` +
        `store, decrypted and hashed against the announced digest, pinned, nothing unpacked; CPU per MiB provider ` +
        `${verifyProviderCpu} ms, tenant ${verifyTenantCpu} ms, which cap it at ` +
        `${ceilingOf(verifyProviderCpu + verifyTenantCpu)} MB/s on ${cores} cores`,
    },
    ...(ms.bitswap!.length === 0
      ? []
      : [
          {
            name: `${label} fetch by bitswap alone (restore)`,
            value: rate("bitswap", ciphertextBytes),
            unit: "MB/s",
            reference: { value: stream, label: "block stream" },
            note:
              'the same restore with `via: "bitswap"`: the fallback, and what any IPFS peer does; CPU per MiB ' +
              `provider ${round(median(cpuMsPerMiB.bitswapProvider))} ms, tenant ${round(median(cpuMsPerMiB.bitswapTenant))} ms`,
          },
        ]),
    ...(ms.local!.length === 0
      ? []
      : [
          {
            name: `${label} restore, blocks already local`,
            value: rate("local", ciphertextBytes),
            unit: "MB/s",
            note: "the same restoreCheckpoint on the tenant with no network: decrypt, verify, unpack",
          },
        ]),
    { name: `${label} fetch CPU time, provider`, value: providerCpu, unit: "ms per MiB" },
    { name: `${label} fetch CPU time, tenant`, value: tenantCpu, unit: "ms per MiB" },
  ];
}

function jobFigures(runs: Record<Variant, JobRun[]>): Figure[] {
  const wall = (variant: Variant): number => median(runs[variant].map((r) => r.wallMs));
  const none = wall("no checkpoints");
  const unwatched = wall("checkpoints, no watcher");
  const watched = wall("checkpoints + watcher");
  const publishShare = median(runs["checkpoints + watcher"].map((r) => (r.publishMs / r.wallMs) * 100));
  const checkFreq = { value: CHECKFREQ_PERCENT, label: "CheckFreq bound" };
  const target = { value: CHECKFREQ_PERCENT, atMost: true };
  const published = runs["checkpoints + watcher"].map((r) => r.published).join(", ");
  return [
    ...VARIANTS.map((variant) => ({
      name: `example job wall, ${variant}`,
      value: round(wall(variant) / 1000, 2),
      unit: "s",
    })),
    {
      name: "example job: Baton capture overhead",
      value: round(((watched - unwatched) / unwatched) * 100, 2),
      unit: "% of wall",
      reference: checkFreq,
      target,
      note: "wall with the watcher publishing vs the same job and checkpoint writes unwatched",
    },
    {
      name: "example job: total checkpoint overhead",
      value: round(((watched - none) / none) * 100, 2),
      unit: "% of wall",
      reference: checkFreq,
      target,
      note: "wall with checkpoints and the watcher vs no checkpoints but the final one",
    },
    {
      name: "example job: publish time / wall time",
      value: round(publishShare, 2),
      unit: "% of wall",
      reference: checkFreq,
      target,
      note: `summed publishCheckpoint time of each run's checkpoints (${published} published)`,
    },
  ];
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: "string", default: "16,256,1024" },
      quick: { type: "boolean", default: false },
      out: { type: "string" },
      "cpu-prof": { type: "string" },
      job: { type: "boolean", default: true },
      "holders-mib": { type: "string" },
      "holder-mb-s": { type: "string", default: "8" },
    },
    allowNegative: true,
  });
  const sizes = (values.quick ? "16" : values.sizes).split(",").map(Number);
  if (sizes.some((s) => !Number.isInteger(s) || s < 1))
    throw new Error(`--sizes wants MiB as integers: ${values.sizes}`);
  const train = values.quick ? TRAIN_QUICK : TRAIN_FULL;
  const holdersMiB = Number(values["holders-mib"] ?? (values.quick ? 16 : 64));
  const holderMBps = Number(values["holder-mb-s"]);
  if (!Number.isInteger(holdersMiB) || holdersMiB < 0)
    throw new Error(`--holders-mib wants MiB as an integer (0: no holders): ${values["holders-mib"]}`);
  if (!(holderMBps > 0)) throw new Error(`--holder-mb-s wants a rate above 0: ${values["holder-mb-s"]}`);

  const loadBefore = os.loadavg();
  const work = await mkdtemp(path.join(os.tmpdir(), "baton-bench-checkpoint-"));
  let host: BatonHost | undefined;
  let ipfs: IpfsNode | undefined;
  let tenant: Tenant | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanUp = (): Promise<void> =>
    (cleaning ??= (async () => {
      // Each step even if one before it failed: the temp dir must go in any case.
      for (const step of [() => tenant?.stop(), stopAll, () => ipfs?.stop(), () => host?.stop()]) {
        await Promise.resolve()
          .then(step)
          .catch(() => undefined);
      }
      // Retried: a publish or fetch cut short by Ctrl-C may still be writing into it for a moment.
      await rm(work, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
    })());
  const onSignal = (signal: NodeJS.Signals): void => {
    console.error(`\n${signal}: cleaning up ${work}`);
    void cleanUp()
      .catch((error: unknown) => console.error(`could not remove ${work}:`, error))
      .finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  try {
    const profile = values["cpu-prof"] === undefined ? undefined : await startCpuProfile();
    host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
    ipfs = await createIpfsNode({ host, dir: path.join(work, "provider"), blockLane: { host: "127.0.0.1", port: 0 } });
    tenant = new Tenant(path.join(work, "tenant"), values["cpu-prof"]);
    await tenant.ready();

    const results: SizeResult[] = [];
    for (const size of sizes) results.push(await measureSize(work, size, { host, ipfs }, tenant));
    await profile?.(path.join(values["cpu-prof"]!, "provider.cpuprofile"));
    const holders =
      holdersMiB > 0 ? await measureHolders(work, holdersMiB, holderMBps, { host, ipfs }, tenant) : undefined;

    const runs = Object.fromEntries(VARIANTS.map((v) => [v, [] as JobRun[]])) as Record<Variant, JobRun[]>;
    if (values.job) {
      console.log(`example job: ${train.steps} steps, a checkpoint every ${train.checkpointEvery}, ×${train.rounds} …`);
      const key = generateJobKey();
      let n = 0;
      for (let r = 0; r < train.rounds; r++) {
        for (const variant of VARIANTS)
          runs[variant].push(await runJob(path.join(work, `job-${n++}`), variant, train, ipfs, key));
      }
    }

    const loadAfter = os.loadavg();
    const figures = [
      ...results.flatMap(sizeFigures),
      ...(holders ? holdersFigures(holders) : []),
      ...(values.job ? jobFigures(runs) : []),
    ];
    printTable(`Checkpoint throughput and overhead (median of ${REPEATS}; 1 MB = 10^6 bytes)`, figures);
    const loads = (l: number[]) => l.map((x) => x.toFixed(2)).join(", ");
    console.log(`\nload average (1, 5, 15 min): ${loads(loadBefore)} at the start, ${loads(loadAfter)} at the end`);
    const data = {
      sizesMiB: sizes,
      repeats: REPEATS,
      machine: {
        cpus: os.cpus().length,
        cpu: os.cpus()[0]?.model,
        node: process.version,
        // 1, 5 and 15-minute load averages (as `uptime` prints them): other work on the machine
        // lowers every figure here, the references with them.
        loadAverage: { start: loadBefore.map((l) => round(l, 2)), end: loadAfter.map((l) => round(l, 2)) },
      },
      figures,
      samples: results,
      ...(holders ? { holders } : {}),
      ...(values.job ? { exampleJob: { ...train, runs } } : {}),
    };
    console.log(`\n${await save(values.out, data)}`);
  } finally {
    await cleanUp();
  }
}

/** bench/results/checkpoint.json as the other benches write it, or checkpoint.json in `out`. */
async function save(out: string | undefined, data: Record<string, unknown>): Promise<string> {
  if (out === undefined) return writeResults("checkpoint", data);
  await mkdir(out, { recursive: true });
  const file = path.join(out, "checkpoint.json");
  await writeFile(file, JSON.stringify({ measuredAt: new Date().toISOString(), ...data }, null, 2) + "\n");
  return file;
}

const tenantAt = process.argv.indexOf("--tenant");
if (tenantAt >= 0) await runTenant(process.argv[tenantAt + 1]!);
else {
  await main();
  // Everything of ours is closed by now (cleanUp). Left to end by itself, Node 22.23 sometimes spins
  // at 100 % CPU in its own teardown (gdb: uv_run in Environment::CleanupHandles, no handle of ours
  // left), and the bench never exits: that hung CI's checkpoint-bench test twice.
  process.exit(0);
}
