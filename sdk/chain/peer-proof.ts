import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { bytesToHex, hexToBytes, isHex, type Address, type Hex } from "viem";

import { UserError } from "../errors.ts";
import type { Deployment } from "./deployments.ts";

/**
 * The registry lets any provider claim any peer id (so that nobody can lock the key's owner out by
 * claiming it first); a claim counts only with a proof of the peer key in the provider's metadata:
 * an Ed25519 signature by the libp2p key over the provider's address, the chain and the registry.
 */
export interface PeerBinding {
  chainId: number;
  registry: Address;
  provider: Address;
}

/** The binding of `provider` in `deployment`'s registry. */
export function peerBinding(deployment: Pick<Deployment, "chainId" | "contracts">, provider: Address): PeerBinding {
  return { chainId: deployment.chainId, registry: deployment.contracts.providerRegistry, provider };
}

/** The metadata field (`metadata` is a JSON object) that carries the proof. */
export const PEER_PROOF_FIELD = "peerProof";

/** The bytes a peer key signs to bind itself to `binding.provider`. */
export function peerBindingMessage({ chainId, registry, provider }: PeerBinding): Uint8Array {
  return new TextEncoder().encode(
    `baton peer binding v1\nchain ${chainId}\nregistry ${registry.toLowerCase()}\nprovider ${provider.toLowerCase()}`,
  );
}

/** Signs the binding with the peer key. */
export async function signPeerBinding(key: PrivateKey, binding: PeerBinding): Promise<Hex> {
  return bytesToHex(await key.sign(peerBindingMessage(binding)));
}

/**
 * The provider's metadata (a JSON object, `{}` when empty) with the proof added, as registered.
 *
 * @throws {UserError} when `metadata` is not a JSON object.
 */
export async function metadataWithPeerProof(metadata: string, key: PrivateKey, binding: PeerBinding): Promise<string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(metadata);
  } catch {
    throw new UserError(`metadata must be a JSON object, not ${JSON.stringify(metadata)}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new UserError(`metadata must be a JSON object, not ${JSON.stringify(metadata)}`);
  }
  return JSON.stringify({ ...parsed, [PEER_PROOF_FIELD]: await signPeerBinding(key, binding) });
}

/**
 * Whether `metadata` proves that the owner of `peerId`'s key bound it to `binding.provider`. False
 * for anything malformed: a peer id without an embedded public key, metadata that is not JSON, a
 * missing or bad signature.
 */
export async function verifyPeerProof(peerId: string, metadata: string, binding: PeerBinding): Promise<boolean> {
  try {
    const proof = (JSON.parse(metadata) as Record<string, unknown>)[PEER_PROOF_FIELD];
    if (typeof proof !== "string" || !isHex(proof)) return false;
    const key = peerIdFromString(peerId).publicKey;
    if (!key) return false;
    return await key.verify(peerBindingMessage(binding), hexToBytes(proof));
  } catch {
    return false;
  }
}
