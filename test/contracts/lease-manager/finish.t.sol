// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest, VmExt} from "./LeaseManagerTest.sol";

contract Finish_Test is LeaseManagerTest {
    function _expectFinishRevert(uint256 id, bytes memory revertData) internal {
        vm.prank(provider);
        vm.expectRevert(revertData);
        manager.finish(id, CID);
    }

    function _expectNotActive(uint256 id, Lease.Status status) internal {
        _expectFinishRevert(id, _err(ILeaseManager.LeaseManager_LeaseNotActive.selector, id, status));
    }

    /*//////////////////////////////////////////////////////////////
                                 REVERTS
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_CallerIsTenant() external {
        uint256 id = _openLease();
        vm.prank(tenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotProvider.selector, id, tenant));
        manager.finish(id, CID);
    }

    function test_RevertWhen_CallerIsOtherProvider() external {
        uint256 id = _openLease();
        vm.prank(otherProvider);
        vm.expectRevert(
            abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotProvider.selector, id, otherProvider)
        );
        manager.finish(id, CID);
    }

    function test_RevertWhen_LeaseDoesNotExist() external {
        _openLease();
        _expectFinishRevert(9, abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotProvider.selector, 9, provider));
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
        _expectFinishRevert(id, abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseSlashable.selector, id, T0 + 70));
    }

    function test_RevertGiven_SlashablePastEnd() external {
        uint256 id = _openLease();
        vm.warp(T0 + FUNDED_SECONDS + 1);
        _expectFinishRevert(
            id,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseSlashable.selector, id, T0 + HEARTBEAT_TIMEOUT)
        );
    }

    function test_RevertWhen_ResultCidTooLong() external {
        uint256 id = _openLease();
        string memory cid = _stringOfLength(MAX_CID + 1);
        vm.warp(T0 + 10);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_CidTooLong.selector, MAX_CID + 1, MAX_CID));
        manager.finish(id, cid);
    }

    /*//////////////////////////////////////////////////////////////
                              ACTIVE LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenActive() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 10);
        vm.warp(T0 + 40);
        uint256 refund = DEPOSIT - 40 * PRICE;
        _expectSettled(id, 40 * PRICE, T0 + 40);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseCompleted(id, CID, refund);
        _expectReleased(id, true);
        vm.expectEmit(address(manager));
        emit ILeaseManager.Credited(tenant, refund);
        vm.prank(provider);
        manager.finish(id, CID);

        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Completed), "status");
        assertEq(l.lastHeartbeat, T0 + 40, "finishing proves the provider alive to now");
        assertEq(l.settledUntil, T0 + 40, "settledUntil");
        assertEq(l.deposit, 0, "deposit emptied");
        assertEq(l.earned, 0, "earned");
        assertFalse(l.slashable, "slashable");
        // The provider's call credits the tenant's refund (pull): a tenant that refuses tokens
        // cannot make the finish revert.
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 40 * PRICE);
        _assertCredit(refund);
        _assertProvider(PROVIDER_STAKE, 0, 1, 1, 0, 40);
        assertEq(registry.freeStake(provider), PROVIDER_STAKE, "collateral free");
        _assertConserved();
    }

    function test_GivenActiveAtExactlyDeadline() external {
        uint256 id = _openLease();
        _finishAt(id, T0 + HEARTBEAT_TIMEOUT);
        _assertStatus(id, Lease.Status.Completed);
        assertEq(manager.claimable(provider), HEARTBEAT_TIMEOUT * PRICE, "paid to now");
    }

    function test_GivenActiveSameSecondAsOpen() external {
        uint256 id = _openLease();
        vmx.recordLogs();
        vm.prank(provider);
        manager.finish(id, CID);
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        // LeaseCompleted, CollateralReleased and the refund's Credited; nothing earned.
        assertEq(logs.length, 3, "no EarningsSettled");
        _assertStatus(id, Lease.Status.Completed);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 0);
        _assertCredit(DEPOSIT);
        _assertProvider(PROVIDER_STAKE, 0, 1, 1, 0, 0);
    }

    function test_GivenActiveAfterClaim() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 50);
        _claim(provider, _ids(id));
        vm.warp(T0 + 80);
        _expectSettled(id, 30 * PRICE, T0 + 80);
        vm.prank(provider);
        manager.finish(id, CID);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 50 * PRICE, DEPOSIT - 50 * PRICE, 30 * PRICE);
        _assertCredit(DEPOSIT - 80 * PRICE);
        _assertProvider(PROVIDER_STAKE, 0, 1, 1, 0, 80);
        _assertConserved();
    }

    function test_GivenActiveAtExactlyEnd() external {
        uint256 id = _openShortLease();
        _finishAt(id, T0 + 30);
        _assertStatus(id, Lease.Status.Completed);
        assertEq(manager.claimable(provider), SHORT_DEPOSIT, "paid to the end");
    }

    function test_GivenActiveExpired() external {
        uint256 id = _openShortLease();
        vm.warp(T0 + 45);
        _expectSettled(id, SHORT_DEPOSIT, T0 + 30);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseCompleted(id, CID, 0);
        _expectReleased(id, true);
        vm.prank(provider);
        manager.finish(id, CID);

        _assertStatus(id, Lease.Status.Completed);
        assertEq(_lease(id).lastHeartbeat, T0 + 30, "capped at the end");
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT, 0, SHORT_DEPOSIT, SHORT_DEPOSIT);
        _assertProvider(PROVIDER_STAKE, 0, 1, 1, 0, 30);
        _assertConserved();
    }

    function test_WhenResultCidEmpty() external {
        uint256 id = _openLease();
        vm.warp(T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseCompleted(id, "", DEPOSIT - 10 * PRICE);
        vm.prank(provider);
        manager.finish(id, "");
    }

    function test_WhenResultCidAtMaxLength() external {
        uint256 id = _openLease();
        string memory cid = _stringOfLength(MAX_CID);
        vm.warp(T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseCompleted(id, cid, DEPOSIT - 10 * PRICE);
        vm.prank(provider);
        manager.finish(id, cid);
    }

    /*//////////////////////////////////////////////////////////////
                                   FUZZ
    //////////////////////////////////////////////////////////////*/

    /// @dev A finish pays the provider to now (or the lease's end) and refunds the tenant the rest.
    function testFuzz_Finish(uint256 price, uint256 deposit, uint256 beat, uint256 finishAt) external {
        price = bound(price, 1, 1e24);
        deposit = bound(deposit, price, price * MAX_DURATION);
        uint256 endsAt = T0 + deposit / price;
        beat = bound(beat, T0, endsAt - 1);
        finishAt = bound(finishAt, beat, beat + HEARTBEAT_TIMEOUT);
        paymentToken.mint(tenant, deposit);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = price;
        uint256 id = _open(q, deposit, 0);
        // Keep it alive up to `beat`.
        for (uint256 t = T0 + HEARTBEAT_TIMEOUT; t < beat; t += HEARTBEAT_TIMEOUT) _heartbeatAt(id, t);
        _heartbeatAt(id, beat);

        _finishAt(id, finishAt);

        uint256 paidUntil = finishAt < endsAt ? finishAt : endsAt;
        uint256 earned = (paidUntil - T0) * price;
        assertEq(manager.claimable(provider), earned, "earned = served seconds * price");
        assertEq(paymentToken.balanceOf(tenant), TENANT_FUNDS, "nothing pushed to the tenant");
        assertEq(manager.creditOf(tenant), deposit - earned, "the rest credited to the tenant");
        _assertStatus(id, Lease.Status.Completed);
        _assertProvider(PROVIDER_STAKE, 0, 1, 1, 0, paidUntil - T0);
        _assertConserved();
    }
}
