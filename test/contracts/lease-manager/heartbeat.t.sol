// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest, VmExt} from "./LeaseManagerTest.sol";

contract Heartbeat_Test is LeaseManagerTest {
    bytes32 internal constant HEARTBEAT_TOPIC = ILeaseManager.HeartbeatRecorded.selector;
    bytes32 internal constant CHECKPOINT_TOPIC = ILeaseManager.CheckpointCommitted.selector;

    function _notProvider(uint256 id, address caller) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotProvider.selector, id, caller);
    }

    /// @dev Heartbeats `id` (no CID) while recording logs, and asserts that it was skipped: no
    /// HeartbeatRecorded, and the lease's last heartbeat unchanged.
    function _assertSkipped(uint256 id) internal {
        uint256 lastHeartbeat = _lease(id).lastHeartbeat;
        vmx.recordLogs();
        _heartbeat(provider, id);
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        assertEq(_countLogs(logs, address(manager), HEARTBEAT_TOPIC), 0, "no HeartbeatRecorded");
        assertEq(_lease(id).lastHeartbeat, lastHeartbeat, "lastHeartbeat unchanged");
    }

    /*//////////////////////////////////////////////////////////////
                                 REVERTS
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_FewerCidsThanLeases() external {
        uint256 a = _openLease();
        uint256 b = _openLease();
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_LengthMismatch.selector, 2, 1));
        manager.heartbeat(_ids(a, b), _cids(CID));
    }

    function test_RevertWhen_MoreCidsThanLeases() external {
        uint256 a = _openLease();
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_LengthMismatch.selector, 1, 2));
        manager.heartbeat(_ids(a), _cids(CID, CID));
    }

    function test_RevertWhen_CidsButNoLeases() external {
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_LengthMismatch.selector, 0, 1));
        manager.heartbeat(_noIds(), _cids(CID));
    }

    function test_RevertWhen_CallerIsOtherProvider() external {
        uint256 id = _openLease();
        vm.warp(T0 + 10);
        vm.prank(otherProvider);
        vm.expectRevert(_notProvider(id, otherProvider));
        manager.heartbeat(_ids(id), _noCids());
    }

    function test_RevertWhen_CallerIsTenant() external {
        uint256 id = _openLease();
        vm.warp(T0 + 10);
        vm.prank(tenant);
        vm.expectRevert(_notProvider(id, tenant));
        manager.heartbeat(_ids(id), _noCids());
    }

    function test_RevertWhen_LeaseDoesNotExist() external {
        _openLease();
        vm.prank(provider);
        vm.expectRevert(_notProvider(2, provider));
        manager.heartbeat(_ids(2), _noCids());
    }

    function test_RevertWhen_AnyLeaseInBatchIsOtherProviders() external {
        _ensureOtherProvider();
        uint256 own = _openLease();
        uint256 foreign = _open(_quote(otherProvider, tenant, OTHER_JOB), DEPOSIT, 0);
        vm.warp(T0 + 10);
        vm.prank(provider);
        vm.expectRevert(_notProvider(foreign, provider));
        manager.heartbeat(_ids(own, foreign), _noCids());
        assertEq(_lease(own).lastHeartbeat, T0, "the whole batch reverted");
    }

    function test_RevertWhen_CidTooLong() external {
        uint256 id = _openLease();
        vm.warp(T0 + 10);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_CidTooLong.selector, MAX_CID + 1, MAX_CID));
        manager.heartbeat(_ids(id), _cids(_stringOfLength(MAX_CID + 1)));
    }

    /*//////////////////////////////////////////////////////////////
                               ACTIVE LEASES
    //////////////////////////////////////////////////////////////*/

    function test_WhenNoLeases() external {
        vm.prank(keeper);
        manager.heartbeat(_noIds(), _noCids());
    }

    function test_GivenActive() external {
        uint256 id = _openLease();
        vm.warp(T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.HeartbeatRecorded(id, uint64(T0 + 10));
        _heartbeat(provider, id);

        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Active), "status");
        assertEq(l.lastHeartbeat, T0 + 10, "lastHeartbeat");
        assertEq(l.deadline, T0 + 10 + HEARTBEAT_TIMEOUT, "deadline moves");
        assertEq(l.earned, 10 * PRICE, "earned = covered seconds * price");
        assertEq(l.settledUntil, T0, "nothing settled");
        assertEq(l.deposit, DEPOSIT, "deposit untouched");
        assertEq(l.endsAt, T0 + FUNDED_SECONDS, "endsAt untouched");
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 0);
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 0);
    }

    function test_GivenActive_WhenCidGiven() external {
        uint256 id = _openLease();
        vm.warp(T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.HeartbeatRecorded(id, uint64(T0 + 10));
        vm.expectEmit(address(manager));
        emit ILeaseManager.CheckpointCommitted(id, CID);
        vm.prank(provider);
        manager.heartbeat(_ids(id), _cids(CID));
        assertEq(_lease(id).lastHeartbeat, T0 + 10, "lastHeartbeat");
    }

    function test_GivenActive_WhenCidAtMaxLength() external {
        uint256 id = _openLease();
        string memory cid = _stringOfLength(MAX_CID);
        vm.warp(T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.CheckpointCommitted(id, cid);
        vm.prank(provider);
        manager.heartbeat(_ids(id), _cids(cid));
    }

    function test_GivenActive_WhenCidEmpty() external {
        uint256 a = _openLease();
        uint256 b = _openLease();
        vm.warp(T0 + 10);
        vmx.recordLogs();
        vm.prank(provider);
        manager.heartbeat(_ids(a, b), _cids("", CID));
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        assertEq(_countLogs(logs, address(manager), HEARTBEAT_TOPIC), 2, "two heartbeats");
        assertEq(_countLogs(logs, address(manager), CHECKPOINT_TOPIC), 1, "one checkpoint, for the non-empty CID");
        assertEq(logs.length, 3, "nothing else");
    }

    function test_GivenActive_WhenBatch() external {
        uint256 a = _openLease();
        uint256 b = _openLease();
        vm.warp(T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.HeartbeatRecorded(a, uint64(T0 + 10));
        vm.expectEmit(address(manager));
        emit ILeaseManager.CheckpointCommitted(a, "cid-a");
        vm.expectEmit(address(manager));
        emit ILeaseManager.HeartbeatRecorded(b, uint64(T0 + 10));
        vm.expectEmit(address(manager));
        emit ILeaseManager.CheckpointCommitted(b, "cid-b");
        vm.prank(provider);
        manager.heartbeat(_ids(a, b), _cids("cid-a", "cid-b"));
        assertEq(_lease(a).lastHeartbeat, T0 + 10, "a");
        assertEq(_lease(b).lastHeartbeat, T0 + 10, "b");
    }

    function test_GivenActive_WhenLeaseTwiceInBatch() external {
        uint256 id = _openLease();
        vm.warp(T0 + 10);
        vm.prank(provider);
        manager.heartbeat(_ids(id, id), _noCids());
        assertEq(_lease(id).lastHeartbeat, T0 + 10, "lastHeartbeat");
        assertEq(_lease(id).earned, 10 * PRICE, "counted once");
    }

    function test_GivenActive_WhenSameSecondAsOpen() external {
        uint256 id = _openLease();
        _heartbeat(provider, id);
        assertEq(_lease(id).lastHeartbeat, T0, "lastHeartbeat");
        assertEq(_lease(id).earned, 0, "nothing earned");
    }

    function test_GivenActiveAtExactlyDeadline() external {
        uint256 id = _openLease();
        vm.warp(T0 + HEARTBEAT_TIMEOUT);
        vm.expectEmit(address(manager));
        emit ILeaseManager.HeartbeatRecorded(id, uint64(T0 + HEARTBEAT_TIMEOUT));
        _heartbeat(provider, id);
        assertEq(_lease(id).deadline, T0 + 2 * HEARTBEAT_TIMEOUT, "deadline");
        assertFalse(_lease(id).slashable, "not slashable");
    }

    function test_GivenActivePastDeadline() external {
        uint256 id = _openLease();
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        _assertSkipped(id);
        _assertStatus(id, Lease.Status.Active);
        assertTrue(_lease(id).slashable, "a late heartbeat does not rescue the provider");
    }

    function test_GivenActivePastDeadline_WhenBatchedWithLiveLease() external {
        uint256 dead = _openLease();
        vm.warp(T0 + 30);
        uint256 live = _openLease();
        vm.warp(T0 + 61);
        vm.prank(provider);
        manager.heartbeat(_ids(dead, live), _noCids());
        assertEq(_lease(dead).lastHeartbeat, T0, "dead lease skipped");
        assertEq(_lease(live).lastHeartbeat, T0 + 61, "live lease recorded");
    }

    function test_GivenActivePastDeadline_WhenCidGiven() external {
        // A skipped lease takes no checkpoint: its CID is neither emitted nor length-checked.
        uint256 id = _openLease();
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        vmx.recordLogs();
        vm.prank(provider);
        manager.heartbeat(_ids(id), _cids(_stringOfLength(MAX_CID + 1)));
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        assertEq(logs.length, 0, "no HeartbeatRecorded, no CheckpointCommitted");
        assertEq(_lease(id).lastHeartbeat, T0, "lastHeartbeat unchanged");
        assertTrue(_lease(id).slashable, "still slashable");
    }

    function test_GivenActivePastEndAndSlashable() external {
        uint256 id = _openLease();
        vm.warp(T0 + FUNDED_SECONDS + 100);
        _assertSkipped(id);
        _assertStatus(id, Lease.Status.Active);
        assertTrue(_lease(id).slashable, "still slashable");
    }

    function test_GivenActiveAtExactlyEnd() external {
        uint256 id = _openShortLease();
        uint256 endsAt = T0 + 30;
        vm.warp(endsAt);
        _expectSettled(id, 30 * PRICE, endsAt);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, 0);
        _expectReleased(id, false);
        _heartbeat(provider, id);

        _assertStatus(id, Lease.Status.Expired);
        assertEq(_lease(id).lastHeartbeat, T0, "no heartbeat recorded");
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT, 0, SHORT_DEPOSIT, SHORT_DEPOSIT);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 30);
        _assertConserved();
    }

    function test_GivenActiveAtExactlyEnd_WhenCidGiven() external {
        // The expired lease is settled, and its CID neither emitted nor length-checked.
        uint256 id = _openShortLease();
        vm.warp(T0 + 30);
        vmx.recordLogs();
        vm.prank(provider);
        manager.heartbeat(_ids(id), _cids(_stringOfLength(MAX_CID + 1)));
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        assertEq(_countLogs(logs, address(manager), CHECKPOINT_TOPIC), 0, "no CheckpointCommitted");
        assertEq(_countLogs(logs, address(manager), HEARTBEAT_TOPIC), 0, "no HeartbeatRecorded");
        _assertStatus(id, Lease.Status.Expired);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 30);
    }

    function test_GivenActivePastEndAndExpired() external {
        // Funded for 30.5 seconds: the half second is refunded as dust.
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), SHORT_DEPOSIT + PRICE / 2, 0);
        vm.warp(T0 + 45);
        _expectSettled(id, 30 * PRICE, T0 + 30);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, PRICE / 2);
        _expectReleased(id, false);
        vm.expectEmit(address(manager));
        emit ILeaseManager.Credited(tenant, PRICE / 2);
        _heartbeat(provider, id);

        _assertStatus(id, Lease.Status.Expired);
        // The provider's heartbeat credits the dust to the tenant; it never pushes it.
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT - PRICE / 2, 0, SHORT_DEPOSIT + PRICE / 2, SHORT_DEPOSIT);
        _assertCredit(PRICE / 2);
        _assertConserved();
    }

    /*//////////////////////////////////////////////////////////////
                              CLOSING LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenClosingBeforeDeadline() external {
        uint256 id = _closingLease(); // closed at T0 + 20: deadline T0 + 80
        assertEq(registry.getProvider(provider).locked, COLLATERAL, "collateral locked while closing");
        vm.warp(T0 + 30);
        vm.expectEmit(address(manager));
        emit ILeaseManager.HeartbeatRecorded(id, uint64(T0 + 30));
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseClosed(id);
        _expectReleased(id, false);
        _heartbeat(provider, id);

        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Closed), "status");
        assertEq(l.lastHeartbeat, T0 + 30, "lastHeartbeat");
        assertFalse(l.slashable, "not slashable");
        assertEq(l.earned, 0, "nothing more earned");
        // Money moved at the close: 10 seconds to the provider, the rest back to the tenant.
        _assertPayments(TENANT_FUNDS - 10 * PRICE, 0, 10 * PRICE, 10 * PRICE);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 10);
        assertEq(registry.freeStake(provider), PROVIDER_STAKE, "collateral free again");
        _assertConserved();
    }

    function test_GivenClosingAtExactlyDeadline() external {
        uint256 id = _closingLease();
        vm.warp(T0 + 20 + HEARTBEAT_TIMEOUT);
        _heartbeat(provider, id);
        _assertStatus(id, Lease.Status.Closed);
        assertEq(registry.getProvider(provider).locked, 0, "released");
    }

    function test_GivenClosingAfterEndBeforeDeadline() external {
        // Funded for 30 seconds, heartbeat at 10 (deadline 70), closed at 20, acknowledged at 50.
        uint256 id = _openShortLease();
        _heartbeatAt(id, T0 + 10);
        _closeAt(id, T0 + 20);
        vm.warp(T0 + 50);
        _heartbeat(provider, id);
        _assertStatus(id, Lease.Status.Closed);
    }

    /// @dev Issue #11 point 4: the close (T0+20) gives the provider a whole timeout; past its last
    /// heartbeat plus the timeout (T0+70), which used to be its deadline, it can still acknowledge.
    function test_GivenClosingPastLastHeartbeatPlusTimeout() external {
        uint256 id = _closingLease();
        vm.warp(T0 + 10 + HEARTBEAT_TIMEOUT + 1);
        assertFalse(_lease(id).slashable, "not slashable");
        _heartbeat(provider, id);
        _assertStatus(id, Lease.Status.Closed);
        assertEq(registry.getProvider(provider).locked, 0, "released");
    }

    function test_GivenClosingPastDeadline() external {
        uint256 id = _closingLease();
        vm.warp(T0 + 20 + HEARTBEAT_TIMEOUT + 1);
        _assertSkipped(id);
        _assertStatus(id, Lease.Status.Closing);
        assertTrue(_lease(id).slashable, "slashable");
        assertEq(registry.getProvider(provider).locked, COLLATERAL, "still locked");
    }

    function test_GivenClosing_WhenCidGiven() external {
        // A closing lease takes no checkpoint: its CID is neither emitted nor length-checked.
        uint256 id = _closingLease();
        vm.warp(T0 + 30);
        vmx.recordLogs();
        vm.prank(provider);
        manager.heartbeat(_ids(id), _cids(_stringOfLength(MAX_CID + 1)));
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        assertEq(_countLogs(logs, address(manager), CHECKPOINT_TOPIC), 0, "no CheckpointCommitted");
        _assertStatus(id, Lease.Status.Closed);
    }

    /*//////////////////////////////////////////////////////////////
                               ENDED LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenCompleted() external {
        uint256 id = _completedLease();
        vm.warp(T0 + 25);
        _assertSkipped(id);
        _assertStatus(id, Lease.Status.Completed);
    }

    function test_GivenClosed() external {
        uint256 id = _closedLease();
        vm.warp(T0 + 35);
        _assertSkipped(id);
        _assertStatus(id, Lease.Status.Closed);
    }

    function test_GivenExpired() external {
        uint256 id = _expiredLease();
        vm.warp(T0 + 45);
        _assertSkipped(id);
        _assertStatus(id, Lease.Status.Expired);
        assertEq(manager.claimable(provider), SHORT_DEPOSIT, "not settled twice");
    }

    function test_GivenSlashed() external {
        uint256 id = _slashedLease();
        vm.warp(T0 + 75);
        _assertSkipped(id);
        _assertStatus(id, Lease.Status.Slashed);
    }

    function test_GivenEnded_WhenCidGiven() external {
        // An ended lease takes no checkpoint either: its CID is neither emitted nor length-checked.
        uint256 id = _completedLease();
        vm.warp(T0 + 25);
        vmx.recordLogs();
        vm.prank(provider);
        manager.heartbeat(_ids(id), _cids(_stringOfLength(MAX_CID + 1)));
        assertEq(vmx.getRecordedLogs().length, 0, "nothing emitted");
        _assertStatus(id, Lease.Status.Completed);
    }

    /*//////////////////////////////////////////////////////////////
                                   FUZZ
    //////////////////////////////////////////////////////////////*/

    /// @dev A heartbeat is taken iff it comes before the lease's end and no later than its deadline;
    /// otherwise an expired lease is settled and a slashable one left alone.
    function testFuzz_Heartbeat(uint256 timeout, uint256 funded, uint256 delay) external {
        timeout = bound(timeout, MIN_HEARTBEAT_TIMEOUT, MAX_HEARTBEAT_TIMEOUT);
        funded = bound(funded, 1, MAX_DURATION);
        delay = bound(delay, 0, 2 * MAX_HEARTBEAT_TIMEOUT);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = uint64(timeout);
        q.heartbeatPeriod = 1;
        // Longer than any timeout (as a quote must be): the deposit alone sets the end, which a
        // timeout may outlast.
        q.maxDuration = MAX_HEARTBEAT_TIMEOUT + 1;
        uint256 id = _open(q, funded * PRICE, 0);
        uint256 endsAt = T0 + funded;
        uint256 deadline = T0 + timeout;

        vm.warp(T0 + delay);
        _heartbeat(provider, id);

        Lease.View memory l = _lease(id);
        if (T0 + delay < endsAt && T0 + delay <= deadline) {
            assertEq(uint256(l.status), uint256(Lease.Status.Active), "active");
            assertEq(l.lastHeartbeat, T0 + delay, "recorded");
            assertEq(l.earned, delay * PRICE, "earned");
        } else if (deadline >= endsAt) {
            assertEq(uint256(l.status), uint256(Lease.Status.Expired), "expired and settled");
            assertEq(manager.claimable(provider), funded * PRICE, "paid to the end");
        } else {
            assertEq(uint256(l.status), uint256(Lease.Status.Active), "left alone");
            assertEq(l.lastHeartbeat, T0, "not recorded");
            assertTrue(l.slashable, "slashable");
        }
        _assertConserved();
    }

    /// @dev Heartbeats at random gaps within the timeout keep a lease alive; earnings follow the
    /// last heartbeat.
    function testFuzz_HeartbeatChain(uint256 seed) external {
        uint256 id = _openLease();
        uint256 t = T0;
        for (uint256 i = 0; i < 8; ++i) {
            uint256 gap = bound(uint256(keccak256(abi.encode(seed, i))), 0, HEARTBEAT_TIMEOUT);
            if (t + gap >= T0 + FUNDED_SECONDS) break;
            t += gap;
            _heartbeatAt(id, t);
            assertEq(_lease(id).lastHeartbeat, t, "recorded");
            assertEq(_lease(id).earned, (t - T0) * PRICE, "earned");
            assertFalse(_lease(id).slashable, "alive");
        }
    }
}
