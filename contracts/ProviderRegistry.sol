// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {ILeaseManager} from "./interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";
import {Provider} from "./types/Provider.sol";

/// @title ProviderRegistry
/// @notice See the documentation in {IProviderRegistry}.
contract ProviderRegistry is IProviderRegistry, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @dev Longest peer id accepted; real libp2p peer ids are about 52 characters.
    uint256 internal constant MAX_PEER_ID_LENGTH = 128;

    /// @dev Longest metadata accepted, to bound what readers of the registry must download.
    uint256 internal constant MAX_METADATA_LENGTH = 4096;

    /// @dev A year: longer would only risk stake that can never be withdrawn (the timestamp sum
    /// overflowing), and no lease's slash window comes close.
    uint64 internal constant MAX_UNBONDING_PERIOD = 365 days;

    /// @inheritdoc IProviderRegistry
    IERC20 public immutable override stakingToken;

    /// @inheritdoc IProviderRegistry
    uint256 public immutable override minStake;

    /// @inheritdoc IProviderRegistry
    uint64 public immutable override unbondingPeriod;

    /// @inheritdoc IProviderRegistry
    address public immutable override leaseManager;

    mapping(address provider => Provider.Record record) private _providers;
    mapping(address account => uint256 amount) private _credits;

    /// @param stakingToken_ The ERC-20 token providers stake.
    /// @param minStake_ Stake needed for new leases.
    /// @param unbondingPeriod_ Seconds between an unstake request and its withdrawal; must be longer
    /// than the lease manager's longest heartbeat timeout (the deploy module checks it).
    /// @param leaseManager_ The lease manager, named before it exists: the deployer's next contract
    /// address, whose constructor checks that this registry names it (so a pair wired otherwise
    /// cannot be deployed, and no stake ever waits here for a lease manager wired in later).
    constructor(IERC20 stakingToken_, uint256 minStake_, uint64 unbondingPeriod_, address leaseManager_) {
        if (address(stakingToken_) == address(0) || leaseManager_ == address(0)) revert ProviderRegistry_ZeroAddress();
        if (unbondingPeriod_ == 0 || unbondingPeriod_ > MAX_UNBONDING_PERIOD) {
            revert ProviderRegistry_InvalidUnbondingPeriod(unbondingPeriod_);
        }
        stakingToken = stakingToken_;
        minStake = minStake_;
        unbondingPeriod = unbondingPeriod_;
        leaseManager = leaseManager_;
    }

    modifier onlyLeaseManager() {
        if (msg.sender != leaseManager) revert ProviderRegistry_CallerNotLeaseManager(msg.sender);
        _;
    }

    /*//////////////////////////////////////////////////////////////
                              VIEW FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IProviderRegistry
    function getProvider(address provider) external view override returns (Provider.View memory view_) {
        Provider.Record storage p = _providers[provider];
        view_ = Provider.View({
            registered: p.registered,
            eligible: _isEligible(p),
            peerId: p.peerId,
            metadata: p.metadata,
            stake: uint256(p.bonded) + p.unbonding,
            locked: p.locked,
            unbonding: p.unbonding,
            unbondingEndsAt: p.unbondingEndsAt,
            leasesOpened: p.leasesOpened,
            leasesCompleted: p.leasesCompleted,
            leasesSlashed: p.leasesSlashed,
            secondsServed: ILeaseManager(leaseManager).secondsServed(provider)
        });
    }

    /// @inheritdoc IProviderRegistry
    function creditOf(address account) external view override returns (uint256) {
        return _credits[account];
    }

    /// @inheritdoc IProviderRegistry
    function freeStake(address provider) external view override returns (uint256) {
        return _freeStake(_providers[provider]);
    }

    /// @inheritdoc IProviderRegistry
    function isEligible(address provider) external view override returns (bool) {
        return _isEligible(_providers[provider]);
    }

    /*//////////////////////////////////////////////////////////////
                           PROVIDER FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IProviderRegistry
    function register(string calldata peerId, string calldata metadata, uint256 amount) external override nonReentrant {
        Provider.Record storage p = _providers[msg.sender];

        // Check: the caller is new and its profile is well formed.
        if (p.registered) revert ProviderRegistry_AlreadyRegistered(msg.sender);
        _checkProfile(peerId, metadata);

        // Effect: record the provider and its claimed peer id.
        p.registered = true;
        p.peerId = peerId;
        p.metadata = metadata;
        emit ProviderRegistered(msg.sender, peerId, metadata);

        // Effect and interaction: the initial stake, if any.
        if (amount > 0) _stake(p, amount);
    }

    /// @inheritdoc IProviderRegistry
    function updateProfile(string calldata peerId, string calldata metadata) external override {
        Provider.Record storage p = _providers[msg.sender];

        // Check: the caller is registered and its new profile is well formed.
        if (!p.registered) revert ProviderRegistry_NotRegistered(msg.sender);
        _checkProfile(peerId, metadata);

        // Effect.
        p.peerId = peerId;
        p.metadata = metadata;
        emit ProfileUpdated(msg.sender, peerId, metadata);
    }

    /// @inheritdoc IProviderRegistry
    function stake(uint256 amount) external override nonReentrant {
        Provider.Record storage p = _providers[msg.sender];

        // Check: the caller is registered.
        if (!p.registered) revert ProviderRegistry_NotRegistered(msg.sender);

        // Effect and interaction.
        _stake(p, amount);
    }

    /// @inheritdoc IProviderRegistry
    function requestUnstake(uint256 amount) external override {
        Provider.Record storage p = _providers[msg.sender];

        // Check: only free stake can start unbonding, so collateral of open leases never can.
        if (amount == 0) revert ProviderRegistry_ZeroAmount();
        uint256 free = _freeStake(p);
        if (amount > free) revert ProviderRegistry_InsufficientFreeStake(msg.sender, amount, free);

        // Effect: the amount leaves the bonded stake, and the whole unbonding amount waits a full
        // period from now.
        p.bonded -= uint96(amount);
        p.unbonding += uint96(amount);
        uint64 availableAt = uint64(block.timestamp) + unbondingPeriod;
        p.unbondingEndsAt = availableAt;
        emit UnstakeRequested(msg.sender, amount, p.unbonding, availableAt);
    }

    /// @inheritdoc IProviderRegistry
    function withdraw() external override nonReentrant {
        Provider.Record storage p = _providers[msg.sender];

        // Check: something is unbonding and its period has passed.
        uint256 amount = p.unbonding;
        if (amount == 0) revert ProviderRegistry_NothingUnbonding(msg.sender);
        if (block.timestamp < p.unbondingEndsAt) revert ProviderRegistry_StillUnbonding(msg.sender, p.unbondingEndsAt);

        // Effect: the unbonded stake leaves the registry's books.
        p.unbonding = 0;
        p.unbondingEndsAt = 0;
        emit Withdrawn(msg.sender, amount);

        // Interaction: pay the provider.
        stakingToken.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IProviderRegistry
    function withdrawCredit() external override nonReentrant {
        // Check.
        uint256 amount = _credits[msg.sender];
        if (amount == 0) revert ProviderRegistry_NothingCredited(msg.sender);

        // Effect.
        _credits[msg.sender] = 0;
        emit CreditWithdrawn(msg.sender, amount);

        // Interaction.
        stakingToken.safeTransfer(msg.sender, amount);
    }

    /*//////////////////////////////////////////////////////////////
                         LEASE MANAGER FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IProviderRegistry
    function lockCollateral(address provider, uint256 amount) external override onlyLeaseManager {
        Provider.Record storage p = _providers[provider];

        // Check: the provider may take new leases and its free stake covers the collateral.
        if (!p.registered) revert ProviderRegistry_NotRegistered(provider);
        if (!_isEligible(p)) revert ProviderRegistry_BelowMinStake(provider, p.bonded, minStake);
        uint256 free = _freeStake(p);
        if (amount > free) revert ProviderRegistry_InsufficientFreeStake(provider, amount, free);

        // Effect.
        p.locked += uint96(amount);
        p.leasesOpened += 1;
    }

    /// @inheritdoc IProviderRegistry
    function releaseCollateral(
        address provider,
        uint256 leaseId,
        uint256 amount,
        bool completed
    ) external override onlyLeaseManager {
        Provider.Record storage p = _providers[provider];

        // Check: the lease manager releases only what it locked.
        if (amount > p.locked) revert ProviderRegistry_InsufficientLocked(provider, amount, p.locked);

        // Effect.
        p.locked -= uint96(amount);
        if (completed) p.leasesCompleted += 1;
        emit CollateralReleased(provider, leaseId, amount, completed);
    }

    /// @inheritdoc IProviderRegistry
    function slashCollateral(
        address provider,
        uint256 leaseId,
        uint256 amount,
        Provider.SlashPayout calldata payout
    ) external override onlyLeaseManager nonReentrant {
        Provider.Record storage p = _providers[provider];

        // Check: the lease manager slashes only what it locked, and pays out exactly that.
        if (amount > p.locked) revert ProviderRegistry_InsufficientLocked(provider, amount, p.locked);
        uint256 paidOut = payout.tenantAmount + payout.callerAmount + payout.treasuryAmount;
        if (paidOut != amount) revert ProviderRegistry_PayoutMismatch(amount, paidOut);

        // Effect: the collateral leaves both the locked amount and the bonded stake (which it never
        // exceeds: unbonding stake is never locked).
        p.locked -= uint96(amount);
        p.bonded -= uint96(amount);
        p.leasesSlashed += 1;
        emit CollateralSlashed(
            provider,
            leaseId,
            amount,
            payout.tenantAmount,
            payout.callerAmount,
            payout.treasuryAmount
        );

        // Effect and interaction: the caller is paid at once; the tenant and the treasury (unless
        // either is the caller) are credited, so that no recipient that refuses tokens can make
        // the slash revert and keep a defaulting provider's collateral out of reach.
        _payOrCredit(payout.tenant, payout.tenantAmount, payout.caller);
        _payOrCredit(payout.treasury, payout.treasuryAmount, payout.caller);
        if (payout.callerAmount > 0) stakingToken.safeTransfer(payout.caller, payout.callerAmount);
    }

    /*//////////////////////////////////////////////////////////////
                           INTERNAL FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    function _stake(Provider.Record storage p, uint256 amount) internal {
        // Check: the whole stake, unbonding included, stays within 96 bits (all of it may unbond).
        if (amount == 0) revert ProviderRegistry_ZeroAmount();
        uint256 total = uint256(p.bonded) + p.unbonding;
        if (amount > type(uint96).max - total) revert ProviderRegistry_AmountTooLarge(amount);

        // Effect.
        p.bonded += uint96(amount);
        emit Staked(msg.sender, amount, total + amount);

        // Interaction: pull the tokens, all of them: a token that takes a fee in transit would
        // leave the books promising more than the registry holds.
        uint256 balanceBefore = stakingToken.balanceOf(address(this));
        stakingToken.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = stakingToken.balanceOf(address(this)) - balanceBefore;
        if (received != amount) revert ProviderRegistry_UnsupportedToken(amount, received);
    }

    /// @dev Pays `amount` to `to` at once when `to` is the one calling (its own transfer can only
    /// fail its own call); otherwise credits it for {withdrawCredit}.
    function _payOrCredit(address to, uint256 amount, address caller) internal {
        if (amount == 0) return;
        if (to == caller) {
            stakingToken.safeTransfer(to, amount);
            return;
        }
        _credits[to] += amount;
        emit Credited(to, amount);
    }

    function _checkProfile(string calldata peerId, string calldata metadata) internal pure {
        uint256 length = bytes(peerId).length;
        if (length == 0 || length > MAX_PEER_ID_LENGTH) revert ProviderRegistry_InvalidPeerId(length);
        length = bytes(metadata).length;
        if (length > MAX_METADATA_LENGTH) revert ProviderRegistry_MetadataTooLong(length, MAX_METADATA_LENGTH);
    }

    function _freeStake(Provider.Record storage p) internal view returns (uint256) {
        return p.bonded - p.locked;
    }

    function _isEligible(Provider.Record storage p) internal view returns (bool) {
        return p.registered && p.bonded >= minStake;
    }
}
