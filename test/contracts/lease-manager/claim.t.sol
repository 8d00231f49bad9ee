// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest, VmExt} from "./LeaseManagerTest.sol";

contract Claim_Test is LeaseManagerTest {
    function _notProvider(uint256 id, address caller) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotProvider.selector, id, caller);
    }

    /// @dev Opens the default lease and heartbeats it at T0+50 and T0+100.
    function _leaseServed100() internal returns (uint256 id) {
        id = _openLease();
        _heartbeatAt(id, T0 + 50);
        _heartbeatAt(id, T0 + 100);
    }

    /*//////////////////////////////////////////////////////////////
                                 REVERTS
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_CallerIsTenant() external {
        uint256 id = _leaseServed100();
        vm.prank(tenant);
        vm.expectRevert(_notProvider(id, tenant));
        manager.claim(_ids(id));
    }

    function test_RevertWhen_CallerIsOtherProvider() external {
        uint256 id = _leaseServed100();
        vm.prank(otherProvider);
        vm.expectRevert(_notProvider(id, otherProvider));
        manager.claim(_ids(id));
    }

    function test_RevertWhen_LeaseDoesNotExist() external {
        _leaseServed100();
        vm.prank(provider);
        vm.expectRevert(_notProvider(9, provider));
        manager.claim(_ids(9));
    }

    function test_RevertWhen_AnyLeaseInBatchIsOtherProviders() external {
        _ensureOtherProvider();
        uint256 own = _openLease();
        uint256 foreign = _open(_quote(otherProvider, tenant, OTHER_JOB), DEPOSIT, 0);
        _heartbeatAt(own, T0 + 10);
        vm.prank(provider);
        vm.expectRevert(_notProvider(foreign, provider));
        manager.claim(_ids(own, foreign));
        assertEq(_lease(own).settledUntil, T0, "the whole batch reverted");
    }

    /*//////////////////////////////////////////////////////////////
                               EMPTY BATCH
    //////////////////////////////////////////////////////////////*/

    function test_WhenNoLeases_GivenNothingClaimable() external {
        vm.expectEmit(address(manager));
        emit ILeaseManager.EarningsClaimed(keeper, 0);
        vmx.recordLogs();
        uint256 amount = _claim(keeper, _noIds());
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        assertEq(amount, 0, "amount");
        assertEq(logs.length, 1, "only EarningsClaimed, no transfer");
        assertEq(manager.secondsServed(keeper), 0, "no service counted");
    }

    function test_WhenNoLeases_GivenClaimableBalance() external {
        _closingLease(); // credits 10 seconds to the provider
        assertEq(manager.claimable(provider), 10 * PRICE, "claimable before");
        vm.expectEmit(address(manager));
        emit ILeaseManager.EarningsClaimed(provider, 10 * PRICE);
        _expectPayTransfer(address(manager), provider, 10 * PRICE);
        uint256 amount = _claim(provider, _noIds());
        assertEq(amount, 10 * PRICE, "amount");
        _assertPayments(TENANT_FUNDS - 10 * PRICE, 10 * PRICE, 0, 0);
        // The seconds served share the balance's slot: emptying the balance keeps them.
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 10);
        _assertConserved();
    }

    /*//////////////////////////////////////////////////////////////
                              ACTIVE LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenActive() external {
        uint256 id = _leaseServed100();
        vm.warp(T0 + 120);
        _expectSettled(id, 100 * PRICE, T0 + 100);
        vm.expectEmit(address(manager));
        emit ILeaseManager.EarningsClaimed(provider, 100 * PRICE);
        _expectPayTransfer(address(manager), provider, 100 * PRICE);
        uint256 amount = _claim(provider, _ids(id));

        assertEq(amount, 100 * PRICE, "amount");
        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Active), "still active");
        assertEq(l.settledUntil, T0 + 100, "settledUntil");
        assertEq(l.deposit, DEPOSIT - 100 * PRICE, "deposit");
        assertEq(l.endsAt, T0 + FUNDED_SECONDS, "endsAt unchanged");
        assertEq(l.earned, 0, "nothing left to settle");
        _assertPayments(TENANT_FUNDS - DEPOSIT, 100 * PRICE, DEPOSIT - 100 * PRICE, 0);
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 100);
        _assertConserved();
    }

    function test_GivenActiveWithoutHeartbeat() external {
        uint256 id = _openLease();
        vm.warp(T0 + 30);
        vmx.recordLogs();
        uint256 amount = _claim(provider, _ids(id));
        VmExt.Log[] memory logs = vmx.getRecordedLogs();
        assertEq(amount, 0, "amount");
        assertEq(logs.length, 1, "only EarningsClaimed");
        assertEq(_lease(id).settledUntil, T0, "nothing settled");
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 0);
    }

    function test_GivenActiveClaimedTwice() external {
        uint256 id = _leaseServed100();
        _claim(provider, _ids(id));
        assertEq(_claim(provider, _ids(id)), 0, "nothing new");
        _heartbeatAt(id, T0 + 140);
        _expectSettled(id, 40 * PRICE, T0 + 140);
        assertEq(_claim(provider, _ids(id)), 40 * PRICE, "only the new heartbeat-covered time");
        assertEq(paymentToken.balanceOf(provider), 140 * PRICE, "provider paid in total");
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 140);
        _assertConserved();
    }

    function test_GivenActiveSlashable() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 10);
        vm.warp(T0 + 100);
        assertTrue(_lease(id).slashable, "slashable");
        assertEq(_claim(provider, _ids(id)), 10 * PRICE, "paid to the last heartbeat");
        _assertStatus(id, Lease.Status.Active);

        // The keeper's slash then credits the tenant the whole rest and pays the provider nothing more.
        _slashAt(id, T0 + 100);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 10 * PRICE, DEPOSIT - 10 * PRICE, 0);
        _assertCredit(DEPOSIT - 10 * PRICE);
        _assertConserved();
    }

    function test_GivenActiveExpired() external {
        uint256 id = _openShortLease();
        vm.warp(T0 + 40);
        _expectSettled(id, SHORT_DEPOSIT, T0 + 30);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(id, 0);
        _expectReleased(id, false);
        vm.expectEmit(address(manager));
        emit ILeaseManager.EarningsClaimed(provider, SHORT_DEPOSIT);
        _expectPayTransfer(address(manager), provider, SHORT_DEPOSIT);
        uint256 amount = _claim(provider, _ids(id));

        assertEq(amount, SHORT_DEPOSIT, "paid to the end");
        _assertStatus(id, Lease.Status.Expired);
        _assertPayments(TENANT_FUNDS - SHORT_DEPOSIT, SHORT_DEPOSIT, 0, 0);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 30); // counted once, by the settlement
        _assertConserved();
    }

    function test_GivenActiveExpiredAfterPartialClaim() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = 120;
        uint256 id = _open(q, DEPOSIT, 0);
        _heartbeatAt(id, T0 + 100);
        _claim(provider, _ids(id));
        // Keep it alive to within a timeout of its end, then let it expire.
        for (uint256 t = T0 + 200; t <= T0 + 500; t += 100) _heartbeatAt(id, t);
        vm.warp(T0 + 700);
        assertEq(_claim(provider, _ids(id)), (FUNDED_SECONDS - 100) * PRICE, "the rest of the lease");
        _assertStatus(id, Lease.Status.Expired);
        _assertPayments(TENANT_FUNDS - DEPOSIT, DEPOSIT, 0, 0);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, FUNDED_SECONDS);
    }

    /*//////////////////////////////////////////////////////////////
                               ENDED LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenClosing() external {
        uint256 id = _closingLease();
        assertEq(_claim(provider, _ids(id)), 10 * PRICE, "what the close credited");
        _assertStatus(id, Lease.Status.Closing);
        _assertConserved();
    }

    function test_GivenClosed() external {
        uint256 id = _closedLease();
        assertEq(_claim(provider, _ids(id)), 10 * PRICE, "what the close credited");
        _assertStatus(id, Lease.Status.Closed);
    }

    function test_GivenCompleted() external {
        uint256 id = _completedLease();
        assertEq(_claim(provider, _ids(id)), 20 * PRICE, "what the finish credited");
        _assertStatus(id, Lease.Status.Completed);
        _assertProvider(PROVIDER_STAKE, 0, 1, 1, 0, 20);
    }

    function test_GivenExpired() external {
        uint256 id = _expiredLease();
        assertEq(_claim(provider, _ids(id)), SHORT_DEPOSIT, "what the settlement credited");
        assertEq(_claim(provider, _ids(id)), 0, "once");
    }

    function test_GivenSlashed() external {
        uint256 id = _slashedLease();
        assertEq(_claim(provider, _ids(id)), 10 * PRICE, "paid to the last heartbeat");
        _assertStatus(id, Lease.Status.Slashed);
    }

    /*//////////////////////////////////////////////////////////////
                                 BATCHES
    //////////////////////////////////////////////////////////////*/

    function test_WhenBatch() external {
        uint256 a = _leaseServed100(); // opened at T0, alive to T0+100
        vm.warp(T0 + 100);
        uint256 b = _openShortLease(); // opened at T0+100, ends at T0+130
        vm.warp(T0 + 140);
        vm.expectEmit(address(manager));
        emit ILeaseManager.EarningsClaimed(provider, 100 * PRICE + SHORT_DEPOSIT);
        uint256 amount = _claim(provider, _ids(a, b));
        assertEq(amount, 100 * PRICE + SHORT_DEPOSIT, "both leases");
        _assertStatus(a, Lease.Status.Active);
        _assertStatus(b, Lease.Status.Expired);
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 2, 0, 0, 130);
        _assertConserved();
    }

    function test_WhenLeaseTwiceInBatch() external {
        uint256 id = _leaseServed100();
        assertEq(_claim(provider, _ids(id, id)), 100 * PRICE, "settled once");
        assertEq(_lease(id).deposit, DEPOSIT - 100 * PRICE, "deposit");
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 100);
    }

    /*//////////////////////////////////////////////////////////////
                                   FUZZ
    //////////////////////////////////////////////////////////////*/

    /// @dev Random heartbeats and claims: the provider is paid exactly the heartbeat-covered seconds
    /// at the lease's price, and the escrow always holds what it owes.
    function testFuzz_Claim(uint256 seed, uint256 price) external {
        price = bound(price, 1, 1e24);
        uint256 deposit = price * FUNDED_SECONDS;
        paymentToken.mint(tenant, deposit);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = price;
        uint256 id = _open(q, deposit, 0);

        uint256 t = T0;
        uint256 claimed;
        for (uint256 i = 0; i < 12; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            uint256 gap = bound(r, 1, HEARTBEAT_TIMEOUT);
            if (t + gap >= T0 + FUNDED_SECONDS) break;
            t += gap;
            _heartbeatAt(id, t);
            if ((r >> 128) % 3 == 0) {
                claimed += _claim(provider, _ids(id));
                assertEq(claimed, (t - T0) * price, "claimed = covered seconds * price");
                assertEq(_lease(id).settledUntil, t, "settledUntil");
            }
            _assertConserved();
        }
        claimed += _claim(provider, _ids(id));
        assertEq(claimed, (t - T0) * price, "claimed = covered seconds * price");
        assertEq(paymentToken.balanceOf(provider), claimed, "provider balance");
        assertEq(registry.getProvider(provider).secondsServed, t - T0, "secondsServed (registry view)");
        assertEq(manager.secondsServed(provider), t - T0, "secondsServed (manager)");
        assertEq(_lease(id).endsAt, T0 + FUNDED_SECONDS, "claims never move the end");

        // Ending the lease: provider and tenant share exactly the deposit.
        _finishAt(id, t + 1);
        claimed += _claim(provider, _noIds());
        // The finish credits the tenant its refund, to withdraw.
        assertEq(
            claimed + paymentToken.balanceOf(tenant) + manager.creditOf(tenant),
            TENANT_FUNDS + deposit,
            "deposit conserved"
        );
        assertEq(claimed, (t + 1 - T0) * price, "paid to the finish");
        assertEq(manager.secondsServed(provider), t + 1 - T0, "served to the finish");
        _assertConserved();
    }
}
