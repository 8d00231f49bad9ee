// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {ProviderRegistryBase, ReentrantToken} from "./ProviderRegistryBase.t.sol";

contract WithdrawCredit_ProviderRegistry_Test is ProviderRegistryBase {
    uint256 internal constant TENANT_AMOUNT = (COLLATERAL * TENANT_SHARE_BPS) / 10_000;
    uint256 internal constant CALLER_AMOUNT = (COLLATERAL * CALLER_SHARE_BPS) / 10_000;
    uint256 internal constant TREASURY_AMOUNT = COLLATERAL - TENANT_AMOUNT - CALLER_AMOUNT;

    function setUp() public override {
        super.setUp();
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);
    }

    /// @dev A keeper's slash: the tenant and the treasury are credited.
    function _slashByKeeper() internal {
        _slash(provider, LEASE_ID, COLLATERAL, _payout(TENANT_AMOUNT, CALLER_AMOUNT, TREASURY_AMOUNT));
    }

    function _expectNothingCredited(address who) internal {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_NothingCredited.selector, who));
        vm.prank(who);
        registry.withdrawCredit();
    }

    function test_RevertGiven_NothingCredited() public {
        _expectNothingCredited(tenant);
    }

    function test_RevertGiven_CallerIsProvider() public {
        // Stake leaves only through unbonding: the provider has no credit.
        _slashByKeeper();
        _expectNothingCredited(provider);
    }

    function test_RevertGiven_CreditOfAnotherAccount() public {
        _slashByKeeper();
        _expectNothingCredited(otherTenant);
        assertEq(registry.creditOf(tenant), TENANT_AMOUNT, "the tenant's credit untouched");
    }

    function test_RevertGiven_AlreadyWithdrawn() public {
        _slashByKeeper();
        vm.prank(tenant);
        registry.withdrawCredit();
        _expectNothingCredited(tenant);
    }

    function test_RevertWhen_TokenReentersRegistry() public {
        (ReentrantToken token, ProviderRegistry reg) = _reentrantRegistry();
        token.mint(provider, STAKE);
        vm.startPrank(provider);
        token.approve(address(reg), type(uint256).max);
        reg.register(PEER_ID, METADATA, STAKE);
        vm.stopPrank();
        vm.startPrank(address(manager));
        reg.lockCollateral(provider, COLLATERAL);
        reg.slashCollateral(provider, LEASE_ID, COLLATERAL, _payout(COLLATERAL, 0, 0));
        vm.stopPrank();
        // On the payout, the token calls a guarded function of the registry.
        token.arm(address(reg), abi.encodeCall(IProviderRegistry.withdrawCredit, ()));

        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        vm.prank(tenant);
        reg.withdrawCredit();
    }

    function test_GivenCredited() public {
        _slashByKeeper();
        uint256 registryBefore = stakingToken.balanceOf(address(registry));

        vm.expectEmit(address(registry));
        emit IProviderRegistry.CreditWithdrawn(tenant, TENANT_AMOUNT);
        vm.expectEmit(address(stakingToken));
        emit IERC20.Transfer(address(registry), tenant, TENANT_AMOUNT);
        vm.prank(tenant);
        registry.withdrawCredit();

        assertEq(registry.creditOf(tenant), 0, "credit emptied");
        assertEq(stakingToken.balanceOf(tenant), TENANT_AMOUNT, "tenant paid");
        assertEq(stakingToken.balanceOf(address(registry)), registryBefore - TENANT_AMOUNT, "registry paid out");
        assertEq(registry.creditOf(TREASURY), TREASURY_AMOUNT, "the treasury's credit untouched");
        _assertBooks(provider, STAKE - COLLATERAL, 0, 0);
    }

    function test_GivenCredited_WhenCallerIsTreasury() public {
        _slashByKeeper();
        vm.prank(TREASURY);
        registry.withdrawCredit();
        assertEq(stakingToken.balanceOf(TREASURY), TREASURY_AMOUNT, "treasury paid");
        assertEq(registry.creditOf(TREASURY), 0, "credit emptied");
    }

    function test_GivenCreditedBySeveralSlashes() public {
        _lock(provider, COLLATERAL);
        _slashByKeeper();
        _slash(provider, LEASE_ID + 1, COLLATERAL, _payout(TENANT_AMOUNT, CALLER_AMOUNT, TREASURY_AMOUNT));

        vm.prank(tenant);
        registry.withdrawCredit();
        assertEq(stakingToken.balanceOf(tenant), 2 * TENANT_AMOUNT, "both compensations in one withdrawal");
        // The books: stake of what is left, plus the treasury's credit.
        assertEq(
            stakingToken.balanceOf(address(registry)),
            STAKE - 2 * COLLATERAL + 2 * TREASURY_AMOUNT,
            "registry balance == stake + credits"
        );
    }

    function testFuzz_WithdrawCredit(uint256 tenantAmount, uint256 callerAmount) public {
        tenantAmount = bound(tenantAmount, 1, COLLATERAL);
        callerAmount = bound(callerAmount, 0, COLLATERAL - tenantAmount);
        uint256 treasuryAmount = COLLATERAL - tenantAmount - callerAmount;
        Provider.SlashPayout memory payout = _payout(tenantAmount, callerAmount, treasuryAmount);
        _slash(provider, LEASE_ID, COLLATERAL, payout);

        vm.prank(tenant);
        registry.withdrawCredit();

        assertEq(stakingToken.balanceOf(tenant), tenantAmount, "tenant paid its compensation");
        assertEq(
            stakingToken.balanceOf(address(registry)),
            STAKE - COLLATERAL + treasuryAmount,
            "registry keeps the stake and the treasury's credit"
        );
    }
}
