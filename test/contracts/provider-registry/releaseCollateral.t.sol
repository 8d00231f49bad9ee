// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";

import {ProviderRegistryBase, VmLogs} from "./ProviderRegistryBase.t.sol";

contract ReleaseCollateral_ProviderRegistry_Test is ProviderRegistryBase {
    function setUp() public override {
        super.setUp();
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);
    }

    function test_RevertWhen_CallerNotLeaseManager() public {
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotLeaseManager.selector, keeper)
        );
        vm.prank(keeper);
        registry.releaseCollateral(provider, LEASE_ID, COLLATERAL, true);
    }

    function testFuzz_RevertWhen_CallerNotLeaseManager(address caller) public {
        if (caller == address(manager)) caller = keeper;

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotLeaseManager.selector, caller)
        );
        vm.prank(caller);
        registry.releaseCollateral(provider, LEASE_ID, COLLATERAL, true);
    }

    function test_RevertWhen_AmountExceedsLocked() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientLocked.selector,
                provider,
                COLLATERAL + 1,
                COLLATERAL
            )
        );
        vm.prank(address(manager));
        registry.releaseCollateral(provider, LEASE_ID, COLLATERAL + 1, true);
    }

    function test_RevertGiven_NothingLocked() public {
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InsufficientLocked.selector, otherProvider, 1, 0)
        );
        vm.prank(address(manager));
        registry.releaseCollateral(otherProvider, LEASE_ID, 1, false);
    }

    function test_WhenLeaseCompleted() public {
        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralReleased(provider, LEASE_ID, COLLATERAL, true);
        _release(provider, LEASE_ID, COLLATERAL, true);

        _assertBooks(provider, STAKE, 0, 0);
        _assertCounters(provider, 1, 1, 0);
        assertEq(registry.freeStake(provider), STAKE, "free stake restored");
        assertEq(stakingToken.balanceOf(address(registry)), STAKE, "no tokens moved");
        assertEq(stakingToken.balanceOf(provider), 0, "provider not paid");
    }

    function test_WhenLeaseDidNotComplete() public {
        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralReleased(provider, LEASE_ID, COLLATERAL, false);
        _release(provider, LEASE_ID, COLLATERAL, false);

        _assertBooks(provider, STAKE, 0, 0);
        _assertCounters(provider, 1, 0, 0);
    }

    /// @dev The release emits {CollateralReleased} and nothing else: the registry records no service
    /// (the lease manager counts seconds served) and moves no tokens.
    function test_ReleaseCollateral_EmitsNoOtherEvent() public {
        vmLogs.recordLogs();
        _release(provider, LEASE_ID, COLLATERAL, true);

        VmLogs.Log[] memory logs = vmLogs.getRecordedLogs();
        assertEq(logs.length, 1, "a single event");
        assertEq(_countLogs(logs, address(registry), IProviderRegistry.CollateralReleased.selector), 1, "released");
        assertEq(_countLogs(logs, address(stakingToken), IERC20.Transfer.selector), 0, "no transfer");
        _assertBooks(provider, STAKE, 0, 0);
        _assertCounters(provider, 1, 1, 0);
    }

    function test_WhenAmountIsPartOfLocked() public {
        _lock(provider, 2 * COLLATERAL);

        _release(provider, LEASE_ID, COLLATERAL, true);
        _assertBooks(provider, STAKE, 2 * COLLATERAL, 0);

        _release(provider, LEASE_ID + 1, 2 * COLLATERAL, false);
        _assertBooks(provider, STAKE, 0, 0);
        _assertCounters(provider, 2, 1, 0);
    }

    function test_GivenStakeIsUnbonding() public {
        _requestUnstake(provider, STAKE - COLLATERAL);
        _assertBooks(provider, STAKE, COLLATERAL, STAKE - COLLATERAL);

        _release(provider, LEASE_ID, COLLATERAL, true);

        // The released collateral becomes free stake; the unbonding amount is untouched.
        _assertBooks(provider, STAKE, 0, STAKE - COLLATERAL);
        assertEq(registry.freeStake(provider), COLLATERAL, "free stake");
    }

    function testFuzz_ReleaseCollateral(
        uint256 stakeAmount,
        uint256 lockAmount,
        uint256 releaseAmount,
        bool completed
    ) public {
        stakeAmount = bound(stakeAmount, MIN_STAKE, MAX_UINT96);
        lockAmount = bound(lockAmount, 0, stakeAmount);
        _registerProvider(otherProvider, OTHER_PEER_ID, stakeAmount);
        _lock(otherProvider, lockAmount);
        releaseAmount = bound(releaseAmount, 0, lockAmount + 1);

        if (releaseAmount > lockAmount) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    IProviderRegistry.ProviderRegistry_InsufficientLocked.selector,
                    otherProvider,
                    releaseAmount,
                    lockAmount
                )
            );
            vm.prank(address(manager));
            registry.releaseCollateral(otherProvider, 1, releaseAmount, completed);
            return;
        }

        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralReleased(otherProvider, 1, releaseAmount, completed);
        _release(otherProvider, 1, releaseAmount, completed);

        _assertBooks(otherProvider, stakeAmount, lockAmount - releaseAmount, 0);
        _assertCounters(otherProvider, 1, completed ? 1 : 0, 0);
        assertEq(stakingToken.balanceOf(address(registry)), STAKE + stakeAmount, "no tokens moved");
    }
}
