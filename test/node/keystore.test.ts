import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { decryptKeystore, encryptKeystore, loadAccount, writeKeystore } from "../../node/keystore.ts";

// The scrypt test vector of the Web3 Secret Storage definition (Ethereum wiki).
const SPEC_VECTOR = {
  crypto: {
    cipher: "aes-128-ctr",
    cipherparams: { iv: "83dbcc02d8ccb40e466191a123791e0e" },
    ciphertext: "d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c",
    kdf: "scrypt",
    kdfparams: {
      dklen: 32,
      n: 262144,
      p: 8,
      r: 1,
      salt: "ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19",
    },
    mac: "2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097",
  },
  id: "3198bc9c-6672-5ab3-d995-4942343ae5b6",
  version: 3,
};
const DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const FAST_N = 2 ** 10;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "baton-keystore-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("keystore (Web3 Secret Storage v3)", () => {
  it("decrypts the specification's scrypt test vector", async () => {
    expect(await decryptKeystore(SPEC_VECTOR, "testpassword")).toBe(
      "0x7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d",
    );
  });

  it("round-trips a key and refuses a wrong password", async () => {
    const keystore = await encryptKeystore(DEV_KEY, "correct horse", FAST_N);
    expect(await decryptKeystore(keystore, "correct horse")).toBe(DEV_KEY);
    await expect(decryptKeystore(keystore, "wrong")).rejects.toThrow("wrong keystore password");
  });

  it("refuses a file that is not a v3 keystore", async () => {
    await expect(decryptKeystore({ version: 1 }, "x")).rejects.toThrow("not a v3 scrypt keystore");
  });

  it("writes files only its owner can read and never overwrites one", async () => {
    const file = path.join(dir, "key.json");
    await writeKeystore(file, DEV_KEY, "pw", FAST_N);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    await expect(writeKeystore(file, DEV_KEY, "pw", FAST_N)).rejects.toThrow(/EEXIST/);
    expect(JSON.parse(await readFile(file, "utf8")).address).toBe("f39fd6e51aad88f6f4ce6ab8827279cfffb92266");
    const account = await loadAccount({ keystore: file, password: "pw" });
    expect(account.address).toBe("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
  });

  it("says what is missing", async () => {
    await expect(loadAccount({})).rejects.toThrow("no key");
    await expect(loadAccount({ keystore: path.join(dir, "k.json") })).rejects.toThrow("needs a password");
    await expect(loadAccount({ keystore: path.join(dir, "nope.json"), password: "x" })).rejects.toThrow("cannot read");
    await expect(loadAccount({ privateKey: "0x12" })).rejects.toThrow("64 hex digits");
  });
});
