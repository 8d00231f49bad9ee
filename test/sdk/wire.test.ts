import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { describe, expect, it } from "vitest";

import { devAccount } from "../../deploy/local-chain.ts";
import { ProtocolError } from "../../sdk/errors.ts";
import { openMessage, parseBody, sealMessage } from "../../sdk/wire/envelope.ts";
import { bidSchema, providerMessageSchemas } from "../../sdk/wire/messages.ts";
import { signTenantAuth, verifyTenantAuth } from "../../sdk/wire/tenant-auth.ts";

const key = await generateKeyPair("Ed25519");
const peer = peerIdFromPrivateKey(key).toString();
const other = await generateKeyPair("Ed25519");
const otherPeer = peerIdFromPrivateKey(other).toString();

const heartbeat = { leaseId: 7n, seq: 3, at: 1_700_000_000_000, state: "running", progress: { step: 40, total: 100 } };

describe("signed envelopes", () => {
  it("round-trips a message and validates its body", async () => {
    const bytes = await sealMessage(key, peer, "heartbeat", heartbeat);
    const opened = await openMessage(bytes, { maxBytes: 1024, types: ["heartbeat"], from: peer });
    expect(parseBody(providerMessageSchemas.heartbeat, opened)).toEqual(heartbeat);
  });

  it("signs and verifies as libp2p's Ed25519 keys do, and refuses other key types", async () => {
    const signingInput = (envelope: { t: string; b: string }): Uint8Array =>
      new TextEncoder().encode(`baton/1\0${envelope.t}\0${envelope.b}`);
    const sealed = JSON.parse(new TextDecoder().decode(await sealMessage(key, peer, "heartbeat", heartbeat)));
    // What this side signed, libp2p's own verification accepts.
    expect(await key.publicKey.verify(signingInput(sealed), Buffer.from(sealed.s, "base64"))).toBe(true);
    // What libp2p's own signing made, this side opens.
    const signed = { ...sealed, s: Buffer.from(await key.sign(signingInput(sealed))).toString("base64") };
    const opened = await openMessage(new TextEncoder().encode(JSON.stringify(signed)), { maxBytes: 1024, from: peer });
    expect(parseBody(providerMessageSchemas.heartbeat, opened)).toEqual(heartbeat);

    const secp = await generateKeyPair("secp256k1");
    const secpPeer = peerIdFromPrivateKey(secp).toString();
    await expect(sealMessage(secp, secpPeer, "heartbeat", heartbeat)).rejects.toThrow("not secp256k1");
    const claimed = {
      ...sealed,
      f: secpPeer,
      s: Buffer.from(await secp.sign(signingInput(sealed))).toString("base64"),
    };
    await expect(openMessage(new TextEncoder().encode(JSON.stringify(claimed)), { maxBytes: 1024 })).rejects.toThrow(
      "key is secp256k1, not Ed25519",
    );
  });

  it("refuses oversized, malformed, unexpected, misattributed and tampered messages", async () => {
    const bytes = await sealMessage(key, peer, "heartbeat", heartbeat);
    await expect(openMessage(bytes, { maxBytes: 10 })).rejects.toThrow("message too large");
    await expect(openMessage(new TextEncoder().encode("{nope"), { maxBytes: 1024 })).rejects.toThrow(
      "malformed message envelope",
    );
    await expect(openMessage(bytes, { maxBytes: 1024, types: ["log"] })).rejects.toThrow("unexpected message type");
    await expect(openMessage(bytes, { maxBytes: 1024, from: otherPeer })).rejects.toThrow("signed by another peer");

    const tampered = new TextDecoder().decode(bytes).replace('\\"seq\\":3', '\\"seq\\":4');
    expect(tampered).not.toBe(new TextDecoder().decode(bytes));
    await expect(openMessage(new TextEncoder().encode(tampered), { maxBytes: 1024 })).rejects.toThrow(
      "bad message signature",
    );

    // Signed by one key but claiming to come from another peer.
    const forged = JSON.parse(new TextDecoder().decode(await sealMessage(other, otherPeer, "heartbeat", heartbeat)));
    forged.f = peer;
    await expect(openMessage(new TextEncoder().encode(JSON.stringify(forged)), { maxBytes: 1024 })).rejects.toThrow(
      "bad message signature",
    );
  });

  it("reports schema violations as protocol errors with details", async () => {
    const opened = await openMessage(await sealMessage(key, peer, "bid", { jobId: "nope" }), { maxBytes: 4096 });
    const error = (() => {
      try {
        parseBody(bidSchema, opened);
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(ProtocolError);
    expect((error as ProtocolError).shortMessage).toBe("invalid bid message");
    expect((error as ProtocolError).details).toContain("jobId");
  });
});

describe("tenant session proofs", () => {
  const tenant = devAccount(5);

  it("binds a peer to the tenant's address for one lease", async () => {
    const auth = await signTenantAuth(tenant, 9n, peer, 1_000);
    expect(await verifyTenantAuth(auth, 9n, peer, 2_000)).toBe(tenant.address);
    await expect(verifyTenantAuth(auth, 10n, peer, 2_000)).rejects.toThrow("not signed by the address");
    await expect(verifyTenantAuth(auth, 9n, otherPeer, 2_000)).rejects.toThrow("not signed by the address");
    await expect(verifyTenantAuth(auth, 9n, peer, 1_000 + 6 * 60_000)).rejects.toThrow("stale");
    await expect(verifyTenantAuth({ ...auth, address: devAccount(6).address }, 9n, peer, 2_000)).rejects.toThrow(
      "not signed by the address",
    );
  });
});
