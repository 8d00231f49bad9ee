// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title DevToken
/// @notice An ERC-20 with ERC-2612 permit for local networks and tests. Anyone can mint: it must
/// never be deployed where its tokens could be mistaken for value. Production deployments pass
/// existing tokens to the registry and the lease manager instead.
contract DevToken is ERC20, ERC20Permit {
    constructor(string memory name_, string memory symbol_) ERC20(name_, symbol_) ERC20Permit(name_) {}

    /// @notice Mints `amount` tokens to `to`; open to anyone, as befits a development faucet.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
