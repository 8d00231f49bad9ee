import {
  createCipheriv,
  createDecipheriv,
  randomBytes,
  randomUUID,
  scrypt as scryptCallback,
  timingSafeEqual,
} from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { scryptAsync } from "@noble/hashes/scrypt.js";
import { bytesToHex, hexToBytes, isHex, keccak256, type Hex } from "viem";
import { privateKeyToAccount, type PrivateKeyAccount } from "viem/accounts";
import { z } from "zod";

import { UserError } from "../sdk/errors.ts";

const scrypt = promisify(scryptCallback) as (
  password: string,
  salt: Buffer,
  keylen: number,
  options: { N: number; r: number; p: number; maxmem: number },
) => Promise<Buffer>;

/**
 * Ethereum keys at rest in the Web3 Secret Storage v3 format (the keystore files of geth, ethers
 * and MetaMask exports): scrypt key derivation, AES-128-CTR, and a keccak-256 MAC that detects a
 * wrong password before any key is used.
 */
const keystoreSchema = z.object({
  version: z.literal(3),
  id: z.string(),
  /** Optional in the spec; checked against the decrypted key when present. */
  address: z
    .string()
    .regex(/^(0x)?[0-9a-fA-F]{40}$/)
    .optional(),
  crypto: z.object({
    cipher: z.literal("aes-128-ctr"),
    ciphertext: z.string().regex(/^[0-9a-f]{64}$/i),
    cipherparams: z.object({ iv: z.string().regex(/^[0-9a-f]{32}$/i) }),
    kdf: z.literal("scrypt"),
    kdfparams: z.object({
      dklen: z.literal(32),
      n: z
        .number()
        .int()
        .min(2)
        .max(2 ** 20),
      r: z.number().int().min(1).max(16),
      p: z.number().int().min(1).max(16),
      salt: z.string().regex(/^[0-9a-f]+$/i),
    }),
    mac: z.string().regex(/^[0-9a-f]{64}$/i),
  }),
});

/** geth's "standard" cost: about a second and 256 MiB; tests pass a lower `n`. */
export const DEFAULT_SCRYPT_N = 2 ** 18;

/**
 * OpenSSL's scrypt (fast) refuses N ≥ 2^(16r), which some keystores use (the specification's own
 * test vector has r = 1, N = 2^18); those go through the pure-JS implementation instead.
 */
async function deriveKey(password: string, salt: Buffer, n: number, r: number, p: number): Promise<Buffer> {
  if (Math.log2(n) < 16 * r) return scrypt(password, salt, 32, { N: n, r, p, maxmem: 256 * n * r + 64 * 1024 * 1024 });
  return Buffer.from(await scryptAsync(password, salt, { N: n, r, p, dkLen: 32, maxmem: 2 ** 31 }));
}

function mac(derived: Buffer, ciphertext: Buffer): Buffer {
  return Buffer.from(hexToBytes(keccak256(Buffer.concat([derived.subarray(16, 32), ciphertext]))));
}

/** Encrypts a private key into a v3 keystore object. */
export async function encryptKeystore(privateKey: Hex, password: string, n = DEFAULT_SCRYPT_N): Promise<object> {
  const salt = randomBytes(32);
  const iv = randomBytes(16);
  const derived = await deriveKey(password, salt, n, 8, 1);
  const cipher = createCipheriv("aes-128-ctr", derived.subarray(0, 16), iv);
  const ciphertext = Buffer.concat([cipher.update(hexToBytes(privateKey)), cipher.final()]);
  return {
    version: 3,
    id: randomUUID(),
    address: privateKeyToAccount(privateKey).address.slice(2).toLowerCase(),
    crypto: {
      cipher: "aes-128-ctr",
      ciphertext: ciphertext.toString("hex"),
      cipherparams: { iv: iv.toString("hex") },
      kdf: "scrypt",
      kdfparams: { dklen: 32, n, r: 8, p: 1, salt: salt.toString("hex") },
      mac: mac(derived, ciphertext).toString("hex"),
    },
  };
}

/**
 * Decrypts a v3 keystore object.
 *
 * @throws {UserError} when the file is not a v3 scrypt keystore or the password is wrong.
 */
export async function decryptKeystore(keystore: unknown, password: string): Promise<Hex> {
  const parsed = keystoreSchema.safeParse(keystore);
  if (!parsed.success) throw new UserError("not a v3 scrypt keystore", { details: z.prettifyError(parsed.error) });
  const { crypto } = parsed.data;
  const { n, r, p, salt } = crypto.kdfparams;
  const derived = await deriveKey(password, Buffer.from(salt, "hex"), n, r, p);
  const ciphertext = Buffer.from(crypto.ciphertext, "hex");
  if (!timingSafeEqual(mac(derived, ciphertext), Buffer.from(crypto.mac, "hex"))) {
    throw new UserError("wrong keystore password");
  }
  const decipher = createDecipheriv("aes-128-ctr", derived.subarray(0, 16), Buffer.from(crypto.cipherparams.iv, "hex"));
  const privateKey = bytesToHex(Buffer.concat([decipher.update(ciphertext), decipher.final()]));
  const address = parsed.data.address?.replace(/^0x/, "").toLowerCase();
  if (address !== undefined && privateKeyToAccount(privateKey).address.slice(2).toLowerCase() !== address) {
    throw new UserError("keystore is corrupt: its key does not match its address");
  }
  return privateKey;
}

/** Writes a new keystore file (mode 0600) for `privateKey`. */
export async function writeKeystore(file: string, privateKey: Hex, password: string, n?: number): Promise<void> {
  await writeFile(file, JSON.stringify(await encryptKeystore(privateKey, password, n), null, 2) + "\n", {
    mode: 0o600,
    flag: "wx",
  });
}

export interface LoadAccountOptions {
  /** A keystore file, decrypted with `password`. */
  keystore?: string;
  password?: string;
  /** A raw key for development (e.g. from BATON_PROVIDER_KEY); wins over the keystore when set. */
  privateKey?: string;
}

/**
 * The node's Ethereum account: from a development key when one is given, else from the keystore.
 *
 * @throws {UserError} naming what is missing or wrong.
 */
export async function loadAccount({ keystore, password, privateKey }: LoadAccountOptions): Promise<PrivateKeyAccount> {
  if (privateKey !== undefined) {
    if (!isHex(privateKey) || privateKey.length !== 66) {
      throw new UserError("the private key must be 0x followed by 64 hex digits");
    }
    return privateKeyToAccount(privateKey);
  }
  if (keystore === undefined) throw new UserError("no key: give a keystore file or a development private key");
  if (password === undefined) throw new UserError(`keystore ${keystore} needs a password (BATON_KEYSTORE_PASSWORD)`);
  let text: string;
  try {
    text = await readFile(keystore, "utf8");
  } catch (cause) {
    throw new UserError(`cannot read keystore ${keystore}`, { cause });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new UserError(`keystore ${keystore} is not JSON`, { cause });
  }
  return privateKeyToAccount(await decryptKeystore(json, password));
}
