// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest, VmExt} from "./LeaseManagerTest.sol";

contract Close_Test is LeaseManagerTest {
    function _expectCloseRevert(uint256 id, bytes memory revertData) internal {
        vm.prank(tenant);
        vm.expectRevert(revertData);
        manager.close(id);
    }

    function _expectNotActive(uint256 id, Lease.Status status) internal {
        _expectCloseRevert(id, _err(ILeaseManager.LeaseManager_LeaseNotActive.selector, id, status));
    }

    /*//////////////////////////////////////////////////////////////
                                 REVERTS
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_CallerIsProvider() external {
        uint256 id = _openLease();
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotTenant.selector, id, provider));
        manager.close(id);
    }

    function test_RevertWhen_CallerIsOtherTenant() external {
        uint256 id = _openLease();
        vm.prank(otherTenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotTenant.selector, id, otherTenant));
        manager.close(id);
    }

    function test_RevertWhen_LeaseDoesNotExist() external {
        _openLease();
        _expectCloseRevert(9, abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotTenant.selector, 9, tenant));
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
        _heartbeatAt(id, T0 + 10);
        vm.warp(T0 + 71);
        _expectCloseRevert(id, abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseSlashable.selector, id, T0 + 70));
    }

    function test_RevertGiven_SlashablePastEnd() external {
        uint256 id = _openLease();
        vm.warp(T0 + FUNDED_SECONDS + 50);
        _expectCloseRevert(
            id,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseSlashable.selector, id, T0 + HEARTBEAT_TIMEOUT)
        );
    }

    /*//////////////////////////////////////////////////////////////
                              ACTIVE LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenActive() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 10);
        vm.warp(T0 + 20);
        uint256 refund = DEPOSIT - 10 * PRICE;
        _expectSettled(id, 10 * PRICE, T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseCloseRequested(id, refund);
        _expectPayTransfer(address(manager), tenant, refund);
        vm.prank(tenant);
        manager.close(id);

        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Closing), "status");
        assertEq(l.deposit, 0, "deposit emptied");
        assertEq(l.settledUntil, T0 + 10, "settled to the last heartbeat");
        assertEq(l.lastHeartbeat, T0 + 10, "lastHeartbeat unchanged");
        assertEq(l.endsAt, T0 + 20, "the lease ends at the close");
        assertEq(l.deadline, T0 + 20 + HEARTBEAT_TIMEOUT, "a whole timeout from the close to acknowledge");
        assertFalse(l.slashable, "not slashable yet");
        assertFalse(l.expired, "not expired");
        assertEq(l.earned, 0, "earned");
        _assertPayments(TENANT_FUNDS - 10 * PRICE, 0, 10 * PRICE, 10 * PRICE);
        // The collateral stays locked until the provider acknowledges.
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 10);
        _assertConserved();
    }

    function test_GivenActiveWithoutHeartbeat() external {
        uint256 id = _openLease();
        vm.warp(T0 + 5);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseCloseRequested(id, DEPOSIT);
        _expectPayTransfer(address(manager), tenant, DEPOSIT);
        vmx.recordLogs();
        vm.prank(tenant);
        manager.close(id);
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        // LeaseCloseRequested and the refund's Transfer; nothing earned, so no EarningsSettled.
        assertEq(logs.length, 2, "no EarningsSettled");
        _assertStatus(id, Lease.Status.Closing);
        _assertPayments(TENANT_FUNDS, 0, 0, 0);
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 0);
        _assertConserved();
    }

    function test_GivenActiveAtExactlyDeadline() external {
        uint256 id = _openLease();
        _closeAt(id, T0 + HEARTBEAT_TIMEOUT);
        _assertStatus(id, Lease.Status.Closing);
        assertEq(_lease(id).deadline, T0 + 2 * HEARTBEAT_TIMEOUT, "deadline a timeout after the close");
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        assertFalse(_lease(id).slashable, "not slashable past the old deadline");
        vm.warp(T0 + 2 * HEARTBEAT_TIMEOUT);
        assertFalse(_lease(id).slashable, "not slashable at the new deadline");
        vm.warp(T0 + 2 * HEARTBEAT_TIMEOUT + 1);
        assertTrue(_lease(id).slashable, "slashable a second later");
    }

    /// @dev Issue #11 point 4: a close one second before the provider's deadline used to leave it
    /// that one second to acknowledge, or lose 60 % of its collateral; now it has a whole timeout.
    function test_GivenActiveJustBeforeDeadline_GivesProviderAFullTimeout() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 10);
        _closeAt(id, T0 + 69);
        assertEq(_lease(id).deadline, T0 + 69 + HEARTBEAT_TIMEOUT, "deadline a timeout after the close");

        // Past the old deadline (last heartbeat + timeout), the provider is not in default.
        vm.warp(T0 + 71);
        assertFalse(_lease(id).slashable, "not slashable past the old deadline");
        vm.prank(keeper);
        vm.expectRevert(
            abi.encodeWithSelector(
                ILeaseManager.LeaseManager_HeartbeatNotMissed.selector,
                id,
                T0 + 69 + HEARTBEAT_TIMEOUT
            )
        );
        manager.slashMissedHeartbeat(id);

        // It acknowledges in its own time and gets its collateral back.
        _heartbeatAt(id, T0 + 69 + HEARTBEAT_TIMEOUT);
        _assertStatus(id, Lease.Status.Closed);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 10);
    }

    function test_GivenActiveAfterClaim() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 50);
        _claim(provider, _ids(id));
        vm.warp(T0 + 60);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseCloseRequested(id, DEPOSIT - 50 * PRICE);
        vm.prank(tenant);
        manager.close(id);
        _assertPayments(TENANT_FUNDS - 50 * PRICE, 50 * PRICE, 0, 0);
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 50);
        _assertConserved();
    }

    function test_GivenActiveAtExactlyEnd() external {
        // The end and the deadline both cover the lease: it has expired, so it is settled as such.
        uint256 id = _openShortLease();
        vm.warp(T0 + 30);
        _expectSettled(id, SHORT_DEPOSIT, T0 + 30);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, 0);
        _expectReleased(id, false);
        vm.prank(tenant);
        manager.close(id);

        _assertStatus(id, Lease.Status.Expired);
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT, 0, SHORT_DEPOSIT, SHORT_DEPOSIT);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 30);
        _assertConserved();
    }

    function test_GivenActiveExpired() external {
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), SHORT_DEPOSIT + 7, 0);
        vm.warp(T0 + 50);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, 7);
        _expectPayTransfer(address(manager), tenant, 7);
        vm.prank(tenant);
        manager.close(id);
        _assertStatus(id, Lease.Status.Expired);
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT, 0, SHORT_DEPOSIT, SHORT_DEPOSIT);
        assertEq(registry.getProvider(provider).locked, 0, "collateral released at once");
    }

    /*//////////////////////////////////////////////////////////////
                                   FUZZ
    //////////////////////////////////////////////////////////////*/

    /// @dev Whatever the price, deposit and timing, a close pays the provider exactly the
    /// heartbeat-covered seconds and refunds the tenant the rest of the deposit.
    function testFuzz_Close(uint256 price, uint256 deposit, uint256 beat, uint256 closeAfter) external {
        price = bound(price, 1, 1e24);
        deposit = bound(deposit, price * 2, price * MAX_DURATION);
        uint256 endsAt = T0 + deposit / price;
        beat = bound(beat, T0, endsAt - 1);
        uint256 closeAt = bound(closeAfter, beat, endsAt - 1);
        paymentToken.mint(tenant, deposit);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = price;
        // The longest timeout the max duration allows, so that one heartbeat anywhere keeps it alive.
        q.heartbeatTimeout = MAX_DURATION - 1;
        uint256 id = _open(q, deposit, 0);
        _heartbeatAt(id, beat);

        _closeAt(id, closeAt);

        uint256 earned = (beat - T0) * price;
        assertEq(manager.claimable(provider), earned, "earned = covered seconds * price");
        assertEq(paymentToken.balanceOf(tenant), TENANT_FUNDS + deposit - earned, "tenant refunded the rest");
        assertEq(manager.claimable(provider) + paymentToken.balanceOf(tenant), TENANT_FUNDS + deposit, "conserved");
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, beat - T0);
        _assertStatus(id, Lease.Status.Closing);
        _assertConserved();
    }
}
