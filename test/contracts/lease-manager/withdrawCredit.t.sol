// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";

import {LeaseManagerTest} from "./LeaseManagerTest.sol";

contract WithdrawCredit_Test is LeaseManagerTest {
    function _expectNothingCredited(address who) internal {
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_NothingCredited.selector, who));
        vm.prank(who);
        manager.withdrawCredit();
    }

    /// @dev The default lease, heartbeated at T0+10 and finished by its provider at T0+40: the
    /// refund of 560 seconds is credited to the tenant.
    function _finishedLease() internal returns (uint256 id, uint256 refund) {
        id = _openLease();
        _heartbeatAt(id, T0 + 10);
        _finishAt(id, T0 + 40);
        refund = DEPOSIT - 40 * PRICE;
    }

    /*//////////////////////////////////////////////////////////////
                                 REVERTS
    //////////////////////////////////////////////////////////////*/

    function test_RevertGiven_NothingCredited() external {
        _openLease();
        _expectNothingCredited(tenant);
    }

    function test_RevertGiven_RefundPaidAtOnce() external {
        // A close is the tenant's own call: its refund was paid, nothing waits.
        _closingLease();
        _expectNothingCredited(tenant);
    }

    function test_RevertGiven_CreditOfAnotherTenant() external {
        (, uint256 refund) = _finishedLease();
        _expectNothingCredited(otherTenant);
        _assertCredit(refund);
    }

    function test_RevertGiven_CallerIsProvider() external {
        // A provider's earnings are claimed, never credited.
        _finishedLease();
        _expectNothingCredited(provider);
    }

    function test_RevertGiven_AlreadyWithdrawn() external {
        _finishedLease();
        vm.prank(tenant);
        manager.withdrawCredit();
        _expectNothingCredited(tenant);
    }

    /*//////////////////////////////////////////////////////////////
                               HAPPY PATHS
    //////////////////////////////////////////////////////////////*/

    function test_GivenCredited() external {
        (, uint256 refund) = _finishedLease();
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 40 * PRICE);

        vm.expectEmit(address(manager));
        emit ILeaseManager.CreditWithdrawn(tenant, refund);
        _expectPayTransfer(address(manager), tenant, refund);
        vm.prank(tenant);
        manager.withdrawCredit();

        _assertCredit(0);
        _assertPayments(TENANT_FUNDS - 40 * PRICE, 0, 40 * PRICE, 40 * PRICE);
        _assertConserved();
    }

    function test_GivenCreditedByEveryKindOfCall() external {
        // A provider's finish, a keeper's settlement and a keeper's slash: one withdrawal for all.
        (, uint256 finishRefund) = _finishedLease();
        _ensureProvider();
        uint256 dusty = _open(_defaultQuote(), SHORT_DEPOSIT + 7, 0);
        uint256 dead = _open(_defaultQuote(), DEPOSIT, 0);
        vm.warp(T0 + 40 + HEARTBEAT_TIMEOUT + 1);
        vm.prank(keeper);
        manager.settleExpired(dusty);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(dead);
        uint256 total = finishRefund + 7 + DEPOSIT;
        _assertCredit(total);
        _assertConserved();

        vm.prank(tenant);
        manager.withdrawCredit();
        assertEq(paymentToken.balanceOf(tenant), TENANT_FUNDS - 40 * PRICE - SHORT_DEPOSIT, "all refunds in");
        _assertCredit(0);
        _assertConserved();
    }

    function test_GivenCreditedAgainAfterWithdrawal() external {
        (, uint256 refund) = _finishedLease();
        vm.prank(tenant);
        manager.withdrawCredit();
        uint256 id = _open(_defaultQuote(), DEPOSIT, 0);
        _finishAt(id, T0 + 50);
        _assertCredit(DEPOSIT - 10 * PRICE);
        vm.prank(tenant);
        manager.withdrawCredit();
        assertEq(paymentToken.balanceOf(tenant), TENANT_FUNDS - 50 * PRICE, "both refunds");
        assertEq(refund, DEPOSIT - 40 * PRICE, "first refund");
    }

    function testFuzz_WithdrawCredit(uint256 finishAt) external {
        finishAt = bound(finishAt, T0, T0 + HEARTBEAT_TIMEOUT);
        uint256 id = _openLease();
        _finishAt(id, finishAt);
        uint256 earned = (finishAt - T0) * PRICE;
        _assertCredit(DEPOSIT - earned);

        vm.prank(tenant);
        manager.withdrawCredit();
        assertEq(paymentToken.balanceOf(tenant), TENANT_FUNDS - earned, "tenant paid all but the earnings");
        assertEq(paymentToken.balanceOf(address(manager)), earned, "the escrow keeps the earnings");
        _assertConserved();
    }
}
