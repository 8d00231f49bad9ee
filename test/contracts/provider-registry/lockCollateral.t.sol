// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";

import {ProviderRegistryBase} from "./ProviderRegistryBase.t.sol";

contract LockCollateral_ProviderRegistry_Test is ProviderRegistryBase {
    function test_RevertWhen_CallerNotLeaseManager() public {
        _registerDefault(STAKE);

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotLeaseManager.selector, provider)
        );
        vm.prank(provider);
        registry.lockCollateral(provider, COLLATERAL);
    }

    function testFuzz_RevertWhen_CallerNotLeaseManager(address caller) public {
        if (caller == address(manager)) caller = keeper;
        _registerDefault(STAKE);

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotLeaseManager.selector, caller)
        );
        vm.prank(caller);
        registry.lockCollateral(provider, COLLATERAL);
    }

    function test_RevertGiven_ProviderNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_NotRegistered.selector, provider));
        vm.prank(address(manager));
        registry.lockCollateral(provider, 0);
    }

    function test_RevertGiven_StakeBelowMinStake() public {
        _registerDefault(MIN_STAKE - 1);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_BelowMinStake.selector,
                provider,
                MIN_STAKE - 1,
                MIN_STAKE
            )
        );
        vm.prank(address(manager));
        registry.lockCollateral(provider, 1);
    }

    function test_RevertGiven_UnbondingTookActiveStakeBelowMinStake() public {
        _registerDefault(STAKE);
        uint256 unbonding = STAKE - MIN_STAKE + 1;
        _requestUnstake(provider, unbonding);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_BelowMinStake.selector,
                provider,
                MIN_STAKE - 1,
                MIN_STAKE
            )
        );
        vm.prank(address(manager));
        registry.lockCollateral(provider, 1);
    }

    function test_RevertGiven_SlashTookStakeBelowMinStake() public {
        _registerDefault(MIN_STAKE + COLLATERAL - 1);
        _lock(provider, COLLATERAL);
        _slash(provider, LEASE_ID, COLLATERAL, _payout(0, 0, COLLATERAL));

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_BelowMinStake.selector,
                provider,
                MIN_STAKE - 1,
                MIN_STAKE
            )
        );
        vm.prank(address(manager));
        registry.lockCollateral(provider, 1);
    }

    function test_RevertWhen_AmountExceedsFreeStake() public {
        _registerDefault(STAKE);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                STAKE + 1,
                STAKE
            )
        );
        vm.prank(address(manager));
        registry.lockCollateral(provider, STAKE + 1);
    }

    function test_RevertGiven_CollateralAlreadyLocked() public {
        _registerDefault(STAKE);
        _lock(provider, STAKE - COLLATERAL);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                COLLATERAL + 1,
                COLLATERAL
            )
        );
        vm.prank(address(manager));
        registry.lockCollateral(provider, COLLATERAL + 1);
    }

    function test_RevertGiven_UnbondingLeavesTooLittleFreeStake() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, STAKE - MIN_STAKE);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                MIN_STAKE + 1,
                MIN_STAKE
            )
        );
        vm.prank(address(manager));
        registry.lockCollateral(provider, MIN_STAKE + 1);
    }

    function test_LockCollateral() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, COLLATERAL);

        vmLogs.recordLogs();
        vm.prank(address(manager));
        registry.lockCollateral(provider, COLLATERAL);

        // The lease manager's LeaseOpened says it all: the lease, the provider, the collateral.
        assertEq(vmLogs.getRecordedLogs().length, 0, "no event");
        _assertBooks(provider, STAKE, COLLATERAL, COLLATERAL);
        _assertCounters(provider, 1, 0, 0);
        assertTrue(registry.isEligible(provider), "eligible");
        assertEq(stakingToken.balanceOf(address(registry)), STAKE, "no tokens moved");
    }

    function test_WhenAmountEqualsFreeStake() public {
        _registerDefault(STAKE);

        _lock(provider, STAKE);

        _assertBooks(provider, STAKE, STAKE, 0);
        assertEq(registry.freeStake(provider), 0, "no free stake");
        // Locked collateral still counts towards the min stake.
        assertTrue(registry.isEligible(provider), "eligible");
    }

    function test_WhenAmountIsZero() public {
        _registerDefault(STAKE);

        _lock(provider, 0);

        _assertBooks(provider, STAKE, 0, 0);
        _assertCounters(provider, 1, 0, 0);
    }

    function test_WhenSeveralLeasesLockCollateral() public {
        _registerDefault(STAKE);

        _lock(provider, COLLATERAL);
        _lock(provider, COLLATERAL);
        _lock(provider, 2 * COLLATERAL);

        _assertBooks(provider, STAKE, 4 * COLLATERAL, 0);
        _assertCounters(provider, 3, 0, 0);
    }

    /// @dev Locking never pushes `locked` past `stake - unbonding`: within the free stake it adds up
    /// exactly, past it it reverts with the exact free stake.
    function testFuzz_LockCollateral(
        uint256 stakeAmount,
        uint256 unbondingAmount,
        uint256 first,
        uint256 second
    ) public {
        stakeAmount = bound(stakeAmount, MIN_STAKE, MAX_UINT96);
        unbondingAmount = bound(unbondingAmount, 0, stakeAmount - MIN_STAKE);
        _registerDefault(stakeAmount);
        if (unbondingAmount > 0) _requestUnstake(provider, unbondingAmount);
        uint256 active = stakeAmount - unbondingAmount;
        first = bound(first, 0, active);

        _lock(provider, first);
        _assertBooks(provider, stakeAmount, first, unbondingAmount);

        uint256 free = active - first;
        second = bound(second, 0, 2 * free + 1);
        if (second > free) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                    provider,
                    second,
                    free
                )
            );
            vm.prank(address(manager));
            registry.lockCollateral(provider, second);
            _assertBooks(provider, stakeAmount, first, unbondingAmount);
            _assertCounters(provider, 1, 0, 0);
        } else {
            _lock(provider, second);
            _assertBooks(provider, stakeAmount, first + second, unbondingAmount);
            _assertCounters(provider, 2, 0, 0);
        }
    }
}
