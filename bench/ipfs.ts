/**
 * `npm run bench:ipfs`: checkpoint throughput on one machine, written to bench/results/ipfs.json.
 *
 * - raw SHA-256, AES-256-GCM and loopback TCP on the same machine, as references;
 * - pack + encrypt of a checkpoint directory (no IPFS);
 * - publish (pack, encrypt, add to the file-system blockstore, pin) in a provider process;
 * - fetch and pin by bitswap from that process over loopback;
 * - restore from the local store (decrypt, unpack, verify).
 *
 * BENCH_IPFS_MIB sets the checkpoint size (default 64).
 */
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { createServer, connect, type AddressInfo } from "node:net";
import path from "node:path";

import { generateKeyPair } from "@libp2p/crypto/keys";
import { CID } from "multiformats/cid";

import { restoreCheckpoint } from "../sdk/ipfs/checkpoint.ts";
import { encryptStream, generateJobKey } from "../sdk/ipfs/crypto.ts";
import { createIpfsNode } from "../sdk/ipfs/node.ts";
import { pack } from "../sdk/ipfs/pack.ts";
import { createBatonHost } from "../sdk/p2p/host.ts";
import { spawnScript, stopAll } from "../test/helpers/processes.ts";
import { tempDir, writeTree } from "../test/ipfs/helpers.ts";
import { printTable, writeResults, type Figure } from "./report.ts";

const MiB = 2 ** 20;
const SIZE_MIB = Number(process.env.BENCH_IPFS_MIB ?? 64);
const rate = (bytes: number, ms: number): number => Math.round((bytes / MiB / (ms / 1000)) * 10) / 10;

async function timed(run: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await run();
  return performance.now() - started;
}

function rawSha256(buffer: Uint8Array): number {
  const started = performance.now();
  const hash = createHash("sha256");
  for (let i = 0; i < buffer.byteLength; i += MiB) hash.update(buffer.subarray(i, i + MiB));
  hash.digest();
  return performance.now() - started;
}

function rawAesGcm(buffer: Uint8Array): number {
  const key = randomBytes(32);
  const started = performance.now();
  for (let i = 0; i < buffer.byteLength; i += MiB) {
    const iv = new Uint8Array(12);
    new DataView(iv.buffer).setUint32(8, i / MiB);
    const cipher = createCipheriv("aes-256-gcm", key, iv);
    cipher.update(buffer.subarray(i, i + MiB));
    cipher.final();
    cipher.getAuthTag();
  }
  return performance.now() - started;
}

async function loopbackTcp(bytes: number): Promise<number> {
  const server = createServer((socket) => {
    const chunk = randomBytes(MiB);
    let sent = 0;
    const pump = (): void => {
      while (sent < bytes) {
        sent += chunk.byteLength;
        if (!socket.write(chunk)) return void socket.once("drain", pump);
      }
      socket.end();
    };
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    const socket = connect((server.address() as AddressInfo).port, "127.0.0.1");
    socket.on("data", () => {});
    socket.on("end", resolve);
    socket.on("error", reject);
  });
  const ms = performance.now() - started;
  server.close();
  return ms;
}

const work = await tempDir("bench-ipfs");
try {
  const checkpoint = path.join(work.dir, "checkpoint");
  await writeTree(checkpoint, [
    { path: "model.bin", size: (SIZE_MIB - 4) * MiB },
    ...[0, 1, 2, 3].map((i) => ({ path: `optim/shard-${i}.bin`, size: MiB })),
  ]);
  const bytes = SIZE_MIB * MiB;
  const sample = randomBytes(bytes);
  const key = generateJobKey();

  // Best of three, after a warm-up: the first pass pays for JIT and page faults.
  const best = (run: () => number): number => Math.min(run(), run(), run());
  rawSha256(sample.subarray(0, 8 * MiB));
  rawAesGcm(sample.subarray(0, 8 * MiB));
  const shaMs = best(() => rawSha256(sample));
  const aesMs = best(() => rawAesGcm(sample));
  const tcpMs = await loopbackTcp(bytes);
  const packEncryptMs = await timed(async () => {
    const packed = await pack(checkpoint, { maxBytes: 2 ** 40 });
    for await (const chunk of encryptStream(key, packed.stream)) void chunk;
  });

  const provider = spawnScript("test/ipfs/fixtures/provider.ts", [path.join(work.dir, "provider"), checkpoint], {
    BATON_TEST_JOB_KEY: Buffer.from(key).toString("hex"),
  });
  const announced = JSON.parse(await provider.waitFor(/^\{"address"/, 300_000)) as {
    address: string;
    cid: string;
    plaintextSha256: string;
    size: number;
    publishMs: number;
  };

  const host = await createBatonHost({ privateKey: await generateKeyPair("Ed25519") });
  const ipfs = await createIpfsNode({ host, dir: path.join(work.dir, "tenant") });
  try {
    const cid = CID.parse(announced.cid);
    const fetchMs = await timed(() =>
      ipfs.fetchAndPin(cid, {
        maxBytes: 2 ** 40,
        providers: [announced.address],
        signal: AbortSignal.timeout(600_000),
      }),
    );
    await provider.stop();
    const restoreMs = await timed(() =>
      restoreCheckpoint(ipfs, key, cid, path.join(work.dir, "resume"), {
        expectedSha256: announced.plaintextSha256,
        maxBytes: 2 ** 40,
      }),
    );

    const figures: Figure[] = [
      { name: "raw SHA-256", value: rate(bytes, shaMs), unit: "MiB/s" },
      { name: "raw AES-256-GCM (1 MiB chunks)", value: rate(bytes, aesMs), unit: "MiB/s" },
      { name: "raw loopback TCP", value: rate(bytes, tcpMs), unit: "MiB/s" },
      {
        name: "pack + encrypt",
        value: rate(bytes, packEncryptMs),
        unit: "MiB/s",
        reference: { value: rate(bytes, aesMs), label: "raw AES-GCM" },
      },
      {
        name: "publish (pack, encrypt, add, pin)",
        value: rate(bytes, announced.publishMs),
        unit: "MiB/s",
        reference: { value: rate(bytes, aesMs), label: "raw AES-GCM" },
      },
      {
        name: "fetch + pin over bitswap",
        value: rate(announced.size, fetchMs),
        unit: "MiB/s",
        reference: { value: rate(bytes, tcpMs), label: "raw loopback TCP" },
      },
      { name: "restore from local store", value: rate(bytes, restoreMs), unit: "MiB/s" },
    ];
    printTable(`Checkpoint throughput, ${SIZE_MIB} MiB`, figures);
    console.log(`\n${await writeResults("ipfs", { sizeMiB: SIZE_MIB, figures })}`);
  } finally {
    await ipfs.stop();
    await host.stop();
  }
} finally {
  await stopAll();
  await work.remove();
}
