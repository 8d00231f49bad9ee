// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {ProviderRegistryBase} from "./ProviderRegistryBase.t.sol";

contract RequestUnstake_ProviderRegistry_Test is ProviderRegistryBase {
    function test_RevertWhen_AmountIsZero() public {
        _registerDefault(STAKE);

        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_ZeroAmount.selector));
        vm.prank(provider);
        registry.requestUnstake(0);
    }

    function test_RevertGiven_CallerNotRegistered() public {
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector, keeper, 1, 0)
        );
        vm.prank(keeper);
        registry.requestUnstake(1);
    }

    function test_RevertWhen_AmountExceedsStake() public {
        _registerDefault(STAKE);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                STAKE + 1,
                STAKE
            )
        );
        vm.prank(provider);
        registry.requestUnstake(STAKE + 1);
    }

    function test_RevertGiven_CollateralIsLocked() public {
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                STAKE,
                STAKE - COLLATERAL
            )
        );
        vm.prank(provider);
        registry.requestUnstake(STAKE);
    }

    function test_RevertGiven_StakeIsAlreadyUnbonding() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, STAKE - COLLATERAL);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                COLLATERAL + 1,
                COLLATERAL
            )
        );
        vm.prank(provider);
        registry.requestUnstake(COLLATERAL + 1);
    }

    function test_RequestUnstake() public {
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);
        uint64 availableAt = uint64(T0) + UNBONDING_PERIOD;

        vm.expectEmit(address(registry));
        emit IProviderRegistry.UnstakeRequested(provider, COLLATERAL, COLLATERAL, availableAt);
        vm.prank(provider);
        registry.requestUnstake(COLLATERAL);

        _assertBooks(provider, STAKE, COLLATERAL, COLLATERAL);
        Provider.View memory v = registry.getProvider(provider);
        assertEq(v.unbondingEndsAt, availableAt, "unbondingEndsAt");
        assertTrue(v.eligible, "still eligible");
        // No tokens move until withdraw.
        assertEq(stakingToken.balanceOf(address(registry)), STAKE, "registry balance");
        assertEq(stakingToken.balanceOf(provider), 0, "provider balance");
    }

    function test_WhenAmountEqualsFreeStake() public {
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);

        _requestUnstake(provider, STAKE - COLLATERAL);

        _assertBooks(provider, STAKE, COLLATERAL, STAKE - COLLATERAL);
        assertEq(registry.freeStake(provider), 0, "no free stake");
    }

    function test_GivenStakeIsAlreadyUnbonding() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, COLLATERAL);
        uint256 t1 = T0 + 3 days;
        vm.warp(t1);
        uint64 availableAt = uint64(t1) + UNBONDING_PERIOD;

        vm.expectEmit(address(registry));
        emit IProviderRegistry.UnstakeRequested(provider, COLLATERAL, 2 * COLLATERAL, availableAt);
        vm.prank(provider);
        registry.requestUnstake(COLLATERAL);

        _assertBooks(provider, STAKE, 0, 2 * COLLATERAL);
        assertEq(registry.getProvider(provider).unbondingEndsAt, availableAt, "period restarted for the whole amount");
    }

    function test_WhenActiveStakeDropsBelowMinStake() public {
        _registerDefault(MIN_STAKE);
        assertTrue(registry.isEligible(provider), "eligible before");

        _requestUnstake(provider, 1);

        assertFalse(registry.isEligible(provider), "eligible after");
        assertFalse(registry.getProvider(provider).eligible, "view eligible after");
    }

    function testFuzz_RequestUnstake(uint256 stakeAmount, uint256 lockAmount, uint256 amount) public {
        stakeAmount = bound(stakeAmount, MIN_STAKE, MAX_UINT96);
        lockAmount = bound(lockAmount, 0, stakeAmount - 1);
        amount = bound(amount, 1, stakeAmount - lockAmount);
        _registerDefault(stakeAmount);
        _lock(provider, lockAmount);

        vm.expectEmit(address(registry));
        emit IProviderRegistry.UnstakeRequested(provider, amount, amount, uint64(T0) + UNBONDING_PERIOD);
        _requestUnstake(provider, amount);

        _assertBooks(provider, stakeAmount, lockAmount, amount);
        assertEq(registry.isEligible(provider), stakeAmount - amount >= MIN_STAKE, "eligible");
    }

    function testFuzz_RevertWhen_AmountExceedsFreeStake(
        uint256 stakeAmount,
        uint256 lockAmount,
        uint256 unbondingAmount,
        uint256 amount
    ) public {
        stakeAmount = bound(stakeAmount, MIN_STAKE, MAX_UINT96);
        lockAmount = bound(lockAmount, 0, stakeAmount);
        unbondingAmount = bound(unbondingAmount, 0, stakeAmount - lockAmount);
        _registerDefault(stakeAmount);
        _lock(provider, lockAmount);
        if (unbondingAmount > 0) _requestUnstake(provider, unbondingAmount);
        uint256 free = stakeAmount - lockAmount - unbondingAmount;
        amount = bound(amount, free + 1, type(uint256).max);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                amount,
                free
            )
        );
        vm.prank(provider);
        registry.requestUnstake(amount);
    }

    function testFuzz_RequestUnstake_RestartsUnbondingPeriod(uint256 elapsed, uint256 first, uint256 second) public {
        elapsed = bound(elapsed, 0, 10 * UNBONDING_PERIOD);
        first = bound(first, 1, STAKE - 1);
        second = bound(second, 1, STAKE - first);
        _registerDefault(STAKE);
        _requestUnstake(provider, first);
        assertEq(registry.getProvider(provider).unbondingEndsAt, T0 + UNBONDING_PERIOD, "first availableAt");

        vm.warp(T0 + elapsed);
        _requestUnstake(provider, second);

        Provider.View memory v = registry.getProvider(provider);
        assertEq(v.unbonding, first + second, "unbonding");
        assertEq(v.unbondingEndsAt, T0 + elapsed + UNBONDING_PERIOD, "second availableAt");
    }
}
