// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {DevToken} from "../../../contracts/token/DevToken.sol";

/// @notice A token that burns a fee of `feeBps` out of every transfer between two accounts (mints
/// and burns are exact), so the recipient gets less than was sent, as with STA or PAXG. The fee can
/// be switched on after deployment, as some tokens (USDT) allow.
contract FeeOnTransferToken is DevToken {
    uint256 public feeBps;

    constructor(string memory name_, string memory symbol_, uint256 feeBps_) DevToken(name_, symbol_) {
        feeBps = feeBps_;
    }

    function setFeeBps(uint256 feeBps_) external {
        feeBps = feeBps_;
    }

    function _update(address from, address to, uint256 value) internal override {
        uint256 fee = (value * feeBps) / 10_000;
        if (from == address(0) || to == address(0) || fee == 0) {
            super._update(from, to, value);
            return;
        }
        super._update(from, address(0), fee);
        super._update(from, to, value - fee);
    }
}
