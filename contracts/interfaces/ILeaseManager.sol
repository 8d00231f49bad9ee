// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {Lease} from "../types/Lease.sol";
import {IProviderRegistry} from "./IProviderRegistry.sol";

/// @title ILeaseManager
/// @notice Escrow for GPU leases. A tenant opens a lease with a provider's signed quote and a
/// deposit; the provider proves liveness with batched heartbeats and earns per second of
/// heartbeat-covered time; anyone may slash a provider that misses its heartbeat timeout.
/// Every state change emits an event, so any lease and job can be rebuilt from logs alone.
///
/// Money owed to a tenant is paid at once only in the tenant's own calls; in everyone else's
/// (a provider's heartbeat, claim or finish, a keeper's slash or settlement) it is credited for the
/// tenant to withdraw ({withdrawCredit}), so that a tenant whose address refuses tokens cannot block
/// the provider's other leases or freeze its own lease's collateral.
///
/// Hand-offs without waiting for a block: a tenant may instead sign an {Lease.Opening} (EIP-712) and
/// send it to the provider, which checks it off-chain, starts the job at once and submits it with
/// {openLeaseFor}, paying the gas. The lease's id is then known before it is mined ({leaseIdOf}), and
/// the opening ends the job's still-active predecessor in the same transaction. The provider's risk
/// is the compute it runs before the opening is mined or fails: its `deadline` (seconds away) bounds it.
///
/// Tokens: the payment token must be a plain ERC-20 (optionally with ERC-2612 permit, for
/// {openLeaseWithPermit}). Tokens that take a fee in transit are refused when the deposit is
/// pulled ({LeaseManager_UnsupportedToken}); rebasing tokens are not supported (the escrow's books
/// would drift from its balance).
interface ILeaseManager {
    /*//////////////////////////////////////////////////////////////
                                 EVENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice Emitted when a lease opens, with its quote: the provider and the job id as topics, the
    /// tenant (the caller of {openLease}, the signer of {openLeaseFor}'s opening) once, and the rest
    /// of the quote as `terms`, among them `terms.image`, the image the provider committed to run (the
    /// lease manager keeps it nowhere else). `predecessor` is the failed lease of the same job it
    /// continues, or zero. It is also the record of the collateral
    /// locked in the registry (`terms.collateral`), for which the registry emits no event of its own.
    event LeaseOpened(
        uint256 indexed leaseId,
        bytes32 indexed jobId,
        address indexed provider,
        address tenant,
        uint256 predecessor,
        uint256 deposit,
        uint64 endsAt,
        Lease.Terms terms
    );

    /// @notice Emitted for each lease a heartbeat transaction covers.
    event HeartbeatRecorded(uint256 indexed leaseId, uint64 timestamp);

    /// @notice Emitted when a heartbeat commits the lease's latest checkpoint CID.
    event CheckpointCommitted(uint256 indexed leaseId, string cid);

    /// @notice Emitted when earned tokens move from a lease's deposit to its provider's claimable balance.
    event EarningsSettled(uint256 indexed leaseId, address indexed provider, uint256 amount, uint64 settledUntil);

    /// @notice Emitted when a provider withdraws its claimable balance.
    event EarningsClaimed(address indexed provider, uint256 amount);

    /// @notice Emitted when the tenant adds to a lease's deposit.
    event LeaseToppedUp(uint256 indexed leaseId, uint256 amount, uint256 deposit, uint64 endsAt);

    /// @notice Emitted when the tenant closes a lease: its money is settled and refunded, and the
    /// lease waits in `Closing` for the provider's acknowledging heartbeat or a slash.
    event LeaseCloseRequested(uint256 indexed leaseId, uint256 refund);

    /// @notice Emitted when the provider acknowledges a close with a heartbeat before its deadline.
    event LeaseClosed(uint256 indexed leaseId);

    /// @notice Emitted when the provider finishes a lease with its result.
    event LeaseCompleted(uint256 indexed leaseId, string resultCid, uint256 refund);

    /// @notice Emitted when a lease whose deposit or maximum duration ran out is settled.
    event LeaseExpired(uint256 indexed leaseId, uint256 refund);

    /// @notice Emitted when a lease is slashed for a missed heartbeat.
    event LeaseSlashed(
        uint256 indexed leaseId,
        address indexed caller,
        uint256 refund,
        uint256 compensation,
        uint256 reward,
        uint256 treasuryAmount
    );

    /// @notice Emitted when a refund is set aside for a tenant to withdraw with {withdrawCredit}.
    event Credited(address indexed tenant, uint256 amount);

    /// @notice Emitted when a tenant withdraws its credit.
    event CreditWithdrawn(address indexed tenant, uint256 amount);

    /// @notice Emitted when a provider cancels a quote nonce before anyone used it.
    event NonceInvalidated(address indexed provider, uint256 nonce);

    /*//////////////////////////////////////////////////////////////
                                 ERRORS
    //////////////////////////////////////////////////////////////*/

    error LeaseManager_ZeroAddress();
    /// @dev The registry given to the constructor names another lease manager than the one being
    /// deployed: the registry must be deployed with this contract's address.
    /// @param registry The registry given.
    /// @param leaseManager The lease manager that registry names.
    error LeaseManager_RegistryWiredElsewhere(address registry, address leaseManager);
    error LeaseManager_InvalidShares(uint16 tenantShareBps, uint16 callerShareBps);
    error LeaseManager_InvalidMaxHeartbeatTimeout(uint64 maxHeartbeatTimeout, uint64 unbondingPeriod);
    error LeaseManager_InvalidMinHeartbeatTimeout(uint64 minHeartbeatTimeout, uint64 maxHeartbeatTimeout);
    error LeaseManager_QuoteExpired(uint64 expiry, uint256 timestamp);
    error LeaseManager_CallerNotTenant(uint256 leaseId, address caller);
    error LeaseManager_CallerNotQuoteTenant(address tenant, address caller);
    error LeaseManager_CallerNotProvider(uint256 leaseId, address caller);
    error LeaseManager_InvalidSignature(address provider);
    error LeaseManager_NonceUsed(address provider, uint256 nonce);
    /// @dev The quote's price per second is zero or does not fit in 96 bits.
    /// @param pricePerSecond The quote's price.
    error LeaseManager_PriceOutOfRange(uint256 pricePerSecond);
    /// @dev The quote's collateral does not fit in 96 bits.
    /// @param collateral The quote's collateral.
    error LeaseManager_CollateralTooLarge(uint256 collateral);
    /// @dev The quote's heartbeat timeout is outside [{minHeartbeatTimeout}, {maxHeartbeatTimeout}].
    /// @param heartbeatTimeout The quote's timeout.
    /// @param min The shortest timeout allowed.
    /// @param max The longest timeout allowed.
    error LeaseManager_HeartbeatTimeoutOutOfRange(uint64 heartbeatTimeout, uint64 min, uint64 max);
    /// @dev The quote's heartbeat period is zero or more than half its timeout.
    /// @param heartbeatPeriod The quote's period.
    /// @param heartbeatTimeout The quote's timeout.
    error LeaseManager_HeartbeatPeriodOutOfRange(uint64 heartbeatPeriod, uint64 heartbeatTimeout);
    /// @dev The quote's max duration is not longer than its heartbeat timeout, or ends after 2106.
    /// @param maxDuration The quote's max duration.
    /// @param heartbeatTimeout The quote's timeout.
    error LeaseManager_MaxDurationOutOfRange(uint64 maxDuration, uint64 heartbeatTimeout);
    error LeaseManager_DepositTooSmall(uint256 deposit, uint256 pricePerSecond);
    error LeaseManager_AmountTooLarge(uint256 amount);
    error LeaseManager_ZeroAmount();
    error LeaseManager_InvalidPredecessor(uint256 predecessor);
    /// @dev Another lease already continues `predecessor`: a job has one line of succession.
    /// @param predecessor The lease named as predecessor.
    /// @param successor The lease that continues it.
    error LeaseManager_PredecessorContinued(uint256 predecessor, uint256 successor);
    /// @dev A top-up would move the end of a lease set to expire cleanly past a deadline its
    /// provider has less than half a heartbeat timeout to meet.
    /// @param leaseId The lease.
    /// @param deadline The provider's heartbeat deadline.
    error LeaseManager_TopUpTooLate(uint256 leaseId, uint64 deadline);
    /// @dev The token moved another amount than asked (a fee-on-transfer token): not supported.
    /// @param expected The amount pulled.
    /// @param received The amount that arrived.
    error LeaseManager_UnsupportedToken(uint256 expected, uint256 received);
    /// @dev The caller has no credit to withdraw.
    /// @param tenant The caller.
    error LeaseManager_NothingCredited(address tenant);
    error LeaseManager_LeaseNotActive(uint256 leaseId, Lease.Status status);
    error LeaseManager_LeaseExpired(uint256 leaseId, uint64 endsAt);
    error LeaseManager_LeaseSlashable(uint256 leaseId, uint64 deadline);
    error LeaseManager_HeartbeatNotMissed(uint256 leaseId, uint64 deadline);
    error LeaseManager_LengthMismatch(uint256 leaseIds, uint256 checkpointCids);
    error LeaseManager_CidTooLong(uint256 length, uint256 maxLength);
    error LeaseManager_LeaseNotExpired(uint256 leaseId, uint64 endsAt);
    /// @dev {openLeaseFor} was called by another account than the quote's provider.
    /// @param provider The quote's provider.
    /// @param caller The caller.
    error LeaseManager_CallerNotQuoteProvider(address provider, address caller);
    /// @dev A tenant's opening was mined after its deadline.
    /// @param deadline The opening's deadline.
    /// @param timestamp The block's time.
    error LeaseManager_OpeningExpired(uint64 deadline, uint256 timestamp);
    /// @dev The opening is not signed by the quote's tenant (ECDSA, or ERC-1271 for a contract).
    /// @param tenant The quote's tenant.
    error LeaseManager_InvalidTenantSignature(address tenant);
    /// @dev The id {leaseIdOf} gives the opening's quote is taken (a 64-bit collision: ask for another quote).
    /// @param leaseId The id.
    error LeaseManager_LeaseIdTaken(uint256 leaseId);

    /*//////////////////////////////////////////////////////////////
                              VIEW FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice The ERC-20 token tenants pay in.
    function paymentToken() external view returns (IERC20);

    /// @notice The registry that holds providers' stake and collateral.
    function registry() external view returns (IProviderRegistry);

    /// @notice Share of a slashed collateral paid to the tenant, in basis points.
    function tenantShareBps() external view returns (uint16);

    /// @notice Share of a slashed collateral paid to whoever calls the slash, in basis points.
    function callerShareBps() external view returns (uint16);

    /// @notice Receives the rest of a slashed collateral; the burn address when burning.
    function treasury() external view returns (address);

    /// @notice Shortest heartbeat timeout a quote may set (a few block times of the chain).
    function minHeartbeatTimeout() external view returns (uint64);

    /// @notice Longest heartbeat timeout a quote may set; shorter than the registry's unbonding period.
    function maxHeartbeatTimeout() external view returns (uint64);

    /// @notice Number of leases opened with {openLease} or {openLeaseWithPermit}; their ids run from 1
    /// to this. A lease opened with {openLeaseFor} has the id {leaseIdOf} its quote, at least 2^63,
    /// and is not counted here.
    function leaseCount() external view returns (uint256);

    /// @notice A lease with its derived fields: whether it has expired unsettled, whether it can be
    /// slashed now, its slash deadline, and what its provider has earned but not settled.
    function getLease(uint256 leaseId) external view returns (Lease.View memory);

    /// @notice Tokens a provider can claim without settling any lease.
    function claimable(address provider) external view returns (uint256);

    /// @notice Seconds of service a provider has been paid for, across all its leases.
    function secondsServed(address provider) external view returns (uint64);

    /// @notice The lease that continues `leaseId` (names it as predecessor), or zero.
    function successorOf(uint256 leaseId) external view returns (uint256);

    /// @notice Payment tokens credited to `tenant` (refunds from others' calls) to withdraw.
    function creditOf(address tenant) external view returns (uint256);

    /// @notice Whether a provider's quote nonce was used or invalidated.
    function isNonceUsed(address provider, uint256 nonce) external view returns (bool);

    /// @notice The EIP-712 digest a provider signs for `quote`.
    function hashQuote(Lease.Quote calldata quote) external view returns (bytes32);

    /// @notice The EIP-712 digest a tenant signs for `opening`.
    function hashOpening(Lease.Opening calldata opening) external view returns (bytes32);

    /// @notice The id of the lease {openLeaseFor} opens on `quote`: the first 8 bytes of its EIP-712
    /// digest with the top bit set (2^63 to 2^64 - 1, never one of {openLease}'s), so that the
    /// provider and the tenant know it before it is mined.
    function leaseIdOf(Lease.Quote calldata quote) external view returns (uint256);

    /*//////////////////////////////////////////////////////////////
                            TENANT FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice Opens a lease with a provider's signed quote, pulling `deposit` payment tokens from
    /// the caller and locking the quote's collateral from the provider's stake.
    /// @dev Emits {LeaseOpened}.
    ///
    /// Requirements:
    /// - The caller is the quote's tenant, the quote has not expired and its nonce is unused.
    /// - `signature` is the provider's EIP-712 signature of the quote for this chain and contract.
    /// - The quote's price is not zero, its heartbeat timeout is within [{minHeartbeatTimeout},
    ///   {maxHeartbeatTimeout}], its heartbeat period is not zero and at most half the timeout, the
    ///   timeout is shorter than the max duration, and its amounts fit in 96 bits.
    /// - `deposit` pays for at least one second, and all of it arrives (no fee-on-transfer token).
    /// - The provider is eligible and its free stake covers the collateral.
    /// - `predecessor` is zero, or a lease of the caller for the same job that is no longer `Active`
    ///   and that no other lease continues yet.
    ///
    /// @param quote The provider's quote.
    /// @param signature The provider's signature of the quote (65 bytes, or ERC-1271 for contracts).
    /// @param deposit Payment tokens to escrow; more can be added with {topUp}.
    /// @param predecessor The lease of the same job this one continues, or zero.
    /// @return leaseId The new lease's id.
    function openLease(
        Lease.Quote calldata quote,
        bytes calldata signature,
        uint256 deposit,
        uint256 predecessor
    ) external returns (uint256 leaseId);

    /// @notice {openLease}, approving `permit.value` (the deposit, or more: what is left stays an
    /// allowance, for a later hand-off's signed opening) with an ERC-2612 permit in the same transaction.
    /// @dev A permit that fails (for example because someone front-ran it) is ignored; the deposit
    /// transfer then succeeds only if the allowance is already in place.
    function openLeaseWithPermit(
        Lease.Quote calldata quote,
        bytes calldata signature,
        uint256 deposit,
        uint256 predecessor,
        Lease.Permit calldata permit
    ) external returns (uint256 leaseId);

    /// @notice Opens a lease on a tenant's signed {Lease.Opening}: the provider, having checked the
    /// opening off-chain and started the job, submits it and pays the gas. The deposit is pulled from
    /// the tenant (its allowance), the collateral locked from the caller's stake, and the lease gets
    /// the id {leaseIdOf} its quote. A predecessor still `Active` is ended first, in the same
    /// transaction and exactly as its own call would: slashed (the caller, here the new provider, takes
    /// the caller's share) when slashable at this block, settled when expired, else closed; its refund
    /// is credited to the tenant ({withdrawCredit}).
    /// @dev The provider's risk: until this is mined it runs the job unpaid, and if it fails (the
    /// tenant's balance or allowance fell short, the deadline passed) it was never paid. Providers
    /// check the opening against the latest block first and stop the job when the opening fails or is
    /// not mined by its deadline, which bounds that risk to seconds of compute. No quote signature is
    /// checked: the caller is the quote's provider.
    ///
    /// Emits {LeaseOpened}; for an active predecessor, what its {close}, {settleExpired} or
    /// {slashMissedHeartbeat} emits.
    ///
    /// Requirements:
    /// - The caller is the quote's provider; block time is at most the opening's deadline and the
    ///   quote's expiry, and the quote's nonce is unused.
    /// - `tenantSignature` is the quote's tenant's EIP-712 signature of `opening` for this chain and
    ///   contract (65 bytes, or ERC-1271 for a contract tenant).
    /// - The quote and deposit pass {openLease}'s checks, the tenant's allowance and balance cover the
    ///   deposit, and the provider's free stake the collateral.
    /// - `opening.predecessor` is zero, or a lease of the tenant for the same job that no other lease
    ///   continues yet (in any state but `None`).
    /// - {leaseIdOf} the quote is free.
    ///
    /// @param opening The tenant's opening, with the quote.
    /// @param tenantSignature The tenant's signature of the opening.
    /// @return leaseId The new lease's id, {leaseIdOf} the quote.
    function openLeaseFor(
        Lease.Opening calldata opening,
        bytes calldata tenantSignature
    ) external returns (uint256 leaseId);

    /// @notice Adds `amount` to a lease's deposit, extending how long it is funded.
    /// @dev Emits {LeaseToppedUp}.
    ///
    /// Requirements:
    /// - The caller is the lease's tenant and `amount` is not zero, all of which arrives.
    /// - The lease is `Active`, has not expired, and is not slashable.
    /// - If the lease was set to expire without a default and the top-up moves its end past the
    ///   provider's deadline, that deadline is at least half a heartbeat timeout away.
    function topUp(uint256 leaseId, uint256 amount) external;

    /// @notice Ends a lease early: the provider keeps what its heartbeats covered, the rest of the
    /// deposit is refunded at once, and the lease ends now and waits in `Closing` until the provider
    /// acknowledges with a heartbeat (collateral released) or lets a whole heartbeat timeout pass
    /// from the close (slashable). A lease that has
    /// already expired is settled as `Expired` instead.
    /// @dev Emits {LeaseCloseRequested}, or {LeaseExpired}.
    ///
    /// Requirements:
    /// - The caller is the lease's tenant and the lease is `Active`.
    /// - The lease is not slashable (slash it instead).
    function close(uint256 leaseId) external;

    /*//////////////////////////////////////////////////////////////
                           PROVIDER FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice Records a heartbeat for each of the caller's leases in one transaction, optionally
    /// committing each lease's latest checkpoint CID. Leases that can no longer take a heartbeat
    /// (ended, slashable, or expired) are skipped, an expired one being settled; a `Closing` lease
    /// is acknowledged and becomes `Closed`.
    /// @dev Emits {HeartbeatRecorded} per lease, {CheckpointCommitted} per non-empty CID, and
    /// {LeaseClosed} or {LeaseExpired} where they apply.
    ///
    /// Requirements:
    /// - The caller is the provider of every lease in `leaseIds`.
    /// - `checkpointCids` is empty or as long as `leaseIds`, and each CID committed (that of an
    ///   `Active` lease taking the heartbeat) is at most 256 bytes; the others are ignored.
    ///
    /// @param leaseIds The leases to heartbeat.
    /// @param checkpointCids For each lease, the latest checkpoint CID, or "" for none.
    function heartbeat(uint256[] calldata leaseIds, string[] calldata checkpointCids) external;

    /// @notice Settles what the caller's leases in `leaseIds` earned up to their last heartbeat
    /// (settling expired ones in full), then pays the caller its whole claimable balance.
    /// @dev Emits {EarningsSettled} per lease with earnings, {LeaseExpired} (and
    /// {IProviderRegistry.CollateralReleased}) per expired lease it settles, and {EarningsClaimed}.
    ///
    /// Requirements:
    /// - The caller is the provider of every lease in `leaseIds` (which may be empty).
    ///
    /// @return amount The tokens paid.
    function claim(uint256[] calldata leaseIds) external returns (uint256 amount);

    /// @notice Ends a lease with its result: the provider is paid up to now (or the lease's end),
    /// the tenant refunded the rest, and the collateral released.
    /// @dev Emits {LeaseCompleted}.
    ///
    /// Requirements:
    /// - The caller is the lease's provider and the lease is `Active` and not slashable.
    /// - `resultCid` is at most 256 bytes long.
    function finish(uint256 leaseId, string calldata resultCid) external;

    /// @notice Pays the caller (a tenant) every refund credited to it.
    /// @dev Emits {CreditWithdrawn}.
    ///
    /// Requirements:
    /// - Something is credited to the caller.
    function withdrawCredit() external;

    /// @notice Cancels one of the caller's quote nonces so the quote can never be used.
    /// @dev Emits {NonceInvalidated}.
    function invalidateNonce(uint256 nonce) external;

    /*//////////////////////////////////////////////////////////////
                            ANYONE FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice Slashes a lease whose provider missed its heartbeat timeout. The provider is paid up
    /// to its last heartbeat, the tenant refunded the rest (unless already refunded by a close) and
    /// compensated from the collateral, the caller rewarded (unless it is the provider itself), and the
    /// remainder sent to the treasury.
    /// @dev Emits {LeaseSlashed} (and {IProviderRegistry.CollateralSlashed}).
    ///
    /// Requirements:
    /// - The lease is `Active` or `Closing`.
    /// - Block time is past its deadline: for an `Active` lease its last heartbeat plus its heartbeat
    ///   timeout, falling before the lease's end; for a `Closing` one the close plus the timeout.
    function slashMissedHeartbeat(uint256 leaseId) external;

    /// @notice Settles an `Active` lease whose deposit or maximum duration ran out: the provider is
    /// paid to the end, the tenant refunded any dust, and the collateral released.
    /// @dev Emits {LeaseExpired}.
    ///
    /// Requirements:
    /// - The lease is `Active` and has expired without being slashable.
    function settleExpired(uint256 leaseId) external;
}
