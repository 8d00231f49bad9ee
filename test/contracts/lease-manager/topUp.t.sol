// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {FeeOnTransferToken} from "../mocks/FeeOnTransferToken.sol";
import {LeaseManagerTest} from "./LeaseManagerTest.sol";

contract TopUp_Test is LeaseManagerTest {
    uint256 internal constant AMOUNT = PRICE * 300;

    function _expectTopUpRevert(uint256 id, uint256 amount, bytes memory revertData) internal {
        vm.prank(tenant);
        vm.expectRevert(revertData);
        manager.topUp(id, amount);
    }

    function _expectNotActive(uint256 id, Lease.Status status) internal {
        _expectTopUpRevert(id, AMOUNT, _err(ILeaseManager.LeaseManager_LeaseNotActive.selector, id, status));
    }

    /*//////////////////////////////////////////////////////////////
                                 REVERTS
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_CallerIsProvider() external {
        uint256 id = _openLease();
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotTenant.selector, id, provider));
        manager.topUp(id, AMOUNT);
    }

    function test_RevertWhen_CallerIsOtherTenant() external {
        uint256 id = _openLease();
        vm.prank(otherTenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotTenant.selector, id, otherTenant));
        manager.topUp(id, AMOUNT);
    }

    function test_RevertWhen_LeaseDoesNotExist() external {
        _openLease();
        _expectTopUpRevert(2, AMOUNT, abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotTenant.selector, 2, tenant));
    }

    function test_RevertWhen_AmountZero() external {
        uint256 id = _openLease();
        _expectTopUpRevert(id, 0, abi.encodeWithSelector(ILeaseManager.LeaseManager_ZeroAmount.selector));
    }

    function test_RevertGiven_Closing() external {
        uint256 id = _closingLease();
        _expectNotActive(id, Lease.Status.Closing);
    }

    function test_RevertGiven_Closed() external {
        uint256 id = _closedLease();
        _expectNotActive(id, Lease.Status.Closed);
    }

    function test_RevertGiven_Completed() external {
        uint256 id = _completedLease();
        _expectNotActive(id, Lease.Status.Completed);
    }

    function test_RevertGiven_Expired() external {
        uint256 id = _expiredLease();
        _expectNotActive(id, Lease.Status.Expired);
    }

    function test_RevertGiven_Slashed() external {
        uint256 id = _slashedLease();
        _expectNotActive(id, Lease.Status.Slashed);
    }

    function test_RevertGiven_Slashable() external {
        uint256 id = _openLease();
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        _expectTopUpRevert(
            id,
            AMOUNT,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseSlashable.selector, id, T0 + HEARTBEAT_TIMEOUT)
        );
    }

    function test_RevertGiven_SlashablePastEnd() external {
        uint256 id = _openLease();
        vm.warp(T0 + FUNDED_SECONDS + 1);
        _expectTopUpRevert(
            id,
            AMOUNT,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseSlashable.selector, id, T0 + HEARTBEAT_TIMEOUT)
        );
    }

    function test_RevertGiven_AtExactlyEnd() external {
        uint256 id = _openShortLease();
        vm.warp(T0 + 30);
        _expectTopUpRevert(
            id,
            AMOUNT,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseExpired.selector, id, T0 + 30)
        );
    }

    function test_RevertGiven_ExpiredUnsettled() external {
        uint256 id = _openShortLease();
        vm.warp(T0 + 45);
        _expectTopUpRevert(
            id,
            AMOUNT,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseExpired.selector, id, T0 + 30)
        );
    }

    function test_RevertWhen_DepositWouldOverflowUint96() external {
        uint256 id = _openLease();
        uint256 amount = uint256(type(uint96).max) - DEPOSIT + 1;
        paymentToken.mint(tenant, amount);
        _expectTopUpRevert(id, amount, abi.encodeWithSelector(ILeaseManager.LeaseManager_AmountTooLarge.selector, amount));
    }

    function test_RevertWhen_AllowanceInsufficient() external {
        uint256 id = _openLease();
        vm.prank(tenant);
        paymentToken.approve(address(manager), AMOUNT - 1);
        _expectTopUpRevert(
            id,
            AMOUNT,
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector,
                address(manager),
                AMOUNT - 1,
                AMOUNT
            )
        );
    }

    /// @dev Issue #11 point 6: a token that starts taking a fee after the lease opened (as USDT
    /// may) is refused on the top-up, which would otherwise credit more than arrived.
    function test_RevertWhen_TokenTakesFee() external {
        FeeOnTransferToken feeToken = new FeeOnTransferToken("Fee Pay", "FPAY", 0);
        _redeploy(stakingToken, feeToken);
        uint256 id = _openLease();
        feeToken.setFeeBps(100);
        _expectTopUpRevert(
            id,
            AMOUNT,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_UnsupportedToken.selector, AMOUNT, AMOUNT - AMOUNT / 100)
        );
        assertEq(_lease(id).deposit, DEPOSIT, "deposit unchanged");
        assertEq(feeToken.balanceOf(address(manager)), DEPOSIT, "escrow unchanged");
    }

    /*//////////////////////////////////////////////////////////////
                               HAPPY PATHS
    //////////////////////////////////////////////////////////////*/

    function test_GivenActive() external {
        uint256 id = _openLease();
        vm.warp(T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseToppedUp(id, AMOUNT, DEPOSIT + AMOUNT, uint64(T0 + 900));
        _expectPayTransfer(tenant, address(manager), AMOUNT);
        vm.prank(tenant);
        manager.topUp(id, AMOUNT);

        Lease.View memory l = _lease(id);
        assertEq(l.deposit, DEPOSIT + AMOUNT, "deposit");
        assertEq(l.endsAt, T0 + 900, "endsAt extended");
        assertEq(l.maxEnd, T0 + MAX_DURATION, "maxEnd unchanged");
        assertEq(l.settledUntil, T0, "settledUntil unchanged");
        _assertPayments(TENANT_FUNDS - DEPOSIT - AMOUNT, 0, DEPOSIT + AMOUNT, 0);
        _assertConserved();
    }

    function test_GivenActiveAtExactlyDeadline() external {
        uint256 id = _openLease();
        vm.warp(T0 + HEARTBEAT_TIMEOUT);
        vm.prank(tenant);
        manager.topUp(id, AMOUNT);
        assertEq(_lease(id).endsAt, T0 + 900, "endsAt");
    }

    function test_GivenActive_WhenBeyondMaxDuration() external {
        uint256 id = _openLease();
        uint256 amount = PRICE * MAX_DURATION;
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseToppedUp(id, amount, DEPOSIT + amount, uint64(T0 + MAX_DURATION));
        vm.prank(tenant);
        manager.topUp(id, amount);
        assertEq(_lease(id).endsAt, T0 + MAX_DURATION, "capped at maxEnd");
        assertEq(_lease(id).deposit, DEPOSIT + amount, "the whole amount is escrowed");
    }

    function test_GivenActive_WhenAlreadyAtMaxEnd() external {
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), PRICE * MAX_DURATION, 0);
        vm.prank(tenant);
        manager.topUp(id, AMOUNT);
        assertEq(_lease(id).endsAt, T0 + MAX_DURATION, "endsAt unchanged");
        // The surplus comes back at the end.
        for (uint256 t = T0 + 50; t < T0 + MAX_DURATION; t += 50) _heartbeatAt(id, t);
        vm.warp(T0 + MAX_DURATION);
        vm.prank(tenant);
        manager.settleExpired(id);
        _assertPayments(TENANT_FUNDS - PRICE * MAX_DURATION, 0, PRICE * MAX_DURATION, PRICE * MAX_DURATION);
    }

    function test_GivenActive_WhenAmountNotMultipleOfPrice() external {
        uint256 id = _openLease();
        vm.prank(tenant);
        manager.topUp(id, PRICE / 2);
        assertEq(_lease(id).endsAt, T0 + FUNDED_SECONDS, "half a second buys nothing yet");
        vm.prank(tenant);
        manager.topUp(id, PRICE / 2);
        assertEq(_lease(id).endsAt, T0 + FUNDED_SECONDS + 1, "two halves buy a second");
    }

    function test_GivenActiveAfterClaim() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 50);
        _heartbeatAt(id, T0 + 100);
        _claim(provider, _ids(id));
        // 500 seconds of deposit left from T0+100, plus 100 more.
        vm.prank(tenant);
        manager.topUp(id, PRICE * 100);
        assertEq(_lease(id).endsAt, T0 + 700, "counted from settledUntil");
        assertEq(_lease(id).deposit, PRICE * 600, "deposit");
        _assertConserved();
    }

    function test_GivenActiveExpiring_WhenToppedUp() external {
        // A short lease would expire at T0+30 with no heartbeat due (deadline T0+60)...
        uint256 id = _openShortLease();
        vm.warp(T0 + 20);
        vm.prank(tenant);
        manager.topUp(id, DEPOSIT);
        assertEq(_lease(id).endsAt, T0 + 630, "endsAt");
        // ...but once topped up past its deadline, its provider must heartbeat again.
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        assertTrue(_lease(id).slashable, "slashable");
        assertFalse(_lease(id).expired, "not expired");
    }

    /*//////////////////////////////////////////////////////////////
                      TOP-UPS THAT REVIVE THE DEADLINE
    //////////////////////////////////////////////////////////////*/
    // Issue #11 point 4. A lease funded for 50 s ends at T0+50, before its first deadline (T0+60):
    // it is set to expire cleanly. A top-up that moves its end past T0+60 makes that deadline
    // binding again, so the provider must have half a timeout (30 s) left to see it and heartbeat.

    uint256 internal constant CLEAN_DEPOSIT = PRICE * 50;

    function _openCleanlyExpiringLease() internal returns (uint256 id) {
        _ensureProvider();
        id = _open(_defaultQuote(), CLEAN_DEPOSIT, 0);
        assertGe(_lease(id).deadline, _lease(id).endsAt, "set to expire cleanly");
    }

    function test_RevertGiven_ExpiringCleanly_WhenTopUpLeavesUnderHalfATimeout() external {
        uint256 id = _openCleanlyExpiringLease();
        vm.warp(T0 + 31); // 29 s before the deadline
        _expectTopUpRevert(
            id,
            AMOUNT,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_TopUpTooLate.selector, id, T0 + HEARTBEAT_TIMEOUT)
        );
    }

    function test_RevertGiven_ExpiringCleanly_WhenTopUpOneSecondBeforeEnd() external {
        uint256 id = _openCleanlyExpiringLease();
        vm.warp(T0 + 49);
        _expectTopUpRevert(
            id,
            AMOUNT,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_TopUpTooLate.selector, id, T0 + HEARTBEAT_TIMEOUT)
        );
    }

    function test_GivenExpiringCleanly_WhenTopUpLeavesExactlyHalfATimeout() external {
        uint256 id = _openCleanlyExpiringLease();
        vm.warp(T0 + 30); // 30 s before the deadline
        vm.prank(tenant);
        manager.topUp(id, AMOUNT);
        assertEq(_lease(id).endsAt, T0 + 350, "extended past the deadline");
        // The provider heartbeats within the half timeout it was left.
        _heartbeatAt(id, T0 + HEARTBEAT_TIMEOUT);
        assertFalse(_lease(id).slashable, "alive");
    }

    function test_GivenExpiringCleanly_WhenTopUpKeepsEndWithinDeadline() external {
        // Late, but the end stays at or before the deadline: the lease still expires cleanly.
        uint256 id = _openCleanlyExpiringLease();
        vm.warp(T0 + 45);
        vm.prank(tenant);
        manager.topUp(id, PRICE * 10);
        assertEq(_lease(id).endsAt, T0 + HEARTBEAT_TIMEOUT, "ends at the deadline");
        vm.warp(T0 + HEARTBEAT_TIMEOUT);
        assertTrue(_lease(id).expired, "expires without a heartbeat");
        assertFalse(_lease(id).slashable, "never slashable");
    }

    function test_GivenExpiringCleanly_WhenHeartbeatMovedTheDeadline() external {
        // After a heartbeat at T0+40 the deadline is T0+100: a top-up at T0+45 leaves 55 s.
        uint256 id = _openCleanlyExpiringLease();
        _heartbeatAt(id, T0 + 40);
        vm.warp(T0 + 45);
        vm.prank(tenant);
        manager.topUp(id, AMOUNT);
        assertEq(_lease(id).endsAt, T0 + 350, "extended");
    }

    /// @dev Whenever it is accepted, a top-up of a lease set to expire cleanly leaves the provider
    /// either no new deadline to meet or at least half a timeout to meet it.
    function testFuzz_TopUp_NeverRevivesADeadlineTooLate(uint256 time, uint256 amount) external {
        uint256 id = _openCleanlyExpiringLease();
        time = bound(time, T0, T0 + 49);
        amount = bound(amount, 1, PRICE * 1000);
        vm.warp(time);
        uint256 deadline = T0 + HEARTBEAT_TIMEOUT;
        uint256 newEnd = T0 + (CLEAN_DEPOSIT + amount) / PRICE;
        if (newEnd > deadline && deadline < time + HEARTBEAT_TIMEOUT / 2) {
            _expectTopUpRevert(
                id,
                amount,
                abi.encodeWithSelector(ILeaseManager.LeaseManager_TopUpTooLate.selector, id, deadline)
            );
        } else {
            vm.prank(tenant);
            manager.topUp(id, amount);
            assertTrue(newEnd <= deadline || deadline - time >= HEARTBEAT_TIMEOUT / 2, "time left to heartbeat");
        }
    }

    /*//////////////////////////////////////////////////////////////
                                   FUZZ
    //////////////////////////////////////////////////////////////*/

    function testFuzz_TopUp(uint256 price, uint256 deposit, uint256 amount, uint256 served) external {
        price = bound(price, 1, 1e24);
        deposit = bound(deposit, price, price * 2 * MAX_DURATION);
        amount = bound(amount, 1, type(uint96).max - deposit);
        uint256 funded = deposit / price;
        // Heartbeat and claim `served` seconds (fewer than funded, within the timeout), then top up.
        served = bound(served, 0, (funded < HEARTBEAT_TIMEOUT ? funded : HEARTBEAT_TIMEOUT) - 1);
        paymentToken.mint(tenant, deposit + amount);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = price;
        uint256 id = _open(q, deposit, 0);
        _heartbeatAt(id, T0 + served);
        _claim(provider, _ids(id));

        vm.prank(tenant);
        manager.topUp(id, amount);

        uint256 fundedUntil = T0 + served + (deposit - served * price + amount) / price;
        uint256 maxEnd = T0 + MAX_DURATION;
        Lease.View memory l = _lease(id);
        assertEq(l.endsAt, fundedUntil < maxEnd ? fundedUntil : maxEnd, "endsAt = min(settled + deposit / price, maxEnd)");
        assertEq(l.deposit, deposit - served * price + amount, "deposit");
        assertGe(l.endsAt, T0 + (funded < MAX_DURATION ? funded : MAX_DURATION), "never shortens");
        _assertConserved();
    }
}
