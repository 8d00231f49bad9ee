// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {Provider} from "../types/Provider.sol";

/// @title IProviderRegistry
/// @notice Providers register their libp2p peer id, stake the staking token, and lock part of that
/// stake as collateral for each lease they serve. Only the lease manager locks, releases and slashes.
///
/// A registered peer id is a claim, not a proof: any number of providers may name the same one, so
/// that nobody can lock the key's owner out by registering its id first. Clients trust a provider's
/// peer id only with a proof of the peer key in its metadata (`peerProof`, an Ed25519 signature by
/// the libp2p key over the provider's address, the chain and this registry), which the SDK checks
/// before it trusts an offer.
///
/// Tokens: the staking token must be a plain ERC-20 (optionally with ERC-2612 permit). Tokens that
/// take a fee in transit are refused ({ProviderRegistry_UnsupportedToken}); rebasing tokens are not
/// supported (the books would drift from the balance).
interface IProviderRegistry {
    /*//////////////////////////////////////////////////////////////
                                 EVENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice Emitted when a provider registers.
    event ProviderRegistered(address indexed provider, string peerId, string metadata);

    /// @notice Emitted when a provider changes its peer id or metadata.
    event ProfileUpdated(address indexed provider, string peerId, string metadata);

    /// @notice Emitted when stake is added.
    event Staked(address indexed provider, uint256 amount, uint256 totalStake);

    /// @notice Emitted when a provider starts unbonding part of its stake.
    event UnstakeRequested(address indexed provider, uint256 amount, uint256 totalUnbonding, uint64 availableAt);

    /// @notice Emitted when unbonded stake is paid back to the provider.
    event Withdrawn(address indexed provider, uint256 amount);

    /// @notice Emitted when a lease ends without a slash and its collateral is unlocked.
    event CollateralReleased(address indexed provider, uint256 indexed leaseId, uint256 amount, bool completed);

    /// @notice Emitted when tokens are set aside for `account` to withdraw with {withdrawCredit}.
    event Credited(address indexed account, uint256 amount);

    /// @notice Emitted when an account withdraws its credit.
    event CreditWithdrawn(address indexed account, uint256 amount);

    /// @notice Emitted when a lease's collateral is slashed and paid out.
    event CollateralSlashed(
        address indexed provider,
        uint256 indexed leaseId,
        uint256 amount,
        uint256 tenantAmount,
        uint256 callerAmount,
        uint256 treasuryAmount
    );

    /*//////////////////////////////////////////////////////////////
                                 ERRORS
    //////////////////////////////////////////////////////////////*/

    error ProviderRegistry_CallerNotLeaseManager(address caller);
    error ProviderRegistry_ZeroAddress();
    error ProviderRegistry_AlreadyRegistered(address provider);
    error ProviderRegistry_NotRegistered(address provider);
    error ProviderRegistry_InvalidPeerId(uint256 length);
    error ProviderRegistry_MetadataTooLong(uint256 length, uint256 maxLength);
    error ProviderRegistry_UnsupportedToken(uint256 expected, uint256 received);
    error ProviderRegistry_PayoutMismatch(uint256 amount, uint256 paidOut);
    error ProviderRegistry_NothingCredited(address account);
    error ProviderRegistry_ZeroAmount();
    error ProviderRegistry_AmountTooLarge(uint256 amount);
    error ProviderRegistry_InsufficientFreeStake(address provider, uint256 requested, uint256 free);
    error ProviderRegistry_BelowMinStake(address provider, uint256 activeStake, uint256 minStake);
    error ProviderRegistry_NothingUnbonding(address provider);
    error ProviderRegistry_StillUnbonding(address provider, uint64 availableAt);
    error ProviderRegistry_InsufficientLocked(address provider, uint256 requested, uint256 locked);
    error ProviderRegistry_InvalidUnbondingPeriod(uint64 unbondingPeriod);

    /*//////////////////////////////////////////////////////////////
                              VIEW FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice The ERC-20 token providers stake.
    function stakingToken() external view returns (IERC20);

    /// @notice The only contract allowed to lock, release and slash collateral, fixed at deployment:
    /// its constructor refuses a registry that names another.
    function leaseManager() external view returns (address);

    /// @notice Stake (not counting unbonding stake) a provider needs for new leases.
    function minStake() external view returns (uint256);

    /// @notice Seconds between an unstake request and the withdrawal it allows.
    function unbondingPeriod() external view returns (uint64);

    /// @notice Everything known about a provider, counters included (seconds served are read from
    /// the lease manager, which keeps them).
    /// @param provider The provider's address.
    function getProvider(address provider) external view returns (Provider.View memory);

    /// @notice Staking tokens set aside for `account` (slash compensation, treasury shares) to withdraw.
    function creditOf(address account) external view returns (uint256);

    /// @notice Stake that is neither locked as collateral nor unbonding.
    function freeStake(address provider) external view returns (uint256);

    /// @notice Whether a provider is registered and its active stake reaches `minStake`.
    function isEligible(address provider) external view returns (bool);

    /*//////////////////////////////////////////////////////////////
                           PROVIDER FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice Registers the caller as a provider, binding it to a libp2p peer id, and stakes `amount`.
    /// @dev Emits {ProviderRegistered}, and {Staked} when `amount` is not zero.
    ///
    /// Requirements:
    /// - The caller is not registered yet.
    /// - `peerId` is 1 to 128 bytes long (other providers may claim the same one: see above).
    /// - `metadata` is at most 4096 bytes long.
    /// - When `amount` is not zero: the caller approved `amount` staking tokens to the registry, all
    ///   of which arrive.
    ///
    /// @param peerId The provider's libp2p peer id, in its string form.
    /// @param metadata Free-form description (JSON by convention: region, contact, hardware summary).
    /// @param amount Staking tokens to stake at once; may be zero.
    function register(string calldata peerId, string calldata metadata, uint256 amount) external;

    /// @notice Changes the caller's peer id and metadata.
    /// @dev Emits {ProfileUpdated}.
    ///
    /// Requirements:
    /// - The caller is registered.
    /// - `peerId` and `metadata` meet the limits of {register}.
    function updateProfile(string calldata peerId, string calldata metadata) external;

    /// @notice Adds `amount` to the caller's stake.
    /// @dev Emits {Staked}.
    ///
    /// Requirements:
    /// - The caller is registered and `amount` is not zero.
    /// - The caller approved `amount` staking tokens to the registry, all of which arrive.
    function stake(uint256 amount) external;

    /// @notice Starts unbonding `amount` of free stake; each request restarts the unbonding period for
    /// the whole unbonding amount, which stays counted in the stake until {withdraw}. Only stake not
    /// locked as collateral can unbond, so every open lease's collateral stays here, slashable, until
    /// that lease ends: unstaking cannot escape a slash.
    /// @dev Emits {UnstakeRequested}.
    ///
    /// Requirements:
    /// - `amount` is not zero and at most {freeStake}.
    function requestUnstake(uint256 amount) external;

    /// @notice Pays all unbonded stake back to the caller once the unbonding period has passed.
    /// @dev Emits {Withdrawn}.
    ///
    /// Requirements:
    /// - Something is unbonding and the unbonding period has passed.
    function withdraw() external;

    /// @notice Pays the caller everything credited to it.
    /// @dev Emits {CreditWithdrawn}.
    ///
    /// Requirements:
    /// - Something is credited to the caller.
    function withdrawCredit() external;

    /*//////////////////////////////////////////////////////////////
                         LEASE MANAGER FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice Locks `amount` of a provider's free stake as a lease's collateral and counts the lease.
    /// @dev Emits no event: the lease manager's {ILeaseManager.LeaseOpened}, in the same transaction,
    /// names the lease, the provider and the collateral, which is all a lock would say.
    ///
    /// Requirements:
    /// - The caller is the lease manager.
    /// - The provider is eligible and its free stake covers `amount`.
    ///
    /// @param provider The provider whose stake backs the lease.
    /// @param amount The lease's collateral, in staking tokens.
    function lockCollateral(address provider, uint256 amount) external;

    /// @notice Unlocks a lease's collateral when it ends without a slash.
    /// @dev Emits {CollateralReleased}.
    ///
    /// Requirements:
    /// - The caller is the lease manager and `amount` is at most the provider's locked stake.
    ///
    /// @param completed Whether the provider finished the lease with a result.
    function releaseCollateral(address provider, uint256 leaseId, uint256 amount, bool completed) external;

    /// @notice Removes a lease's collateral from the provider's stake and pays it out: the caller's
    /// reward at once; the tenant's compensation and the treasury's share at once to whichever of
    /// them is the caller, and otherwise as credit ({withdrawCredit}), so no recipient can block it.
    /// @dev Emits {CollateralSlashed}, and {Credited} per credit.
    ///
    /// Requirements:
    /// - The caller is the lease manager and `amount` is at most the provider's locked stake.
    /// - The payout amounts add up to `amount`.
    function slashCollateral(
        address provider,
        uint256 leaseId,
        uint256 amount,
        Provider.SlashPayout calldata payout
    ) external;
}
