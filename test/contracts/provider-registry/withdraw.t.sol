// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {ProviderRegistryBase, ReentrantToken} from "./ProviderRegistryBase.t.sol";

contract Withdraw_ProviderRegistry_Test is ProviderRegistryBase {
    uint64 internal constant ENDS_AT = uint64(T0) + UNBONDING_PERIOD;

    function test_RevertGiven_NothingUnbonding() public {
        _registerDefault(STAKE);

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_NothingUnbonding.selector, provider)
        );
        vm.prank(provider);
        registry.withdraw();
    }

    function test_RevertGiven_CallerNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_NothingUnbonding.selector, keeper));
        vm.prank(keeper);
        registry.withdraw();
    }

    function test_RevertGiven_AlreadyWithdrawn() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, COLLATERAL);
        vm.warp(ENDS_AT);
        vm.prank(provider);
        registry.withdraw();

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_NothingUnbonding.selector, provider)
        );
        vm.prank(provider);
        registry.withdraw();
    }

    function test_RevertWhen_UnbondingPeriodHasNotPassed() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, COLLATERAL);
        vm.warp(ENDS_AT - 1);

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_StillUnbonding.selector, provider, ENDS_AT)
        );
        vm.prank(provider);
        registry.withdraw();
    }

    function testFuzz_RevertWhen_UnbondingPeriodHasNotPassed(uint256 elapsed, uint256 amount) public {
        elapsed = bound(elapsed, 0, UNBONDING_PERIOD - 1);
        amount = bound(amount, 1, STAKE);
        _registerDefault(STAKE);
        _requestUnstake(provider, amount);
        vm.warp(T0 + elapsed);

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_StillUnbonding.selector, provider, ENDS_AT)
        );
        vm.prank(provider);
        registry.withdraw();
    }

    function test_RevertGiven_LaterRequestRestartedThePeriod() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, COLLATERAL);
        uint256 t1 = T0 + 1 days;
        vm.warp(t1);
        _requestUnstake(provider, 1);
        uint64 restartedEndsAt = uint64(t1) + UNBONDING_PERIOD;
        vm.warp(ENDS_AT);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_StillUnbonding.selector,
                provider,
                restartedEndsAt
            )
        );
        vm.prank(provider);
        registry.withdraw();
    }

    function test_RevertWhen_TokenReentersRegistry() public {
        (ReentrantToken token, ProviderRegistry reg) = _reentrantRegistry();
        token.mint(provider, STAKE);
        vm.startPrank(provider);
        token.approve(address(reg), type(uint256).max);
        reg.register(PEER_ID, METADATA, STAKE);
        reg.requestUnstake(COLLATERAL);
        vm.stopPrank();
        vm.warp(ENDS_AT);
        token.arm(address(reg), abi.encodeCall(IProviderRegistry.withdraw, ()));

        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        vm.prank(provider);
        reg.withdraw();
    }

    function test_Withdraw() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, COLLATERAL);
        vm.warp(ENDS_AT + 1 days);

        vm.expectEmit(address(registry));
        emit IProviderRegistry.Withdrawn(provider, COLLATERAL);
        vm.expectEmit(address(stakingToken));
        emit IERC20.Transfer(address(registry), provider, COLLATERAL);
        vm.prank(provider);
        registry.withdraw();

        _assertBooks(provider, STAKE - COLLATERAL, 0, 0);
        assertEq(registry.getProvider(provider).unbondingEndsAt, 0, "unbondingEndsAt reset");
        assertEq(stakingToken.balanceOf(provider), COLLATERAL, "provider paid");
        assertEq(stakingToken.balanceOf(address(registry)), STAKE - COLLATERAL, "registry balance");
        assertTrue(registry.isEligible(provider), "still eligible");
    }

    function test_WhenTimeIsExactlyEndOfUnbonding() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, STAKE);
        vm.warp(ENDS_AT);

        vm.prank(provider);
        registry.withdraw();

        _assertBooks(provider, 0, 0, 0);
        assertEq(stakingToken.balanceOf(provider), STAKE, "provider paid");
        assertEq(stakingToken.balanceOf(address(registry)), 0, "registry emptied");
        Provider.View memory v = registry.getProvider(provider);
        assertTrue(v.registered, "still registered");
        assertFalse(v.eligible, "not eligible with no stake");
    }

    function test_GivenCollateralIsLocked() public {
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);
        _requestUnstake(provider, STAKE - COLLATERAL);
        vm.warp(ENDS_AT);

        vm.prank(provider);
        registry.withdraw();

        _assertBooks(provider, COLLATERAL, COLLATERAL, 0);
        assertEq(stakingToken.balanceOf(provider), STAKE - COLLATERAL, "provider paid");
        assertEq(stakingToken.balanceOf(address(registry)), COLLATERAL, "collateral stays");
    }

    function test_GivenCollateralWasSlashedWhileUnbonding() public {
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);
        _requestUnstake(provider, MIN_STAKE);
        _slash(provider, LEASE_ID, COLLATERAL, _payout(COLLATERAL, 0, 0));
        vm.warp(ENDS_AT);

        vm.prank(provider);
        registry.withdraw();

        _assertBooks(provider, STAKE - COLLATERAL - MIN_STAKE, 0, 0);
        assertEq(stakingToken.balanceOf(provider), MIN_STAKE, "provider paid the whole unbonding amount");
        // The tenant's compensation waits, credited, in the registry.
        assertEq(
            stakingToken.balanceOf(address(registry)),
            STAKE - COLLATERAL - MIN_STAKE + COLLATERAL,
            "registry balance: what is left of the stake, and the tenant's credit"
        );
        assertEq(registry.creditOf(tenant), COLLATERAL, "tenant credited");
    }

    function testFuzz_Withdraw(uint256 stakeAmount, uint256 lockAmount, uint256 amount, uint256 extra) public {
        stakeAmount = bound(stakeAmount, MIN_STAKE, MAX_UINT96);
        lockAmount = bound(lockAmount, 0, stakeAmount - 1);
        amount = bound(amount, 1, stakeAmount - lockAmount);
        extra = bound(extra, 0, 3650 days);
        _registerDefault(stakeAmount);
        _lock(provider, lockAmount);
        _requestUnstake(provider, amount);
        vm.warp(ENDS_AT + extra);

        vm.expectEmit(address(registry));
        emit IProviderRegistry.Withdrawn(provider, amount);
        vm.prank(provider);
        registry.withdraw();

        _assertBooks(provider, stakeAmount - amount, lockAmount, 0);
        assertEq(registry.getProvider(provider).unbondingEndsAt, 0, "unbondingEndsAt reset");
        assertEq(stakingToken.balanceOf(provider), amount, "provider paid");
        assertEq(stakingToken.balanceOf(address(registry)), stakeAmount - amount, "registry balance");
    }

    /// @dev Unbonding timing over a random request time: withdraw fails one second before the end
    /// and succeeds at it.
    function testFuzz_Withdraw_UnbondingTiming(uint256 requestDelay, uint256 amount) public {
        requestDelay = bound(requestDelay, 0, 3650 days);
        amount = bound(amount, 1, STAKE);
        _registerDefault(STAKE);
        uint256 requestedAt = T0 + requestDelay;
        vm.warp(requestedAt);
        _requestUnstake(provider, amount);
        uint64 endsAt = uint64(requestedAt) + UNBONDING_PERIOD;
        assertEq(registry.getProvider(provider).unbondingEndsAt, endsAt, "unbondingEndsAt");

        vm.warp(endsAt - 1);
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_StillUnbonding.selector, provider, endsAt)
        );
        vm.prank(provider);
        registry.withdraw();

        vm.warp(endsAt);
        vm.prank(provider);
        registry.withdraw();
        assertEq(stakingToken.balanceOf(provider), amount, "provider paid");
    }
}
