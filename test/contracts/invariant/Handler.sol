// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {DevToken} from "../../../contracts/token/DevToken.sol";
import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {Lease} from "../../../contracts/types/Lease.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {Test} from "../utils/Test.sol";
import {SignedOpens} from "./SignedOpens.sol";

/// @notice Drives the lease manager and the provider registry through bounded, always-meaningful
/// actions, and keeps the ghost books the invariants in {InvariantsTest} compare the contracts with.
///
/// Every action takes raw fuzzed seeds, maps them into sane ranges with `bound`, acts as the right
/// account with `vm.prank`, and catches reverts itself: a handler call never reverts because of the
/// system under test, so every call reaches the ghost bookkeeping. Whatever a single call can
/// check (a refund's amount, a liveness expectation, a replay's revert reason) is recorded as a
/// violation here, because a revert in a handler is ignored by the runner (`failOnRevert: false`);
/// the invariants then assert that no violation was ever recorded.
contract Handler is Test {
    /*//////////////////////////////////////////////////////////////
                                  TYPES
    //////////////////////////////////////////////////////////////*/

    struct System {
        LeaseManager manager;
        ProviderRegistry registry;
        DevToken stakingToken;
        DevToken paymentToken;
    }

    /// @notice What the handler knows about a lease, independently of the lease manager.
    struct LeaseGhost {
        address provider;
        address tenant;
        bytes32 jobId;
        uint64 openedAt;
        uint256 pricePerSecond;
        uint256 collateral;
        /// Everything the tenant paid into this lease (opening deposit plus top-ups).
        uint256 deposited;
        /// Status seen at the end of the last handler call.
        Lease.Status status;
        /// Whether {snapshot} holds the lease as it was at the end of the call that ended it.
        bool snapped;
        /// Whether its provider requested an unstake while this lease was Active or Closing.
        bool unstakeRequestedWhileLive;
        /// Successful slashes of this lease (must stay at most one).
        uint8 slashes;
    }

    struct SlashRecord {
        uint256 leaseId;
        address caller;
        uint64 time;
        /// The lease's deadline (last heartbeat plus timeout) just before the slash.
        uint64 deadline;
        uint64 endsAt;
        Lease.Status statusBefore;
        uint256 collateral;
        /// Staking tokens the tenant, the caller and the treasury received, counted once each.
        uint256 paidOut;
        /// How much the registry's staking-token balance and the provider's stake dropped.
        uint256 registryDrop;
        uint256 stakeDrop;
        bool unstakeRequestedWhileLive;
    }

    /// @dev The replays attempted after every successful open.
    uint256 internal constant REPLAY_SAME_QUOTE = 0; // same quote, same tenant, same contract
    uint256 internal constant REPLAY_OTHER_TENANT = 1; // same quote sent by another tenant
    uint256 internal constant REPLAY_REWRITTEN_TENANT = 2; // quote's tenant rewritten, same signature
    uint256 internal constant REPLAY_OTHER_DEPLOYMENT = 3; // a second, independent LeaseManager
    uint256 internal constant REPLAY_OTHER_CHAIN = 4; // same contract, another chain id
    uint256 internal constant REPLAY_REWRITTEN_IMAGE = 5; // quote's image rewritten, same signature
    uint256 internal constant REPLAY_KINDS = 6;

    /// @dev Action indices for the call counters.
    uint256 internal constant A_OPEN = 0;
    uint256 internal constant A_OPEN_FOLLOW_UP = 1;
    uint256 internal constant A_HEARTBEAT = 2;
    uint256 internal constant A_CLAIM = 3;
    uint256 internal constant A_TOP_UP = 4;
    uint256 internal constant A_CLOSE = 5;
    uint256 internal constant A_FINISH = 6;
    uint256 internal constant A_SLASH = 7;
    uint256 internal constant A_SETTLE_EXPIRED = 8;
    uint256 internal constant A_STAKE = 9;
    uint256 internal constant A_REQUEST_UNSTAKE = 10;
    uint256 internal constant A_WITHDRAW = 11;
    uint256 internal constant A_WARP = 12;
    uint256 internal constant A_WARP_TO_BOUNDARY = 13;
    uint256 internal constant A_WITHDRAW_CREDIT = 14;
    uint256 internal constant A_OPEN_FOR = 15;
    uint256 internal constant ACTIONS = 16;

    /// @dev Ids of leases opened with `openLeaseFor` start here; `openLease`'s count up from 1.
    uint256 internal constant OPENED_FOR_ID_BIT = 1 << 63;

    /*//////////////////////////////////////////////////////////////
                                CONSTANTS
    //////////////////////////////////////////////////////////////*/

    uint256 internal constant INITIAL_STAKE = 500e18;
    uint256 internal constant TENANT_FUNDS = 1e30;
    uint256 internal constant MAX_PRICE = 1e16;
    uint256 internal constant MAX_COLLATERAL = 120e18;
    uint256 internal constant MAX_TOP_UP = 1e21;
    uint256 internal constant MAX_STAKE_ADD = 200e18;
    uint64 internal constant MAX_DURATION = 3 days;
    uint256 internal constant JOBS_PER_TENANT = 2;
    uint256 internal constant POSITIVE_CONTROL_NONCE = type(uint256).max;
    string internal constant CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";

    bytes32 internal constant QUOTE_TYPEHASH =
        keccak256(
            "Quote(address provider,address tenant,bytes32 jobId,bytes32 resources,bytes32 image,"
            "uint256 pricePerSecond,uint256 collateral,uint64 heartbeatPeriod,uint64 heartbeatTimeout,"
            "uint64 maxDuration,uint64 expiry,uint256 nonce)"
        );
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    address internal constant CONSOLE = 0x000000000000000000636F6e736F6c652e6c6f67;

    /*//////////////////////////////////////////////////////////////
                              SYSTEM UNDER TEST
    //////////////////////////////////////////////////////////////*/

    LeaseManager public immutable manager;
    ProviderRegistry public immutable registry;
    DevToken public immutable stakingToken;
    DevToken public immutable paymentToken;
    address public immutable treasury;

    /// @notice A second deployment sharing nothing with the first (own tokens, registry, manager),
    /// with the same providers registered and the same tenants funded, so that a replayed quote
    /// can fail there for one reason only: its signature.
    LeaseManager public immutable otherManager;

    /// @notice Signs, submits and checks the signed openings of {openLeaseFor}.
    SignedOpens public immutable signedOpens;

    uint256[] internal _providerKeys;
    address[] internal _providers;
    address[] internal _tenants;
    /// Slash and settle callers: tenants, providers and two keepers.
    address[] internal _callers;

    /*//////////////////////////////////////////////////////////////
                                GHOST STATE
    //////////////////////////////////////////////////////////////*/

    uint256 public ghostDeposited;
    uint256 public ghostRefunded;
    uint256 public ghostClaimed;

    /// Leases the handler saw open, of both kinds; `leaseIdAt(1..leaseCount)` lists their ids.
    uint256 public leaseCount;
    /// Leases opened with `openLease` (ids 1 to this, as the manager's `leaseCount`).
    uint256 public sequentialCount;
    mapping(uint256 index => uint256 leaseId) internal _idAt;
    /// Signed openings submitted a second time that succeeded, or failed for another reason than the id taken.
    uint256 public signedReplaySuccesses;
    uint256 public signedReplayWrongReasons;
    mapping(uint256 leaseId => LeaseGhost) internal _ghosts;
    mapping(uint256 leaseId => Lease.View) internal _snapshots;
    mapping(address provider => uint256[]) internal _leasesOfProvider;
    mapping(address tenant => mapping(bytes32 jobId => uint256[])) internal _leasesOfJob;
    /// Leases opened naming each lease as predecessor (must stay at most one), and the first one.
    mapping(uint256 leaseId => uint256) public successorsOpened;
    mapping(uint256 leaseId => uint256) public ghostSuccessor;

    SlashRecord[] internal _slashes;
    /// Slash calls on a lease that had already been slashed, and how many of them succeeded.
    uint256 public repeatSlashAttempts;
    uint256 public repeatSlashSuccesses;

    mapping(bytes32 digest => bool) public digestUsed;
    mapping(address provider => mapping(uint256 nonce => bool)) public nonceSpent;
    mapping(address provider => uint256[]) internal _spentNonces;
    mapping(address provider => uint256) internal _nextNonce;
    uint256 public digestsRecorded;
    /// Opens that succeeded although their digest or nonce had been used already.
    uint256 public quoteReuseSuccesses;

    uint256[REPLAY_KINDS] public replayAttempts;
    uint256[REPLAY_KINDS] public replaySuccesses;
    /// Replays rejected, but not for the reason that proves the defence under test.
    uint256[REPLAY_KINDS] public replayWrongReasons;

    mapping(address provider => uint64) public lastUnstakeRequestAt;
    uint256 public unstakeRequests;
    /// Unstake requests larger than the free stake that succeeded, and early withdrawals.
    uint256 public unstakeBeyondFreeSuccesses;
    uint256 public earlyWithdrawSuccesses;

    /// Any other expectation a single call broke; the first one is kept in words.
    uint256 public violations;
    string public firstViolation;

    uint256[ACTIONS] public calls;
    uint256[ACTIONS] public successes;
    uint256 public maxTimeWarped;

    uint256 internal _actionDeposit;
    uint256 internal _lastTimestamp;

    /*//////////////////////////////////////////////////////////////
                               CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    constructor(System memory sut, System memory other, address treasury_) {
        manager = sut.manager;
        registry = sut.registry;
        stakingToken = sut.stakingToken;
        paymentToken = sut.paymentToken;
        otherManager = other.manager;
        treasury = treasury_;
        signedOpens = new SignedOpens(sut.manager, sut.registry, sut.stakingToken, sut.paymentToken, treasury_);

        _providerKeys.push(0xA11CE);
        _providerKeys.push(0xB0B);
        _providerKeys.push(0xC0FFEE);
        for (uint256 i = 0; i < _providerKeys.length; ++i) {
            address p = vm.addr(_providerKeys[i]);
            _providers.push(p);
            string memory peerId = string.concat("12D3KooWInvariantProvider", Strings.toString(i));
            _register(sut, p, peerId);
            _register(other, p, peerId);
            vm.label(p, string.concat("provider", Strings.toString(i)));
        }
        for (uint256 i = 0; i < 3; ++i) {
            address t = vm.addr(0x7E4A47 + i);
            _tenants.push(t);
            _fund(sut, t);
            _fund(other, t);
            vm.label(t, string.concat("tenant", Strings.toString(i)));
        }
        for (uint256 i = 0; i < _tenants.length; ++i) _callers.push(_tenants[i]);
        for (uint256 i = 0; i < _providers.length; ++i) _callers.push(_providers[i]);
        _callers.push(address(0x5EE9E4));
        _callers.push(address(0x5EE9E5));

        // Positive control: a quote signed for the other deployment opens there, so a replay that
        // fails there fails because of the signature's domain, not because of a missing setup.
        Lease.Quote memory q = _quote(0, 0, 1e12, 1e18, 60, 1 hours, 0, POSITIVE_CONTROL_NONCE);
        bytes memory sig = _signDigest(_providerKeys[0], other.manager.hashQuote(q));
        vm.prank(q.tenant);
        uint256 id = other.manager.openLease(q, sig, 1e15, 0);
        require(id == 1, "positive control: the second deployment must accept its own quotes");
    }

    /*//////////////////////////////////////////////////////////////
                                 ACTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice Opens a fresh lease (no predecessor) with random terms.
    function openLease(
        uint256 parties,
        uint256 priceSeed,
        uint256 collateralSeed,
        uint256 timingSeed,
        uint256 depositSeed,
        uint256 nonceSeed
    ) external tracked(A_OPEN) {
        _openRandom(parties, priceSeed, collateralSeed, timingSeed, depositSeed, nonceSeed, false, 0);
    }

    /// @notice Opens a lease that continues one of the tenant's ended leases of the same job when
    /// there is one (and, rarely, passes an invalid predecessor on purpose).
    function openFollowUp(
        uint256 parties,
        uint256 priceSeed,
        uint256 collateralSeed,
        uint256 timingSeed,
        uint256 depositSeed,
        uint256 predecessorSeed
    ) external tracked(A_OPEN_FOLLOW_UP) {
        _openRandom(
            parties,
            priceSeed,
            collateralSeed,
            timingSeed,
            depositSeed,
            _sub(predecessorSeed, 77), // the nonce seed, independent of the predecessor's
            true,
            predecessorSeed
        );
    }

    /// @notice A provider submits a tenant's signed opening (`openLeaseFor`): the tenant hands its
    /// job on, naming any lease of the job that nothing continues (a live one is ended in the same
    /// transaction). One time in four something is wrong on purpose: the opening is signed by
    /// another tenant, submitted by another provider, or mined after its deadline. {SignedOpens}
    /// signs, submits and checks the call (this contract is near the size the runner can identify);
    /// the books are kept here.
    function openLeaseFor(
        uint256 parties,
        uint256 priceSeed,
        uint256 collateralSeed,
        uint256 timingSeed,
        uint256 depositSeed,
        uint256 predecessorSeed
    ) external tracked(A_OPEN_FOR) {
        (OpenPlan memory plan, Lease.Quote memory q) = _plan(
            parties,
            priceSeed,
            collateralSeed,
            timingSeed,
            depositSeed,
            _sub(predecessorSeed, 77),
            true
        );
        SignedOpens.Input memory input;
        (input.predecessor, input.predecessorValid) = _pickAnyPredecessor(plan.tenant, q.jobId, predecessorSeed);
        input.opening = Lease.Opening({
            quote: q,
            deposit: plan.deposit,
            predecessor: input.predecessor,
            deadline: uint64(block.timestamp + bound(_sub(timingSeed, 300), 1, 120))
        });
        input.fault = _sub(predecessorSeed, 5) % 16;
        if (input.fault > 3) input.fault = 0;
        input.signerKey = 0x7E4A47 + (input.fault == 1 ? (plan.tenantIndex + 1) % _tenants.length : plan.tenantIndex);
        input.caller = input.fault == 2 ? _otherProvider(plan.provider) : plan.provider;
        input.nonceAlreadySpent = plan.nonceAlreadySpent;
        // The provider submits at once, or some seconds later; a late one after the deadline.
        uint256 window = input.opening.deadline - block.timestamp;
        uint256 delay = input.fault == 3
            ? window + 1 + (_sub(timingSeed, 301) % 60)
            : _sub(timingSeed, 302) % 3 == 0 ? _sub(timingSeed, 303) % (window + 1) : 0;
        if (delay > 0) _warp(delay);

        SignedOpens.Result memory r = signedOpens.submit(input, _registryCredits());
        if (bytes(r.violation).length != 0) _violate(r.violation);
        if (r.leaseId == 0) return;
        ++successes[A_OPEN_FOR];
        _recordOpen(r.leaseId, q, plan.deposit, bytes32(0));
        if (input.predecessor != 0) {
            if (++successorsOpened[input.predecessor] == 1) ghostSuccessor[input.predecessor] = r.leaseId;
        }
        if (r.slashed) {
            ++_ghosts[input.predecessor].slashes;
            _recordSlash(input.predecessor, input.caller, r.before, r.paidOut, r.registryBefore, r.oldStakeBefore);
        }
        signedReplaySuccesses += r.replaySucceeded ? 1 : 0;
        signedReplayWrongReasons += r.replayWrongReason ? 1 : 0;
    }

    /// @dev A lease of the tenant's job that nothing continues, in any state (an `Active` one too),
    /// or none; one time in eight an arbitrary one (someone else's, another job's, continued, or unknown).
    function _pickAnyPredecessor(
        address tenant,
        bytes32 jobId,
        uint256 seed
    ) internal view returns (uint256 id, bool valid) {
        if (seed % 8 == 0 && leaseCount > 0) {
            id = _sub(seed, 3) % 3 == 0 ? sequentialCount + 1 + (_sub(seed, 8) % 3) : _idAt[_sub(seed, 8) % leaseCount + 1];
            Lease.View memory v = manager.getLease(id);
            valid = v.tenant == tenant && v.jobId == jobId && v.status != Lease.Status.None && manager.successorOf(id) == 0;
            return (id, valid);
        }
        uint256[] storage own = _leasesOfJob[tenant][jobId];
        uint256 open;
        for (uint256 i = 0; i < own.length; ++i) if (manager.successorOf(own[i]) == 0) ++open;
        if (open == 0) return (0, true);
        uint256 k = _sub(seed, 8) % open;
        for (uint256 i = 0; i < own.length; ++i) {
            if (manager.successorOf(own[i]) == 0) {
                if (k == 0) return (own[i], true);
                --k;
            }
        }
    }

    /// @notice A provider heartbeats a batch of its leases, sometimes with checkpoint CIDs,
    /// rarely with another provider's lease slipped in (the whole batch must then revert).
    function heartbeat(uint256 providerSeed, uint256 batchSeed, uint256 cidSeed) external tracked(A_HEARTBEAT) {
        uint256 pi = providerSeed % _providers.length;
        address p = _providers[pi];
        uint256[] memory ids = _batch(p, batchSeed, 6);
        bool intruder = batchSeed % 16 == 0 && _intruderFor(p, batchSeed) != 0;
        if (intruder) ids = _withIntruder(ids, p, batchSeed);

        string[] memory cids;
        bool longCid;
        if (cidSeed % 3 != 0 && ids.length > 0) {
            cids = new string[](ids.length);
            for (uint256 i = 0; i < ids.length; ++i) {
                cids[i] = _sub(cidSeed, 8 + i) & 1 == 1 ? CID : "";
            }
            if (cidSeed % 32 == 1) {
                cids[0] = string(new bytes(257));
                longCid = true;
            }
        } else {
            cids = new string[](0);
        }

        Lease.View[] memory before = new Lease.View[](ids.length);
        for (uint256 i = 0; i < ids.length; ++i) before[i] = manager.getLease(ids[i]);

        vm.prank(p);
        try manager.heartbeat(ids, cids) {
            ++successes[A_HEARTBEAT];
            if (intruder) _violate("heartbeat accepted another provider's lease");
            for (uint256 i = 0; i < ids.length; ++i) {
                if (before[i].provider == p) _checkHeartbeat(ids[i], before[i]);
            }
        } catch (bytes memory err) {
            if (!intruder && !longCid) _violate(string.concat("heartbeat of own leases reverted: ", _sel(err)));
            if (intruder && !longCid && bytes4(err) != ILeaseManager.LeaseManager_CallerNotProvider.selector) {
                _violate("heartbeat with a foreign lease reverted for the wrong reason");
            }
        }
    }

    /// @notice A provider claims over a batch of its leases (possibly empty).
    function claim(uint256 providerSeed, uint256 batchSeed) external tracked(A_CLAIM) {
        address p = _providers[providerSeed % _providers.length];
        uint256[] memory ids = batchSeed % 5 == 0 ? new uint256[](0) : _batch(p, batchSeed, 6);
        bool intruder = batchSeed % 16 == 1 && _intruderFor(p, batchSeed) != 0;
        if (intruder) ids = _withIntruder(ids, p, batchSeed);

        uint256 expected = manager.claimable(p);
        for (uint256 i = 0; i < ids.length; ++i) {
            Lease.View memory v = manager.getLease(ids[i]);
            if (v.provider == p) expected += v.earned;
        }
        uint256 balanceBefore = paymentToken.balanceOf(p);

        vm.prank(p);
        try manager.claim(ids) returns (uint256 amount) {
            ++successes[A_CLAIM];
            if (intruder) _violate("claim accepted another provider's lease");
            if (amount != expected) _violate("claim paid other than claimable plus the batch's earned");
            if (paymentToken.balanceOf(p) != balanceBefore + amount) _violate("claim's return value differs from the transfer");
            if (manager.claimable(p) != 0) _violate("claimable not emptied by a claim");
        } catch (bytes memory err) {
            if (!intruder) _violate(string.concat("claim of own leases reverted: ", _sel(err)));
        }
    }

    /// @notice The tenant (rarely someone else) tops up a lease.
    function topUp(uint256 leaseSeed, uint256 amountSeed) external tracked(A_TOP_UP) {
        uint256 id = _pickLease(leaseSeed);
        if (id == 0) return;
        Lease.View memory b = manager.getLease(id);
        address caller = leaseSeed % 10 == 0 ? _otherTenant(b.tenant) : b.tenant;
        uint256 amount = bound(amountSeed, 1, MAX_TOP_UP);
        bool expectOk = caller == b.tenant &&
            b.status == Lease.Status.Active &&
            !b.slashable &&
            block.timestamp < b.endsAt &&
            !_topUpTooLate(b, amount);

        vm.prank(caller);
        try manager.topUp(id, amount) {
            ++successes[A_TOP_UP];
            if (!expectOk) _violate("topUp succeeded on a lease that cannot run or by a non-tenant");
            _actionDeposit += amount;
            _ghosts[id].deposited += amount;
            Lease.View memory a = manager.getLease(id);
            if (a.deposit != b.deposit + amount) _violate("topUp did not add the amount to the deposit");
            if (a.endsAt < b.endsAt || a.endsAt > a.maxEnd) _violate("topUp moved endsAt backwards or past maxEnd");
        } catch (bytes memory err) {
            if (expectOk) _violate(string.concat("topUp of a running lease reverted: ", _sel(err)));
        }
    }

    /// @dev Whether a top-up of `amount` would revive, with less than half a timeout left, the
    /// deadline of a lease set to expire before it (the rule {LeaseManager.topUp} enforces).
    function _topUpTooLate(Lease.View memory b, uint256 amount) internal view returns (bool) {
        uint256 funded = uint256(b.settledUntil) + (uint256(b.deposit) + amount) / b.pricePerSecond;
        uint256 newEnd = funded < b.maxEnd ? funded : b.maxEnd;
        return
            b.deadline >= b.endsAt &&
            newEnd > b.deadline &&
            b.deadline < block.timestamp + uint256(b.heartbeatTimeout) / 2;
    }

    /// @notice The tenant (rarely someone else) closes a lease.
    function close(uint256 leaseSeed) external tracked(A_CLOSE) {
        uint256 id = _pickLease(leaseSeed);
        if (id == 0) return;
        Lease.View memory b = manager.getLease(id);
        address caller = leaseSeed % 10 == 0 ? _otherTenant(b.tenant) : b.tenant;
        bool expectOk = caller == b.tenant && b.status == Lease.Status.Active && !b.slashable;
        uint256 tenantBefore = paymentToken.balanceOf(b.tenant);

        vm.prank(caller);
        try manager.close(id) {
            ++successes[A_CLOSE];
            if (!expectOk) _violate("close succeeded on a lease that is not Active, is slashable, or by a non-tenant");
            Lease.View memory a = manager.getLease(id);
            Lease.Status want = b.expired ? Lease.Status.Expired : Lease.Status.Closing;
            if (a.status != want) _violate("close left the wrong status");
            if (a.deposit != 0) _violate("close left a deposit");
            if (paymentToken.balanceOf(b.tenant) + b.earned != tenantBefore + b.deposit) {
                _violate("close refunded other than deposit minus heartbeat-covered earnings");
            }
            if (a.status == Lease.Status.Closing && a.deadline != block.timestamp + b.heartbeatTimeout) {
                _violate("close did not give the provider a whole timeout to acknowledge");
            }
        } catch (bytes memory err) {
            if (expectOk) _violate(string.concat("close of an Active, non-slashable lease reverted: ", _sel(err)));
        }
    }

    /// @notice The provider (rarely someone else) finishes a lease.
    function finish(uint256 leaseSeed, uint256 cidSeed) external tracked(A_FINISH) {
        uint256 id = _pickLease(leaseSeed);
        if (id == 0) return;
        Lease.View memory b = manager.getLease(id);
        address caller = leaseSeed % 10 == 0 ? _otherProvider(b.provider) : b.provider;
        bool longCid = cidSeed % 32 == 0;
        string memory cid = longCid ? string(new bytes(257)) : CID;
        bool expectOk = caller == b.provider && b.status == Lease.Status.Active && !b.slashable && !longCid;
        uint256 claimableBefore = manager.claimable(b.provider);
        uint256 tenantBefore = _paymentOwedTo(b.tenant);
        uint256 end = block.timestamp < b.endsAt ? block.timestamp : b.endsAt;
        uint256 earned = end > b.settledUntil ? (end - b.settledUntil) * b.pricePerSecond : 0;

        vm.prank(caller);
        try manager.finish(id, cid) {
            ++successes[A_FINISH];
            if (!expectOk) _violate("finish succeeded on a lease it must not end");
            Lease.View memory a = manager.getLease(id);
            if (a.status != Lease.Status.Completed) _violate("finish did not complete the lease");
            if (manager.claimable(b.provider) != claimableBefore + earned) _violate("finish credited the wrong earnings");
            if (_paymentOwedTo(b.tenant) + earned != tenantBefore + b.deposit) _violate("finish refunded the wrong amount");
        } catch (bytes memory err) {
            if (expectOk) _violate(string.concat("finish of a healthy lease reverted: ", _sel(err)));
        }
    }

    /// @notice Anyone slashes a lease; after a success, a second slash is attempted at once.
    function slashMissedHeartbeat(uint256 leaseSeed, uint256 callerSeed) external tracked(A_SLASH) {
        uint256 id = leaseSeed % 2 == 0 ? _pickFlagged(leaseSeed, true) : 0;
        if (id == 0) id = _pickLease(leaseSeed);
        if (id == 0) return;
        if (_trySlash(id, _callers[callerSeed % _callers.length])) {
            ++successes[A_SLASH];
            _trySlash(id, _callers[_sub(callerSeed, 8) % _callers.length]);
        }
    }

    /// @notice Anyone settles a lease whose deposit or duration ran out.
    function settleExpired(uint256 leaseSeed, uint256 callerSeed) external tracked(A_SETTLE_EXPIRED) {
        uint256 id = leaseSeed % 2 == 0 ? _pickFlagged(leaseSeed, false) : 0;
        if (id == 0) id = _pickLease(leaseSeed);
        if (id == 0) return;
        Lease.View memory b = manager.getLease(id);
        uint256 tenantBefore = _paymentOwedTo(b.tenant);
        vm.prank(_callers[callerSeed % _callers.length]);
        try manager.settleExpired(id) {
            ++successes[A_SETTLE_EXPIRED];
            if (!b.expired) _violate("settleExpired succeeded on a lease that had not expired");
            if (manager.getLease(id).status != Lease.Status.Expired) _violate("settleExpired did not expire the lease");
            if (_paymentOwedTo(b.tenant) + b.earned != tenantBefore + b.deposit) _violate("settleExpired refunded the wrong amount");
        } catch (bytes memory err) {
            if (b.expired) _violate(string.concat("settleExpired of an expired lease reverted: ", _sel(err)));
        }
    }

    /// @notice A provider adds stake.
    function stake(uint256 providerSeed, uint256 amountSeed) external tracked(A_STAKE) {
        address p = _providers[providerSeed % _providers.length];
        uint256 amount = bound(amountSeed, 1, MAX_STAKE_ADD);
        stakingToken.mint(p, amount);
        uint256 stakeBefore = registry.getProvider(p).stake;
        vm.prank(p);
        try registry.stake(amount) {
            ++successes[A_STAKE];
            if (registry.getProvider(p).stake != stakeBefore + amount) _violate("stake did not add the amount");
        } catch (bytes memory err) {
            _violate(string.concat("stake by a registered provider reverted: ", _sel(err)));
        }
    }

    /// @notice A provider starts unbonding: usually at most its free stake, sometimes more (which
    /// must be refused, or collateral of open leases could escape a slash).
    function requestUnstake(uint256 providerSeed, uint256 amountSeed) external tracked(A_REQUEST_UNSTAKE) {
        address p = _providers[providerSeed % _providers.length];
        uint256 free = registry.freeStake(p);
        bool beyondFree = amountSeed % 5 == 0 || free == 0;
        uint256 amount = beyondFree ? bound(_sub(amountSeed, 8), free + 1, free + 100e18) : bound(_sub(amountSeed, 8), 1, free);
        vm.prank(p);
        try registry.requestUnstake(amount) {
            ++successes[A_REQUEST_UNSTAKE];
            if (beyondFree) ++unstakeBeyondFreeSuccesses;
            ++unstakeRequests;
            lastUnstakeRequestAt[p] = uint64(block.timestamp);
            uint256[] storage own = _leasesOfProvider[p];
            for (uint256 i = 0; i < own.length; ++i) {
                if (_isLive(manager.getLease(own[i]).status)) _ghosts[own[i]].unstakeRequestedWhileLive = true;
            }
            if (registry.getProvider(p).unbondingEndsAt != block.timestamp + registry.unbondingPeriod()) {
                _violate("requestUnstake did not restart the unbonding period");
            }
        } catch (bytes memory err) {
            if (!beyondFree) _violate(string.concat("requestUnstake within free stake reverted: ", _sel(err)));
        }
    }

    /// @notice A provider withdraws its unbonded stake (too early, often).
    function withdraw(uint256 providerSeed) external tracked(A_WITHDRAW) {
        address p = _providers[providerSeed % _providers.length];
        Provider.View memory b = registry.getProvider(p);
        bool expectOk = b.unbonding > 0 && block.timestamp >= b.unbondingEndsAt;
        uint256 walletBefore = stakingToken.balanceOf(p);
        vm.prank(p);
        try registry.withdraw() {
            ++successes[A_WITHDRAW];
            if (!expectOk) ++earlyWithdrawSuccesses;
            Provider.View memory a = registry.getProvider(p);
            if (stakingToken.balanceOf(p) != walletBefore + b.unbonding) _violate("withdraw paid other than the unbonding amount");
            if (a.stake + b.unbonding != b.stake || a.unbonding != 0) _violate("withdraw left the wrong stake");
        } catch (bytes memory err) {
            if (expectOk) _violate(string.concat("withdraw after the unbonding period reverted: ", _sel(err)));
        }
    }

    /// @notice A tenant (or the treasury) withdraws what was credited to it: refunds in the lease
    /// manager, slash compensation in the registry. Each must succeed exactly when there is some.
    function withdrawCredit(uint256 accountSeed) external tracked(A_WITHDRAW_CREDIT) {
        address account = accountSeed % 8 == 0 ? treasury : _tenants[accountSeed % _tenants.length];
        uint256 credit = manager.creditOf(account);
        uint256 balanceBefore = paymentToken.balanceOf(account);
        vm.prank(account);
        try manager.withdrawCredit() {
            ++successes[A_WITHDRAW_CREDIT];
            if (credit == 0) _violate("withdrawCredit paid out with nothing credited");
            if (paymentToken.balanceOf(account) != balanceBefore + credit || manager.creditOf(account) != 0) {
                _violate("withdrawCredit paid other than the credit");
            }
        } catch (bytes memory err) {
            if (credit != 0) _violate(string.concat("withdrawCredit of a credit reverted: ", _sel(err)));
        }

        credit = registry.creditOf(account);
        balanceBefore = stakingToken.balanceOf(account);
        vm.prank(account);
        try registry.withdrawCredit() {
            if (credit == 0) _violate("registry withdrawCredit paid out with nothing credited");
            if (stakingToken.balanceOf(account) != balanceBefore + credit || registry.creditOf(account) != 0) {
                _violate("registry withdrawCredit paid other than the credit");
            }
        } catch (bytes memory err) {
            if (credit != 0) _violate(string.concat("registry withdrawCredit of a credit reverted: ", _sel(err)));
        }
    }

    /// @notice Lets time pass: mostly seconds to minutes, sometimes past heartbeat timeouts of
    /// any length, and rarely past the unbonding period.
    function warp(uint256 seed) external tracked(A_WARP) {
        uint256 kind = seed % 20;
        uint256 dt;
        if (kind < 8) dt = bound(_sub(seed, 8), 1, 2 minutes);
        else if (kind < 14) dt = bound(_sub(seed, 8), 1, 1 hours);
        else if (kind < 18) dt = bound(_sub(seed, 8), 1, 2 days);
        else dt = bound(_sub(seed, 8), 7 days, 8 days);
        _warp(dt);
        ++successes[A_WARP];
    }

    /// @notice Jumps to one second before, at, or after a boundary: a live lease's deadline or
    /// end (where slashing, heartbeats and expiry switch), or a provider's unbonding end.
    function warpToBoundary(uint256 leaseSeed, uint256 offsetSeed) external tracked(A_WARP_TO_BOUNDARY) {
        uint256 base;
        uint256 kind = offsetSeed % 3;
        if (kind == 2) {
            base = registry.getProvider(_providers[leaseSeed % _providers.length]).unbondingEndsAt;
        } else {
            uint256 id = _pickLease(leaseSeed | 1); // any odd seed picks a live lease when there is one
            if (id == 0) return;
            Lease.View memory v = manager.getLease(id);
            base = kind == 0 ? v.deadline : v.endsAt;
        }
        uint256 target = base + (_sub(offsetSeed, 1) % 3);
        if (target <= block.timestamp + 1) return;
        _warp(target - 1 - block.timestamp);
        ++successes[A_WARP_TO_BOUNDARY];
    }

    /*//////////////////////////////////////////////////////////////
                          VIEWS FOR THE INVARIANTS
    //////////////////////////////////////////////////////////////*/

    function providers() external view returns (address[] memory) {
        return _providers;
    }

    function tenants() external view returns (address[] memory) {
        return _tenants;
    }

    /// @notice Everyone the registry may owe a credit: the tenants, every slash caller, the treasury.
    function creditors() public view returns (address[] memory all) {
        all = new address[](_callers.length + 1);
        for (uint256 i = 0; i < _callers.length; ++i) all[i] = _callers[i];
        all[_callers.length] = treasury;
    }

    /// @notice The id of the `index`-th lease the handler saw open (1-based).
    function leaseIdAt(uint256 index) external view returns (uint256) {
        return _idAt[index];
    }

    function ghost(uint256 leaseId) external view returns (LeaseGhost memory) {
        return _ghosts[leaseId];
    }

    function snapshot(uint256 leaseId) external view returns (Lease.View memory) {
        return _snapshots[leaseId];
    }

    function slashCount() external view returns (uint256) {
        return _slashes.length;
    }

    function slashRecord(uint256 i) external view returns (SlashRecord memory) {
        return _slashes[i];
    }

    /// @notice Logs the call distribution and the main ghost figures of the current run.
    function logSummary() external view {
        (string memory calls_, string memory figures) = summary();
        _log(calls_);
        _log(figures);
    }

    /// @notice The call distribution and the main ghost figures of the current run, in words.
    function summary() public view returns (string memory line, string memory figures) {
        string[ACTIONS] memory names = [
            "openLease",
            "openFollowUp",
            "heartbeat",
            "claim",
            "topUp",
            "close",
            "finish",
            "slashMissedHeartbeat",
            "settleExpired",
            "stake",
            "requestUnstake",
            "withdraw",
            "warp",
            "warpToBoundary",
            "withdrawCredit",
            "openLeaseFor"
        ];
        line = "calls (ok/total):";
        for (uint256 i = 0; i < ACTIONS; ++i) {
            line = string.concat(line, " ", names[i], "=", Strings.toString(successes[i]), "/", Strings.toString(calls[i]));
        }
        uint256 replays;
        for (uint256 k = 0; k < REPLAY_KINDS; ++k) replays += replayAttempts[k];
        // Two concatenations, not one: twenty arguments are too deep for the stack of the legacy
        // code generator (the `default` build profile).
        string memory counts = string.concat(
            "leases=",
            Strings.toString(leaseCount),
            " slashes=",
            Strings.toString(_slashes.length),
            " repeatSlashAttempts=",
            Strings.toString(repeatSlashAttempts),
            " unstakeRequests=",
            Strings.toString(unstakeRequests),
            " replaysRejected=",
            Strings.toString(replays)
        );
        figures = string.concat(
            counts,
            " deposited=",
            Strings.toString(ghostDeposited),
            " refunded=",
            Strings.toString(ghostRefunded),
            " claimed=",
            Strings.toString(ghostClaimed),
            " secondsElapsed=",
            Strings.toString(maxTimeWarped),
            " violations=",
            Strings.toString(violations)
        );
    }

    /*//////////////////////////////////////////////////////////////
                        INTERNAL: OPENING AND REPLAYS
    //////////////////////////////////////////////////////////////*/

    /// @dev An open's parties, terms and signature, in memory rather than in locals: the legacy
    /// code generator (the `default` build profile) reaches only 16 stack slots.
    struct OpenPlan {
        uint256 providerIndex;
        uint256 tenantIndex;
        address provider;
        address tenant;
        uint256 jobIndex;
        uint256 price;
        uint256 collateral;
        uint64 timeout;
        uint64 period;
        uint64 duration;
        uint256 deposit;
        uint256 nonce;
        uint256 predecessor;
        bool predecessorValid;
        bool nonceAlreadySpent;
        bytes32 digest;
        bytes signature;
    }

    function _openRandom(
        uint256 parties,
        uint256 priceSeed,
        uint256 collateralSeed,
        uint256 timingSeed,
        uint256 depositSeed,
        uint256 nonceSeed,
        bool followUp,
        uint256 predecessorSeed
    ) internal {
        (OpenPlan memory plan, Lease.Quote memory q) = _plan(
            parties,
            priceSeed,
            collateralSeed,
            timingSeed,
            depositSeed,
            nonceSeed,
            followUp
        );

        // Predecessor.
        if (followUp) (plan.predecessor, plan.predecessorValid) = _pickPredecessor(plan.tenant, q.jobId, predecessorSeed);

        // Sign the digest computed here from the EIP-712 spec, not the contract's own hashQuote,
        // and check both agree: the SDK signs what the spec says.
        plan.digest = _digest(address(manager), block.chainid, q);
        if (manager.hashQuote(q) != plan.digest) _violate("hashQuote differs from the EIP-712 digest of the quote");
        plan.signature = _signDigest(_providerKeys[plan.providerIndex], plan.digest);

        vm.prank(plan.tenant);
        try manager.openLease(q, plan.signature, plan.deposit, plan.predecessor) returns (uint256 id) {
            ++successes[followUp ? A_OPEN_FOLLOW_UP : A_OPEN];
            if (plan.nonceAlreadySpent || digestUsed[plan.digest]) {
                ++quoteReuseSuccesses;
                _violate("a quote opened with a spent nonce or a used digest");
            }
            if (!plan.predecessorValid) _violate("openLease accepted an invalid predecessor");
            if (plan.predecessor != 0) {
                if (++successorsOpened[plan.predecessor] == 1) ghostSuccessor[plan.predecessor] = id;
                if (manager.successorOf(plan.predecessor) != id) _violate("successorOf does not name the new lease");
            }
            _recordOpen(id, q, plan.deposit, plan.digest);
            _replay(q, plan);
        } catch (bytes memory err) {
            bytes4 s = bytes4(err);
            if (s == ILeaseManager.LeaseManager_NonceUsed.selector && !plan.nonceAlreadySpent) {
                _violate("openLease rejected a fresh nonce as used");
            }
            if (s == ILeaseManager.LeaseManager_InvalidPredecessor.selector && plan.predecessorValid) {
                _violate("openLease rejected a valid predecessor");
            }
            if (s == ILeaseManager.LeaseManager_PredecessorContinued.selector && plan.predecessorValid) {
                _violate("openLease rejected a predecessor that nothing continued");
            }
            if (s == ILeaseManager.LeaseManager_InvalidSignature.selector) {
                _violate("openLease rejected a correctly signed quote");
            }
        }
    }

    /// @dev Random parties, terms and nonce for an open (see {_openRandom}).
    function _plan(
        uint256 parties,
        uint256 priceSeed,
        uint256 collateralSeed,
        uint256 timingSeed,
        uint256 depositSeed,
        uint256 nonceSeed,
        bool followUp
    ) internal returns (OpenPlan memory plan, Lease.Quote memory q) {
        plan.predecessorValid = true; // no predecessor is always valid
        plan.providerIndex = parties % _providers.length;
        plan.tenantIndex = _sub(parties, 8) % _tenants.length;
        plan.provider = _providers[plan.providerIndex];
        plan.tenant = _tenants[plan.tenantIndex];
        plan.jobIndex = _sub(parties, 16) % JOBS_PER_TENANT;

        // Terms.
        plan.price = bound(priceSeed, 1, MAX_PRICE);
        plan.collateral = collateralSeed % 8 == 0 ? 0 : bound(_sub(collateralSeed, 3), 1, MAX_COLLATERAL);
        uint256 timeoutKind = timingSeed % 5;
        plan.timeout = timeoutKind == 0
            ? uint64(bound(_sub(timingSeed, 8), 1 hours, manager.maxHeartbeatTimeout()))
            : timeoutKind < 3
                ? uint64(bound(_sub(timingSeed, 8), manager.minHeartbeatTimeout(), 5 minutes))
                : uint64(bound(_sub(timingSeed, 8), 5 minutes, 1 hours));
        plan.period = uint64(bound(_sub(timingSeed, 72), 1, plan.timeout / 2));
        plan.duration = uint64(bound(_sub(timingSeed, 136), 1, _sub(timingSeed, 99) % 3 == 0 ? 2 hours : MAX_DURATION));
        uint256 maxDeposit = plan.price * (uint256(plan.duration) + 600);
        plan.deposit = depositSeed % 4 == 0 ? bound(depositSeed, plan.price, maxDeposit) : bound(_sub(depositSeed, 1), plan.price, maxDeposit);

        // Nonce: usually fresh, sometimes one already spent, sometimes invalidated just before.
        uint256 nonceMode = followUp ? nonceSeed % 32 : nonceSeed % 16;
        if (nonceMode == 0 && _spentNonces[plan.provider].length > 0) {
            uint256[] storage spent = _spentNonces[plan.provider];
            plan.nonce = spent[_sub(nonceSeed, 8) % spent.length];
        } else if (nonceMode < 6) {
            plan.nonce = uint256(keccak256(abi.encode(nonceSeed, plan.provider, leaseCount))) >> 1; // sparse
        } else {
            plan.nonce = _nextNonce[plan.provider]++;
        }
        if (nonceMode == 1 && !nonceSpent[plan.provider][plan.nonce]) {
            vm.prank(plan.provider);
            manager.invalidateNonce(plan.nonce);
            _spendNonce(plan.provider, plan.nonce);
        }
        plan.nonceAlreadySpent = nonceSpent[plan.provider][plan.nonce];

        q = _quote(
            plan.providerIndex,
            plan.tenantIndex,
            plan.price,
            plan.collateral,
            plan.timeout,
            plan.duration,
            plan.jobIndex,
            plan.nonce
        );
        q.heartbeatPeriod = plan.period;
        q.expiry = uint64(block.timestamp + bound(_sub(timingSeed, 200), 0, 1 hours));
    }

    /// @dev After a successful open, every way of using the same quote again must fail, and fail
    /// for the reason that proves the defence under test (not an unrelated one).
    function _replay(Lease.Quote memory q, OpenPlan memory plan) internal {
        uint256 pred = plan.predecessor;

        // 1. The same quote again, by the same tenant, on the same contract (without the
        // predecessor, which the first open now continues: only the nonce must stop it).
        vm.prank(plan.tenant);
        try manager.openLease(q, plan.signature, plan.deposit, 0) returns (uint256 id) {
            _replaySucceeded(REPLAY_SAME_QUOTE, id, q, plan.deposit);
        } catch (bytes memory err) {
            _replayFailed(REPLAY_SAME_QUOTE, err, ILeaseManager.LeaseManager_NonceUsed.selector);
        }

        // 2. Another tenant sends the quote as it is.
        address other = _otherTenant(plan.tenant);
        vm.prank(other);
        try manager.openLease(q, plan.signature, plan.deposit, 0) returns (uint256 id) {
            _replaySucceeded(REPLAY_OTHER_TENANT, id, q, plan.deposit);
        } catch (bytes memory err) {
            _replayFailed(REPLAY_OTHER_TENANT, err, ILeaseManager.LeaseManager_CallerNotQuoteTenant.selector);
        }

        // 3. Another tenant rewrites the quote's tenant to itself and reuses the signature.
        Lease.Quote memory rewritten = _copy(q);
        rewritten.tenant = other;
        vm.prank(other);
        try manager.openLease(rewritten, plan.signature, plan.deposit, 0) returns (uint256 id) {
            _replaySucceeded(REPLAY_REWRITTEN_TENANT, id, rewritten, plan.deposit);
        } catch (bytes memory err) {
            _replayFailed(REPLAY_REWRITTEN_TENANT, err, ILeaseManager.LeaseManager_InvalidSignature.selector);
        }

        // 4. A second LeaseManager that shares nothing (its nonce bitmap is fresh).
        vm.prank(plan.tenant);
        try otherManager.openLease(q, plan.signature, plan.deposit, 0) {
            ++replayAttempts[REPLAY_OTHER_DEPLOYMENT];
            ++replaySuccesses[REPLAY_OTHER_DEPLOYMENT];
            _violate("a quote signed for one LeaseManager opened on another");
        } catch (bytes memory err) {
            _replayFailed(REPLAY_OTHER_DEPLOYMENT, err, ILeaseManager.LeaseManager_InvalidSignature.selector);
        }

        // 5. The same contract on another chain id (then the chain id is restored).
        uint256 chainId = block.chainid;
        vm.chainId(chainId + 1 + (uint256(plan.digest) % 1000));
        vm.prank(plan.tenant);
        try manager.openLease(q, plan.signature, plan.deposit, pred) returns (uint256 id) {
            vm.chainId(chainId);
            _replaySucceeded(REPLAY_OTHER_CHAIN, id, q, plan.deposit);
        } catch (bytes memory err) {
            vm.chainId(chainId);
            _replayFailed(REPLAY_OTHER_CHAIN, err, ILeaseManager.LeaseManager_InvalidSignature.selector);
        }
        if (block.chainid != chainId) _violate("handler failed to restore the chain id");

        // 6. The tenant swaps the image for another (or names one in a process job's quote) and
        // reuses the signature: the provider committed to one image only.
        Lease.Quote memory reimaged = _copy(q);
        reimaged.image = keccak256(abi.encode(q.image));
        vm.prank(plan.tenant);
        try manager.openLease(reimaged, plan.signature, plan.deposit, 0) returns (uint256 id) {
            _replaySucceeded(REPLAY_REWRITTEN_IMAGE, id, reimaged, plan.deposit);
        } catch (bytes memory err) {
            _replayFailed(REPLAY_REWRITTEN_IMAGE, err, ILeaseManager.LeaseManager_InvalidSignature.selector);
        }
    }

    function _replaySucceeded(uint256 kind, uint256 id, Lease.Quote memory q, uint256 deposit) internal {
        ++replayAttempts[kind];
        ++replaySuccesses[kind];
        _violate(string.concat("quote replay succeeded, kind ", Strings.toString(kind)));
        // Keep the books complete so that the other invariants still describe the system.
        _recordOpen(id, q, deposit, bytes32(0));
    }

    function _replayFailed(uint256 kind, bytes memory err, bytes4 expected) internal {
        ++replayAttempts[kind];
        if (bytes4(err) != expected) ++replayWrongReasons[kind];
    }

    function _recordOpen(uint256 id, Lease.Quote memory q, uint256 deposit, bytes32 digest) internal {
        if (id < OPENED_FOR_ID_BIT) {
            if (id != sequentialCount + 1) _violate("lease ids are not consecutive");
            sequentialCount = id;
        } else if (id != manager.leaseIdOf(q)) {
            _violate("openLeaseFor's lease id is not leaseIdOf its quote");
        }
        _idAt[++leaseCount] = id;
        LeaseGhost storage g = _ghosts[id];
        g.provider = q.provider;
        g.tenant = q.tenant;
        g.jobId = q.jobId;
        g.openedAt = uint64(block.timestamp);
        g.pricePerSecond = q.pricePerSecond;
        g.collateral = q.collateral;
        g.deposited = deposit;
        g.status = Lease.Status.Active;
        _leasesOfProvider[q.provider].push(id);
        _leasesOfJob[q.tenant][q.jobId].push(id);
        _actionDeposit += deposit;
        if (digest != bytes32(0)) {
            digestUsed[digest] = true;
            ++digestsRecorded;
        }
        _spendNonce(q.provider, q.nonce);
        if (!manager.isNonceUsed(q.provider, q.nonce)) _violate("a used nonce is not reported as used");
    }

    function _spendNonce(address p, uint256 nonce) internal {
        if (nonceSpent[p][nonce]) return;
        nonceSpent[p][nonce] = true;
        _spentNonces[p].push(nonce);
    }

    /// @dev Mostly an ended lease of the tenant's job (or none when there is none); one time in
    /// eight an invalid one: a live lease of the job, another tenant's lease, or an unknown id.
    function _pickPredecessor(
        address tenant,
        bytes32 jobId,
        uint256 seed
    ) internal view returns (uint256 id, bool valid) {
        if (seed % 8 == 0 && leaseCount > 0) {
            uint256 mode = _sub(seed, 3) % 3;
            if (mode == 0) id = sequentialCount + 1 + (_sub(seed, 8) % 3); // never opened
            else id = _idAt[_sub(seed, 8) % leaseCount + 1]; // whatever it is
            Lease.View memory v = manager.getLease(id);
            valid =
                v.tenant == tenant &&
                v.jobId == jobId &&
                v.status != Lease.Status.None &&
                v.status != Lease.Status.Active &&
                manager.successorOf(id) == 0;
            return (id, valid);
        }
        uint256[] storage own = _leasesOfJob[tenant][jobId];
        uint256 ended;
        for (uint256 i = 0; i < own.length; ++i) {
            if (manager.getLease(own[i]).status != Lease.Status.Active) ++ended;
        }
        if (ended == 0) return (0, true);
        uint256 k = _sub(seed, 8) % ended;
        for (uint256 i = 0; i < own.length; ++i) {
            if (manager.getLease(own[i]).status != Lease.Status.Active) {
                // One successor per lease: an ended lease already continued is no longer valid.
                if (k == 0) return (own[i], manager.successorOf(own[i]) == 0);
                --k;
            }
        }
    }

    function _quote(
        uint256 providerIndex,
        uint256 tenantIndex,
        uint256 price,
        uint256 collateral,
        uint64 timeout,
        uint64 duration,
        uint256 jobIndex,
        uint256 nonce
    ) internal view returns (Lease.Quote memory) {
        address tenant = _tenants[tenantIndex];
        bytes32 jobId = keccak256(abi.encode("job", tenant, jobIndex));
        return
            Lease.Quote({
                provider: _providers[providerIndex],
                tenant: tenant,
                jobId: jobId,
                resources: keccak256("gpu:1xH100-80GB"),
                // Half the jobs run an image, the same one for every lease of the job.
                image: uint256(jobId) % 2 == 0 ? bytes32(0) : sha256(abi.encode("manifest", jobId)),
                pricePerSecond: price,
                collateral: collateral,
                heartbeatPeriod: timeout / 2,
                heartbeatTimeout: timeout,
                maxDuration: duration,
                expiry: uint64(block.timestamp + 5 minutes),
                nonce: nonce
            });
    }

    function _digest(address verifyingContract, uint256 chainId, Lease.Quote memory q) internal pure returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("Baton LeaseManager"), keccak256("1"), chainId, verifyingContract)
        );
        bytes32 structHash = keccak256(
            bytes.concat(
                abi.encode(QUOTE_TYPEHASH, q.provider, q.tenant, q.jobId, q.resources, q.image, q.pricePerSecond),
                abi.encode(q.collateral, q.heartbeatPeriod, q.heartbeatTimeout, q.maxDuration, q.expiry, q.nonce)
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function _signDigest(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _copy(Lease.Quote memory q) internal pure returns (Lease.Quote memory c) {
        c = Lease.Quote({
            provider: q.provider,
            tenant: q.tenant,
            jobId: q.jobId,
            resources: q.resources,
            image: q.image,
            pricePerSecond: q.pricePerSecond,
            collateral: q.collateral,
            heartbeatPeriod: q.heartbeatPeriod,
            heartbeatTimeout: q.heartbeatTimeout,
            maxDuration: q.maxDuration,
            expiry: q.expiry,
            nonce: q.nonce
        });
    }

    /*//////////////////////////////////////////////////////////////
                         INTERNAL: SLASHING
    //////////////////////////////////////////////////////////////*/

    function _trySlash(uint256 id, address caller) internal returns (bool ok) {
        LeaseGhost storage g = _ghosts[id];
        Lease.View memory b = manager.getLease(id);
        bool repeat = g.slashes > 0;
        if (repeat) ++repeatSlashAttempts;
        bool expectOk = _isLive(b.status) && b.slashable;

        // Staking tokens held by or credited to the recipients (each counted once, even if the caller
        // is the tenant); what the registry holds beyond its credits.
        address[3] memory who = [b.tenant, caller, treasury];
        uint256[3] memory balBefore;
        for (uint256 i = 0; i < 3; ++i) balBefore[i] = _stakeOwedTo(who[i]);
        uint256 registryBefore = stakingToken.balanceOf(address(registry)) - _registryCredits();
        uint256 stakeBefore = registry.getProvider(b.provider).stake;
        uint256 tenantPayBefore = _paymentOwedTo(b.tenant);

        vm.prank(caller);
        try manager.slashMissedHeartbeat(id) {
            ok = true;
        } catch (bytes memory err) {
            if (expectOk) _violate(string.concat("slash of a slashable lease reverted: ", _sel(err)));
            return false;
        }

        if (repeat) ++repeatSlashSuccesses;
        ++g.slashes;
        if (!expectOk) _violate("slash succeeded on a lease that was not slashable");

        uint256 paidOut;
        for (uint256 i = 0; i < 3; ++i) {
            bool seen;
            for (uint256 j = 0; j < i; ++j) if (who[j] == who[i]) seen = true;
            if (!seen) paidOut += _drop(_stakeOwedTo(who[i]), balBefore[i]);
        }
        _checkSlashPayouts(b, caller, balBefore, tenantPayBefore);
        _recordSlash(id, caller, b, paidOut, registryBefore, stakeBefore);
    }

    /// @dev What a successful slash must have paid the caller and the tenant. (This and
    /// {_recordSlash} are functions of their own so that {_trySlash} fits the 16 stack slots of
    /// the legacy code generator, the `default` build profile.)
    function _checkSlashPayouts(
        Lease.View memory b,
        address caller,
        uint256[3] memory balBefore,
        uint256 tenantPayBefore
    ) internal {
        uint256 tenantShare = (b.collateral * manager.tenantShareBps()) / 10_000;
        // A provider slashing its own lease from its own address gets no reward (it goes to the treasury).
        uint256 callerShare = caller == b.provider ? 0 : (b.collateral * manager.callerShareBps()) / 10_000;
        if (caller != b.tenant && _stakeOwedTo(caller) != balBefore[1] + callerShare) {
            _violate("slash paid the caller the wrong share");
        }
        if (caller != b.tenant && _stakeOwedTo(b.tenant) != balBefore[0] + tenantShare) {
            _violate("slash paid the tenant the wrong share");
        }
        if (_paymentOwedTo(b.tenant) + b.earned != tenantPayBefore + b.deposit) {
            _violate("slash refunded the tenant the wrong amount");
        }
    }

    /// @dev Appends the record of a successful slash, field by field (a struct literal of eleven
    /// fields is too deep for the legacy code generator).
    function _recordSlash(
        uint256 id,
        address caller,
        Lease.View memory b,
        uint256 paidOut,
        uint256 registryBefore,
        uint256 stakeBefore
    ) internal {
        SlashRecord storage r = _slashes.push();
        r.leaseId = id;
        r.caller = caller;
        r.time = uint64(block.timestamp);
        r.deadline = b.deadline;
        r.endsAt = b.endsAt;
        r.statusBefore = b.status;
        r.collateral = b.collateral;
        r.paidOut = paidOut;
        r.registryDrop = _drop(registryBefore, stakingToken.balanceOf(address(registry)) - _registryCredits());
        r.stakeDrop = _drop(stakeBefore, registry.getProvider(b.provider).stake);
        r.unstakeRequestedWhileLive = _ghosts[id].unstakeRequestedWhileLive;
    }

    /*//////////////////////////////////////////////////////////////
                      INTERNAL: HEARTBEAT MODEL
    //////////////////////////////////////////////////////////////*/

    /// @dev What one heartbeat must do to one lease, from the lease as it was just before.
    function _checkHeartbeat(uint256 id, Lease.View memory b) internal {
        Lease.View memory a = manager.getLease(id);
        uint256 now_ = block.timestamp;
        if (b.status == Lease.Status.Active) {
            if (now_ < b.endsAt && now_ <= b.deadline) {
                if (a.status != Lease.Status.Active || a.lastHeartbeat != now_) _violate("a timely heartbeat was not recorded");
            } else if (b.expired) {
                if (a.status != Lease.Status.Expired) _violate("a heartbeat did not settle an expired lease");
            } else {
                if (a.status != b.status || a.lastHeartbeat != b.lastHeartbeat) _violate("a late heartbeat changed the lease");
                if (b.slashable && !a.slashable) _violate("a late heartbeat rescued a provider from a slash");
            }
        } else if (b.status == Lease.Status.Closing) {
            if (now_ <= b.deadline) {
                if (a.status != Lease.Status.Closed) _violate("a timely heartbeat did not acknowledge a close");
            } else if (a.status != Lease.Status.Closing || !a.slashable) {
                _violate("a late heartbeat acknowledged a close");
            }
        } else if (a.status != b.status || a.lastHeartbeat != b.lastHeartbeat) {
            _violate("a heartbeat changed an ended lease");
        }
    }

    /*//////////////////////////////////////////////////////////////
                     INTERNAL: BOOKKEEPING AND HELPERS
    //////////////////////////////////////////////////////////////*/

    /// @dev Wraps every action: counts it, measures what tenants and providers received in payment
    /// tokens during it, then snapshots every lease that ended.
    modifier tracked(uint256 action) {
        ++calls[action];
        if (block.timestamp < _lastTimestamp) _violate("block time went backwards between handler calls");
        _actionDeposit = 0;
        uint256 tenantsBefore = _sum(paymentToken, _tenants);
        uint256 providersBefore = _sum(paymentToken, _providers);
        _;
        uint256 tenantsAfter = _sum(paymentToken, _tenants);
        uint256 providersAfter = _sum(paymentToken, _providers);
        ghostDeposited += _actionDeposit;
        if (tenantsAfter + _actionDeposit < tenantsBefore) _violate("tenants paid more than the deposits recorded");
        else ghostRefunded += tenantsAfter + _actionDeposit - tenantsBefore;
        if (providersAfter < providersBefore) _violate("providers lost payment tokens");
        else ghostClaimed += providersAfter - providersBefore;
        _sync();
        _lastTimestamp = block.timestamp;
    }

    function _sync() internal {
        if (manager.leaseCount() != sequentialCount) _violate("the manager holds leases the handler did not see open");
        uint256 n = leaseCount;
        for (uint256 i = 1; i <= n; ++i) {
            uint256 id = _idAt[i];
            LeaseGhost storage g = _ghosts[id];
            if (g.snapped) continue;
            Lease.View memory v = manager.getLease(id);
            g.status = v.status;
            _checkDerivedFields(v);
            if (_isEnded(v.status)) {
                _snapshots[id] = v;
                g.snapped = true;
            }
        }
    }

    /// @dev The view's derived flags, recomputed from the documented rules.
    function _checkDerivedFields(Lease.View memory v) internal {
        // A closing lease's provider has a whole timeout from the close, which set endsAt.
        uint256 from = v.status == Lease.Status.Closing ? v.endsAt : v.lastHeartbeat;
        uint256 deadline = from + v.heartbeatTimeout;
        if (v.deadline != deadline) _violate("deadline is not last heartbeat (close, when closing) plus timeout");
        bool slashable;
        bool expired;
        if (v.status == Lease.Status.Active) {
            slashable = block.timestamp > deadline && deadline < v.endsAt;
            expired = block.timestamp >= v.endsAt && deadline >= v.endsAt;
        } else if (v.status == Lease.Status.Closing) {
            slashable = block.timestamp > deadline;
        }
        if (v.slashable != slashable) _violate("getLease's slashable flag disagrees with the rule");
        if (v.expired != expired) _violate("getLease's expired flag disagrees with the rule");
    }

    function _warp(uint256 dt) internal {
        vm.warp(block.timestamp + dt);
        vm.roll(block.number + 1);
        maxTimeWarped += dt;
    }

    /// @dev A random lease id; three times in four, a live (Active or Closing) one when any exists.
    function _pickLease(uint256 seed) internal view returns (uint256) {
        uint256 n = leaseCount;
        if (n == 0) return 0;
        if (seed % 4 != 0) {
            uint256 live;
            for (uint256 i = 1; i <= n; ++i) if (_isLive(_ghosts[_idAt[i]].status)) ++live;
            if (live > 0) {
                uint256 k = _sub(seed, 8) % live;
                for (uint256 i = 1; i <= n; ++i) {
                    if (_isLive(_ghosts[_idAt[i]].status)) {
                        if (k == 0) return _idAt[i];
                        --k;
                    }
                }
            }
        }
        return _idAt[(_sub(seed, 8) % n) + 1];
    }

    /// @dev A random live lease that is slashable now (or, with `slashable` false, expired now), or zero.
    function _pickFlagged(uint256 seed, bool slashable) internal view returns (uint256) {
        uint256 n = leaseCount;
        uint256[] memory pool = new uint256[](n);
        uint256 len;
        for (uint256 i = 1; i <= n; ++i) {
            uint256 id = _idAt[i];
            if (!_isLive(_ghosts[id].status)) continue;
            Lease.View memory v = manager.getLease(id);
            if (slashable ? v.slashable : v.expired) pool[len++] = id;
        }
        return len == 0 ? 0 : pool[_sub(seed, 24) % len];
    }

    /// @dev A window of distinct leases of `p`, preferring its live ones.
    function _batch(address p, uint256 seed, uint256 maxLen) internal view returns (uint256[] memory ids) {
        uint256[] storage own = _leasesOfProvider[p];
        uint256[] memory pool = new uint256[](own.length);
        uint256 len;
        bool liveOnly = seed % 4 != 0;
        for (uint256 i = 0; i < own.length; ++i) {
            if (!liveOnly || _isLive(_ghosts[own[i]].status)) pool[len++] = own[i];
        }
        if (len == 0) return new uint256[](0);
        uint256 k = (_sub(seed, 2) % (len < maxLen ? len : maxLen)) + 1;
        uint256 start = _sub(seed, 16) % len;
        ids = new uint256[](k);
        for (uint256 i = 0; i < k; ++i) ids[i] = pool[(start + i) % len];
    }

    /// @dev A lease of a provider other than `p`, or zero.
    function _intruderFor(address p, uint256 seed) internal view returns (uint256) {
        for (uint256 i = 0; i < _providers.length; ++i) {
            address q = _providers[(seed + i) % _providers.length];
            if (q != p && _leasesOfProvider[q].length > 0) return _leasesOfProvider[q][0];
        }
        return 0;
    }

    function _withIntruder(uint256[] memory ids, address p, uint256 seed) internal view returns (uint256[] memory out) {
        out = new uint256[](ids.length + 1);
        for (uint256 i = 0; i < ids.length; ++i) out[i] = ids[i];
        out[ids.length] = _intruderFor(p, seed);
    }

    function _otherTenant(address t) internal view returns (address) {
        for (uint256 i = 0; i < _tenants.length; ++i) {
            if (_tenants[i] == t) return _tenants[(i + 1) % _tenants.length];
        }
        return _tenants[0];
    }

    function _otherProvider(address p) internal view returns (address) {
        for (uint256 i = 0; i < _providers.length; ++i) {
            if (_providers[i] == p) return _providers[(i + 1) % _providers.length];
        }
        return _providers[0];
    }

    function _register(System memory s, address p, string memory peerId) internal {
        s.stakingToken.mint(p, INITIAL_STAKE);
        vm.startPrank(p);
        s.stakingToken.approve(address(s.registry), type(uint256).max);
        s.registry.register(peerId, "{}", INITIAL_STAKE);
        vm.stopPrank();
    }

    function _fund(System memory s, address t) internal {
        s.paymentToken.mint(t, TENANT_FUNDS);
        vm.prank(t);
        s.paymentToken.approve(address(s.manager), type(uint256).max);
    }

    /// @dev Payment tokens `who` holds or may withdraw from the manager.
    function _paymentOwedTo(address who) internal view returns (uint256) {
        return paymentToken.balanceOf(who) + manager.creditOf(who);
    }

    /// @dev Staking tokens `who` holds or may withdraw from the registry.
    function _stakeOwedTo(address who) internal view returns (uint256) {
        return stakingToken.balanceOf(who) + registry.creditOf(who);
    }

    /// @dev Everything the registry has credited and not yet paid.
    function _registryCredits() internal view returns (uint256 total) {
        address[] memory all = creditors();
        for (uint256 i = 0; i < all.length; ++i) total += registry.creditOf(all[i]);
    }

    function _sum(DevToken token, address[] storage who) internal view returns (uint256 total) {
        for (uint256 i = 0; i < who.length; ++i) total += token.balanceOf(who[i]);
    }

    function _isLive(Lease.Status s) internal pure returns (bool) {
        return s == Lease.Status.Active || s == Lease.Status.Closing;
    }

    function _isEnded(Lease.Status s) internal pure returns (bool) {
        return
            s == Lease.Status.Completed ||
            s == Lease.Status.Closed ||
            s == Lease.Status.Expired ||
            s == Lease.Status.Slashed;
    }

    function _violate(string memory what) internal {
        if (violations == 0) firstViolation = string.concat(what, " (at t=", Strings.toString(block.timestamp), ")");
        ++violations;
    }

    /// @dev `from - to`, or zero (and a violation) if it would be negative: an underflow here would
    /// revert the handler call and hide what it found.
    function _drop(uint256 from, uint256 to) internal returns (uint256) {
        if (to > from) {
            _violate("a balance moved the wrong way");
            return 0;
        }
        return from - to;
    }

    function _sel(bytes memory err) internal pure returns (string memory) {
        if (err.length < 4) return "empty revert";
        bytes memory hexChars = "0123456789abcdef";
        bytes memory out = new bytes(10);
        out[0] = "0";
        out[1] = "x";
        for (uint256 i = 0; i < 4; ++i) {
            out[2 + 2 * i] = hexChars[uint8(err[i]) >> 4];
            out[3 + 2 * i] = hexChars[uint8(err[i]) & 0x0f];
        }
        return string(out);
    }

    function _log(string memory message) internal view {
        (bool ok, ) = CONSOLE.staticcall(abi.encodeWithSignature("log(string)", message));
        ok;
    }

    /// @dev An independent pseudo-random value derived from a seed: the fuzzer favours small and
    /// edge values, whose shifted bits would all be zero.
    function _sub(uint256 seed, uint256 salt) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode(seed, salt)));
    }
}
