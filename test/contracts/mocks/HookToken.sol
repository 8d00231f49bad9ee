// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {DevToken} from "../../../contracts/token/DevToken.sol";

/// @notice What a recipient of {HookToken} implements (ERC-777's `tokensReceived`, reduced).
interface ITokenRecipient {
    function onTokenReceived(address operator, address from, uint256 amount) external;
}

/// @notice An ERC-777-like token: after every transfer (mint included) to an address that
/// registered a hook, it calls `onTokenReceived` on that address, and a revert there reverts the
/// transfer. Recipients opt in, as with ERC-1820 (a registry or a lease manager never does), so a
/// contract tenant decides alone whether its refunds can be paid.
contract HookToken is DevToken {
    mapping(address account => bool registered) public hasHook;

    constructor(string memory name_, string memory symbol_) DevToken(name_, symbol_) {}

    /// @notice Opts the caller in (or out) of `onTokenReceived` calls.
    function registerHook(bool registered) external {
        hasHook[msg.sender] = registered;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (to != address(0) && hasHook[to]) ITokenRecipient(to).onTokenReceived(msg.sender, from, value);
    }
}

/// @notice A contract tenant (or any account) that registers a receive hook on the given tokens
/// and refuses every incoming transfer while `refusing` is set. Tests act as it with `vm.prank`.
contract RefusingReceiver is ITokenRecipient {
    bool public refusing;

    error RefusingReceiver_Refused(address from, uint256 amount);

    constructor(HookToken[] memory tokens) {
        for (uint256 i = 0; i < tokens.length; ++i) tokens[i].registerHook(true);
    }

    function setRefusing(bool refusing_) external {
        refusing = refusing_;
    }

    function onTokenReceived(address, address from, uint256 amount) external view override {
        if (refusing) revert RefusingReceiver_Refused(from, amount);
    }
}
