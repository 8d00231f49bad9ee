// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";

import {FeeOnTransferToken} from "../mocks/FeeOnTransferToken.sol";
import {ProviderRegistryBase, ReentrantToken} from "./ProviderRegistryBase.t.sol";

contract Stake_ProviderRegistry_Test is ProviderRegistryBase {
    function test_RevertGiven_CallerNotRegistered() public {
        _fund(provider, STAKE);

        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_NotRegistered.selector, provider));
        vm.prank(provider);
        registry.stake(STAKE);
    }

    /// @dev Issue #11 point 5: the registry is wired at construction, so there is no moment at which
    /// stake could wait on a lease manager wired in later: staking works straight after deployment,
    /// and the stake is at once lockable by the lease manager deployed with it, and by nobody else.
    function test_GivenFreshDeployment() public {
        (ProviderRegistry reg, LeaseManager mgr) = _deployPair(stakingToken, paymentToken);
        stakingToken.mint(provider, STAKE);
        vm.startPrank(provider);
        stakingToken.approve(address(reg), type(uint256).max);
        reg.register(PEER_ID, METADATA, 0);
        reg.stake(STAKE);
        vm.stopPrank();
        assertEq(reg.freeStake(provider), STAKE, "staked at once");
        assertEq(stakingToken.balanceOf(address(reg)), STAKE, "registry balance");

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotLeaseManager.selector, address(manager))
        );
        vm.prank(address(manager));
        reg.lockCollateral(provider, COLLATERAL);

        vm.prank(address(mgr));
        reg.lockCollateral(provider, COLLATERAL);
        assertEq(reg.freeStake(provider), STAKE - COLLATERAL, "locked by its own lease manager");
    }

    /// @dev Issue #11 point 6: a token that takes a fee in transit would leave the books promising
    /// more stake than the registry holds.
    function test_RevertWhen_TokenTakesFee() public {
        (FeeOnTransferToken token, ProviderRegistry reg) = _feeRegistry();
        vm.prank(provider);
        reg.register(PEER_ID, METADATA, 0);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_UnsupportedToken.selector,
                COLLATERAL,
                COLLATERAL - COLLATERAL / 100
            )
        );
        vm.prank(provider);
        reg.stake(COLLATERAL);
        assertEq(token.balanceOf(address(reg)), 0, "nothing kept");
    }

    function test_WhenTokenTakesNoFeeOnThisAmount() public {
        // A fee that rounds to zero takes nothing: all of the amount arrives, so it is accepted.
        (FeeOnTransferToken token, ProviderRegistry reg) = _feeRegistry();
        vm.prank(provider);
        reg.register(PEER_ID, METADATA, 0);
        vm.prank(provider);
        reg.stake(99);
        assertEq(token.balanceOf(address(reg)), 99, "all arrived");
        assertEq(reg.freeStake(provider), 99, "staked");
    }

    function test_RevertWhen_AmountIsZero() public {
        _registerDefault(STAKE);

        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_ZeroAmount.selector));
        vm.prank(provider);
        registry.stake(0);
    }

    function test_RevertWhen_StakeWouldExceedUint96Max() public {
        _registerDefault(MAX_UINT96);
        _fund(provider, 1);

        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_AmountTooLarge.selector, 1));
        vm.prank(provider);
        registry.stake(1);
    }

    /// @dev Unbonding stake is kept apart from the bonded stake but still counts: the whole stake
    /// must stay within 96 bits, since all of it may come to unbond.
    function test_RevertWhen_StakeWouldExceedUint96Max_GivenStakeUnbonding() public {
        _registerDefault(MAX_UINT96);
        _requestUnstake(provider, MAX_UINT96 - MIN_STAKE);
        _fund(provider, 1);

        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_AmountTooLarge.selector, 1));
        vm.prank(provider);
        registry.stake(1);
    }

    function testFuzz_RevertWhen_StakeWouldExceedUint96Max(uint256 initial, uint256 amount) public {
        initial = bound(initial, 0, MAX_UINT96);
        amount = bound(amount, MAX_UINT96 - initial + 1, type(uint256).max);
        _registerDefault(initial);

        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_AmountTooLarge.selector, amount));
        vm.prank(provider);
        registry.stake(amount);
    }

    function test_RevertWhen_AllowanceIsBelowAmount() public {
        _registerDefault(STAKE);
        stakingToken.mint(provider, COLLATERAL);
        vm.prank(provider);
        stakingToken.approve(address(registry), COLLATERAL - 1);

        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector,
                address(registry),
                COLLATERAL - 1,
                COLLATERAL
            )
        );
        vm.prank(provider);
        registry.stake(COLLATERAL);
    }

    function test_RevertWhen_BalanceIsBelowAmount() public {
        _registerDefault(STAKE);
        // _registerDefault approved the registry for everything; the provider holds nothing now.
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, provider, 0, COLLATERAL)
        );
        vm.prank(provider);
        registry.stake(COLLATERAL);
    }

    function test_RevertWhen_TokenReentersRegistry() public {
        (ReentrantToken token, ProviderRegistry reg) = _reentrantRegistry();
        token.mint(provider, STAKE);
        vm.startPrank(provider);
        token.approve(address(reg), type(uint256).max);
        reg.register(PEER_ID, METADATA, 0);
        vm.stopPrank();
        token.arm(address(reg), abi.encodeCall(IProviderRegistry.stake, (1)));

        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        vm.prank(provider);
        reg.stake(STAKE);
    }

    function test_Stake() public {
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);
        _requestUnstake(provider, COLLATERAL);
        _fund(provider, COLLATERAL);

        vm.expectEmit(address(registry));
        emit IProviderRegistry.Staked(provider, COLLATERAL, STAKE + COLLATERAL);
        vm.expectEmit(address(stakingToken));
        emit IERC20.Transfer(provider, address(registry), COLLATERAL);
        vm.prank(provider);
        registry.stake(COLLATERAL);

        _assertBooks(provider, STAKE + COLLATERAL, COLLATERAL, COLLATERAL);
        assertEq(stakingToken.balanceOf(address(registry)), STAKE + COLLATERAL, "registry balance");
        assertEq(stakingToken.balanceOf(provider), 0, "provider balance");
    }

    function test_WhenStakeReachesMinStake() public {
        _registerDefault(0);
        _fund(provider, MIN_STAKE);

        vm.prank(provider);
        registry.stake(MIN_STAKE - 1);
        assertFalse(registry.isEligible(provider), "eligible below min stake");

        vm.expectEmit(address(registry));
        emit IProviderRegistry.Staked(provider, 1, MIN_STAKE);
        vm.prank(provider);
        registry.stake(1);
        assertTrue(registry.isEligible(provider), "eligible at min stake");
        _assertBooks(provider, MIN_STAKE, 0, 0);
    }

    function test_WhenStakeReachesExactlyUint96Max() public {
        _registerDefault(MAX_UINT96 - 1);
        _fund(provider, 1);

        vm.prank(provider);
        registry.stake(1);

        _assertBooks(provider, MAX_UINT96, 0, 0);
    }

    /// @dev Stake added while some unbonds joins the bonded stake; the event's total and the view's
    /// stake both count the unbonding part.
    function test_WhenStakeIsUnbonding() public {
        _registerDefault(STAKE);
        _requestUnstake(provider, COLLATERAL);
        _fund(provider, COLLATERAL);

        vm.expectEmit(address(registry));
        emit IProviderRegistry.Staked(provider, COLLATERAL, STAKE + COLLATERAL);
        vm.prank(provider);
        registry.stake(COLLATERAL);

        _assertBooks(provider, STAKE + COLLATERAL, 0, COLLATERAL);
    }

    function testFuzz_Stake(uint256 initial, uint256 amount) public {
        initial = bound(initial, 0, MAX_UINT96 - 1);
        amount = bound(amount, 1, MAX_UINT96 - initial);
        _registerDefault(initial);
        _fund(provider, amount);

        vm.expectEmit(address(registry));
        emit IProviderRegistry.Staked(provider, amount, initial + amount);
        vm.prank(provider);
        registry.stake(amount);

        _assertBooks(provider, initial + amount, 0, 0);
        assertEq(registry.isEligible(provider), initial + amount >= MIN_STAKE, "eligible");
        assertEq(stakingToken.balanceOf(address(registry)), initial + amount, "registry balance");
        assertEq(stakingToken.balanceOf(provider), 0, "provider balance");
    }
}
