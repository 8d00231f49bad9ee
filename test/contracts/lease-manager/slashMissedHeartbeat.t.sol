// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest} from "./LeaseManagerTest.sol";

contract SlashMissedHeartbeat_Test is LeaseManagerTest {
    uint256 internal constant TENANT_CUT = (COLLATERAL * TENANT_SHARE_BPS) / 10_000; // 25e18
    uint256 internal constant CALLER_CUT = (COLLATERAL * CALLER_SHARE_BPS) / 10_000; // 5e18
    uint256 internal constant TREASURY_CUT = COLLATERAL - TENANT_CUT - CALLER_CUT; // 20e18

    function _expectSlashRevert(uint256 id, bytes memory revertData) internal {
        vm.prank(keeper);
        vm.expectRevert(revertData);
        manager.slashMissedHeartbeat(id);
    }

    function _expectNotActive(uint256 id, Lease.Status status) internal {
        _expectSlashRevert(id, _err(ILeaseManager.LeaseManager_LeaseNotActive.selector, id, status));
    }

    function _expectNotMissed(uint256 id, uint256 deadline) internal {
        _expectSlashRevert(
            id,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_HeartbeatNotMissed.selector, id, deadline)
        );
    }

    /// @dev After a keeper's slash: the keeper is paid its reward at once, the tenant's compensation
    /// and the treasury's share are credited in the registry (no transfer to either).
    function _assertStakePayout(uint256 tenantAmount, uint256 keeperAmount, uint256 treasuryAmount) internal view {
        assertEq(registry.creditOf(tenant), tenantAmount, "tenant compensation credited");
        assertEq(stakingToken.balanceOf(tenant), 0, "nothing pushed to the tenant");
        assertEq(stakingToken.balanceOf(keeper), keeperAmount, "caller reward paid");
        assertEq(registry.creditOf(TREASURY), treasuryAmount, "treasury share credited");
        assertEq(stakingToken.balanceOf(TREASURY), 0, "nothing pushed to the treasury");
    }

    /*//////////////////////////////////////////////////////////////
                                 REVERTS
    //////////////////////////////////////////////////////////////*/

    function test_RevertGiven_LeaseDoesNotExist() external {
        _openLease();
        vm.warp(T0 + 1000);
        _expectNotActive(9, Lease.Status.None);
    }

    function test_RevertGiven_Completed() external {
        uint256 id = _completedLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Completed);
    }

    function test_RevertGiven_Closed() external {
        uint256 id = _closedLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Closed);
    }

    function test_RevertGiven_Expired() external {
        uint256 id = _expiredLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Expired);
    }

    function test_RevertGiven_AlreadySlashed() external {
        uint256 id = _slashedLease();
        vm.warp(T0 + 1000);
        _expectNotActive(id, Lease.Status.Slashed);
    }

    function test_RevertGiven_ActiveBeforeDeadline() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 10);
        vm.warp(T0 + 69);
        _expectNotMissed(id, T0 + 70);
    }

    function test_RevertGiven_ActiveAtExactlyDeadline() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 10);
        vm.warp(T0 + 70);
        _expectNotMissed(id, T0 + 70);
    }

    function test_RevertGiven_ActiveExpiredBeforeDeadline() external {
        // Funded for 30 seconds, deadline at 60: it ran out without the provider ever defaulting.
        uint256 id = _openShortLease();
        vm.warp(T0 + 100);
        _expectNotMissed(id, T0 + HEARTBEAT_TIMEOUT);
    }

    function test_RevertGiven_ActiveDeadlineAtExactlyEnd() external {
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), PRICE * HEARTBEAT_TIMEOUT, 0);
        assertEq(_lease(id).endsAt, _lease(id).deadline, "deadline == endsAt");
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        _expectNotMissed(id, T0 + HEARTBEAT_TIMEOUT);
    }

    /// @dev A closing lease's deadline is a whole timeout after the close (T0+20), not after the
    /// last heartbeat (T0+10).
    function test_RevertGiven_ClosingBeforeDeadline() external {
        uint256 id = _closingLease();
        vm.warp(T0 + 79);
        _expectNotMissed(id, T0 + 80);
    }

    function test_RevertGiven_ClosingAtExactlyDeadline() external {
        uint256 id = _closingLease();
        vm.warp(T0 + 80);
        _expectNotMissed(id, T0 + 80);
    }

    /// @dev Issue #11 point 4: past the old deadline (last heartbeat + timeout) a closing lease is
    /// not slashable; the close gave the provider a timeout of its own.
    function test_RevertGiven_ClosingPastLastHeartbeatPlusTimeout() external {
        uint256 id = _closingLease();
        vm.warp(T0 + 71);
        _expectNotMissed(id, T0 + 80);
    }

    /*//////////////////////////////////////////////////////////////
                              ACTIVE LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenActiveMissedDeadline() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 10);
        vm.warp(T0 + 71);
        uint256 refund = DEPOSIT - 10 * PRICE;

        _expectSettled(id, 10 * PRICE, T0 + 10);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(id, keeper, refund, TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralSlashed(provider, id, COLLATERAL, TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.Credited(tenant, TENANT_CUT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.Credited(TREASURY, TREASURY_CUT);
        _expectStakeTransfer(address(registry), keeper, CALLER_CUT);
        vm.expectEmit(address(manager));
        emit ILeaseManager.Credited(tenant, refund);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);

        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Slashed), "status");
        assertEq(l.deposit, 0, "deposit emptied");
        assertEq(l.settledUntil, T0 + 10, "paid to the last heartbeat");
        assertFalse(l.slashable, "not slashable twice");
        assertEq(l.earned, 0, "earned");
        // A keeper's call credits the tenant's refund and compensation; nothing is pushed to it.
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 10 * PRICE);
        _assertCredit(refund);
        assertEq(paymentToken.balanceOf(keeper), 0, "keeper gets no payment tokens");
        _assertStakePayout(TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        assertEq(stakingToken.balanceOf(address(registry)), PROVIDER_STAKE - CALLER_CUT, "registry");
        _assertProvider(PROVIDER_STAKE - COLLATERAL, 0, 1, 0, 1, 10);
        _assertConserved();
    }

    function test_GivenActiveNeverHeartbeated() external {
        uint256 id = _openLease();
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(id, keeper, DEPOSIT, TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 0);
        _assertCredit(DEPOSIT);
        _assertStakePayout(TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        _assertProvider(PROVIDER_STAKE - COLLATERAL, 0, 1, 0, 1, 0);
    }

    function test_GivenActiveMissedDeadlinePastEnd() external {
        uint256 id = _openLease();
        for (uint256 t = T0 + 50; t <= T0 + 500; t += 50) _heartbeatAt(id, t);
        // Deadline T0+560 fell before the end at T0+600: slashable even long after the end.
        vm.warp(T0 + 5000);
        assertFalse(_lease(id).expired, "not expired");
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);
        _assertStatus(id, Lease.Status.Slashed);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 500 * PRICE);
        _assertCredit(DEPOSIT - 500 * PRICE);
    }

    function test_GivenActiveEndedByMaxDurationWithoutHeartbeat() external {
        // The max duration must outlast the timeout, so a lease it ends is never paid without a
        // heartbeat: the first deadline falls before the end.
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.maxDuration = HEARTBEAT_TIMEOUT + 1;
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).endsAt, T0 + HEARTBEAT_TIMEOUT + 1, "ends at maxEnd");
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        assertFalse(_lease(id).expired, "not expired");
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(id, keeper, DEPOSIT, TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 0);
        _assertCredit(DEPOSIT);
        _assertProvider(PROVIDER_STAKE - COLLATERAL, 0, 1, 0, 1, 0);
        _assertConserved();
    }

    function test_GivenActiveAfterClaim() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 10);
        _claim(provider, _ids(id));
        vm.warp(T0 + 71);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(id, keeper, DEPOSIT - 10 * PRICE, TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);
        _assertPayments(TENANT_FUNDS - DEPOSIT, 10 * PRICE, DEPOSIT - 10 * PRICE, 0);
        _assertCredit(DEPOSIT - 10 * PRICE);
        _assertProvider(PROVIDER_STAKE - COLLATERAL, 0, 1, 0, 1, 10);
        _assertConserved();
    }

    /*//////////////////////////////////////////////////////////////
                              CLOSING LEASES
    //////////////////////////////////////////////////////////////*/

    function test_GivenClosingMissedDeadline() external {
        uint256 id = _closingLease();
        vm.warp(T0 + 81);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(id, keeper, 0, TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralSlashed(provider, id, COLLATERAL, TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);

        _assertStatus(id, Lease.Status.Slashed);
        // The money moved at the close (refunded at once: the tenant closed); nothing more now.
        _assertPayments(TENANT_FUNDS - 10 * PRICE, 0, 10 * PRICE, 10 * PRICE);
        _assertCredit(0);
        _assertStakePayout(TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        _assertProvider(PROVIDER_STAKE - COLLATERAL, 0, 1, 0, 1, 10);
        _assertConserved();
    }

    function test_GivenClosingWhoseLeaseWouldHaveExpired() external {
        // Funded for 30 s (deadline 60 would have let it expire unslashed), but closed at 10 and
        // never acknowledged: the close sets a binding deadline, a timeout after the close.
        uint256 id = _openShortLease();
        _closeAt(id, T0 + 10);
        vm.warp(T0 + 10 + HEARTBEAT_TIMEOUT + 1);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);
        _assertStatus(id, Lease.Status.Slashed);
        _assertStakePayout(TENANT_CUT, CALLER_CUT, TREASURY_CUT);
    }

    /*//////////////////////////////////////////////////////////////
                                 CALLERS
    //////////////////////////////////////////////////////////////*/

    function test_WhenCallerIsTenant() external {
        uint256 id = _openLease();
        vm.warp(T0 + 61);
        vm.prank(tenant);
        manager.slashMissedHeartbeat(id);
        // In its own call the tenant is paid at once: compensation, reward and refund.
        assertEq(stakingToken.balanceOf(tenant), TENANT_CUT + CALLER_CUT, "compensation and reward");
        assertEq(registry.creditOf(tenant), 0, "nothing credited to the tenant");
        assertEq(paymentToken.balanceOf(tenant), TENANT_FUNDS, "deposit refunded at once");
        _assertCredit(0);
        assertEq(registry.creditOf(TREASURY), TREASURY_CUT, "treasury credited");
        _assertConserved();
    }

    function test_WhenCallerIsProvider() external {
        uint256 id = _openLease();
        vm.warp(T0 + 61);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(id, provider, DEPOSIT, TENANT_CUT, 0, CALLER_CUT + TREASURY_CUT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralSlashed(provider, id, COLLATERAL, TENANT_CUT, 0, CALLER_CUT + TREASURY_CUT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.Credited(tenant, TENANT_CUT);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.Credited(TREASURY, CALLER_CUT + TREASURY_CUT);
        vm.expectEmit(address(manager));
        emit ILeaseManager.Credited(tenant, DEPOSIT);
        vm.prank(provider);
        manager.slashMissedHeartbeat(id);
        assertEq(stakingToken.balanceOf(provider), 0, "no reward for slashing itself");
        assertEq(registry.creditOf(tenant), TENANT_CUT, "tenant compensation unchanged (credited)");
        assertEq(registry.creditOf(TREASURY), CALLER_CUT + TREASURY_CUT, "the reward goes to the treasury");
        _assertCredit(DEPOSIT);
        _assertProvider(PROVIDER_STAKE - COLLATERAL, 0, 1, 0, 1, 0);
        _assertConserved();
    }

    function test_GivenCollateralZero() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.collateral = 0;
        uint256 id = _open(q, DEPOSIT, 0);
        vm.warp(T0 + 61);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(id, keeper, DEPOSIT, 0, 0, 0);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);
        _assertStakePayout(0, 0, 0);
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 1, 0);
    }

    function test_GivenOtherLeasesOfProvider() external {
        uint256 dead = _openLease();
        vm.warp(T0 + 30);
        uint256 live = _openLease();
        vm.warp(T0 + 61);
        _heartbeat(provider, live);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(dead);
        _assertStatus(live, Lease.Status.Active);
        _assertProvider(PROVIDER_STAKE - COLLATERAL, COLLATERAL, 2, 0, 1, 0);
        // The live lease can still finish and release its collateral.
        _finishAt(live, T0 + 100);
        _assertProvider(PROVIDER_STAKE - COLLATERAL, 0, 2, 1, 1, 70);
        _assertConserved();
    }

    /*//////////////////////////////////////////////////////////////
                                   FUZZ
    //////////////////////////////////////////////////////////////*/

    /// @dev An active lease whose deadline falls before its end is slashable iff now > deadline.
    function testFuzz_SlashTiming(uint256 beat, uint256 time) external {
        uint256 id = _openLease();
        beat = bound(beat, T0, T0 + FUNDED_SECONDS - HEARTBEAT_TIMEOUT - 1); // deadline < endsAt
        for (uint256 t = T0 + HEARTBEAT_TIMEOUT; t < beat; t += HEARTBEAT_TIMEOUT) _heartbeatAt(id, t);
        _heartbeatAt(id, beat);
        uint256 deadline = beat + HEARTBEAT_TIMEOUT;
        time = bound(time, beat, deadline + 2 * FUNDED_SECONDS);
        vm.warp(time);

        if (time <= deadline) {
            _expectNotMissed(id, deadline);
        } else {
            vm.prank(keeper);
            manager.slashMissedHeartbeat(id);
            _assertStatus(id, Lease.Status.Slashed);
            uint256 earned = (beat - T0) * PRICE;
            assertEq(manager.claimable(provider), earned, "paid to the last heartbeat");
            assertEq(manager.creditOf(tenant), DEPOSIT - earned, "the rest credited to the tenant");
            _assertStakePayout(TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        }
        _assertConserved();
    }

    /// @dev A closing lease is slashable iff now > deadline, whatever its end.
    function testFuzz_SlashTimingClosing(uint256 closeAt, uint256 time) external {
        uint256 id = _openShortLease(); // ends at T0+30, deadline T0+60
        closeAt = bound(closeAt, T0, T0 + 29);
        _closeAt(id, closeAt);
        uint256 deadline = closeAt + HEARTBEAT_TIMEOUT;
        time = bound(time, closeAt, deadline + 1000);
        vm.warp(time);
        if (time <= deadline) {
            _expectNotMissed(id, deadline);
        } else {
            vm.prank(keeper);
            manager.slashMissedHeartbeat(id);
            _assertStatus(id, Lease.Status.Slashed);
        }
    }

    /// @dev The collateral is split tenant / caller / treasury by the shares, rounding toward the
    /// treasury, and nothing is lost; a provider slashing itself gets nothing, the treasury its share.
    function testFuzz_SlashPayout(
        uint256 collateral,
        uint256 tenantShare,
        uint256 callerShare,
        bool callerIsProvider
    ) external {
        collateral = bound(collateral, 0, PROVIDER_STAKE);
        tenantShare = bound(tenantShare, 0, 10_000);
        callerShare = bound(callerShare, 0, 10_000 - tenantShare);
        ProviderRegistry registry2 = new ProviderRegistry(
            stakingToken,
            MIN_STAKE,
            UNBONDING_PERIOD,
            _nextButOneAddress()
        );
        LeaseManager manager2 = new LeaseManager(
            paymentToken,
            registry2,
            uint16(tenantShare),
            uint16(callerShare),
            TREASURY,
            MIN_HEARTBEAT_TIMEOUT,
            MAX_HEARTBEAT_TIMEOUT
        );
        stakingToken.mint(provider, PROVIDER_STAKE);
        vm.startPrank(provider);
        stakingToken.approve(address(registry2), PROVIDER_STAKE);
        registry2.register("12D3KooWProvider", "{}", PROVIDER_STAKE);
        vm.stopPrank();
        vm.prank(tenant);
        paymentToken.approve(address(manager2), DEPOSIT);

        Lease.Quote memory q = _defaultQuote();
        q.collateral = collateral;
        uint256 id;
        {
            // A scope of its own: the legacy code generator (`default` build profile) reaches
            // only 16 stack slots.
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, manager2.hashQuote(q));
            vm.prank(tenant);
            id = manager2.openLease(q, abi.encodePacked(r, s, v), DEPOSIT, 0);
        }
        vm.warp(T0 + 61);
        address caller = callerIsProvider ? provider : keeper;
        vm.prank(caller);
        manager2.slashMissedHeartbeat(id);

        uint256 tenantAmount = (collateral * tenantShare) / 10_000;
        uint256 callerAmount = callerIsProvider ? 0 : (collateral * callerShare) / 10_000;
        assertEq(registry2.creditOf(tenant), tenantAmount, "tenant (credited)");
        assertEq(stakingToken.balanceOf(caller), callerAmount, "caller (paid)");
        assertEq(registry2.creditOf(TREASURY), collateral - tenantAmount - callerAmount, "treasury (credited)");
        assertEq(stakingToken.balanceOf(address(registry2)), PROVIDER_STAKE - callerAmount, "registry");
        assertEq(registry2.getProvider(provider).stake, PROVIDER_STAKE - collateral, "stake");
        assertEq(registry2.getProvider(provider).locked, 0, "locked");
    }
}
