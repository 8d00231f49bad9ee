// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {ILeaseManager} from "./interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";
import {Lease} from "./types/Lease.sol";
import {Provider} from "./types/Provider.sol";

/// @title LeaseManager
/// @notice See the documentation in {ILeaseManager}.
contract LeaseManager is ILeaseManager, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @dev The EIP-712 type of {Lease.Quote}; the SDK builds the same type from the generated ABI.
    bytes32 internal constant QUOTE_TYPEHASH =
        keccak256(
            "Quote(address provider,address tenant,bytes32 jobId,bytes32 resources,bytes32 image,"
            "uint256 pricePerSecond,uint256 collateral,uint64 heartbeatPeriod,uint64 heartbeatTimeout,"
            "uint64 maxDuration,uint64 expiry,uint256 nonce)"
        );

    /// @dev The EIP-712 type of {Lease.Opening}, the quote nested; the SDK builds the same type.
    bytes32 internal constant OPENING_TYPEHASH =
        keccak256(
            "Opening(Quote quote,uint256 deposit,uint256 predecessor,uint64 deadline)"
            "Quote(address provider,address tenant,bytes32 jobId,bytes32 resources,bytes32 image,"
            "uint256 pricePerSecond,uint256 collateral,uint64 heartbeatPeriod,uint64 heartbeatTimeout,"
            "uint64 maxDuration,uint64 expiry,uint256 nonce)"
        );

    /// @dev Ids of {openLeaseFor}'s leases have this bit set: {openLease}'s count up from 1 and never reach it.
    uint256 internal constant OPENED_FOR_ID_BIT = 1 << 63;

    /// @dev Tokens sent here are burned: most ERC-20s refuse transfers to the zero address.
    address internal constant BURN_ADDRESS = 0x000000000000000000000000000000000000dEaD;

    /// @dev A CIDv1 in base32 with a sha2-256 multihash is 59 characters; 256 leaves room for
    /// other encodings while bounding the log data anyone can make us emit.
    uint256 internal constant MAX_CID_LENGTH = 256;

    uint16 internal constant BPS = 10_000;

    /// @inheritdoc ILeaseManager
    IERC20 public immutable override paymentToken;

    /// @inheritdoc ILeaseManager
    IProviderRegistry public immutable override registry;

    /// @inheritdoc ILeaseManager
    uint16 public immutable override tenantShareBps;

    /// @inheritdoc ILeaseManager
    uint16 public immutable override callerShareBps;

    /// @inheritdoc ILeaseManager
    address public immutable override treasury;

    /// @inheritdoc ILeaseManager
    uint64 public immutable override minHeartbeatTimeout;

    /// @inheritdoc ILeaseManager
    uint64 public immutable override maxHeartbeatTimeout;

    /// @inheritdoc ILeaseManager
    uint256 public override leaseCount;

    mapping(uint256 leaseId => Lease.Record record) private _leases;
    mapping(address provider => Lease.ProviderAccount account) private _accounts;
    mapping(address provider => mapping(uint256 word => uint256 bits)) private _nonceBitmap;
    mapping(uint256 leaseId => uint256 successor) private _successors;
    mapping(address tenant => uint256 amount) private _credits;

    /// @param paymentToken_ The ERC-20 token tenants pay in.
    /// @param registry_ The provider registry; it must name this contract as its lease manager (the
    /// deploy module gives it this contract's address before deploying it).
    /// @param tenantShareBps_ Share of a slashed collateral paid to the tenant.
    /// @param callerShareBps_ Share of a slashed collateral paid to the slash's caller.
    /// @param treasury_ Receives the rest of a slashed collateral, credited in the registry for it to
    /// withdraw (unless it calls the slash itself); zero burns it (credit nobody can withdraw).
    /// @param minHeartbeatTimeout_ Shortest heartbeat timeout a quote may set: a few block times of
    /// the chain, so that a heartbeat sent in time can be mined in time.
    /// @param maxHeartbeatTimeout_ Longest heartbeat timeout a quote may set; it must be shorter
    /// than the registry's unbonding period, so that stake outlives every lease's slash window.
    constructor(
        IERC20 paymentToken_,
        IProviderRegistry registry_,
        uint16 tenantShareBps_,
        uint16 callerShareBps_,
        address treasury_,
        uint64 minHeartbeatTimeout_,
        uint64 maxHeartbeatTimeout_
    ) EIP712("Baton LeaseManager", "1") {
        if (address(paymentToken_) == address(0) || address(registry_) == address(0)) {
            revert LeaseManager_ZeroAddress();
        }
        // The pair is wired at deployment or not at all: a registry that names another lease manager
        // would refuse every lock from this one, and hold stake for a manager that never works.
        address wiredTo = registry_.leaseManager();
        if (wiredTo != address(this)) revert LeaseManager_RegistryWiredElsewhere(address(registry_), wiredTo);
        if (uint256(tenantShareBps_) + callerShareBps_ > BPS) {
            revert LeaseManager_InvalidShares(tenantShareBps_, callerShareBps_);
        }
        uint64 unbondingPeriod = registry_.unbondingPeriod();
        if (
            maxHeartbeatTimeout_ == 0 ||
            maxHeartbeatTimeout_ > type(uint24).max ||
            maxHeartbeatTimeout_ >= unbondingPeriod
        ) {
            revert LeaseManager_InvalidMaxHeartbeatTimeout(maxHeartbeatTimeout_, unbondingPeriod);
        }
        if (minHeartbeatTimeout_ < 2 || minHeartbeatTimeout_ > maxHeartbeatTimeout_) {
            revert LeaseManager_InvalidMinHeartbeatTimeout(minHeartbeatTimeout_, maxHeartbeatTimeout_);
        }
        paymentToken = paymentToken_;
        registry = registry_;
        tenantShareBps = tenantShareBps_;
        callerShareBps = callerShareBps_;
        treasury = treasury_ == address(0) ? BURN_ADDRESS : treasury_;
        minHeartbeatTimeout = minHeartbeatTimeout_;
        maxHeartbeatTimeout = maxHeartbeatTimeout_;
    }

    /*//////////////////////////////////////////////////////////////
                              VIEW FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ILeaseManager
    function getLease(uint256 leaseId) external view override returns (Lease.View memory view_) {
        Lease.Record storage r = _leases[leaseId];
        bool slashable = _isSlashable(r);
        bool expired = _isExpired(r);
        uint256 earned;
        if (r.status == Lease.Status.Active && !slashable) {
            uint32 earnedUntil = expired ? r.endsAt : r.lastHeartbeat;
            earned = uint256(earnedUntil - r.settledUntil) * r.pricePerSecond;
        } else if (r.status == Lease.Status.Active) {
            earned = uint256(r.lastHeartbeat - r.settledUntil) * r.pricePerSecond;
        }
        view_ = Lease.View({
            provider: r.provider,
            tenant: r.tenant,
            jobId: r.jobId,
            status: r.status,
            expired: expired,
            slashable: slashable,
            lastHeartbeat: r.lastHeartbeat,
            deadline: _deadline(r),
            endsAt: r.endsAt,
            maxEnd: r.maxEnd,
            settledUntil: r.settledUntil,
            heartbeatTimeout: r.heartbeatTimeout,
            pricePerSecond: r.pricePerSecond,
            collateral: r.collateral,
            deposit: r.deposit,
            earned: earned
        });
    }

    /// @inheritdoc ILeaseManager
    function claimable(address provider) external view override returns (uint256) {
        return _accounts[provider].claimable;
    }

    /// @inheritdoc ILeaseManager
    function secondsServed(address provider) external view override returns (uint64) {
        return _accounts[provider].secondsServed;
    }

    /// @inheritdoc ILeaseManager
    function successorOf(uint256 leaseId) external view override returns (uint256) {
        return _successors[leaseId];
    }

    /// @inheritdoc ILeaseManager
    function creditOf(address tenant) external view override returns (uint256) {
        return _credits[tenant];
    }

    /// @inheritdoc ILeaseManager
    function isNonceUsed(address provider, uint256 nonce) external view override returns (bool) {
        return _nonceBitmap[provider][nonce >> 8] & (1 << (nonce & 0xff)) != 0;
    }

    /// @inheritdoc ILeaseManager
    function hashQuote(Lease.Quote calldata quote) public view override returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(QUOTE_TYPEHASH, quote)));
    }

    /// @inheritdoc ILeaseManager
    function hashOpening(Lease.Opening calldata opening) public view override returns (bytes32) {
        bytes32 quoteHash = keccak256(abi.encode(QUOTE_TYPEHASH, opening.quote));
        return
            _hashTypedDataV4(
                keccak256(
                    abi.encode(OPENING_TYPEHASH, quoteHash, opening.deposit, opening.predecessor, opening.deadline)
                )
            );
    }

    /// @inheritdoc ILeaseManager
    function leaseIdOf(Lease.Quote calldata quote) public view override returns (uint256) {
        return uint256(uint64(bytes8(hashQuote(quote)))) | OPENED_FOR_ID_BIT;
    }

    /*//////////////////////////////////////////////////////////////
                            TENANT FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ILeaseManager
    function openLease(
        Lease.Quote calldata quote,
        bytes calldata signature,
        uint256 deposit,
        uint256 predecessor
    ) external override nonReentrant returns (uint256 leaseId) {
        leaseId = _openLease(quote, signature, deposit, predecessor);
    }

    /// @inheritdoc ILeaseManager
    function openLeaseWithPermit(
        Lease.Quote calldata quote,
        bytes calldata signature,
        uint256 deposit,
        uint256 predecessor,
        Lease.Permit calldata permit
    ) external override nonReentrant returns (uint256 leaseId) {
        // Interaction: a permit anyone can front-run must not block the open (OpenZeppelin's
        // advice for ERC-2612); the transfer below fails anyway if no allowance results.
        try
            IERC20Permit(address(paymentToken)).permit(
                msg.sender,
                address(this),
                permit.value,
                permit.deadline,
                permit.v,
                permit.r,
                permit.s
            )
        {} catch {} // solhint-disable-line no-empty-blocks
        leaseId = _openLease(quote, signature, deposit, predecessor);
    }

    /// @inheritdoc ILeaseManager
    function openLeaseFor(
        Lease.Opening calldata opening,
        bytes calldata tenantSignature
    ) external override nonReentrant returns (uint256 leaseId) {
        Lease.Quote calldata quote = opening.quote;
        address tenant = quote.tenant;

        // Check: the quote's provider submits, in time, an opening its tenant signed, on a live and
        // well-formed quote (the caller's own: no quote signature needed).
        if (msg.sender != quote.provider) revert LeaseManager_CallerNotQuoteProvider(quote.provider, msg.sender);
        if (block.timestamp > opening.deadline) revert LeaseManager_OpeningExpired(opening.deadline, block.timestamp);
        if (block.timestamp > quote.expiry) revert LeaseManager_QuoteExpired(quote.expiry, block.timestamp);
        _checkQuote(quote, opening.deposit);
        if (!_isValidSignature(tenant, hashOpening(opening), tenantSignature)) {
            revert LeaseManager_InvalidTenantSignature(tenant);
        }
        leaseId = leaseIdOf(quote);
        if (_leases[leaseId].status != Lease.Status.None) revert LeaseManager_LeaseIdTaken(leaseId);

        // Check, effect and interaction: the predecessor is checked and, while still active, ended as
        // its own call would have ended it just before this one.
        uint256 predecessor = opening.predecessor;
        if (predecessor != 0) {
            Lease.Record storage p = _checkPredecessor(predecessor, tenant, quote.jobId);
            if (p.status == Lease.Status.Active) _endForTenant(predecessor, p);
        }

        // Effect: burn the nonce and record the lease (and the job's one line of succession).
        _useNonce(quote.provider, quote.nonce);
        if (predecessor != 0) _successors[predecessor] = leaseId;
        uint32 endsAt = _recordLease(leaseId, quote, tenant, opening.deposit);
        emit LeaseOpened(
            leaseId,
            quote.jobId,
            quote.provider,
            tenant,
            predecessor,
            opening.deposit,
            endsAt,
            _termsOf(quote)
        );

        // Interaction: lock the collateral and pull the deposit from the tenant.
        registry.lockCollateral(quote.provider, quote.collateral);
        _pull(tenant, opening.deposit);
    }

    /// @inheritdoc ILeaseManager
    function topUp(uint256 leaseId, uint256 amount) external override nonReentrant {
        Lease.Record storage r = _leases[leaseId];

        // Check: the tenant tops up a lease that can still run.
        if (msg.sender != r.tenant) revert LeaseManager_CallerNotTenant(leaseId, msg.sender);
        if (amount == 0) revert LeaseManager_ZeroAmount();
        _requireRunning(leaseId, r);
        uint256 deposit = uint256(r.deposit) + amount;
        if (deposit > type(uint96).max) revert LeaseManager_AmountTooLarge(amount);

        uint32 endsAt = _endsAt(r.settledUntil, deposit, r.pricePerSecond, r.maxEnd);
        // A lease set to expire cleanly (its deadline at or past its end) turns slashable if its
        // end moves past the deadline: the provider must have half a timeout, at least one
        // heartbeat period, to see the top-up and heartbeat.
        uint64 deadline = _deadline(r);
        if (deadline >= r.endsAt && endsAt > deadline && deadline < block.timestamp + r.heartbeatTimeout / 2) {
            revert LeaseManager_TopUpTooLate(leaseId, deadline);
        }

        // Effect: a bigger deposit funds the lease for longer, up to its maximum duration.
        r.deposit = uint96(deposit);
        r.endsAt = endsAt;
        emit LeaseToppedUp(leaseId, amount, deposit, endsAt);

        // Interaction.
        _pull(msg.sender, amount);
    }

    /// @inheritdoc ILeaseManager
    function close(uint256 leaseId) external override nonReentrant {
        Lease.Record storage r = _leases[leaseId];

        // Check: the tenant closes an active lease that is not already slashable.
        if (msg.sender != r.tenant) revert LeaseManager_CallerNotTenant(leaseId, msg.sender);
        if (r.status != Lease.Status.Active) revert LeaseManager_LeaseNotActive(leaseId, r.status);
        if (_isSlashable(r)) revert LeaseManager_LeaseSlashable(leaseId, _deadline(r));
        _close(leaseId, r);
    }

    /// @dev Closes an active, unslashable lease for its tenant (settles it if it expired).
    function _close(uint256 leaseId, Lease.Record storage r) internal {
        if (_isExpired(r)) {
            _settleExpired(leaseId, r);
            return;
        }

        // Effect: pay the heartbeat-covered time, refund the rest, and wait for the provider, who
        // has a whole heartbeat timeout from now to acknowledge (the lease ends now: see {_deadline}).
        r.status = Lease.Status.Closing;
        r.endsAt = uint32(block.timestamp);
        uint256 refund = _settleFinal(leaseId, r, r.lastHeartbeat);
        emit LeaseCloseRequested(leaseId, refund);

        // Interaction: refund the tenant.
        _refund(r.tenant, refund);
    }

    /*//////////////////////////////////////////////////////////////
                           PROVIDER FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ILeaseManager
    function heartbeat(uint256[] calldata leaseIds, string[] calldata checkpointCids) external override nonReentrant {
        // Check: one CID per lease, or none at all.
        bool withCids = checkpointCids.length != 0;
        if (withCids && checkpointCids.length != leaseIds.length) {
            revert LeaseManager_LengthMismatch(leaseIds.length, checkpointCids.length);
        }

        uint32 now_ = uint32(block.timestamp);
        for (uint256 i = 0; i < leaseIds.length; ++i) {
            uint256 leaseId = leaseIds[i];
            Lease.Record storage r = _leases[leaseId];

            // Check: every lease in the batch is the caller's.
            if (r.provider != msg.sender) revert LeaseManager_CallerNotProvider(leaseId, msg.sender);

            Lease.Status status = r.status;
            uint64 deadline = _deadline(r);
            if (status == Lease.Status.Active) {
                // A lease past its end or its deadline takes no heartbeat: a late heartbeat must not
                // rescue a provider from a slash, and an expired lease is settled instead.
                if (now_ >= r.endsAt || now_ > deadline) {
                    if (_isExpired(r)) _settleExpired(leaseId, r);
                    continue;
                }

                // Effect: the provider is alive now.
                r.lastHeartbeat = now_;
                emit HeartbeatRecorded(leaseId, now_);
                if (withCids && bytes(checkpointCids[i]).length != 0) {
                    _checkCid(checkpointCids[i]);
                    emit CheckpointCommitted(leaseId, checkpointCids[i]);
                }
            } else if (status == Lease.Status.Closing && now_ <= deadline) {
                // Effect: the provider acknowledged the tenant's close in time.
                r.status = Lease.Status.Closed;
                r.lastHeartbeat = now_;
                emit HeartbeatRecorded(leaseId, now_);
                emit LeaseClosed(leaseId);

                // Interaction: free its collateral.
                registry.releaseCollateral(msg.sender, leaseId, r.collateral, false);
            }
        }
    }

    /// @inheritdoc ILeaseManager
    function claim(uint256[] calldata leaseIds) external override nonReentrant returns (uint256 amount) {
        uint256 earnedTotal;
        uint64 secondsTotal;
        for (uint256 i = 0; i < leaseIds.length; ++i) {
            uint256 leaseId = leaseIds[i];
            Lease.Record storage r = _leases[leaseId];

            // Check: every lease in the batch is the caller's; ended ones have nothing left.
            if (r.provider != msg.sender) revert LeaseManager_CallerNotProvider(leaseId, msg.sender);
            if (r.status != Lease.Status.Active) continue;

            if (_isExpired(r)) {
                _settleExpired(leaseId, r);
                continue;
            }

            // Effect: move what the heartbeats covered from the deposit to the claimable balance.
            uint32 until = r.lastHeartbeat;
            uint32 from = r.settledUntil;
            if (until <= from) continue;
            uint256 earned = uint256(until - from) * r.pricePerSecond;
            r.deposit -= uint96(earned);
            r.settledUntil = until;
            earnedTotal += earned;
            secondsTotal += until - from;
            emit EarningsSettled(leaseId, msg.sender, earned, until);
        }

        // Effect: count the service and empty the claimable balance, in one write.
        Lease.ProviderAccount storage account = _accounts[msg.sender];
        amount = account.claimable + earnedTotal;
        account.claimable = 0;
        account.secondsServed += secondsTotal;
        emit EarningsClaimed(msg.sender, amount);

        // Interaction: pay the provider.
        if (amount > 0) paymentToken.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc ILeaseManager
    function finish(uint256 leaseId, string calldata resultCid) external override nonReentrant {
        Lease.Record storage r = _leases[leaseId];

        // Check: the provider finishes an active lease it has not defaulted on.
        if (msg.sender != r.provider) revert LeaseManager_CallerNotProvider(leaseId, msg.sender);
        if (r.status != Lease.Status.Active) revert LeaseManager_LeaseNotActive(leaseId, r.status);
        if (_isSlashable(r)) revert LeaseManager_LeaseSlashable(leaseId, _deadline(r));
        _checkCid(resultCid);

        // Effect: finishing proves the provider alive to now, or to the lease's end if earlier.
        uint32 end = block.timestamp < r.endsAt ? uint32(block.timestamp) : r.endsAt;
        r.status = Lease.Status.Completed;
        r.lastHeartbeat = end;
        uint256 refund = _settleFinal(leaseId, r, end);
        emit LeaseCompleted(leaseId, resultCid, refund);

        // Interaction: free the collateral and refund the tenant.
        registry.releaseCollateral(msg.sender, leaseId, r.collateral, true);
        _refund(r.tenant, refund);
    }

    /// @inheritdoc ILeaseManager
    function withdrawCredit() external override nonReentrant {
        // Check.
        uint256 amount = _credits[msg.sender];
        if (amount == 0) revert LeaseManager_NothingCredited(msg.sender);

        // Effect.
        _credits[msg.sender] = 0;
        emit CreditWithdrawn(msg.sender, amount);

        // Interaction.
        paymentToken.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc ILeaseManager
    function invalidateNonce(uint256 nonce) external override {
        _useNonce(msg.sender, nonce);
        emit NonceInvalidated(msg.sender, nonce);
    }

    /*//////////////////////////////////////////////////////////////
                            ANYONE FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ILeaseManager
    function slashMissedHeartbeat(uint256 leaseId) external override nonReentrant {
        Lease.Record storage r = _leases[leaseId];

        // Check: the lease is live (or closing) and its provider missed the deadline.
        Lease.Status status = r.status;
        if (status != Lease.Status.Active && status != Lease.Status.Closing) {
            revert LeaseManager_LeaseNotActive(leaseId, status);
        }
        if (!_isSlashable(r)) revert LeaseManager_HeartbeatNotMissed(leaseId, _deadline(r));
        _slash(leaseId, r);
    }

    /// @dev Slashes a slashable lease, the caller taking the caller's share.
    function _slash(uint256 leaseId, Lease.Record storage r) internal {
        // Effect: pay the provider to its last heartbeat and refund the tenant the rest (a closing
        // lease was settled already, so both are zero then).
        r.status = Lease.Status.Slashed;
        uint256 refund = _settleFinal(leaseId, r, r.lastHeartbeat);
        uint256 collateral = r.collateral;
        Provider.SlashPayout memory payout = Provider.SlashPayout({
            tenant: r.tenant,
            tenantAmount: (collateral * tenantShareBps) / BPS,
            caller: msg.sender,
            // No reward for slashing one's own lease from the provider's address (from another address a
            // provider can still collect it: the caller share bounds what self-slashing recovers).
            callerAmount: msg.sender == r.provider ? 0 : (collateral * callerShareBps) / BPS,
            treasury: treasury,
            treasuryAmount: 0
        });
        payout.treasuryAmount = collateral - payout.tenantAmount - payout.callerAmount;
        emit LeaseSlashed(
            leaseId,
            msg.sender,
            refund,
            payout.tenantAmount,
            payout.callerAmount,
            payout.treasuryAmount
        );

        // Interaction: pay out the collateral and refund the tenant.
        registry.slashCollateral(r.provider, leaseId, collateral, payout);
        _refund(r.tenant, refund);
    }

    /// @inheritdoc ILeaseManager
    function settleExpired(uint256 leaseId) external override nonReentrant {
        Lease.Record storage r = _leases[leaseId];

        // Check: only an active lease that ran out without a default.
        if (r.status != Lease.Status.Active) revert LeaseManager_LeaseNotActive(leaseId, r.status);
        if (!_isExpired(r)) revert LeaseManager_LeaseNotExpired(leaseId, r.endsAt);

        _settleExpired(leaseId, r);
    }

    /*//////////////////////////////////////////////////////////////
                           INTERNAL FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    function _openLease(
        Lease.Quote calldata quote,
        bytes calldata signature,
        uint256 deposit,
        uint256 predecessor
    ) internal returns (uint256 leaseId) {
        // Check: the caller is the quote's tenant and the quote is live, well formed and signed.
        if (msg.sender != quote.tenant) revert LeaseManager_CallerNotQuoteTenant(quote.tenant, msg.sender);
        if (block.timestamp > quote.expiry) revert LeaseManager_QuoteExpired(quote.expiry, block.timestamp);
        _checkQuote(quote, deposit);
        if (!_isValidSignature(quote.provider, hashQuote(quote), signature)) {
            revert LeaseManager_InvalidSignature(quote.provider);
        }

        // Check: a predecessor is an ended lease of the same tenant and job that nothing continues yet.
        if (predecessor != 0) {
            Lease.Record storage p = _checkPredecessor(predecessor, msg.sender, quote.jobId);
            if (p.status == Lease.Status.Active) revert LeaseManager_InvalidPredecessor(predecessor);
        }

        // Effect: burn the nonce and record the lease (and the job's one line of succession).
        _useNonce(quote.provider, quote.nonce);
        leaseId = ++leaseCount;
        if (predecessor != 0) _successors[predecessor] = leaseId;
        uint32 endsAt = _recordLease(leaseId, quote, msg.sender, deposit);
        emit LeaseOpened(
            leaseId,
            quote.jobId,
            quote.provider,
            msg.sender,
            predecessor,
            deposit,
            endsAt,
            _termsOf(quote)
        );

        // Interaction: lock the collateral (the registry checks the stake) and pull the deposit.
        registry.lockCollateral(quote.provider, quote.collateral);
        _pull(msg.sender, deposit);
    }

    /// @dev Checks that `predecessor` is a lease of `tenant` for `jobId` that nothing continues yet.
    function _checkPredecessor(
        uint256 predecessor,
        address tenant,
        bytes32 jobId
    ) internal view returns (Lease.Record storage p) {
        p = _leases[predecessor];
        if (p.tenant != tenant || p.jobId != jobId || p.status == Lease.Status.None) {
            revert LeaseManager_InvalidPredecessor(predecessor);
        }
        uint256 successor = _successors[predecessor];
        if (successor != 0) revert LeaseManager_PredecessorContinued(predecessor, successor);
    }

    /// @dev Ends an active lease its tenant leaves, as the tenant's own call would at this block: a
    /// slash when its provider missed its deadline, a settlement when it expired, else a close.
    function _endForTenant(uint256 leaseId, Lease.Record storage r) internal {
        if (_isSlashable(r)) _slash(leaseId, r);
        else _close(leaseId, r);
    }

    /// @dev Records lease `leaseId` of `tenant` on the terms of `quote`, starting now. A function
    /// of its own so that `_openLease` leaves stack room for the `LeaseOpened` emit under the legacy
    /// code generator (the `default` build profile); the production build inlines it (same code).
    /// @return endsAt When the deposit, or the maximum duration, runs out.
    function _recordLease(
        uint256 leaseId,
        Lease.Quote calldata quote,
        address tenant,
        uint256 deposit
    ) internal returns (uint32 endsAt) {
        uint32 now_ = uint32(block.timestamp);
        uint32 maxEnd = uint32(block.timestamp + quote.maxDuration);
        endsAt = _endsAt(now_, deposit, quote.pricePerSecond, maxEnd);
        Lease.Record storage r = _leases[leaseId];
        r.provider = quote.provider;
        r.lastHeartbeat = now_;
        r.endsAt = endsAt;
        r.heartbeatTimeout = uint24(quote.heartbeatTimeout);
        r.status = Lease.Status.Active;
        r.tenant = tenant;
        r.deposit = uint96(deposit);
        r.pricePerSecond = uint96(quote.pricePerSecond);
        r.collateral = uint96(quote.collateral);
        r.settledUntil = now_;
        r.maxEnd = maxEnd;
        r.jobId = quote.jobId;
    }

    /// @dev The quote less its parties and job, for `LeaseOpened`. A function of its own for the same
    /// reason as {_recordLease}: the legacy code generator holds every member on the stack at once.
    function _termsOf(Lease.Quote calldata quote) internal pure returns (Lease.Terms memory) {
        return
            Lease.Terms({
                resources: quote.resources,
                image: quote.image,
                pricePerSecond: quote.pricePerSecond,
                collateral: quote.collateral,
                heartbeatPeriod: quote.heartbeatPeriod,
                heartbeatTimeout: quote.heartbeatTimeout,
                maxDuration: quote.maxDuration,
                expiry: quote.expiry,
                nonce: quote.nonce
            });
    }

    function _checkQuote(Lease.Quote calldata quote, uint256 deposit) internal view {
        if (quote.pricePerSecond == 0 || quote.pricePerSecond > type(uint96).max) {
            revert LeaseManager_PriceOutOfRange(quote.pricePerSecond);
        }
        if (quote.collateral > type(uint96).max) revert LeaseManager_CollateralTooLarge(quote.collateral);
        if (quote.heartbeatTimeout < minHeartbeatTimeout || quote.heartbeatTimeout > maxHeartbeatTimeout) {
            revert LeaseManager_HeartbeatTimeoutOutOfRange(
                quote.heartbeatTimeout,
                minHeartbeatTimeout,
                maxHeartbeatTimeout
            );
        }
        // Two heartbeats per timeout at least: one late heartbeat (a slow block, a retry) must not
        // make an honest provider slashable.
        if (quote.heartbeatPeriod == 0 || quote.heartbeatPeriod > quote.heartbeatTimeout / 2) {
            revert LeaseManager_HeartbeatPeriodOutOfRange(quote.heartbeatPeriod, quote.heartbeatTimeout);
        }
        // A timeout as long as the lease would leave it unslashable for its whole life.
        if (quote.maxDuration <= quote.heartbeatTimeout || block.timestamp + quote.maxDuration > type(uint32).max) {
            revert LeaseManager_MaxDurationOutOfRange(quote.maxDuration, quote.heartbeatTimeout);
        }
        if (deposit < quote.pricePerSecond) revert LeaseManager_DepositTooSmall(deposit, quote.pricePerSecond);
        if (deposit > type(uint96).max) revert LeaseManager_AmountTooLarge(deposit);
    }

    function _useNonce(address provider, uint256 nonce) internal {
        uint256 bit = 1 << (nonce & 0xff);
        uint256 bits = _nonceBitmap[provider][nonce >> 8];
        if (bits & bit != 0) revert LeaseManager_NonceUsed(provider, nonce);
        _nonceBitmap[provider][nonce >> 8] = bits | bit;
    }

    /// @dev Settles an expired lease: the provider earns to the lease's end, the tenant gets the
    /// rest of the deposit (rounding dust), and the collateral is released.
    function _settleExpired(uint256 leaseId, Lease.Record storage r) internal {
        // Effect.
        r.status = Lease.Status.Expired;
        uint256 refund = _settleFinal(leaseId, r, r.endsAt);
        emit LeaseExpired(leaseId, refund);

        // Interaction.
        registry.releaseCollateral(r.provider, leaseId, r.collateral, false);
        _refund(r.tenant, refund);
    }

    /// @dev Pulls `amount` payment tokens from `from`, all of them: a token that takes a fee in
    /// transit would leave the escrow promising more than it holds, and the last lease out unpaid.
    function _pull(address from, uint256 amount) internal {
        uint256 balanceBefore = paymentToken.balanceOf(address(this));
        paymentToken.safeTransferFrom(from, address(this), amount);
        uint256 received = paymentToken.balanceOf(address(this)) - balanceBefore;
        if (received != amount) revert LeaseManager_UnsupportedToken(amount, received);
    }

    /// @dev Refunds `tenant` at once when it is the caller (its own transfer can only fail its own
    /// call); otherwise credits it for {withdrawCredit}, so that a tenant that refuses tokens (a
    /// blocklist, a reverting hook) can never block a provider's or a keeper's call.
    function _refund(address tenant, uint256 amount) internal {
        if (amount == 0) return;
        if (tenant == msg.sender) {
            paymentToken.safeTransfer(tenant, amount);
            return;
        }
        _credits[tenant] += amount;
        emit Credited(tenant, amount);
    }

    /// @dev An ECDSA signature of `signer` first (no code lookup for the usual EOA provider), then
    /// ERC-1271 for a contract signer.
    function _isValidSignature(address signer, bytes32 hash, bytes calldata signature) internal view returns (bool) {
        (address recovered, ECDSA.RecoverError err, ) = ECDSA.tryRecoverCalldata(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == signer) return true;
        return SignatureChecker.isValidERC1271SignatureNowCalldata(signer, hash, signature);
    }

    /// @dev Credits the provider with everything earned up to `until` and empties the deposit.
    /// @return refund What is left of the deposit for the tenant.
    function _settleFinal(uint256 leaseId, Lease.Record storage r, uint32 until) internal returns (uint256 refund) {
        uint32 from = r.settledUntil;
        uint256 deposit = r.deposit;
        uint256 earned;
        if (until > from) {
            earned = uint256(until - from) * r.pricePerSecond;
            r.settledUntil = until;
            Lease.ProviderAccount storage account = _accounts[r.provider];
            account.claimable += uint192(earned);
            account.secondsServed += until - from;
            emit EarningsSettled(leaseId, r.provider, earned, until);
        }
        refund = deposit - earned;
        r.deposit = 0;
    }

    function _requireRunning(uint256 leaseId, Lease.Record storage r) internal view {
        if (r.status != Lease.Status.Active) revert LeaseManager_LeaseNotActive(leaseId, r.status);
        if (_isSlashable(r)) revert LeaseManager_LeaseSlashable(leaseId, _deadline(r));
        if (block.timestamp >= r.endsAt) revert LeaseManager_LeaseExpired(leaseId, r.endsAt);
    }

    function _checkCid(string calldata cid) internal pure {
        if (bytes(cid).length > MAX_CID_LENGTH) revert LeaseManager_CidTooLong(bytes(cid).length, MAX_CID_LENGTH);
    }

    /// @dev The lease runs until its deposit, counted from what is already settled, runs out, or
    /// until its maximum duration, whichever comes first.
    function _endsAt(uint32 settledUntil, uint256 deposit, uint256 pricePerSecond, uint32 maxEnd) internal pure returns (uint32) {
        uint256 fundedUntil = uint256(settledUntil) + deposit / pricePerSecond;
        return fundedUntil < maxEnd ? uint32(fundedUntil) : maxEnd;
    }

    /// @dev An active lease's provider must heartbeat within the timeout of its last heartbeat; a
    /// closing lease's provider, within the timeout of the close (which set `endsAt`), so that a
    /// close never shortens the time a provider has to answer.
    function _deadline(Lease.Record storage r) internal view returns (uint64) {
        uint32 from = r.status == Lease.Status.Closing ? r.endsAt : r.lastHeartbeat;
        return uint64(from) + r.heartbeatTimeout;
    }

    /// @dev An active lease is slashable once its deadline passed before the lease's end; a closing
    /// lease, once its deadline passed without the provider's acknowledgement.
    function _isSlashable(Lease.Record storage r) internal view returns (bool) {
        uint64 deadline = _deadline(r);
        if (r.status == Lease.Status.Active) return block.timestamp > deadline && deadline < r.endsAt;
        if (r.status == Lease.Status.Closing) return block.timestamp > deadline;
        return false;
    }

    /// @dev An active lease has expired once its end passed with the provider never in default.
    function _isExpired(Lease.Record storage r) internal view returns (bool) {
        return r.status == Lease.Status.Active && block.timestamp >= r.endsAt && _deadline(r) >= r.endsAt;
    }
}
