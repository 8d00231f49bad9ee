// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice A smart-contract provider that signs quotes the ERC-1271 way: it approves digests one
/// by one and accepts any signature bytes for an approved digest.
contract Erc1271Wallet {
    mapping(bytes32 digest => bool approved) public approved;

    function approveDigest(bytes32 digest) external {
        approved[digest] = true;
    }

    function isValidSignature(bytes32 digest, bytes calldata) external view returns (bytes4) {
        return approved[digest] ? bytes4(0x1626ba7e) : bytes4(0xffffffff);
    }
}

/// @notice An ERC-20 without ERC-2612 permit, to check that `openLeaseWithPermit` falls back to
/// the allowance when the token has no `permit` at all.
contract PlainToken is ERC20 {
    constructor() ERC20("Plain", "PLN") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
