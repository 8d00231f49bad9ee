// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {DevToken} from "../../../contracts/token/DevToken.sol";

/// @notice A USDC/USDT-style token: its owner can blocklist any address, after which every transfer
/// from or to that address reverts. A tenant blocklisted after its lease opened is a tenant whose
/// refunds cannot be paid. Minting is open, as DevToken's (tests only).
contract BlocklistToken is DevToken {
    address public immutable owner;
    mapping(address account => bool blocked) public isBlocklisted;

    error BlocklistToken_CallerNotOwner(address caller);
    error BlocklistToken_Blocklisted(address account);

    event Blocklisted(address indexed account);
    event UnBlocklisted(address indexed account);

    constructor(string memory name_, string memory symbol_, address owner_) DevToken(name_, symbol_) {
        owner = owner_;
    }

    function blocklist(address account) external {
        if (msg.sender != owner) revert BlocklistToken_CallerNotOwner(msg.sender);
        isBlocklisted[account] = true;
        emit Blocklisted(account);
    }

    function unBlocklist(address account) external {
        if (msg.sender != owner) revert BlocklistToken_CallerNotOwner(msg.sender);
        isBlocklisted[account] = false;
        emit UnBlocklisted(account);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (isBlocklisted[from]) revert BlocklistToken_Blocklisted(from);
        if (isBlocklisted[to]) revert BlocklistToken_Blocklisted(to);
        super._update(from, to, value);
    }
}
