// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";

import {ProviderRegistryBase} from "./ProviderRegistryBase.t.sol";

contract SetLeaseManager_ProviderRegistry_Test is ProviderRegistryBase {
    address internal constant NEW_MANAGER = address(0x1EA5E);

    /// @dev A registry not yet wired, administered by this test contract.
    ProviderRegistry internal fresh;

    function setUp() public override {
        super.setUp();
        fresh = new ProviderRegistry(stakingToken, MIN_STAKE, UNBONDING_PERIOD, admin);
    }

    function test_RevertWhen_CallerNotAdmin() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotAdmin.selector, keeper));
        vm.prank(keeper);
        fresh.setLeaseManager(NEW_MANAGER);
    }

    function testFuzz_RevertWhen_CallerNotAdmin(address caller) public {
        if (caller == admin) caller = keeper;

        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotAdmin.selector, caller));
        vm.prank(caller);
        fresh.setLeaseManager(NEW_MANAGER);
    }

    function test_RevertWhen_CallerNotAdmin_GivenLeaseManagerAlreadySet() public {
        // The admin check comes first: a stranger learns nothing about the wiring.
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotAdmin.selector, keeper));
        vm.prank(keeper);
        registry.setLeaseManager(NEW_MANAGER);
    }

    function test_RevertGiven_LeaseManagerAlreadySet() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_LeaseManagerAlreadySet.selector,
                address(manager)
            )
        );
        registry.setLeaseManager(NEW_MANAGER);
    }

    function test_RevertGiven_LeaseManagerAlreadySet_WhenSettingTheSameAgain() public {
        fresh.setLeaseManager(NEW_MANAGER);

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_LeaseManagerAlreadySet.selector, NEW_MANAGER)
        );
        fresh.setLeaseManager(NEW_MANAGER);
    }

    function test_RevertWhen_NewLeaseManagerIsZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_ZeroAddress.selector));
        fresh.setLeaseManager(address(0));
    }

    function test_SetLeaseManager() public {
        assertEq(fresh.leaseManager(), address(0), "unset before");

        vm.expectEmit(address(fresh));
        emit IProviderRegistry.LeaseManagerSet(NEW_MANAGER);
        fresh.setLeaseManager(NEW_MANAGER);

        assertEq(fresh.leaseManager(), NEW_MANAGER, "leaseManager");
    }

    function test_SetLeaseManager_OnlyNewLeaseManagerLocks() public {
        fresh.setLeaseManager(NEW_MANAGER);
        stakingToken.mint(provider, STAKE);
        vm.startPrank(provider);
        stakingToken.approve(address(fresh), STAKE);
        fresh.register(PEER_ID, METADATA, STAKE);
        vm.stopPrank();

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotLeaseManager.selector, address(manager))
        );
        vm.prank(address(manager));
        fresh.lockCollateral(provider, LEASE_ID, COLLATERAL);

        vm.prank(NEW_MANAGER);
        fresh.lockCollateral(provider, LEASE_ID, COLLATERAL);
        // NEW_MANAGER has no code, so read the books without `getProvider`, which asks the lease
        // manager for the seconds served.
        assertEq(fresh.freeStake(provider), STAKE - COLLATERAL, "locked by the new manager");
    }

    function testFuzz_SetLeaseManager(address leaseManager_) public {
        if (leaseManager_ == address(0)) leaseManager_ = NEW_MANAGER;

        vm.expectEmit(address(fresh));
        emit IProviderRegistry.LeaseManagerSet(leaseManager_);
        fresh.setLeaseManager(leaseManager_);

        assertEq(fresh.leaseManager(), leaseManager_, "leaseManager");
    }
}
