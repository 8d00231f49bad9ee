import { multiaddr } from "@multiformats/multiaddr";
import { getAddress, isAddress, isHex } from "viem";
import { z } from "zod";

/** An Ethereum address, checksummed on the way in. */
export const addressSchema = z
  .string()
  .refine((value) => isAddress(value, { strict: false }), "not an Ethereum address")
  .transform((value) => getAddress(value));

/** A 32-byte hex value (job ids, resource hashes). */
export const bytes32Schema = z
  .string()
  .refine((value) => isHex(value) && value.length === 66, "not a 32-byte hex value")
  .transform((value) => value.toLowerCase() as `0x${string}`);

/** Hex bytes of any length (signatures). */
export const hexSchema = z
  .string()
  .max(4096)
  .refine((value) => isHex(value), "not hex")
  .transform((value) => value as `0x${string}`);

/** A token amount or other uint256, sent as a decimal string (JSON has no bigint). */
export const uintSchema = z
  .string()
  .regex(/^\d{1,78}$/, "not a non-negative integer")
  .transform((value) => BigInt(value))
  .refine((value) => value < 2n ** 256n, "exceeds uint256");

/** A libp2p peer id in its string form (checked cryptographically when a message is opened). */
export const peerIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[1-9A-HJ-NP-Za-km-z]+$/, "not a base58 peer id");

/** A libp2p multiaddr in its string form, e.g. `/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo…`. */
export const multiaddrSchema = z
  .string()
  .max(512)
  .refine((value) => {
    try {
      multiaddr(value);
      return true;
    } catch {
      return false;
    }
  }, "not a multiaddr");

/** Milliseconds since the epoch. */
export const timestampMsSchema = z.number().int().nonnegative();
