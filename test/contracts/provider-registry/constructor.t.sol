// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";

import {ProviderRegistryBase} from "./ProviderRegistryBase.t.sol";

contract Constructor_ProviderRegistry_Test is ProviderRegistryBase {
    /// @dev The registry's MAX_UNBONDING_PERIOD.
    uint64 internal constant MAX_UNBONDING_PERIOD = 365 days;

    /// @dev A lease manager's address, for registries that are never used.
    address internal constant LEASE_MANAGER = address(0x1EA5E);

    function test_RevertWhen_StakingTokenIsZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_ZeroAddress.selector));
        new ProviderRegistry(IERC20(address(0)), MIN_STAKE, UNBONDING_PERIOD, LEASE_MANAGER);
    }

    function test_RevertWhen_LeaseManagerIsZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_ZeroAddress.selector));
        new ProviderRegistry(stakingToken, MIN_STAKE, UNBONDING_PERIOD, address(0));
    }

    function test_RevertWhen_UnbondingPeriodIsZero() public {
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InvalidUnbondingPeriod.selector, uint64(0))
        );
        new ProviderRegistry(stakingToken, MIN_STAKE, 0, LEASE_MANAGER);
    }

    function test_RevertWhen_UnbondingPeriodExceedsMax() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InvalidUnbondingPeriod.selector,
                MAX_UNBONDING_PERIOD + 1
            )
        );
        new ProviderRegistry(stakingToken, MIN_STAKE, MAX_UNBONDING_PERIOD + 1, LEASE_MANAGER);
    }

    /// @dev A period long enough to overflow the uint64 end of unbonding is refused at deployment,
    /// instead of making every unstake request revert.
    function testFuzz_RevertWhen_UnbondingPeriodExceedsMax(uint64 unbondingPeriod_) public {
        unbondingPeriod_ = uint64(bound(unbondingPeriod_, MAX_UNBONDING_PERIOD + 1, type(uint64).max));

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InvalidUnbondingPeriod.selector, unbondingPeriod_)
        );
        new ProviderRegistry(stakingToken, MIN_STAKE, unbondingPeriod_, LEASE_MANAGER);
    }

    function test_WhenUnbondingPeriodIsExactlyMax() public {
        ProviderRegistry fresh = new ProviderRegistry(stakingToken, MIN_STAKE, MAX_UNBONDING_PERIOD, LEASE_MANAGER);
        assertEq(fresh.unbondingPeriod(), MAX_UNBONDING_PERIOD, "unbondingPeriod");
    }

    function test_Constructor() public view {
        assertEq(address(registry.stakingToken()), address(stakingToken), "stakingToken");
        assertEq(registry.minStake(), MIN_STAKE, "minStake");
        assertEq(registry.unbondingPeriod(), UNBONDING_PERIOD, "unbondingPeriod");
        // Base deployed the pair as the deploy module does: wired from the start.
        assertEq(registry.leaseManager(), address(manager), "leaseManager");
        assertEq(address(manager.registry()), address(registry), "the lease manager names the registry");
    }

    function testFuzz_Constructor(uint256 minStake_, uint64 unbondingPeriod_, address leaseManager_) public {
        unbondingPeriod_ = uint64(bound(unbondingPeriod_, 1, MAX_UNBONDING_PERIOD));
        if (leaseManager_ == address(0)) leaseManager_ = LEASE_MANAGER;

        ProviderRegistry fresh = new ProviderRegistry(stakingToken, minStake_, unbondingPeriod_, leaseManager_);

        assertEq(address(fresh.stakingToken()), address(stakingToken), "stakingToken");
        assertEq(fresh.minStake(), minStake_, "minStake");
        assertEq(fresh.unbondingPeriod(), unbondingPeriod_, "unbondingPeriod");
        assertEq(fresh.leaseManager(), leaseManager_, "leaseManager set from the start");
    }
}
