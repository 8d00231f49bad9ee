// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest, VmExt} from "./LeaseManagerTest.sol";

contract SettleExpired_Test is LeaseManagerTest {
    function _expectSettleRevert(uint256 id, bytes memory revertData) internal {
        vm.prank(keeper);
        vm.expectRevert(revertData);
        manager.settleExpired(id);
    }

    function _expectNotActive(uint256 id, Lease.Status status) internal {
        _expectSettleRevert(id, _err(ILeaseManager.LeaseManager_LeaseNotActive.selector, id, status));
    }

    function _expectNotExpired(uint256 id, uint256 endsAt) internal {
        _expectSettleRevert(
            id,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseNotExpired.selector, id, endsAt)
        );
    }

    function _settle(uint256 id) internal {
        vm.prank(keeper);
        manager.settleExpired(id);
    }

    /*//////////////////////////////////////////////////////////////
                                 REVERTS
    //////////////////////////////////////////////////////////////*/

    function test_RevertGiven_LeaseDoesNotExist() external {
        _openShortLease();
        vm.warp(T0 + 100);
        _expectNotActive(9, Lease.Status.None);
    }

    function test_RevertGiven_Closing() external {
        uint256 id = _closingLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Closing);
    }

    function test_RevertGiven_Closed() external {
        uint256 id = _closedLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Closed);
    }

    function test_RevertGiven_Completed() external {
        uint256 id = _completedLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Completed);
    }

    function test_RevertGiven_AlreadyExpired() external {
        uint256 id = _expiredLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Expired);
    }

    function test_RevertGiven_Slashed() external {
        uint256 id = _slashedLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Slashed);
    }

    function test_RevertGiven_BeforeEnd() external {
        uint256 id = _openShortLease();
        vm.warp(T0 + 29);
        _expectNotExpired(id, T0 + 30);
    }

    function test_RevertGiven_SlashablePastEnd() external {
        uint256 id = _openLease();
        vm.warp(T0 + FUNDED_SECONDS + 1);
        assertTrue(_lease(id).slashable, "slashable");
        _expectNotExpired(id, T0 + FUNDED_SECONDS);
    }

    function test_RevertGiven_SlashableBeforeEnd() external {
        uint256 id = _openLease();
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        _expectNotExpired(id, T0 + FUNDED_SECONDS);
    }

    /*//////////////////////////////////////////////////////////////
                              EXPIRED LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenAtExactlyEnd() external {
        // Funded for less than its heartbeat timeout, the lease is paid in full without a single
        // heartbeat: only the deposit can make a lease that short (see `SHORT_DEPOSIT`).
        uint256 id = _openShortLease();
        vm.warp(T0 + 30);
        _expectSettled(id, SHORT_DEPOSIT, T0 + 30);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, 0);
        _expectReleased(id, false);
        vmx.recordLogs();
        _settle(id);
        // EarningsSettled, LeaseExpired and CollateralReleased.
        assertEq(vmx.getRecordedLogs().length, 3, "no refund transfer");

        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Expired), "status");
        assertFalse(l.expired, "no longer pending");
        assertEq(l.settledUntil, T0 + 30, "settled to the end");
        assertEq(l.deposit, 0, "deposit");
        assertEq(l.earned, 0, "earned");
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT, 0, SHORT_DEPOSIT, SHORT_DEPOSIT);
        assertEq(paymentToken.balanceOf(keeper), 0, "settling earns the caller nothing");
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 30);
        assertEq(registry.freeStake(provider), PROVIDER_STAKE, "collateral free");
        _assertConserved();
    }

    function test_GivenPastEndWithDust() external {
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), SHORT_DEPOSIT + PRICE - 1, 0);
        vm.warp(T0 + 1000);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, PRICE - 1);
        vm.expectEmit(address(manager));
        emit ILeaseManager.Credited(tenant, PRICE - 1);
        _settle(id);
        // A keeper's settlement credits the tenant's refund; it never pushes it.
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT - PRICE + 1, 0, SHORT_DEPOSIT + PRICE - 1, SHORT_DEPOSIT);
        _assertCredit(PRICE - 1);
        _assertConserved();
    }

    function test_GivenPastEndWithDust_WhenCallerIsTenant() external {
        // In its own call the tenant is refunded at once: only its own call can fail on it.
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), SHORT_DEPOSIT + PRICE - 1, 0);
        vm.warp(T0 + 1000);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, PRICE - 1);
        _expectPayTransfer(address(manager), tenant, PRICE - 1);
        vm.prank(tenant);
        manager.settleExpired(id);
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT, 0, SHORT_DEPOSIT, SHORT_DEPOSIT);
        _assertCredit(0);
        _assertConserved();
    }

    function test_GivenEndedByMaxDuration() external {
        // The max duration outlasts the timeout (as every quote's must), so the lease needs a
        // heartbeat to reach its end unslashed.
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.maxDuration = 100;
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).endsAt, T0 + 100, "ends at maxEnd");
        _heartbeatAt(id, T0 + 50); // deadline T0+110 covers the end
        vm.warp(T0 + 100);
        assertTrue(_lease(id).expired, "expired");
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, DEPOSIT - 100 * PRICE);
        _settle(id);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 100 * PRICE);
        _assertCredit(DEPOSIT - 100 * PRICE);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 100);
        _assertConserved();
    }

    function test_GivenKeptAliveToEnd() external {
        uint256 id = _openLease();
        for (uint256 t = T0 + 50; t <= T0 + 550; t += 50) _heartbeatAt(id, t);
        // Last heartbeat at T0+550, deadline T0+610 covers the end at T0+600.
        vm.warp(T0 + 600);
        assertTrue(_lease(id).expired, "expired");
        _expectSettled(id, DEPOSIT, T0 + 600);
        _settle(id);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, DEPOSIT);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, FUNDED_SECONDS);
        _assertConserved();
    }

    function test_GivenClaimedBefore() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = 1000;
        uint256 id = _open(q, DEPOSIT, 0);
        _heartbeatAt(id, T0 + 200);
        _claim(provider, _ids(id));
        vm.warp(T0 + 700);
        _expectSettled(id, 400 * PRICE, T0 + 600);
        _expectReleased(id, false);
        _settle(id);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 200 * PRICE, 400 * PRICE, 400 * PRICE);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, FUNDED_SECONDS);
        _assertConserved();
    }

    /*//////////////////////////////////////////////////////////////
                                   FUZZ
    //////////////////////////////////////////////////////////////*/

    /// @dev An expired lease pays its provider to its end and refunds the tenant the rest.
    function testFuzz_SettleExpired(uint256 price, uint256 deposit, uint256 maxDuration, uint256 delay) external {
        price = bound(price, 1, 1e24);
        deposit = bound(deposit, price, price * 2 * MAX_DURATION);
        maxDuration = bound(maxDuration, MIN_HEARTBEAT_TIMEOUT + 1, MAX_DURATION);
        delay = bound(delay, 0, 30 days);
        paymentToken.mint(tenant, deposit);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = price;
        q.maxDuration = uint64(maxDuration);
        // The longest timeout the max duration allows: it covers any end the deposit sets first.
        q.heartbeatTimeout = uint64(maxDuration - 1);
        q.heartbeatPeriod = 1;
        uint256 id = _open(q, deposit, 0);
        uint256 funded = deposit / price;
        uint256 endsAt = T0 + (funded < maxDuration ? funded : maxDuration);
        // A lease that runs to its max duration needs one heartbeat to outlive its first deadline.
        if (endsAt > T0 + maxDuration - 1) _heartbeatAt(id, T0 + 1);

        vm.warp(endsAt - 1);
        _expectNotExpired(id, endsAt);
        vm.warp(endsAt + delay);
        _settle(id);

        uint256 earned = (endsAt - T0) * price;
        assertEq(manager.claimable(provider), earned, "paid to the end");
        assertEq(paymentToken.balanceOf(tenant), TENANT_FUNDS, "nothing pushed to the tenant");
        assertEq(manager.creditOf(tenant), deposit - earned, "the rest credited");
        _assertStatus(id, Lease.Status.Expired);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, endsAt - T0);
        _assertConserved();
    }
}
