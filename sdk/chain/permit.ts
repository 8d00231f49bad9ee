import {
  parseEventLogs,
  parseSignature,
  type Address,
  type LocalAccount,
  type PublicClient,
  type TransactionReceipt,
} from "viem";

import { ChainError } from "../errors.ts";
import { leaseManagerAbi } from "../generated/abis.ts";

/** What `openLeaseWithPermit` takes after the quote: an ERC-2612 permit split into v, r, s. */
export interface PermitSignature {
  /** The allowance it grants: the deposit, or more to keep an allowance for a later signed opening. */
  value: bigint;
  deadline: bigint;
  v: number;
  r: `0x${string}`;
  s: `0x${string}`;
}

/**
 * Signs an ERC-2612 permit letting `spender` take `value` of `token` from `owner`, reading the
 * token's name and the owner's nonce from the chain.
 *
 * @example
 * const permit = await signPermit(chain, account, { token, spender: leaseManager, value: deposit, deadline });
 */
export async function signPermit(
  chain: { publicClient: Pick<PublicClient, "readContract" | "getChainId"> },
  owner: LocalAccount,
  { token, spender, value, deadline }: { token: Address; spender: Address; value: bigint; deadline: bigint },
): Promise<PermitSignature> {
  const abi = [
    { type: "function", name: "name", stateMutability: "view", inputs: [], outputs: [{ type: "string" }] },
    {
      type: "function",
      name: "nonces",
      stateMutability: "view",
      inputs: [{ type: "address" }],
      outputs: [{ type: "uint256" }],
    },
  ] as const;
  const [name, nonce, chainId] = await Promise.all([
    chain.publicClient.readContract({ address: token, abi, functionName: "name" }),
    chain.publicClient.readContract({ address: token, abi, functionName: "nonces", args: [owner.address] }),
    chain.publicClient.getChainId(),
  ]);
  const signature = await owner.signTypedData({
    domain: { name, version: "1", chainId, verifyingContract: token },
    types: {
      Permit: [
        { name: "owner", type: "address" },
        { name: "spender", type: "address" },
        { name: "value", type: "uint256" },
        { name: "nonce", type: "uint256" },
        { name: "deadline", type: "uint256" },
      ],
    },
    primaryType: "Permit",
    message: { owner: owner.address, spender, value, nonce, deadline },
  });
  const { r, s, v, yParity } = parseSignature(signature);
  return { value, deadline, v: Number(v ?? BigInt(yParity + 27)), r, s };
}

/** The id of the lease a transaction opened, from its LeaseOpened event. */
export function leaseIdFromReceipt(receipt: TransactionReceipt, leaseManager: Address): bigint {
  const logs = receipt.logs.filter((log) => log.address.toLowerCase() === leaseManager.toLowerCase());
  const opened = parseEventLogs({ abi: leaseManagerAbi, logs, eventName: "LeaseOpened" })[0];
  if (!opened) throw new ChainError(`transaction ${receipt.transactionHash} opened no lease`);
  return opened.args.leaseId;
}
