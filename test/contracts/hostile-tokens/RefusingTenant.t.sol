// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {DevToken} from "../../../contracts/token/DevToken.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest} from "../lease-manager/LeaseManagerTest.sol";
import {BlocklistToken} from "../mocks/BlocklistToken.sol";
import {HookToken, RefusingReceiver} from "../mocks/HookToken.sol";

/// @notice Issue #11 point 1: a tenant whose address refuses tokens, after its lease opened, can
/// block nobody's call but its own. The same scenarios run against two tokens: a USDC-style
/// blocklist and an ERC-777-style receive hook (see the two contracts at the end). The tenant is a
/// {RefusingReceiver} contract that starts refusing with `_refuse()`; `otherTenant` never refuses.
abstract contract RefusingTenant_Test is LeaseManagerTest {
    uint256 internal constant TENANT_CUT = (COLLATERAL * TENANT_SHARE_BPS) / 10_000;
    uint256 internal constant CALLER_CUT = (COLLATERAL * CALLER_SHARE_BPS) / 10_000;
    uint256 internal constant TREASURY_CUT = COLLATERAL - TENANT_CUT - CALLER_CUT;
    uint256 internal constant DUST = 7;

    RefusingReceiver internal wallet;

    function setUp() public override {
        super.setUp();
        (DevToken stakingToken_, DevToken paymentToken_) = _deployTokens();
        wallet = _deployWallet(stakingToken_, paymentToken_);
        tenant = address(wallet);
        vm.label(tenant, "refusingTenant");
        _redeploy(stakingToken_, paymentToken_);
        _ensureProvider();
    }

    /*//////////////////////////////////////////////////////////////
                           WHAT EACH TOKEN DOES
    //////////////////////////////////////////////////////////////*/

    function _deployTokens() internal virtual returns (DevToken stakingToken_, DevToken paymentToken_);

    function _deployWallet(DevToken stakingToken_, DevToken paymentToken_) internal virtual returns (RefusingReceiver);

    /// @dev From now on, every transfer of either token to the tenant reverts.
    function _refuse() internal virtual;

    /// @dev From now on, the tenant takes tokens again.
    function _accept() internal virtual;

    /// @dev The revert data of a transfer of `amount` from `from` to the refusing tenant.
    function _refusal(address from, uint256 amount) internal view virtual returns (bytes memory);

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    /// @dev Three leases of `provider` opened at T0: the refusing tenant's `dusty` (funded for 30 s
    /// and 7 wei: it expires at T0+30 with dust to refund) and `running` (600 s), and the other
    /// tenant's `others` (600 s). Then the tenant starts refusing.
    function _threeLeases() internal returns (uint256 dusty, uint256 running, uint256 others) {
        dusty = _open(_defaultQuote(), SHORT_DEPOSIT + DUST, 0);
        running = _open(_defaultQuote(), DEPOSIT, 0);
        others = _open(_quote(provider, otherTenant, OTHER_JOB), DEPOSIT, 0);
        _refuse();
    }

    function _ids(uint256 a, uint256 b, uint256 c) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](3);
        ids[0] = a;
        ids[1] = b;
        ids[2] = c;
    }

    /*//////////////////////////////////////////////////////////////
                   THE PROVIDER'S AND KEEPERS' CALLS
    //////////////////////////////////////////////////////////////*/

    function test_Heartbeat_WhenBatchSettlesRefusingTenantsExpiredLease() external {
        (uint256 dusty, uint256 running, uint256 others) = _threeLeases();
        vm.warp(T0 + 45);
        assertTrue(_lease(dusty).expired, "the refusing tenant's lease has expired");

        // One batch over both tenants' leases: settling the expired one owes the tenant 7 wei.
        vm.expectEmit(address(manager));
        emit ILeaseManager.Credited(tenant, DUST);
        vm.prank(provider);
        manager.heartbeat(_ids(dusty, running, others), _noCids());

        _assertStatus(dusty, Lease.Status.Expired);
        assertEq(_lease(running).lastHeartbeat, T0 + 45, "the tenant's other lease heartbeated");
        assertEq(_lease(others).lastHeartbeat, T0 + 45, "the other tenant's lease heartbeated");
        _assertCredit(DUST);
        assertEq(registry.getProvider(provider).locked, 2 * COLLATERAL, "the expired lease's collateral freed");
        _assertConserved();
    }

    function test_Claim_WhenBatchSettlesRefusingTenantsExpiredLease() external {
        (uint256 dusty, uint256 running, uint256 others) = _threeLeases();
        _heartbeatAt(running, T0 + 20);
        _heartbeatAt(others, T0 + 20);
        vm.warp(T0 + 45);

        uint256 paid = _claim(provider, _ids(dusty, running, others));

        assertEq(paid, SHORT_DEPOSIT + 2 * 20 * PRICE, "paid for all three leases");
        assertEq(paymentToken.balanceOf(provider), paid, "provider paid");
        _assertStatus(dusty, Lease.Status.Expired);
        _assertCredit(DUST);
        _assertConserved();
    }

    function test_Finish_GivenTenantRefuses() external {
        (, uint256 running, ) = _threeLeases();
        _heartbeatAt(running, T0 + 10);
        _finishAt(running, T0 + 40);

        _assertStatus(running, Lease.Status.Completed);
        _assertCredit(DEPOSIT - 40 * PRICE);
        assertEq(manager.claimable(provider), 40 * PRICE, "provider earned");
        assertEq(registry.getProvider(provider).leasesCompleted, 1, "counted as completed");
        _assertConserved();
    }

    function test_SettleExpired_ByKeeper_GivenTenantRefuses() external {
        (uint256 dusty, , ) = _threeLeases();
        vm.warp(T0 + 45);
        vm.prank(keeper);
        manager.settleExpired(dusty);

        _assertStatus(dusty, Lease.Status.Expired);
        _assertCredit(DUST);
        assertEq(manager.claimable(provider), SHORT_DEPOSIT, "provider paid to the end");
        _assertConserved();
    }

    function test_Slash_ByKeeper_GivenTenantRefuses() external {
        (, uint256 running, uint256 others) = _threeLeases();
        _heartbeatAt(running, T0 + 10);
        _heartbeatAt(others, T0 + 10);
        vm.warp(T0 + 71);

        vm.prank(keeper);
        manager.slashMissedHeartbeat(running);

        _assertStatus(running, Lease.Status.Slashed);
        // The keeper is paid at once; the tenant's compensation and refund wait for it.
        assertEq(stakingToken.balanceOf(keeper), CALLER_CUT, "keeper rewarded");
        assertEq(registry.creditOf(tenant), TENANT_CUT, "compensation credited");
        assertEq(registry.creditOf(TREASURY), TREASURY_CUT, "treasury credited");
        _assertCredit(DEPOSIT - 10 * PRICE);
        // The other tenant's lease, as late, is slashed just the same.
        vm.prank(keeper);
        manager.slashMissedHeartbeat(others);
        _assertStatus(others, Lease.Status.Slashed);
        _assertConserved();
    }

    function test_ProviderServesOthers_WhileTenantRefuses() external {
        // The refusing tenant's leases end every way a provider or keeper can end them, while the
        // provider keeps its other tenant's lease alive in the same batches.
        (uint256 dusty, uint256 running, uint256 others) = _threeLeases();
        vm.prank(otherTenant);
        manager.topUp(others, PRICE); // the other tenant's own calls are unaffected
        for (uint256 t = T0 + 20; t <= T0 + 200; t += 20) {
            vm.warp(t);
            vm.prank(provider);
            manager.heartbeat(_ids(dusty, running, others), _noCids());
        }
        _finishAt(running, T0 + 210);
        _finishAt(others, T0 + 220);
        _claim(provider, _noIds());

        _assertStatus(dusty, Lease.Status.Expired);
        _assertStatus(running, Lease.Status.Completed);
        _assertStatus(others, Lease.Status.Completed);
        _assertCredit(DUST + DEPOSIT - 210 * PRICE);
        assertEq(manager.creditOf(otherTenant), DEPOSIT + PRICE - 220 * PRICE, "other tenant's refund credited");
        vm.prank(otherTenant);
        manager.withdrawCredit();
        assertEq(paymentToken.balanceOf(otherTenant), TENANT_FUNDS - 220 * PRICE, "other tenant refunded");
        assertEq(paymentToken.balanceOf(provider), SHORT_DEPOSIT + 210 * PRICE + 220 * PRICE, "provider paid");
        _assertConserved();
    }

    /*//////////////////////////////////////////////////////////////
                          THE TENANT'S OWN CALLS
    //////////////////////////////////////////////////////////////*/

    function test_Close_GivenTenantRefuses_RevertsItsOwnCallOnly() external {
        (, uint256 running, ) = _threeLeases();
        _heartbeatAt(running, T0 + 10);
        vm.warp(T0 + 20);
        // Paid at once in its own call: the tenant's refusal fails that call, and only that call.
        vm.expectRevert(_refusal(address(manager), DEPOSIT - 10 * PRICE));
        vm.prank(tenant);
        manager.close(running);
        _assertStatus(running, Lease.Status.Active);

        _finishAt(running, T0 + 30);
        _assertStatus(running, Lease.Status.Completed);
        _assertCredit(DEPOSIT - 30 * PRICE);
        _assertConserved();
    }

    function test_Slash_ByRefusingTenant_RevertsItsOwnCallOnly() external {
        (, uint256 running, ) = _threeLeases();
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        vm.expectRevert(_refusal(address(registry), TENANT_CUT));
        vm.prank(tenant);
        manager.slashMissedHeartbeat(running);

        vm.prank(keeper);
        manager.slashMissedHeartbeat(running);
        _assertStatus(running, Lease.Status.Slashed);
        _assertConserved();
    }

    function test_WithdrawCredit_GivenTenantRefuses_ThenAccepts() external {
        (uint256 dusty, uint256 running, ) = _threeLeases();
        _heartbeatAt(running, T0 + 10);
        vm.warp(T0 + 71);
        vm.prank(keeper);
        manager.settleExpired(dusty);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(running);
        uint256 refunds = DUST + DEPOSIT - 10 * PRICE;
        _assertCredit(refunds);

        // While it refuses, its withdrawals fail and its credits wait, untouched.
        vm.expectRevert(_refusal(address(manager), refunds));
        vm.prank(tenant);
        manager.withdrawCredit();
        vm.expectRevert(_refusal(address(registry), TENANT_CUT));
        vm.prank(tenant);
        registry.withdrawCredit();
        _assertCredit(refunds);
        assertEq(registry.creditOf(tenant), TENANT_CUT, "compensation waits");

        // Once it takes tokens again, it withdraws everything.
        _accept();
        uint256 payBefore = paymentToken.balanceOf(tenant);
        vm.prank(tenant);
        manager.withdrawCredit();
        vm.prank(tenant);
        registry.withdrawCredit();
        assertEq(paymentToken.balanceOf(tenant), payBefore + refunds, "refunds paid");
        assertEq(stakingToken.balanceOf(tenant), TENANT_CUT, "compensation paid");
        _assertCredit(0);
        assertEq(registry.creditOf(tenant), 0, "registry credit emptied");
        _assertConserved();
    }
}

/// @notice The tenant is blocklisted by the token's owner (this test) after its lease opened.
contract RefusingTenant_Blocklist_Test is RefusingTenant_Test {
    function _deployTokens() internal override returns (DevToken, DevToken) {
        return (
            new BlocklistToken("Blocklist Stake", "BSTK", address(this)),
            new BlocklistToken("Blocklist Pay", "BPAY", address(this))
        );
    }

    function _deployWallet(DevToken, DevToken) internal override returns (RefusingReceiver) {
        return new RefusingReceiver(new HookToken[](0));
    }

    function _refuse() internal override {
        BlocklistToken(address(stakingToken)).blocklist(tenant);
        BlocklistToken(address(paymentToken)).blocklist(tenant);
    }

    function _accept() internal override {
        BlocklistToken(address(stakingToken)).unBlocklist(tenant);
        BlocklistToken(address(paymentToken)).unBlocklist(tenant);
    }

    function _refusal(address, uint256) internal view override returns (bytes memory) {
        return abi.encodeWithSelector(BlocklistToken.BlocklistToken_Blocklisted.selector, tenant);
    }
}

/// @notice The tenant is a contract whose receive hook starts reverting after its lease opened.
contract RefusingTenant_Hook_Test is RefusingTenant_Test {
    function _deployTokens() internal override returns (DevToken, DevToken) {
        return (new HookToken("Hook Stake", "HSTK"), new HookToken("Hook Pay", "HPAY"));
    }

    function _deployWallet(DevToken stakingToken_, DevToken paymentToken_) internal override returns (RefusingReceiver) {
        HookToken[] memory tokens = new HookToken[](2);
        tokens[0] = HookToken(address(stakingToken_));
        tokens[1] = HookToken(address(paymentToken_));
        return new RefusingReceiver(tokens);
    }

    function _refuse() internal override {
        wallet.setRefusing(true);
    }

    function _accept() internal override {
        wallet.setRefusing(false);
    }

    function _refusal(address from, uint256 amount) internal pure override returns (bytes memory) {
        return abi.encodeWithSelector(RefusingReceiver.RefusingReceiver_Refused.selector, from, amount);
    }
}
