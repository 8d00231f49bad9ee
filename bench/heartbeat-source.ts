/**
 * Load source for `bench/failover.ts`'s watch-capacity figure: `--peers P` libp2p hosts in this one
 * process, each answering lease sessions on Baton's real lease protocol with signed heartbeats every
 * `--heartbeat-ms`, like a provider with running jobs. It does not run jobs or check the chain: it
 * exists to load the *tenant* side (one SDK process watching many leases), and is used for nothing
 * else. Prints `ready <multiaddr> …` once listening; exits when stdin closes.
 */
import { parseArgs } from "node:util";

import { generateKeyPair } from "@libp2p/crypto/keys";

import { createBatonHost } from "../sdk/p2p/host.ts";
import { openMessage, parseBody, sealMessage } from "../sdk/wire/envelope.ts";
import { tenantMessageSchemas } from "../sdk/wire/messages.ts";
import { readMessages, writeMessage } from "../sdk/wire/framing.ts";
import { maxMessageBytes, protocols } from "../sdk/wire/protocols.ts";

const { values } = parseArgs({
  options: { peers: { type: "string", default: "20" }, "heartbeat-ms": { type: "string", default: "500" } },
});
const peers = Number(values.peers);
const heartbeatMs = Number(values["heartbeat-ms"]);

const addresses: string[] = [];
const timers = new Set<NodeJS.Timeout>();
for (let i = 0; i < peers; i++) {
  const key = await generateKeyPair("Ed25519");
  const host = await createBatonHost({ privateKey: key });
  const me = host.peerId.toString();
  await host.handle(
    protocols.lease,
    (stream) => {
      void (async () => {
        const messages = readMessages(stream, maxMessageBytes.lease);
        const first = await messages.next();
        if (first.done) return;
        // The first message names the lease; its tenant proof is not checked against the chain (see above).
        const opened = await openMessage(first.value, { maxBytes: maxMessageBytes.lease, types: ["attach"] });
        const { leaseId } = parseBody(tenantMessageSchemas.attach, opened);
        let seq = 0;
        const timer = setInterval(() => {
          void sealMessage(key, me, "heartbeat", {
            leaseId,
            seq: ++seq,
            at: Date.now(),
            state: "running",
            progress: { step: seq, total: 1_000_000 },
          })
            .then((bytes) => writeMessage(stream, bytes))
            .catch(() => {
              clearInterval(timer);
              timers.delete(timer);
            });
        }, heartbeatMs);
        timers.add(timer);
        for await (const message of messages) void message;
        clearInterval(timer);
        timers.delete(timer);
      })().catch(() => undefined);
    },
    { maxInboundStreams: 4_096 },
  );
  addresses.push(`${host.getMultiaddrs()[0]!.toString()}`);
}
console.log(`ready ${addresses.join(" ")}`);
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
