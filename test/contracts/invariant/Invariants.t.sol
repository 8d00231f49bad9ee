// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {DevToken} from "../../../contracts/token/DevToken.sol";
import {Lease} from "../../../contracts/types/Lease.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {Base} from "../utils/Base.t.sol";
import {Handler} from "./Handler.sol";

/// @notice Invariants of the lease manager and the provider registry, checked after every call of
/// random sequences of {Handler} actions. See README.md next to this file for each one in words.
contract InvariantsTest is Base {
    Handler internal handler;

    /// A second deployment sharing nothing with the first: quotes replayed there must fail.
    DevToken internal otherStakingToken;
    DevToken internal otherPaymentToken;
    ProviderRegistry internal otherRegistry;
    LeaseManager internal otherManager;

    function setUp() public override {
        super.setUp();

        otherStakingToken = new DevToken("Other Stake", "OSTK");
        otherPaymentToken = new DevToken("Other Pay", "OPAY");
        (otherRegistry, otherManager) = _deployPair(otherStakingToken, otherPaymentToken);

        handler = new Handler(
            Handler.System(manager, registry, stakingToken, paymentToken),
            Handler.System(otherManager, otherRegistry, otherStakingToken, otherPaymentToken),
            TREASURY
        );

        bytes4[] memory selectors = new bytes4[](16);
        selectors[0] = Handler.openLease.selector;
        selectors[1] = Handler.openFollowUp.selector;
        selectors[2] = Handler.heartbeat.selector;
        selectors[3] = Handler.claim.selector;
        selectors[4] = Handler.topUp.selector;
        selectors[5] = Handler.close.selector;
        selectors[6] = Handler.finish.selector;
        selectors[7] = Handler.slashMissedHeartbeat.selector;
        selectors[8] = Handler.settleExpired.selector;
        selectors[9] = Handler.stake.selector;
        selectors[10] = Handler.requestUnstake.selector;
        selectors[11] = Handler.withdraw.selector;
        selectors[12] = Handler.warp.selector;
        selectors[13] = Handler.warpToBoundary.selector;
        selectors[14] = Handler.withdrawCredit.selector;
        selectors[15] = Handler.openLeaseFor.selector;
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// @notice Logs the run's call distribution (shown with `-vv` or on failure).
    function afterInvariant() public virtual {
        handler.logSummary();
    }

    /*//////////////////////////////////////////////////////////////
                               INVARIANTS
    //////////////////////////////////////////////////////////////*/

    /// @notice Every invariant below, after every call. One `invariant_` function rather than one
    /// each: the runner plays a whole campaign (256 sequences of 50 calls) per `invariant_`
    /// function, so eleven of them cost eleven campaigns, 100 s of CPU in each `npm test`, where
    /// one campaign checks all eleven after every call. A failure names the broken invariant. The
    /// checks build their messages only once a comparison fails, for the same reason: strings cost
    /// more gas than the comparisons, after each of the campaign's 12,800 calls.
    function invariant_all() public view {
        _managerBalanceEqualsDepositsClaimableAndCredits();
        _registryBalanceEqualsStakeAndCredits();
        _oneSuccessorPerLease();
        _lockedEqualsLiveCollateral();
        _slashOnlyAfterDeadlineAndOnce();
        _endedLeasesNeverChange();
        _unstakeCannotEscapeSlash();
        _quoteCannotBeReplayed();
        _moneyIsConserved();
        _leaseBooksBalance();
        _handlerExpectationsHold();
    }

    /// @notice The manager's payment tokens are exactly the deposits of all leases, plus what every
    /// provider can claim, plus the refunds credited to tenants: no lease is under-funded, no
    /// credit unbacked, and no token is stranded.
    function _managerBalanceEqualsDepositsClaimableAndCredits() internal view {
        uint256 n = handler.leaseCount();
        assertEq(manager.leaseCount(), handler.sequentialCount(), "lease count");
        uint256 total;
        for (uint256 i = 1; i <= n; ++i) total += manager.getLease(handler.leaseIdAt(i)).deposit;
        address[] memory providers = handler.providers();
        for (uint256 i = 0; i < providers.length; ++i) total += manager.claimable(providers[i]);
        total += _managerCredits();
        assertEq(paymentToken.balanceOf(address(manager)), total, "manager balance != deposits + claimable + credits");
    }

    /// @notice The registry holds exactly the providers' stake plus the slash shares credited to
    /// tenants and the treasury.
    function _registryBalanceEqualsStakeAndCredits() internal view {
        address[] memory providers = handler.providers();
        uint256 total;
        for (uint256 i = 0; i < providers.length; ++i) total += registry.getProvider(providers[i]).stake;
        address[] memory creditors = handler.creditors();
        for (uint256 i = 0; i < creditors.length; ++i) total += registry.creditOf(creditors[i]);
        assertEq(stakingToken.balanceOf(address(registry)), total, "registry balance != stake + credits");
    }

    /// @notice A lease is continued at most once: at most one open ever succeeded naming it as
    /// predecessor, and `successorOf` names that one.
    function _oneSuccessorPerLease() internal view {
        uint256 n = handler.leaseCount();
        for (uint256 i = 1; i <= n; ++i) {
            uint256 id = handler.leaseIdAt(i);
            uint256 opened = handler.successorsOpened(id);
            if (opened > 1) assertLe(opened, 1, string.concat("lease continued twice, lease ", Strings.toString(id)));
            uint256 successor = manager.successorOf(id);
            uint256 expected = handler.ghostSuccessor(id);
            if (successor != expected) assertEq(successor, expected, string.concat("successorOf, lease ", Strings.toString(id)));
        }
    }

    /// @notice Each provider's locked stake is the collateral of its Active and Closing leases, and
    /// never exceeds its stake net of unbonding.
    function _lockedEqualsLiveCollateral() internal view {
        address[] memory providers = handler.providers();
        uint256[] memory live = new uint256[](providers.length);
        uint256 n = handler.leaseCount();
        for (uint256 j = 1; j <= n; ++j) {
            Lease.View memory v = manager.getLease(handler.leaseIdAt(j));
            if (v.status != Lease.Status.Active && v.status != Lease.Status.Closing) continue;
            for (uint256 i = 0; i < providers.length; ++i) if (providers[i] == v.provider) live[i] += v.collateral;
        }
        for (uint256 i = 0; i < providers.length; ++i) {
            Provider.View memory p = registry.getProvider(providers[i]);
            assertLe(p.unbonding, p.stake, "unbonding > stake");
            assertLe(p.locked, p.stake - p.unbonding, "locked > stake - unbonding");
            assertEq(p.locked, live[i], "locked != collateral of Active and Closing leases");
        }
    }

    /// @notice Every slash happened strictly after the lease's deadline (and, for an Active lease,
    /// with that deadline before the lease's end), and no lease was slashed twice.
    function _slashOnlyAfterDeadlineAndOnce() internal view {
        uint256 count = handler.slashCount();
        for (uint256 i = 0; i < count; ++i) {
            Handler.SlashRecord memory s = handler.slashRecord(i);
            if (s.time <= s.deadline) {
                assertGe(s.time, uint256(s.deadline) + 1, string.concat("lease slashed at or before its deadline, lease ", Strings.toString(s.leaseId)));
            }
            if (s.statusBefore == Lease.Status.Active) {
                assertLe(uint256(s.deadline) + 1, s.endsAt, "Active lease slashed although its deadline was not before its end");
            }
            assertLe(handler.ghost(s.leaseId).slashes, 1, "lease slashed twice");
        }
        assertEq(handler.repeatSlashSuccesses(), 0, "a second slash of a slashed lease succeeded");
    }

    /// @notice A Completed, Closed, Expired or Slashed lease never changes again.
    function _endedLeasesNeverChange() internal view {
        uint256 n = handler.leaseCount();
        for (uint256 i = 1; i <= n; ++i) {
            uint256 id = handler.leaseIdAt(i);
            if (!handler.ghost(id).snapped) continue;
            _assertSameLease(manager.getLease(id), handler.snapshot(id), id);
        }
    }

    /// @notice Unstaking cannot take collateral out of a slash's reach: the collateral of every
    /// live lease is still in the provider's stake net of unbonding, no unstake beyond the free
    /// stake and no early withdrawal ever succeeded, and every slash paid out the full collateral,
    /// including the slashes of leases whose provider asked to unstake while they were live.
    function _unstakeCannotEscapeSlash() internal view {
        uint256 n = handler.leaseCount();
        for (uint256 i = 1; i <= n; ++i) {
            uint256 id = handler.leaseIdAt(i);
            Lease.View memory v = manager.getLease(id);
            if (v.status != Lease.Status.Active && v.status != Lease.Status.Closing) continue;
            Provider.View memory p = registry.getProvider(v.provider);
            assertGe(p.locked, v.collateral, "live collateral not locked");
            assertGe(p.stake - p.unbonding, p.locked, "locked collateral is unbonding");
        }
        assertEq(handler.unstakeBeyondFreeSuccesses(), 0, "an unstake beyond the free stake succeeded");
        assertEq(handler.earlyWithdrawSuccesses(), 0, "a withdrawal before the unbonding period succeeded");
        uint256 count = handler.slashCount();
        for (uint256 i = 0; i < count; ++i) {
            Handler.SlashRecord memory s = handler.slashRecord(i);
            if (s.paidOut == s.collateral && s.registryDrop == s.collateral && s.stakeDrop == s.collateral) continue;
            string memory which = string.concat(
                s.unstakeRequestedWhileLive ? " (unstake requested while live), lease " : ", lease ",
                Strings.toString(s.leaseId)
            );
            assertEq(s.paidOut, s.collateral, string.concat("slash paid out less than the collateral", which));
            assertEq(s.registryDrop, s.collateral, string.concat("registry balance did not drop by the collateral", which));
            assertEq(s.stakeDrop, s.collateral, string.concat("stake did not drop by the collateral", which));
        }
    }

    /// @notice A signed quote opens at most one lease: replaying it (same quote, another tenant,
    /// rewritten tenant, another deployment, another chain id, rewritten image) always failed, for
    /// the right reason, and no open ever succeeded with a used digest or a spent nonce.
    function _quoteCannotBeReplayed() internal view {
        uint256 digests = handler.digestsRecorded();
        for (uint256 k = 0; k < 6; ++k) {
            uint256 successes = handler.replaySuccesses(k);
            if (successes != 0) assertEq(successes, 0, string.concat("quote replay succeeded, kind ", Strings.toString(k)));
            uint256 wrong = handler.replayWrongReasons(k);
            if (wrong != 0) assertEq(wrong, 0, string.concat("replay rejected for an unexpected reason, kind ", Strings.toString(k)));
            assertEq(handler.replayAttempts(k), digests, "replays not attempted after every open");
        }
        assertEq(handler.quoteReuseSuccesses(), 0, "a used digest or spent nonce opened a lease");
        assertEq(handler.signedReplaySuccesses(), 0, "a signed opening opened two leases");
        assertEq(handler.signedReplayWrongReasons(), 0, "a signed opening's replay failed for another reason than its id taken");
    }

    /// @notice Payment tokens are conserved: all deposits are refunded to tenants, claimed by
    /// providers, or still held by the manager (deposits, claimable earnings, credited refunds).
    function _moneyIsConserved() internal view {
        assertEq(
            handler.ghostDeposited(),
            handler.ghostRefunded() + handler.ghostClaimed() + paymentToken.balanceOf(address(manager)),
            "deposited != refunded + claimed + held"
        );
    }

    /// @notice Per lease: a live lease's deposit is what was paid in minus what its provider earned
    /// (settled time times price), and funds it exactly until endsAt; an ended lease holds nothing;
    /// over all leases, refunds and provider earnings match the tokens that actually moved.
    function _leaseBooksBalance() internal view {
        uint256 n = handler.leaseCount();
        uint256 refunds;
        uint256 earnings;
        for (uint256 i = 1; i <= n; ++i) {
            uint256 id = handler.leaseIdAt(i);
            Lease.View memory v = manager.getLease(id);
            Handler.LeaseGhost memory g = handler.ghost(id);
            assertGe(v.settledUntil, g.openedAt, "settledUntil before opening");
            uint256 earned = (uint256(v.settledUntil) - g.openedAt) * v.pricePerSecond;
            earnings += earned;
            if (v.status == Lease.Status.Active) {
                if (v.deposit + earned != g.deposited) {
                    assertEq(v.deposit + earned, g.deposited, string.concat("live lease's deposit + earned != paid in, lease ", Strings.toString(id)));
                }
                uint256 funded = uint256(v.settledUntil) + v.deposit / v.pricePerSecond;
                assertEq(v.endsAt, funded < v.maxEnd ? funded : v.maxEnd, "endsAt != min(funded until, maxEnd)");
                assertLe(v.settledUntil, v.lastHeartbeat, "settled past the last heartbeat");
            } else {
                if (v.deposit != 0) {
                    assertEq(v.deposit, 0, string.concat("ended or closing lease still holds a deposit, lease ", Strings.toString(id)));
                }
                if (earned > g.deposited) {
                    assertLe(earned, g.deposited, string.concat("provider earned more than was paid in, lease ", Strings.toString(id)));
                }
                refunds += g.deposited - earned;
            }
        }
        assertEq(
            refunds,
            handler.ghostRefunded() + _managerCredits(),
            "refunds implied by the leases != refunds received + credited"
        );
        address[] memory providers = handler.providers();
        uint256 claimable;
        for (uint256 i = 0; i < providers.length; ++i) claimable += manager.claimable(providers[i]);
        assertEq(earnings, handler.ghostClaimed() + claimable, "earnings implied by the leases != claimed + claimable");
    }

    /// @notice Every per-call expectation the handler checks held (see the handler's actions):
    /// liveness (a healthy heartbeat, a due slash or settlement never reverts), exact refunds and
    /// payouts, no late heartbeat rescuing a provider, predecessors, and the view's derived fields.
    function _handlerExpectationsHold() internal view {
        uint256 violations = handler.violations();
        if (violations != 0) assertEq(violations, 0, handler.firstViolation());
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    /// @dev Compares the encodings first and names the changed fields only on a difference: the
    /// messages cost more to build than the comparison, after every call of the campaign.
    function _assertSameLease(Lease.View memory a, Lease.View memory b, uint256 id) internal pure {
        if (keccak256(abi.encode(a)) == keccak256(abi.encode(b))) return;
        string memory m = string.concat("ended lease changed, lease ", Strings.toString(id), ": ");
        assertEq(a.provider, b.provider, string.concat(m, "provider"));
        assertEq(a.tenant, b.tenant, string.concat(m, "tenant"));
        assertEq(a.jobId, b.jobId, string.concat(m, "jobId"));
        assertEq(uint256(a.status), uint256(b.status), string.concat(m, "status"));
        assertEq(a.expired, b.expired, string.concat(m, "expired"));
        assertEq(a.slashable, b.slashable, string.concat(m, "slashable"));
        assertEq(a.lastHeartbeat, b.lastHeartbeat, string.concat(m, "lastHeartbeat"));
        assertEq(a.deadline, b.deadline, string.concat(m, "deadline"));
        assertEq(a.endsAt, b.endsAt, string.concat(m, "endsAt"));
        assertEq(a.maxEnd, b.maxEnd, string.concat(m, "maxEnd"));
        assertEq(a.settledUntil, b.settledUntil, string.concat(m, "settledUntil"));
        assertEq(a.heartbeatTimeout, b.heartbeatTimeout, string.concat(m, "heartbeatTimeout"));
        assertEq(a.pricePerSecond, b.pricePerSecond, string.concat(m, "pricePerSecond"));
        assertEq(a.collateral, b.collateral, string.concat(m, "collateral"));
        assertEq(a.deposit, b.deposit, string.concat(m, "deposit"));
        assertEq(a.earned, b.earned, string.concat(m, "earned"));
    }

    /// @dev The refunds the manager credited its tenants and they have not withdrawn.
    function _managerCredits() internal view returns (uint256 total) {
        address[] memory tenants = handler.tenants();
        for (uint256 i = 0; i < tenants.length; ++i) total += manager.creditOf(tenants[i]);
    }
}
