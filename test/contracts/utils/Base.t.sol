// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {DevToken} from "../../../contracts/token/DevToken.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {Test} from "./Test.sol";

/// @notice Deploys the contracts as the deploy module does, with separate staking and payment
/// tokens (so that a mix-up between them fails a test), and offers helpers to build, sign and use
/// quotes.
abstract contract Base is Test {
    uint256 internal constant MIN_STAKE = 100e18;
    uint64 internal constant UNBONDING_PERIOD = 7 days;
    uint16 internal constant TENANT_SHARE_BPS = 5_000;
    uint16 internal constant CALLER_SHARE_BPS = 1_000;
    uint64 internal constant MIN_HEARTBEAT_TIMEOUT = 4;
    uint64 internal constant MAX_HEARTBEAT_TIMEOUT = 1 days;
    address internal constant TREASURY = address(0x7EA5);

    uint256 internal constant PRICE = 1e15;
    uint256 internal constant COLLATERAL = 50e18;
    uint64 internal constant HEARTBEAT_PERIOD = 10;
    uint64 internal constant HEARTBEAT_TIMEOUT = 60;
    uint64 internal constant MAX_DURATION = 1 hours;
    /// @dev An image job's image: the SHA-256 of an OCI manifest, as a quote carries it.
    bytes32 internal constant IMAGE = sha256("an OCI image manifest");

    uint256 internal constant PROVIDER_KEY = 0xA11CE;
    uint256 internal constant OTHER_PROVIDER_KEY = 0xB0B;

    DevToken internal stakingToken;
    DevToken internal paymentToken;
    ProviderRegistry internal registry;
    LeaseManager internal manager;

    address internal provider;
    address internal otherProvider;
    address internal tenant = address(0x7E4A47);
    address internal otherTenant = address(0x07E4);
    address internal keeper = address(0x5EE9E4);

    uint256 internal nextNonce;

    function setUp() public virtual {
        // Start at a realistic time so that timestamp arithmetic never underflows in tests.
        vm.warp(1_700_000_000);

        stakingToken = new DevToken("Baton Stake", "BSTK");
        paymentToken = new DevToken("Baton Pay", "BPAY");
        (registry, manager) = _deployPair(stakingToken, paymentToken);

        provider = vm.addr(PROVIDER_KEY);
        otherProvider = vm.addr(OTHER_PROVIDER_KEY);
        vm.label(provider, "provider");
        vm.label(otherProvider, "otherProvider");
        vm.label(tenant, "tenant");
        vm.label(otherTenant, "otherTenant");
        vm.label(keeper, "keeper");

        _fundTenant(tenant, 1_000_000e18);
        _fundTenant(otherTenant, 1_000_000e18);
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    /// @dev Deploys a registry and its lease manager wired as the deploy module wires them: the
    /// registry is built with the address the manager will have, this contract's next-but-one.
    function _deployPair(
        IERC20 stakingToken_,
        IERC20 paymentToken_
    ) internal returns (ProviderRegistry registry_, LeaseManager manager_) {
        registry_ = new ProviderRegistry(stakingToken_, MIN_STAKE, UNBONDING_PERIOD, _nextButOneAddress());
        manager_ = new LeaseManager(
            paymentToken_,
            registry_,
            TENANT_SHARE_BPS,
            CALLER_SHARE_BPS,
            TREASURY,
            MIN_HEARTBEAT_TIMEOUT,
            MAX_HEARTBEAT_TIMEOUT
        );
    }

    /// @dev The address of the contract this one creates after the next: the lease manager's, for a
    /// registry about to be created.
    function _nextButOneAddress() internal view returns (address) {
        return vm.computeCreateAddress(address(this), vm.getNonce(address(this)) + 1);
    }

    function _fundTenant(address who, uint256 amount) internal {
        paymentToken.mint(who, amount);
        vm.prank(who);
        paymentToken.approve(address(manager), type(uint256).max);
    }

    function _registerProvider(address who, string memory peerId, uint256 amount) internal {
        stakingToken.mint(who, amount);
        vm.startPrank(who);
        stakingToken.approve(address(registry), type(uint256).max);
        registry.register(peerId, "{}", amount);
        vm.stopPrank();
    }

    function _defaultQuote() internal returns (Lease.Quote memory quote) {
        quote = _quote(provider, tenant, keccak256("job-1"));
    }

    function _quote(address provider_, address tenant_, bytes32 jobId) internal returns (Lease.Quote memory) {
        return
            Lease.Quote({
                provider: provider_,
                tenant: tenant_,
                jobId: jobId,
                resources: keccak256("gpu:1xH100-80GB"),
                image: bytes32(0),
                pricePerSecond: PRICE,
                collateral: COLLATERAL,
                heartbeatPeriod: HEARTBEAT_PERIOD,
                heartbeatTimeout: HEARTBEAT_TIMEOUT,
                maxDuration: MAX_DURATION,
                expiry: uint64(block.timestamp + 5 minutes),
                nonce: nextNonce++
            });
    }

    /// @dev What `LeaseOpened` records of `quote` besides its parties and job.
    function _terms(Lease.Quote memory quote) internal pure returns (Lease.Terms memory) {
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

    function _sign(uint256 key, Lease.Quote memory quote) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, manager.hashQuote(quote));
        return abi.encodePacked(r, s, v);
    }

    function _keyOf(address who) internal view returns (uint256) {
        if (who == provider) return PROVIDER_KEY;
        if (who == otherProvider) return OTHER_PROVIDER_KEY;
        revert("no key for this address");
    }

    /// @dev Opens a lease as the quote's tenant, signed by the quote's provider.
    function _open(Lease.Quote memory quote, uint256 deposit, uint256 predecessor) internal returns (uint256 leaseId) {
        bytes memory signature = _sign(_keyOf(quote.provider), quote);
        vm.prank(quote.tenant);
        leaseId = manager.openLease(quote, signature, deposit, predecessor);
    }

    /// @dev Registers `provider` with enough stake and opens a default lease funded for 10 minutes.
    function _openDefault() internal returns (uint256 leaseId) {
        _registerProvider(provider, "12D3KooWProvider", MIN_STAKE + COLLATERAL * 4);
        leaseId = _open(_defaultQuote(), PRICE * 600, 0);
    }

    function _heartbeat(address provider_, uint256 leaseId) internal {
        uint256[] memory ids = new uint256[](1);
        ids[0] = leaseId;
        vm.prank(provider_);
        manager.heartbeat(ids, new string[](0));
    }
}
