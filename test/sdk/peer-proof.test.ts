import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { createPublicClient, createWalletClient, http, parseEther, type Address } from "viem";
import type { HDAccount } from "viem/accounts";
import { hardhat } from "viem/chains";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { deployBaton } from "../../deploy/deploy.ts";
import { devAccount, startLocalChain, type LocalChain } from "../../deploy/local-chain.ts";
import { contracts, createChainClient, writeContract, type ChainClient } from "../../sdk/chain/client.ts";
import type { Deployment } from "../../sdk/chain/deployments.ts";
import { metadataWithPeerProof, peerBinding, verifyPeerProof, type PeerBinding } from "../../sdk/chain/peer-proof.ts";
import { createBindingChecker } from "../../sdk/p2p/offers.ts";

const registry: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const provider: Address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const binding: PeerBinding = { chainId: 31337, registry, provider };

describe("verifyPeerProof", () => {
  let key: PrivateKey;
  let peerId: string;
  let metadata: string;
  beforeAll(async () => {
    key = await generateKeyPair("Ed25519");
    peerId = peerIdFromPrivateKey(key).toString();
    metadata = await metadataWithPeerProof('{"region":"eu"}', key, binding);
  });

  it("accepts the peer key's signature over this provider, chain and registry, and keeps the metadata", async () => {
    expect(await verifyPeerProof(peerId, metadata, binding)).toBe(true);
    expect(JSON.parse(metadata)).toMatchObject({ region: "eu" });
  });

  it("refuses the proof for another provider, chain or registry", async () => {
    const other: Address = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
    expect(await verifyPeerProof(peerId, metadata, { ...binding, provider: other })).toBe(false);
    expect(await verifyPeerProof(peerId, metadata, { ...binding, chainId: 1 })).toBe(false);
    expect(await verifyPeerProof(peerId, metadata, { ...binding, registry: other })).toBe(false);
  });

  it("refuses another key's proof, and malformed metadata", async () => {
    const stranger = peerIdFromPrivateKey(await generateKeyPair("Ed25519")).toString();
    expect(await verifyPeerProof(stranger, metadata, binding)).toBe(false);
    for (const bad of ["{}", "not json", '{"peerProof":"0x1234"}', '{"peerProof":42}', "null"]) {
      expect(await verifyPeerProof(peerId, bad, binding), bad).toBe(false);
    }
    await expect(metadataWithPeerProof("[1]", key, binding)).rejects.toThrow(/metadata must be a JSON object/);
  });
});

describe("a squatted peer id", () => {
  let chain: LocalChain;
  let deployment: Deployment;
  const owner = devAccount(1);
  const squatter = devAccount(2);

  beforeAll(async () => {
    chain = await startLocalChain({ signal: AbortSignal.timeout(60_000) });
    const transport = http(chain.rpcUrl);
    deployment = await deployBaton({
      walletClient: createWalletClient({ chain: hardhat, account: devAccount(0), transport }),
      publicClient: createPublicClient({ chain: hardhat, transport }),
    });
  });
  afterAll(async () => {
    await chain?.stop();
  });

  const register = async (account: HDAccount, peerId: string, metadata: string): Promise<ChainClient> => {
    const client = createChainClient({ rpcUrl: chain.rpcUrl, deployment, account, pollingIntervalMs: 20 });
    const { stakingToken, registry } = contracts(deployment);
    const stake = parseEther("500");
    await writeContract(client, { ...stakingToken, functionName: "mint", args: [account.address, stake] });
    await writeContract(client, { ...stakingToken, functionName: "approve", args: [registry.address, stake] });
    await writeContract(client, { ...registry, functionName: "register", args: [peerId, metadata, stake] });
    return client;
  };

  it("locks nobody out: the owner registers after the squatter, and only the owner's offers are trusted", async () => {
    const key = await generateKeyPair("Ed25519");
    const peerId = peerIdFromPrivateKey(key).toString();
    const ownMetadata = await metadataWithPeerProof("{}", key, peerBinding(deployment, owner.address));
    // The squatter claims the id first, with stake, and a copy of the owner's proof.
    const squatterChain = await register(squatter, peerId, ownMetadata);
    await register(owner, peerId, ownMetadata);

    const checkBinding = createBindingChecker(squatterChain);
    expect(await checkBinding(peerId, owner.address)).toBe(true);
    expect(await checkBinding(peerId, squatter.address)).toBe(false);
  });
});
