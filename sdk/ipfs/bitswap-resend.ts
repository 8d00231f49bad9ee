import { base64 } from "multiformats/bases/base64";
import { CID } from "multiformats/cid";

/** The parts of @helia/bitswap's per-peer ledger (`peer-want-lists/ledger.js`) the fix touches. */
interface Ledger {
  wants: Map<string, { status: "want" | "sending" | "sent"; expires?: number }>;
  addWants(wantlist: { entries: { cid: Uint8Array; cancel?: boolean }[] } | undefined): void;
}

/**
 * Makes a node send a block again when a peer asks for it again. @helia/bitswap (4.0.19) marks a
 * block it sent to a peer `sent` and, for the next 5 s (`doNotResendBlockWindow`), merges any new
 * want of that block into the `sent` entry, which it never sends; when the window ends the entry,
 * and the peer's new want with it, is dropped. A peer that fetched a checkpoint, lost the blocks (a
 * gc) and fetched it again within 5 s waited forever; so did one that asked again later while the
 * `sent` entry was still there (it goes only when the ledger next sends, and the new want with it).
 * A want for a block already sent means the peer does not have it (any more): it is sent again.
 *
 * Loaded like `createHeliaLight` in node.ts: from beside the package's index, which its exports map
 * hides (the version is pinned, and test/ipfs fails if the module moves or the bug comes back).
 */
export const bitswapResendFix: Promise<void> = import(
  new URL("peer-want-lists/ledger.js", import.meta.resolve("@helia/bitswap")).href
).then((module: { Ledger: { prototype: Ledger } }) => {
  const prototype = module.Ledger.prototype;
  const addWants = prototype.addWants;
  prototype.addWants = function (this: Ledger, wantlist) {
    for (const entry of wantlist?.entries ?? []) {
      if (entry.cancel === true) continue;
      // The ledger's key: the multihash in base64 without a multibase prefix (uint8arrays' "base64").
      const key = base64.baseEncode(CID.decode(entry.cid).multihash.bytes);
      const want = this.wants.get(key);
      if (want?.status === "sent") {
        want.status = "want";
        // The window's end, set when the block was sent, would drop the want before it is sent
        // again (the send removes expired wants first).
        delete want.expires;
      }
    }
    addWants.call(this, wantlist);
  };
});
