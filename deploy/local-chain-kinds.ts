/**
 * What every local chain is, whichever EVM runs it: the EVMs there are, and the development accounts
 * each funds. A module without imports, so that the chain server and the `baton` command's options
 * load it without viem.
 */

/**
 * The EVMs a local chain can run: Hardhat's EDR (the default: the one the Solidity tests run on) or
 * Foundry's Anvil, a second implementation that the devnet, the demo and the chain's end-to-end tests
 * also run on. Each name is a viem test client mode too: their dev methods (time travel, mining) differ.
 */
export const LOCAL_CHAINS = ["hardhat", "anvil"] as const;
export type LocalChainKind = (typeof LOCAL_CHAINS)[number];

/** Hardhat's well-known development mnemonic (Anvil's too). Never use its keys on a public chain. */
export const DEV_MNEMONIC = "test test test test test test test test test test test junk";

/** How many of its accounts are funded: Hardhat's default, which deploy/chain-server.ts gives Anvil too. */
export const DEV_ACCOUNTS = 20;

/** The ETH each of them starts with (both chains' default). */
export const DEV_BALANCE_ETH = 10_000;
