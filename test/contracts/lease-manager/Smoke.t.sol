// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Base} from "../utils/Base.t.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

contract SmokeTest is Base {
    function test_OpenHeartbeatSlash() public {
        uint256 id = _openDefault();
        vm.warp(block.timestamp + 10);
        _heartbeat(provider, id);
        vm.warp(block.timestamp + 61);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);
        assertEq(uint256(manager.getLease(id).status), uint256(Lease.Status.Slashed), "status");
        assertEq(stakingToken.balanceOf(keeper), COLLATERAL / 10, "reward");
    }
}
