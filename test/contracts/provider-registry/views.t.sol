// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {ProviderRegistryBase} from "./ProviderRegistryBase.t.sol";

contract Views_ProviderRegistry_Test is ProviderRegistryBase {
    /// @dev Seconds between the default lease's open and the heartbeat the provider claims up to;
    /// within the heartbeat timeout.
    uint64 internal constant SERVED = 30;

    /*//////////////////////////////////////////////////////////////
                               getProvider
    //////////////////////////////////////////////////////////////*/

    function test_GetProvider_GivenProviderNotRegistered() public view {
        Provider.View memory v = registry.getProvider(provider);
        assertFalse(v.registered, "registered");
        assertFalse(v.eligible, "eligible");
        assertEq(v.peerId, "", "peerId");
        assertEq(v.metadata, "", "metadata");
        assertEq(v.stake, 0, "stake");
        assertEq(v.locked, 0, "locked");
        assertEq(v.unbonding, 0, "unbonding");
        assertEq(v.unbondingEndsAt, 0, "unbondingEndsAt");
        assertEq(v.leasesOpened, 0, "leasesOpened");
        assertEq(v.leasesCompleted, 0, "leasesCompleted");
        assertEq(v.leasesSlashed, 0, "leasesSlashed");
        assertEq(v.secondsServed, 0, "secondsServed");
    }

    function test_GetProvider_GivenProviderRegistered() public {
        _fund(provider, STAKE);
        vm.prank(provider);
        registry.register(PEER_ID, NEW_METADATA, STAKE);
        _lock(provider, COLLATERAL);
        _lock(provider, COLLATERAL);
        _lock(provider, COLLATERAL);
        _release(provider, 1, COLLATERAL, true);
        _release(provider, 2, COLLATERAL, false);
        _slash(provider, 3, COLLATERAL, _payout(COLLATERAL, 0, 0));
        _requestUnstake(provider, COLLATERAL);

        Provider.View memory v = registry.getProvider(provider);
        assertTrue(v.registered, "registered");
        assertTrue(v.eligible, "eligible");
        assertEq(v.peerId, PEER_ID, "peerId");
        assertEq(v.metadata, NEW_METADATA, "metadata");
        assertEq(v.stake, STAKE - COLLATERAL, "stake");
        assertEq(v.locked, 0, "locked");
        assertEq(v.unbonding, COLLATERAL, "unbonding");
        assertEq(v.unbondingEndsAt, T0 + UNBONDING_PERIOD, "unbondingEndsAt");
        assertEq(v.leasesOpened, 3, "leasesOpened");
        assertEq(v.leasesCompleted, 1, "leasesCompleted");
        assertEq(v.leasesSlashed, 1, "leasesSlashed");
        // Only the lease manager counts seconds served, and this history only impersonated it.
        assertEq(v.secondsServed, 0, "secondsServed");
    }

    /// @dev The view reads seconds served from the lease manager, which counts them when it settles
    /// earnings; a heartbeat alone settles nothing.
    function test_GetProvider_SecondsServedIsTheLeaseManagers() public {
        assertEq(registry.getProvider(provider).secondsServed, 0, "before any lease");
        uint256 leaseId = _openDefault();
        assertEq(registry.getProvider(provider).secondsServed, 0, "after the open");

        vm.warp(T0 + SERVED);
        _heartbeat(provider, leaseId);
        assertEq(registry.getProvider(provider).secondsServed, 0, "after the heartbeat, before settling");

        uint256[] memory ids = new uint256[](1);
        ids[0] = leaseId;
        vm.prank(provider);
        manager.claim(ids);

        assertEq(manager.secondsServed(provider), SERVED, "counted by the lease manager");
        assertEq(registry.getProvider(provider).secondsServed, manager.secondsServed(provider), "secondsServed");
        assertEq(registry.getProvider(otherProvider).secondsServed, 0, "other provider");
    }

    function test_GetProvider_EligibleMatchesIsEligible() public {
        _registerDefault(MIN_STAKE);
        assertEq(registry.getProvider(provider).eligible, registry.isEligible(provider), "eligible at min stake");
        _requestUnstake(provider, 1);
        assertEq(registry.getProvider(provider).eligible, registry.isEligible(provider), "eligible below");
        assertFalse(registry.getProvider(provider).eligible, "not eligible below");
    }

    /*//////////////////////////////////////////////////////////////
                                 creditOf
    //////////////////////////////////////////////////////////////*/

    function test_CreditOf_WhenNothingCredited() public view {
        assertEq(registry.creditOf(tenant), 0, "tenant");
        assertEq(registry.creditOf(TREASURY), 0, "treasury");
    }

    function test_CreditOf_GivenASlashByAnotherCaller() public {
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);
        _slash(provider, LEASE_ID, COLLATERAL, _payout(25e18, 5e18, 20e18));

        assertEq(registry.creditOf(tenant), 25e18, "tenant's compensation credited");
        assertEq(registry.creditOf(TREASURY), 20e18, "treasury's share credited");
        assertEq(registry.creditOf(keeper), 0, "the caller was paid at once");
    }

    /*//////////////////////////////////////////////////////////////
                                freeStake
    //////////////////////////////////////////////////////////////*/

    function test_FreeStake_GivenProviderNotRegistered() public view {
        assertEq(registry.freeStake(provider), 0, "free stake");
    }

    function test_FreeStake_GivenProviderRegistered() public {
        _registerDefault(STAKE);
        assertEq(registry.freeStake(provider), STAKE, "all free");
        _lock(provider, COLLATERAL);
        assertEq(registry.freeStake(provider), STAKE - COLLATERAL, "after lock");
        _requestUnstake(provider, 2 * COLLATERAL);
        assertEq(registry.freeStake(provider), STAKE - 3 * COLLATERAL, "after unstake request");
    }

    function testFuzz_FreeStake(uint256 stakeAmount, uint256 unbondingAmount, uint256 lockAmount) public {
        stakeAmount = bound(stakeAmount, MIN_STAKE, MAX_UINT96);
        unbondingAmount = bound(unbondingAmount, 0, stakeAmount - MIN_STAKE);
        lockAmount = bound(lockAmount, 0, stakeAmount - unbondingAmount);
        _registerDefault(stakeAmount);
        if (unbondingAmount > 0) _requestUnstake(provider, unbondingAmount);
        _lock(provider, lockAmount);

        assertEq(registry.freeStake(provider), stakeAmount - unbondingAmount - lockAmount, "free stake");
        assertTrue(registry.isEligible(provider), "eligible");
    }

    /*//////////////////////////////////////////////////////////////
                                isEligible
    //////////////////////////////////////////////////////////////*/

    function test_IsEligible_GivenProviderNotRegistered() public view {
        assertFalse(registry.isEligible(provider), "eligible");
    }

    function test_IsEligible_GivenMinStakeZeroAndProviderNotRegistered() public {
        ProviderRegistry fresh = new ProviderRegistry(stakingToken, 0, UNBONDING_PERIOD, address(manager));
        assertFalse(fresh.isEligible(provider), "unregistered never eligible");
    }

    function test_IsEligible_GivenMinStakeZeroAndNoStake() public {
        ProviderRegistry fresh = new ProviderRegistry(stakingToken, 0, UNBONDING_PERIOD, address(manager));
        vm.prank(provider);
        fresh.register(PEER_ID, METADATA, 0);
        assertTrue(fresh.isEligible(provider), "registered with zero min stake");
    }

    function test_IsEligible_WhenActiveStakeBelowMinStake() public {
        _registerDefault(MIN_STAKE - 1);
        assertFalse(registry.isEligible(provider), "eligible");
    }

    function test_IsEligible_WhenActiveStakeIsExactlyMinStake() public {
        _registerDefault(MIN_STAKE);
        assertTrue(registry.isEligible(provider), "eligible");
    }

    function test_IsEligible_WhenUnbondingTakesActiveStakeBelowMinStake() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, STAKE - MIN_STAKE);
        assertTrue(registry.isEligible(provider), "eligible at the boundary");
        _requestUnstake(provider, 1);
        assertFalse(registry.isEligible(provider), "eligible below");
    }

    function test_IsEligible_WhenCollateralIsLocked() public {
        _registerDefault(MIN_STAKE);
        _lock(provider, MIN_STAKE);
        assertTrue(registry.isEligible(provider), "locked stake counts");
    }

    function testFuzz_IsEligible(uint256 stakeAmount, uint256 unbondingAmount) public {
        stakeAmount = bound(stakeAmount, 0, MAX_UINT96);
        _registerDefault(stakeAmount);
        unbondingAmount = bound(unbondingAmount, 0, stakeAmount);
        if (unbondingAmount > 0) _requestUnstake(provider, unbondingAmount);

        assertEq(registry.isEligible(provider), stakeAmount - unbondingAmount >= MIN_STAKE, "eligible");
    }

    /*//////////////////////////////////////////////////////////////
                         IMMUTABLES, LEASE MANAGER
    //////////////////////////////////////////////////////////////*/

    function test_Immutables() public view {
        assertEq(address(registry.stakingToken()), address(stakingToken), "stakingToken");
        assertEq(registry.minStake(), MIN_STAKE, "minStake");
        assertEq(registry.unbondingPeriod(), UNBONDING_PERIOD, "unbondingPeriod");
        assertEq(registry.leaseManager(), address(manager), "leaseManager");
    }
}
