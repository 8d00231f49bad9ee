// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {ProviderRegistryBase, ReentrantToken, VmLogs} from "./ProviderRegistryBase.t.sol";

contract SlashCollateral_ProviderRegistry_Test is ProviderRegistryBase {
    uint256 internal constant TENANT_AMOUNT = (COLLATERAL * TENANT_SHARE_BPS) / 10_000;
    uint256 internal constant CALLER_AMOUNT = (COLLATERAL * CALLER_SHARE_BPS) / 10_000;
    uint256 internal constant TREASURY_AMOUNT = COLLATERAL - TENANT_AMOUNT - CALLER_AMOUNT;

    function setUp() public override {
        super.setUp();
        _registerDefault(STAKE);
        _lock(provider, COLLATERAL);
    }

    function _defaultPayout() internal view returns (Provider.SlashPayout memory) {
        return _payout(TENANT_AMOUNT, CALLER_AMOUNT, TREASURY_AMOUNT);
    }

    function _mismatch(uint256 amount, uint256 paidOut) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_PayoutMismatch.selector, amount, paidOut);
    }

    function test_RevertWhen_CallerNotLeaseManager() public {
        Provider.SlashPayout memory payout = _defaultPayout();

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotLeaseManager.selector, keeper)
        );
        vm.prank(keeper);
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }

    function testFuzz_RevertWhen_CallerNotLeaseManager(address caller) public {
        if (caller == address(manager)) caller = keeper;
        Provider.SlashPayout memory payout = _defaultPayout();

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_CallerNotLeaseManager.selector, caller)
        );
        vm.prank(caller);
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }

    function test_RevertWhen_AmountExceedsLocked() public {
        Provider.SlashPayout memory payout = _payout(COLLATERAL + 1, 0, 0);

        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientLocked.selector,
                provider,
                COLLATERAL + 1,
                COLLATERAL
            )
        );
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL + 1, payout);
    }

    function test_RevertWhen_PayoutAddsUpToLess() public {
        Provider.SlashPayout memory payout = _payout(TENANT_AMOUNT, CALLER_AMOUNT, TREASURY_AMOUNT - 1);

        // Issue #11 point 7: a named error, no longer an assert's Panic(0x01).
        vm.expectRevert(_mismatch(COLLATERAL, COLLATERAL - 1));
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }

    function test_RevertWhen_PayoutAddsUpToMore() public {
        Provider.SlashPayout memory payout = _payout(TENANT_AMOUNT, CALLER_AMOUNT + 1, TREASURY_AMOUNT);

        vm.expectRevert(_mismatch(COLLATERAL, COLLATERAL + 1));
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }

    function test_RevertWhen_PayoutSumOverflows() public {
        Provider.SlashPayout memory payout = _payout(type(uint256).max, 1, COLLATERAL - 1);

        vm.expectRevert(_panic(0x11));
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }

    function testFuzz_RevertWhen_PayoutDoesNotAddUp(uint256 tenantAmount, uint256 callerAmount, uint256 treasuryAmount)
        public
    {
        tenantAmount = bound(tenantAmount, 0, 2 * COLLATERAL);
        callerAmount = bound(callerAmount, 0, 2 * COLLATERAL);
        treasuryAmount = bound(treasuryAmount, 0, 2 * COLLATERAL);
        if (tenantAmount + callerAmount + treasuryAmount == COLLATERAL) treasuryAmount += 1;
        Provider.SlashPayout memory payout = _payout(tenantAmount, callerAmount, treasuryAmount);

        vm.expectRevert(_mismatch(COLLATERAL, tenantAmount + callerAmount + treasuryAmount));
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }

    function test_RevertWhen_TenantIsZeroAddressAndCaller() public {
        // Paid at once only as the caller; the lease manager never names the zero address.
        Provider.SlashPayout memory payout = _defaultPayout();
        payout.tenant = address(0);
        payout.caller = address(0);

        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }

    function test_RevertWhen_CallerIsZeroAddress() public {
        Provider.SlashPayout memory payout = _defaultPayout();
        payout.caller = address(0);

        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }


    function test_RevertWhen_TokenReentersRegistry() public {
        (ReentrantToken token, ProviderRegistry reg) = _reentrantRegistry();
        token.mint(provider, STAKE);
        vm.startPrank(provider);
        token.approve(address(reg), type(uint256).max);
        reg.register(PEER_ID, METADATA, STAKE);
        vm.stopPrank();
        vm.prank(address(manager));
        reg.lockCollateral(provider, COLLATERAL);
        // On the payout transfer, the token calls a guarded function of the registry.
        token.arm(address(reg), abi.encodeCall(IProviderRegistry.stake, (1)));
        Provider.SlashPayout memory payout = _defaultPayout();

        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        vm.prank(address(manager));
        reg.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);
    }

    function test_SlashCollateral() public {
        _requestUnstake(provider, COLLATERAL);
        uint256 freeBefore = registry.freeStake(provider);
        Provider.SlashPayout memory payout = _defaultPayout();

        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralSlashed(
            provider,
            LEASE_ID,
            COLLATERAL,
            TENANT_AMOUNT,
            CALLER_AMOUNT,
            TREASURY_AMOUNT
        );
        vm.expectEmit(address(registry));
        emit IProviderRegistry.Credited(tenant, TENANT_AMOUNT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.Credited(TREASURY, TREASURY_AMOUNT);
        vm.expectEmit(address(stakingToken));
        emit IERC20.Transfer(address(registry), keeper, CALLER_AMOUNT);
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);

        _assertBooks(provider, STAKE - COLLATERAL, 0, COLLATERAL);
        assertEq(registry.freeStake(provider), freeBefore, "free stake unchanged");
        _assertCounters(provider, 1, 0, 1);
        // The caller is paid at once; the tenant and the treasury are credited (pull).
        assertEq(registry.creditOf(tenant), TENANT_AMOUNT, "tenant credited");
        assertEq(stakingToken.balanceOf(tenant), 0, "nothing pushed to the tenant");
        assertEq(stakingToken.balanceOf(keeper), CALLER_AMOUNT, "caller paid");
        assertEq(registry.creditOf(TREASURY), TREASURY_AMOUNT, "treasury credited");
        assertEq(stakingToken.balanceOf(TREASURY), 0, "nothing pushed to the treasury");
        assertEq(
            stakingToken.balanceOf(address(registry)),
            STAKE - COLLATERAL + TENANT_AMOUNT + TREASURY_AMOUNT,
            "registry balance: stake and credits"
        );
        assertEq(stakingToken.balanceOf(provider), 0, "provider not paid");
    }

    /// @dev The registry emits {CollateralSlashed} and a {Credited} per credit, nothing else (the
    /// lease manager counts seconds served); the other event is the caller's transfer.
    function test_SlashCollateral_EmitsNoOtherEvent() public {
        vmLogs.recordLogs();
        _slash(provider, LEASE_ID, COLLATERAL, _defaultPayout());

        VmLogs.Log[] memory logs = vmLogs.getRecordedLogs();
        assertEq(_countLogs(logs, address(registry), IProviderRegistry.CollateralSlashed.selector), 1, "slashed");
        assertEq(_countLogs(logs, address(registry), IProviderRegistry.Credited.selector), 2, "two credits");
        assertEq(_countLogs(logs, address(stakingToken), IERC20.Transfer.selector), 1, "one transfer");
        assertEq(logs.length, 4, "no other event");
        _assertCounters(provider, 1, 0, 1);
    }

    function test_WhenPayoutAmountIsZero() public {
        // A zero amount is neither paid nor credited, so a zero recipient for it is harmless.
        Provider.SlashPayout memory payout = _payout(0, COLLATERAL, 0);
        payout.tenant = address(0);
        payout.treasury = address(0);

        vmLogs.recordLogs();
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);

        VmLogs.Log[] memory logs = vmLogs.getRecordedLogs();
        assertEq(_countLogs(logs, address(stakingToken), IERC20.Transfer.selector), 1, "one transfer");
        assertEq(_countLogs(logs, address(registry), IProviderRegistry.Credited.selector), 0, "no credit");
        assertEq(stakingToken.balanceOf(keeper), COLLATERAL, "caller paid everything");
        assertEq(registry.creditOf(address(0)), 0, "nothing credited to zero");
        _assertBooks(provider, STAKE - COLLATERAL, 0, 0);
    }

    /// @dev Issue #11 point 1: the tenant's share is paid at once only when the tenant is the one
    /// slashing (its own transfer can only fail its own call).
    function test_WhenTenantIsCaller() public {
        Provider.SlashPayout memory payout = _defaultPayout();
        payout.caller = tenant;

        vm.expectEmit(address(stakingToken));
        emit IERC20.Transfer(address(registry), tenant, TENANT_AMOUNT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.Credited(TREASURY, TREASURY_AMOUNT);
        vm.expectEmit(address(stakingToken));
        emit IERC20.Transfer(address(registry), tenant, CALLER_AMOUNT);
        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);

        assertEq(stakingToken.balanceOf(tenant), TENANT_AMOUNT + CALLER_AMOUNT, "tenant paid at once");
        assertEq(registry.creditOf(tenant), 0, "nothing credited to the tenant");
        assertEq(registry.creditOf(TREASURY), TREASURY_AMOUNT, "treasury credited");
    }

    function test_WhenTreasuryIsCaller() public {
        Provider.SlashPayout memory payout = _defaultPayout();
        payout.caller = TREASURY;

        vm.prank(address(manager));
        registry.slashCollateral(provider, LEASE_ID, COLLATERAL, payout);

        assertEq(stakingToken.balanceOf(TREASURY), TREASURY_AMOUNT + CALLER_AMOUNT, "treasury paid at once");
        assertEq(registry.creditOf(TREASURY), 0, "nothing credited to the treasury");
        assertEq(registry.creditOf(tenant), TENANT_AMOUNT, "tenant credited");
    }

    function test_WhenTenantAndTreasuryCreditedTwice() public {
        // Credits add up across slashes.
        _lock(provider, COLLATERAL);
        _slash(provider, LEASE_ID, COLLATERAL, _defaultPayout());
        _slash(provider, LEASE_ID + 1, COLLATERAL, _defaultPayout());
        assertEq(registry.creditOf(tenant), 2 * TENANT_AMOUNT, "tenant");
        assertEq(registry.creditOf(TREASURY), 2 * TREASURY_AMOUNT, "treasury");
    }

    function test_WhenAmountIsZero() public {
        vmLogs.recordLogs();
        _slash(provider, LEASE_ID, 0, _payout(0, 0, 0));

        VmLogs.Log[] memory logs = vmLogs.getRecordedLogs();
        assertEq(_countLogs(logs, address(stakingToken), IERC20.Transfer.selector), 0, "no transfer");
        _assertBooks(provider, STAKE, COLLATERAL, 0);
        _assertCounters(provider, 1, 0, 1);
    }

    function test_WhenStakeDropsBelowMinStake() public {
        _registerProvider(otherProvider, OTHER_PEER_ID, MIN_STAKE);
        _lock(otherProvider, COLLATERAL);
        assertTrue(registry.isEligible(otherProvider), "eligible before");

        _slash(otherProvider, LEASE_ID + 1, COLLATERAL, _defaultPayout());

        assertFalse(registry.isEligible(otherProvider), "eligible after");
        _assertBooks(otherProvider, MIN_STAKE - COLLATERAL, 0, 0);
    }

    /// @dev The slash removes exactly `amount` from the stake and the locked collateral, leaves the
    /// unbonding amount and free stake alone, and pays out exactly the three payout amounts.
    function testFuzz_SlashCollateral(
        uint256 stakeAmount,
        uint256 unbondingAmount,
        uint256 lockAmount,
        uint256 slashAmount,
        uint256 tenantAmount,
        uint256 callerAmount
    ) public {
        stakeAmount = bound(stakeAmount, MIN_STAKE, MAX_UINT96);
        unbondingAmount = bound(unbondingAmount, 0, stakeAmount - MIN_STAKE);
        lockAmount = bound(lockAmount, 0, stakeAmount - unbondingAmount);
        slashAmount = bound(slashAmount, 0, lockAmount);
        tenantAmount = bound(tenantAmount, 0, slashAmount);
        callerAmount = bound(callerAmount, 0, slashAmount - tenantAmount);
        uint256 treasuryAmount = slashAmount - tenantAmount - callerAmount;

        _registerProvider(otherProvider, OTHER_PEER_ID, stakeAmount);
        if (unbondingAmount > 0) _requestUnstake(otherProvider, unbondingAmount);
        _lock(otherProvider, lockAmount);
        uint256 freeBefore = registry.freeStake(otherProvider);
        uint256 registryBefore = stakingToken.balanceOf(address(registry));

        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralSlashed(
            otherProvider,
            1,
            slashAmount,
            tenantAmount,
            callerAmount,
            treasuryAmount
        );
        vm.prank(address(manager));
        registry.slashCollateral(otherProvider, 1, slashAmount, _payout(tenantAmount, callerAmount, treasuryAmount));

        _assertBooks(otherProvider, stakeAmount - slashAmount, lockAmount - slashAmount, unbondingAmount);
        assertEq(registry.freeStake(otherProvider), freeBefore, "free stake unchanged");
        _assertCounters(otherProvider, 1, 0, 1);
        assertEq(registry.creditOf(tenant), tenantAmount, "tenant credited");
        assertEq(stakingToken.balanceOf(keeper), callerAmount, "caller paid");
        assertEq(registry.creditOf(TREASURY), treasuryAmount, "treasury credited");
        assertEq(stakingToken.balanceOf(address(registry)), registryBefore - callerAmount, "registry paid the caller");
        // The first provider's books are untouched.
        _assertBooks(provider, STAKE, COLLATERAL, 0);
    }
}
