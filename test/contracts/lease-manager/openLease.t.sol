// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {FeeOnTransferToken} from "../mocks/FeeOnTransferToken.sol";
import {LeaseManagerTest} from "./LeaseManagerTest.sol";
import {Erc1271Wallet} from "./Mocks.sol";

contract OpenLease_Test is LeaseManagerTest {
    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    /// @dev Expects `openLease(quote, provider's signature, deposit, predecessor)` by the tenant to
    /// revert with `revertData`.
    function _expectOpenRevert(Lease.Quote memory q, uint256 deposit, uint256 predecessor, bytes memory revertData) internal {
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.prank(q.tenant);
        vm.expectRevert(revertData);
        manager.openLease(q, sig, deposit, predecessor);
    }

    function _timeoutOutOfRange(uint256 timeout) internal pure returns (bytes memory) {
        return
            abi.encodeWithSelector(
                ILeaseManager.LeaseManager_HeartbeatTimeoutOutOfRange.selector,
                timeout,
                MIN_HEARTBEAT_TIMEOUT,
                MAX_HEARTBEAT_TIMEOUT
            );
    }

    function _periodOutOfRange(uint256 period, uint256 timeout) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(ILeaseManager.LeaseManager_HeartbeatPeriodOutOfRange.selector, period, timeout);
    }

    function _maxDurationOutOfRange(uint256 maxDuration, uint256 timeout) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(ILeaseManager.LeaseManager_MaxDurationOutOfRange.selector, maxDuration, timeout);
    }

    function _invalidSignature(address signer) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidSignature.selector, signer);
    }

    function _invalidPredecessor(uint256 id) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidPredecessor.selector, id);
    }

    /// @dev A fresh copy of `q` with its signed field number `field` (0 to 9) changed, the quote
    /// staying well formed.
    function _altered(Lease.Quote memory q, uint256 field) internal pure returns (Lease.Quote memory a) {
        a = Lease.Quote({
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
        if (field == 0) a.jobId = keccak256("another job");
        else if (field == 1) a.resources = keccak256("gpu:8xH100-80GB");
        else if (field == 2) a.image = q.image == IMAGE ? bytes32(0) : IMAGE;
        else if (field == 3) a.pricePerSecond = q.pricePerSecond - 1;
        else if (field == 4) a.collateral = q.collateral - 1;
        else if (field == 5) a.heartbeatPeriod = q.heartbeatPeriod + 1;
        else if (field == 6) a.heartbeatTimeout = q.heartbeatTimeout + 1;
        else if (field == 7) a.maxDuration = q.maxDuration + 1;
        else if (field == 8) a.expiry = q.expiry + 1;
        else a.nonce = q.nonce + 1000;
    }

    /*//////////////////////////////////////////////////////////////
                             CALLER AND QUOTE
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_CallerNotQuoteTenant() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.prank(otherTenant);
        vm.expectRevert(
            abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotQuoteTenant.selector, tenant, otherTenant)
        );
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_QuoteRewrittenForOtherTenant() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        q.tenant = otherTenant;
        vm.prank(otherTenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_QuoteExpired() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.warp(uint256(q.expiry) + 1);
        vm.prank(tenant);
        vm.expectRevert(
            abi.encodeWithSelector(ILeaseManager.LeaseManager_QuoteExpired.selector, q.expiry, uint256(q.expiry) + 1)
        );
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_WhenQuoteUsedAtExactlyItsExpiry() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        vm.warp(q.expiry);
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).lastHeartbeat, q.expiry, "opened at the expiry");
        assertEq(_lease(id).endsAt, uint256(q.expiry) + FUNDED_SECONDS, "endsAt counts from the open");
    }

    function test_RevertWhen_PriceZero() external {
        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = 0;
        _expectOpenRevert(q, DEPOSIT, 0, abi.encodeWithSelector(ILeaseManager.LeaseManager_PriceOutOfRange.selector, 0));
    }

    function test_RevertWhen_PriceAboveUint96() external {
        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = uint256(type(uint96).max) + 1;
        _expectOpenRevert(
            q,
            uint256(type(uint96).max) + 1,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_PriceOutOfRange.selector, q.pricePerSecond)
        );
    }

    function test_RevertWhen_CollateralAboveUint96() external {
        Lease.Quote memory q = _defaultQuote();
        q.collateral = uint256(type(uint96).max) + 1;
        _expectOpenRevert(
            q,
            DEPOSIT,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_CollateralTooLarge.selector, q.collateral)
        );
    }

    function test_RevertWhen_HeartbeatTimeoutZero() external {
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = 0;
        _expectOpenRevert(q, DEPOSIT, 0, _timeoutOutOfRange(0));
    }

    /// @dev Issue #11 point 4: a timeout of a second or two is one no provider can meet on a chain
    /// with 2 s blocks; the manager's floor refuses it.
    function test_RevertWhen_HeartbeatTimeoutBelowMin() external {
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = MIN_HEARTBEAT_TIMEOUT - 1;
        q.heartbeatPeriod = 1;
        _expectOpenRevert(q, DEPOSIT, 0, _timeoutOutOfRange(MIN_HEARTBEAT_TIMEOUT - 1));
    }

    function test_WhenHeartbeatTimeoutEqualsMin() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = MIN_HEARTBEAT_TIMEOUT;
        q.heartbeatPeriod = MIN_HEARTBEAT_TIMEOUT / 2;
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).heartbeatTimeout, MIN_HEARTBEAT_TIMEOUT, "heartbeatTimeout");
        assertEq(_lease(id).deadline, T0 + MIN_HEARTBEAT_TIMEOUT, "deadline");
    }

    function test_RevertWhen_HeartbeatTimeoutAboveMax() external {
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = MAX_HEARTBEAT_TIMEOUT + 1;
        _expectOpenRevert(q, DEPOSIT, 0, _timeoutOutOfRange(MAX_HEARTBEAT_TIMEOUT + 1));
    }

    function test_WhenHeartbeatTimeoutEqualsMax() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = MAX_HEARTBEAT_TIMEOUT;
        q.maxDuration = MAX_HEARTBEAT_TIMEOUT + 1; // the timeout must be shorter
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).heartbeatTimeout, MAX_HEARTBEAT_TIMEOUT, "heartbeatTimeout");
        assertEq(_lease(id).deadline, T0 + MAX_HEARTBEAT_TIMEOUT, "deadline");
    }

    function test_RevertWhen_HeartbeatPeriodZero() external {
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatPeriod = 0;
        _expectOpenRevert(q, DEPOSIT, 0, _periodOutOfRange(0, HEARTBEAT_TIMEOUT));
    }

    function test_RevertWhen_HeartbeatPeriodAboveTimeout() external {
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatPeriod = q.heartbeatTimeout + 1;
        _expectOpenRevert(q, DEPOSIT, 0, _periodOutOfRange(HEARTBEAT_TIMEOUT + 1, HEARTBEAT_TIMEOUT));
    }

    /// @dev Issue #11 point 4: a period equal to the timeout left a one-second window (accepted
    /// before); now two heartbeats must fit in every timeout.
    function test_RevertWhen_HeartbeatPeriodEqualsTimeout() external {
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatPeriod = q.heartbeatTimeout;
        _expectOpenRevert(q, DEPOSIT, 0, _periodOutOfRange(HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT));
    }

    function test_RevertWhen_HeartbeatPeriodAboveHalfTimeout() external {
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatPeriod = q.heartbeatTimeout / 2 + 1;
        _expectOpenRevert(q, DEPOSIT, 0, _periodOutOfRange(HEARTBEAT_TIMEOUT / 2 + 1, HEARTBEAT_TIMEOUT));
    }

    function test_RevertWhen_HeartbeatPeriodAboveHalfOddTimeout() external {
        // Half of 61 rounds down: 30 fits, 31 does not.
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = 61;
        q.heartbeatPeriod = 31;
        _expectOpenRevert(q, DEPOSIT, 0, _periodOutOfRange(31, 61));
    }

    function test_WhenHeartbeatPeriodEqualsHalfTimeout() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatPeriod = q.heartbeatTimeout / 2;
        uint256 id = _open(q, DEPOSIT, 0);
        _assertStatus(id, Lease.Status.Active);
    }

    function testFuzz_RevertWhen_HeartbeatPeriodAboveHalfTimeout(uint256 timeout, uint256 period) external {
        timeout = bound(timeout, MIN_HEARTBEAT_TIMEOUT, MAX_HEARTBEAT_TIMEOUT);
        period = bound(period, timeout / 2 + 1, type(uint64).max);
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = uint64(timeout);
        q.heartbeatPeriod = uint64(period);
        q.maxDuration = uint64(timeout + 1);
        _expectOpenRevert(q, DEPOSIT, 0, _periodOutOfRange(period, timeout));
    }

    function test_RevertWhen_MaxDurationZero() external {
        Lease.Quote memory q = _defaultQuote();
        q.maxDuration = 0;
        _expectOpenRevert(q, DEPOSIT, 0, _maxDurationOutOfRange(0, HEARTBEAT_TIMEOUT));
    }

    function test_RevertWhen_MaxDurationBeyondUint32Time() external {
        Lease.Quote memory q = _defaultQuote();
        q.maxDuration = uint64(type(uint32).max - T0 + 1);
        _expectOpenRevert(q, DEPOSIT, 0, _maxDurationOutOfRange(q.maxDuration, HEARTBEAT_TIMEOUT));
    }

    function test_WhenMaxDurationReachesUint32Time() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.maxDuration = uint64(type(uint32).max - T0);
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).maxEnd, type(uint32).max, "maxEnd");
        assertEq(_lease(id).endsAt, T0 + FUNDED_SECONDS, "endsAt");
    }

    function test_RevertWhen_HeartbeatTimeoutEqualsMaxDuration() external {
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = q.maxDuration;
        _expectOpenRevert(q, DEPOSIT, 0, _maxDurationOutOfRange(MAX_DURATION, MAX_DURATION));
    }

    function test_RevertWhen_HeartbeatTimeoutAboveMaxDuration() external {
        Lease.Quote memory q = _defaultQuote();
        q.maxDuration = HEARTBEAT_TIMEOUT - 1;
        _expectOpenRevert(q, DEPOSIT, 0, _maxDurationOutOfRange(HEARTBEAT_TIMEOUT - 1, HEARTBEAT_TIMEOUT));
    }

    function test_RevertWhen_HeartbeatTimeoutAtMaxAboveMaxDuration() external {
        // Within the manager's maximum, but longer than the lease may run.
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = MAX_HEARTBEAT_TIMEOUT;
        _expectOpenRevert(q, DEPOSIT, 0, _maxDurationOutOfRange(MAX_DURATION, MAX_HEARTBEAT_TIMEOUT));
    }

    function test_WhenHeartbeatTimeoutJustBelowMaxDuration() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.maxDuration = HEARTBEAT_TIMEOUT + 1;
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).maxEnd, T0 + HEARTBEAT_TIMEOUT + 1, "maxEnd");
        assertEq(_lease(id).endsAt, T0 + HEARTBEAT_TIMEOUT + 1, "endsAt");
        assertEq(_lease(id).deadline, T0 + HEARTBEAT_TIMEOUT, "deadline one second before the end");
    }

    function testFuzz_RevertWhen_HeartbeatTimeoutNotShorterThanMaxDuration(
        uint256 timeout,
        uint256 maxDuration
    ) external {
        timeout = bound(timeout, MIN_HEARTBEAT_TIMEOUT, MAX_HEARTBEAT_TIMEOUT);
        maxDuration = bound(maxDuration, 0, timeout);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.heartbeatTimeout = uint64(timeout);
        q.heartbeatPeriod = 1;
        q.maxDuration = uint64(maxDuration);
        _expectOpenRevert(q, DEPOSIT, 0, _maxDurationOutOfRange(maxDuration, timeout));
    }

    function test_RevertWhen_DepositZero() external {
        Lease.Quote memory q = _defaultQuote();
        _expectOpenRevert(
            q,
            0,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_DepositTooSmall.selector, 0, PRICE)
        );
    }

    function test_RevertWhen_DepositBelowOneSecond() external {
        Lease.Quote memory q = _defaultQuote();
        _expectOpenRevert(
            q,
            PRICE - 1,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_DepositTooSmall.selector, PRICE - 1, PRICE)
        );
    }

    function test_WhenDepositPaysExactlyOneSecond() external {
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), PRICE, 0);
        assertEq(_lease(id).endsAt, T0 + 1, "endsAt");
    }

    function test_RevertWhen_DepositAboveUint96() external {
        Lease.Quote memory q = _defaultQuote();
        uint256 deposit = uint256(type(uint96).max) + 1;
        _expectOpenRevert(
            q,
            deposit,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_AmountTooLarge.selector, deposit)
        );
    }

    /*//////////////////////////////////////////////////////////////
                                SIGNATURE
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_SignedByOtherKey() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(OTHER_PROVIDER_KEY, q);
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_SignatureEmpty() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, "", DEPOSIT, 0);
    }

    function test_RevertWhen_SignatureWrongLength() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, manager.hashQuote(q));
        bytes memory sig = abi.encodePacked(r, s, v, uint8(0));
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_SignatureMalleated() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, manager.hashQuote(q));
        // The other valid (high-s) form of the same signature; OpenZeppelin's ECDSA rejects it.
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes memory sig = abi.encodePacked(r, bytes32(n - uint256(s)), v == 27 ? uint8(28) : uint8(27));
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_AnySignedFieldAltered() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        for (uint256 field = 0; field < 10; ++field) {
            Lease.Quote memory a = _altered(q, field);
            vm.prank(tenant);
            vm.expectRevert(_invalidSignature(provider));
            manager.openLease(a, sig, DEPOSIT, 0);
        }
        // The unaltered quote still opens.
        vm.prank(tenant);
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function testFuzz_RevertWhen_SignedFieldAltered(uint256 field) external {
        field = bound(field, 0, 9);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Quote memory a = _altered(q, field);
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(a, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_ProviderFieldAltered() external {
        _ensureProvider();
        _ensureOtherProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        q.provider = otherProvider;
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(otherProvider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_ImageChangedAfterSigning() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.image = IMAGE;
        bytes memory sig = _sign(PROVIDER_KEY, q);
        bytes32[2] memory others = [sha256("another manifest"), bytes32(0)];
        for (uint256 i = 0; i < others.length; ++i) {
            q.image = others[i];
            vm.prank(tenant);
            vm.expectRevert(_invalidSignature(provider));
            manager.openLease(q, sig, DEPOSIT, 0);
        }
    }

    function test_RevertWhen_ImageAddedToProcessJobQuote() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        q.image = IMAGE;
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function testFuzz_RevertWhen_ImageChangedAfterSigning(bytes32 signed, bytes32 sent) external {
        vm.assume(signed != sent);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.image = signed;
        bytes memory sig = _sign(PROVIDER_KEY, q);
        q.image = sent;
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_QuoteSignedForOtherChainId() external {
        // Chain ids are set explicitly: the optimizer may re-read `block.chainid` instead of
        // keeping it in a local variable.
        _ensureProvider();
        vm.chainId(1002);
        Lease.Quote memory q = _defaultQuote();
        vm.chainId(1001);
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.chainId(1002);
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);

        // Signed for this chain, the same quote opens.
        bytes memory good = _sign(PROVIDER_KEY, q);
        vm.prank(tenant);
        manager.openLease(q, good, DEPOSIT, 0);
    }

    function test_RevertWhen_QuoteReplayedOnOtherChainId() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        // The same contract at the same address on a fork with another chain id.
        vm.chainId(block.chainid + 1);
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_QuoteSignedForOtherDeployment() external {
        // A second, fully working deployment where the provider is registered and the tenant approved.
        (ProviderRegistry registry2, LeaseManager manager2) = _deployPair(stakingToken, paymentToken);
        stakingToken.mint(provider, PROVIDER_STAKE);
        vm.startPrank(provider);
        stakingToken.approve(address(registry2), PROVIDER_STAKE);
        registry2.register("12D3KooWProvider", "{}", PROVIDER_STAKE);
        vm.stopPrank();
        vm.prank(tenant);
        paymentToken.approve(address(manager2), type(uint256).max);

        Lease.Quote memory q = _defaultQuote();
        assertTrue(manager.hashQuote(q) != manager2.hashQuote(q), "digests differ per deployment");

        // Signed for `manager`, used on `manager2`.
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager2.openLease(q, sig, DEPOSIT, 0);

        // Signed for `manager2`, it opens there, and still cannot be used on `manager`.
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, manager2.hashQuote(q));
        bytes memory sig2 = abi.encodePacked(r, s, v);
        vm.prank(tenant);
        manager2.openLease(q, sig2, DEPOSIT, 0);
        _ensureProvider();
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig2, DEPOSIT, 0);
    }

    function test_WhenProviderIsErc1271Contract() external {
        Erc1271Wallet wallet = new Erc1271Wallet();
        _registerProvider(address(wallet), "12D3KooWWallet", PROVIDER_STAKE);
        Lease.Quote memory q = _quote(address(wallet), tenant, JOB);
        wallet.approveDigest(manager.hashQuote(q));
        vm.prank(tenant);
        uint256 id = manager.openLease(q, "any bytes", DEPOSIT, 0);
        assertEq(_lease(id).provider, address(wallet), "provider");
        assertEq(registry.getProvider(address(wallet)).locked, COLLATERAL, "collateral locked");
    }

    /// @dev Issue #11 point 7: the ECDSA signature is tried first, whatever code the provider's
    /// address has. An EOA with code (EIP-7702 delegation) whose code does not implement ERC-1271
    /// still opens leases with its key's signature; before, any code meant ERC-1271 only.
    function test_WhenProviderIsEoaWithCode() external {
        _ensureProvider();
        vm.etch(provider, hex"00"); // code that answers every call with nothing
        Lease.Quote memory q = _defaultQuote();
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).provider, provider, "provider");
        _assertStatus(id, Lease.Status.Active);
    }

    function test_RevertWhen_EoaWithCodeSignedWithOtherKey() external {
        _ensureProvider();
        vm.etch(provider, hex"00");
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(OTHER_PROVIDER_KEY, q);
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(provider));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_WhenErc1271ContractGetsAnEcdsaShapedSignature() external {
        // 65 bytes that recover to some other address: the contract's own answer decides.
        Erc1271Wallet wallet = new Erc1271Wallet();
        _registerProvider(address(wallet), "12D3KooWWallet", PROVIDER_STAKE);
        Lease.Quote memory q = _quote(address(wallet), tenant, JOB);
        wallet.approveDigest(manager.hashQuote(q));
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.prank(tenant);
        uint256 id = manager.openLease(q, sig, DEPOSIT, 0);
        assertEq(_lease(id).provider, address(wallet), "provider");
    }

    function test_RevertWhen_Erc1271ContractRejects() external {
        Erc1271Wallet wallet = new Erc1271Wallet();
        _registerProvider(address(wallet), "12D3KooWWallet", PROVIDER_STAKE);
        Lease.Quote memory q = _quote(address(wallet), tenant, JOB);
        vm.prank(tenant);
        vm.expectRevert(_invalidSignature(address(wallet)));
        manager.openLease(q, "any bytes", DEPOSIT, 0);
    }

    /*//////////////////////////////////////////////////////////////
                                  NONCE
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_QuoteReused() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.prank(tenant);
        manager.openLease(q, sig, DEPOSIT, 0);
        vm.prank(tenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_NonceUsed.selector, provider, q.nonce));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_QuoteReusedAfterLeaseEnded() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.prank(tenant);
        uint256 id = manager.openLease(q, sig, DEPOSIT, 0);
        _finishAt(id, T0 + 10);
        vm.prank(tenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_NonceUsed.selector, provider, q.nonce));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_RevertWhen_OtherQuoteWithUsedNonce() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        _open(q, DEPOSIT, 0);
        Lease.Quote memory q2 = _quote(provider, tenant, OTHER_JOB);
        q2.nonce = q.nonce;
        _expectOpenRevert(
            q2,
            DEPOSIT,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_NonceUsed.selector, provider, q.nonce)
        );
    }

    function test_RevertWhen_NonceInvalidated() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        vm.prank(provider);
        manager.invalidateNonce(q.nonce);
        _expectOpenRevert(
            q,
            DEPOSIT,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_NonceUsed.selector, provider, q.nonce)
        );
    }

    function test_WhenOtherProviderUsedSameNonce() external {
        _ensureProvider();
        _ensureOtherProvider();
        Lease.Quote memory q = _defaultQuote();
        Lease.Quote memory q2 = _quote(otherProvider, tenant, OTHER_JOB);
        q2.nonce = q.nonce;
        _open(q2, DEPOSIT, 0);
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(id, 2, "second lease");
        assertTrue(manager.isNonceUsed(provider, q.nonce), "provider's nonce used");
        assertTrue(manager.isNonceUsed(otherProvider, q.nonce), "other provider's nonce used");
    }

    /*//////////////////////////////////////////////////////////////
                             PROVIDER STAKE
    //////////////////////////////////////////////////////////////*/

    function test_RevertGiven_ProviderNotRegistered() external {
        Lease.Quote memory q = _defaultQuote();
        _expectOpenRevert(
            q,
            DEPOSIT,
            0,
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_NotRegistered.selector, provider)
        );
    }

    function test_RevertGiven_ProviderBelowMinStake() external {
        _registerProvider(provider, "12D3KooWProvider", MIN_STAKE - 1);
        Lease.Quote memory q = _defaultQuote();
        q.collateral = 1;
        _expectOpenRevert(
            q,
            DEPOSIT,
            0,
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_BelowMinStake.selector,
                provider,
                MIN_STAKE - 1,
                MIN_STAKE
            )
        );
    }

    function test_RevertGiven_ProviderUnbondingBelowMinStake() external {
        _ensureProvider();
        vm.prank(provider);
        registry.requestUnstake(PROVIDER_STAKE - MIN_STAKE + 1);
        Lease.Quote memory q = _defaultQuote();
        _expectOpenRevert(
            q,
            DEPOSIT,
            0,
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_BelowMinStake.selector,
                provider,
                MIN_STAKE - 1,
                MIN_STAKE
            )
        );
    }

    function test_RevertGiven_CollateralAboveFreeStake() external {
        _registerProvider(provider, "12D3KooWProvider", MIN_STAKE);
        Lease.Quote memory q = _defaultQuote();
        q.collateral = MIN_STAKE + 1;
        _expectOpenRevert(
            q,
            DEPOSIT,
            0,
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                MIN_STAKE + 1,
                MIN_STAKE
            )
        );
    }

    function test_RevertGiven_FreeStakeLockedByOtherLeases() external {
        _ensureProvider();
        // PROVIDER_STAKE covers exactly six collaterals.
        for (uint256 i = 0; i < 6; ++i) _open(_defaultQuote(), DEPOSIT, 0);
        assertEq(registry.freeStake(provider), 0, "no free stake left");
        Lease.Quote memory q = _defaultQuote();
        _expectOpenRevert(
            q,
            DEPOSIT,
            0,
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                provider,
                COLLATERAL,
                0
            )
        );
    }

    function test_WhenCollateralZero() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.collateral = 0;
        uint256 id = _open(q, DEPOSIT, 0);
        assertEq(_lease(id).collateral, 0, "collateral");
        _assertProvider(PROVIDER_STAKE, 0, 1, 0, 0, 0);
    }

    /*//////////////////////////////////////////////////////////////
                               PREDECESSOR
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_PredecessorDoesNotExist() external {
        _ensureProvider();
        _expectOpenRevert(_defaultQuote(), DEPOSIT, 1, _invalidPredecessor(1));
    }

    function test_RevertWhen_PredecessorOfOtherTenant() external {
        _ensureProvider();
        uint256 id = _open(_quote(provider, otherTenant, JOB), DEPOSIT, 0);
        _finishAt(id, T0 + 10);
        _expectOpenRevert(_defaultQuote(), DEPOSIT, id, _invalidPredecessor(id));
    }

    function test_RevertWhen_PredecessorOfOtherJob() external {
        uint256 id = _completedLease();
        _expectOpenRevert(_quote(provider, tenant, OTHER_JOB), DEPOSIT, id, _invalidPredecessor(id));
    }

    function test_RevertWhen_PredecessorActive() external {
        uint256 id = _openLease();
        _expectOpenRevert(_defaultQuote(), DEPOSIT, id, _invalidPredecessor(id));
    }

    function test_RevertWhen_PredecessorActiveButSlashable() external {
        uint256 id = _openLease();
        vm.warp(T0 + 61);
        assertTrue(_lease(id).slashable, "predecessor slashable");
        // It must be slashed first: an unslashed dead lease is still `Active`.
        _expectOpenRevert(_defaultQuote(), DEPOSIT, id, _invalidPredecessor(id));
    }

    function test_RevertWhen_PredecessorActiveButExpired() external {
        uint256 id = _openShortLease();
        vm.warp(T0 + 30);
        assertTrue(_lease(id).expired, "predecessor expired");
        _expectOpenRevert(_defaultQuote(), DEPOSIT, id, _invalidPredecessor(id));
    }

    /// @dev Opens the default quote at `now_` (the current time) as successor of `predecessor`.
    function _assertOpensAfter(uint256 predecessor, uint256 now_) internal {
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseOpened(
            predecessor + 1,
            JOB,
            provider,
            tenant,
            predecessor,
            DEPOSIT,
            uint64(now_ + FUNDED_SECONDS),
            _terms(q)
        );
        vm.prank(tenant);
        uint256 id = manager.openLease(q, sig, DEPOSIT, predecessor);
        assertEq(id, predecessor + 1, "successor id");
        _assertStatus(id, Lease.Status.Active);
        assertEq(_lease(id).jobId, JOB, "same job");
        assertEq(_lease(id).lastHeartbeat, now_, "opened now");
    }

    function test_WhenNoPredecessor_SuccessorOfIsZero() external {
        uint256 id = _openLease();
        assertEq(manager.successorOf(id), 0, "not continued");
        assertEq(manager.successorOf(0), 0, "no lease zero");
    }

    function test_GivenPredecessorClosing() external {
        _assertOpensAfter(_closingLease(), T0 + 20);
    }

    function test_GivenPredecessorCompleted() external {
        _assertOpensAfter(_completedLease(), T0 + 20);
    }

    function test_GivenPredecessorClosed() external {
        _assertOpensAfter(_closedLease(), T0 + 30);
    }

    function test_GivenPredecessorExpired() external {
        _assertOpensAfter(_expiredLease(), T0 + 40);
    }

    function test_GivenPredecessorSlashed() external {
        _assertOpensAfter(_slashedLease(), T0 + 71);
    }

    /// @dev Issue #11 point 3: an ended lease is continued once; a second lease naming it (a fork
    /// of the job's line, which an audit could take for the job's final lease) is refused.
    function test_RevertWhen_PredecessorContinued() external {
        uint256 id = _slashedLease();
        uint256 successor = _open(_defaultQuote(), DEPOSIT, id);
        assertEq(manager.successorOf(id), successor, "successorOf");
        _expectOpenRevert(
            _defaultQuote(),
            DEPOSIT,
            id,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_PredecessorContinued.selector, id, successor)
        );
    }

    function test_RevertWhen_PredecessorContinued_GivenSuccessorEnded() external {
        // The successor's own end does not free its predecessor: the line has moved on.
        uint256 id = _completedLease();
        uint256 successor = _open(_defaultQuote(), DEPOSIT, id);
        _finishAt(successor, T0 + 30);
        _expectOpenRevert(
            _defaultQuote(),
            DEPOSIT,
            id,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_PredecessorContinued.selector, id, successor)
        );
    }

    function test_WhenSuccessorIsContinuedInTurn() external {
        // A line of succession: 1 <- 2 <- 3.
        uint256 first = _completedLease();
        uint256 second = _open(_defaultQuote(), DEPOSIT, first);
        _finishAt(second, T0 + 30);
        uint256 third = _open(_defaultQuote(), DEPOSIT, second);
        assertEq(manager.successorOf(first), second, "first -> second");
        assertEq(manager.successorOf(second), third, "second -> third");
        assertEq(manager.successorOf(third), 0, "third not continued");
    }

    function test_WhenOtherTenantOpensUnderSameJobId() external {
        // Job ids are not owned: another tenant may open under the same id, but can neither
        // continue this tenant's lease nor use up its one successor.
        uint256 id = _completedLease();
        _open(_quote(provider, otherTenant, JOB), DEPOSIT, 0);
        _expectOpenRevert(_quote(provider, otherTenant, JOB), DEPOSIT, id, _invalidPredecessor(id));
        assertEq(manager.successorOf(id), 0, "still not continued");
        uint256 successor = _open(_defaultQuote(), DEPOSIT, id);
        assertEq(manager.successorOf(id), successor, "the tenant continues its own lease");
    }

    /*//////////////////////////////////////////////////////////////
                                 DEPOSIT
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_AllowanceInsufficient() external {
        _ensureProvider();
        vm.prank(tenant);
        paymentToken.approve(address(manager), DEPOSIT - 1);
        _expectOpenRevert(
            _defaultQuote(),
            DEPOSIT,
            0,
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector,
                address(manager),
                DEPOSIT - 1,
                DEPOSIT
            )
        );
    }

    /// @dev Issue #11 point 6: a token that delivers less than the deposit (a transfer fee) would
    /// leave the escrow promising more than it holds; the open is refused.
    function test_RevertWhen_TokenTakesFee() external {
        FeeOnTransferToken feeToken = new FeeOnTransferToken("Fee Pay", "FPAY", 100);
        _redeploy(stakingToken, feeToken);
        _ensureProvider();
        _expectOpenRevert(
            _defaultQuote(),
            DEPOSIT,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_UnsupportedToken.selector, DEPOSIT, DEPOSIT - DEPOSIT / 100)
        );
        assertEq(feeToken.balanceOf(address(manager)), 0, "nothing escrowed");
        assertEq(manager.leaseCount(), 0, "no lease");
    }

    function test_WhenTokenTakesNoFee() external {
        // The same token with its fee off is a plain ERC-20.
        FeeOnTransferToken feeToken = new FeeOnTransferToken("Fee Pay", "FPAY", 0);
        _redeploy(stakingToken, feeToken);
        uint256 id = _openLease();
        assertEq(feeToken.balanceOf(address(manager)), DEPOSIT, "escrowed");
        assertEq(_lease(id).deposit, DEPOSIT, "deposit");
    }

    function test_RevertWhen_BalanceInsufficient() external {
        _ensureProvider();
        address poorTenant = address(0x9009);
        _fundTenant(poorTenant, DEPOSIT - 1);
        _expectOpenRevert(
            _quote(provider, poorTenant, JOB),
            DEPOSIT,
            0,
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, poorTenant, DEPOSIT - 1, DEPOSIT)
        );
    }

    /*//////////////////////////////////////////////////////////////
                               HAPPY PATHS
    //////////////////////////////////////////////////////////////*/

    function test_WhenAllChecksPass() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);

        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseOpened(1, JOB, provider, tenant, 0, DEPOSIT, uint64(T0 + FUNDED_SECONDS), _terms(q));
        _expectPayTransfer(tenant, address(manager), DEPOSIT);
        vm.prank(tenant);
        uint256 id = manager.openLease(q, sig, DEPOSIT, 0);

        assertEq(id, 1, "lease id");
        assertEq(manager.leaseCount(), 1, "leaseCount");
        assertTrue(manager.isNonceUsed(provider, q.nonce), "nonce used");

        Lease.View memory l = _lease(id);
        assertEq(l.provider, provider, "provider");
        assertEq(l.tenant, tenant, "tenant");
        assertEq(l.jobId, JOB, "jobId");
        assertEq(uint256(l.status), uint256(Lease.Status.Active), "status");
        assertFalse(l.expired, "expired");
        assertFalse(l.slashable, "slashable");
        assertEq(l.lastHeartbeat, T0, "lastHeartbeat");
        assertEq(l.deadline, T0 + HEARTBEAT_TIMEOUT, "deadline");
        assertEq(l.endsAt, T0 + FUNDED_SECONDS, "endsAt");
        assertEq(l.maxEnd, T0 + MAX_DURATION, "maxEnd");
        assertEq(l.settledUntil, T0, "settledUntil");
        assertEq(l.heartbeatTimeout, HEARTBEAT_TIMEOUT, "heartbeatTimeout");
        assertEq(l.pricePerSecond, PRICE, "pricePerSecond");
        assertEq(l.collateral, COLLATERAL, "collateral");
        assertEq(l.deposit, DEPOSIT, "deposit");
        assertEq(l.earned, 0, "earned");

        _assertPayments(TENANT_FUNDS - DEPOSIT, 0, DEPOSIT, 0);
        assertEq(stakingToken.balanceOf(address(registry)), PROVIDER_STAKE, "registry keeps the stake");
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 0);
        assertEq(registry.freeStake(provider), PROVIDER_STAKE - COLLATERAL, "free stake");
        _assertConserved();
    }

    function testFuzz_WhenQuoteNamesAnImage(bytes32 image) external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        q.image = image;
        bytes memory sig = _sign(PROVIDER_KEY, q);

        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseOpened(1, JOB, provider, tenant, 0, DEPOSIT, uint64(T0 + FUNDED_SECONDS), _terms(q));
        vm.prank(tenant);
        uint256 id = manager.openLease(q, sig, DEPOSIT, 0);

        // The image is the event's alone: the lease's record and terms are those of any other quote.
        assertEq(_lease(id).endsAt, T0 + FUNDED_SECONDS, "endsAt");
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 0);
        _assertConserved();
    }

    function test_WhenDepositOutlastsMaxDuration() external {
        _ensureProvider();
        uint256 deposit = PRICE * (MAX_DURATION + 500);
        uint256 id = _open(_defaultQuote(), deposit, 0);
        assertEq(_lease(id).endsAt, T0 + MAX_DURATION, "endsAt capped at maxEnd");
        assertEq(_lease(id).deposit, deposit, "whole deposit escrowed");
    }

    function test_WhenDepositNotMultipleOfPrice() external {
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), DEPOSIT + PRICE - 1, 0);
        assertEq(_lease(id).endsAt, T0 + FUNDED_SECONDS, "endsAt rounds down");
        assertEq(_lease(id).deposit, DEPOSIT + PRICE - 1, "deposit");
    }

    function test_WhenSeveralLeasesOpened() external {
        _ensureProvider();
        _ensureOtherProvider();
        uint256 a = _open(_defaultQuote(), DEPOSIT, 0);
        uint256 b = _open(_quote(otherProvider, otherTenant, OTHER_JOB), DEPOSIT * 2, 0);
        assertEq(a, 1, "first id");
        assertEq(b, 2, "second id");
        assertEq(manager.leaseCount(), 2, "leaseCount");
        assertEq(_lease(b).provider, otherProvider, "second provider");
        assertEq(_lease(b).tenant, otherTenant, "second tenant");
        assertEq(_lease(b).endsAt, T0 + 2 * FUNDED_SECONDS, "second endsAt");
        assertEq(paymentToken.balanceOf(address(manager)), DEPOSIT * 3, "escrow");
        _assertConserved();
    }

    function testFuzz_OpenLease(uint256 price, uint256 deposit, uint256 maxDuration, uint256 collateral) external {
        price = bound(price, 1, type(uint96).max);
        deposit = bound(deposit, price, type(uint96).max);
        maxDuration = bound(maxDuration, HEARTBEAT_TIMEOUT + 1, type(uint32).max - T0);
        collateral = bound(collateral, 0, PROVIDER_STAKE);
        _ensureProvider();
        paymentToken.mint(tenant, deposit);

        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = price;
        q.maxDuration = uint64(maxDuration);
        q.collateral = collateral;
        uint256 id = _open(q, deposit, 0);

        uint256 funded = T0 + deposit / price;
        uint256 maxEnd = T0 + maxDuration;
        Lease.View memory l = _lease(id);
        assertEq(l.endsAt, funded < maxEnd ? funded : maxEnd, "endsAt = min(funded, maxEnd)");
        assertEq(l.maxEnd, maxEnd, "maxEnd");
        assertEq(l.deposit, deposit, "deposit");
        assertEq(l.pricePerSecond, price, "price");
        assertEq(l.collateral, collateral, "collateral");
        assertGe(l.endsAt, T0 + 1, "funded for at least one second");
        assertEq(paymentToken.balanceOf(tenant), TENANT_FUNDS, "tenant paid the deposit");
        assertEq(paymentToken.balanceOf(address(manager)), deposit, "escrow");
        assertEq(registry.getProvider(provider).locked, collateral, "locked");
    }

    function testFuzz_RevertWhen_QuoteExpired(uint256 delay) external {
        delay = bound(delay, 1, 365 days);
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        uint256 time = uint256(q.expiry) + delay;
        vm.warp(time);
        vm.prank(tenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_QuoteExpired.selector, q.expiry, time));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function testFuzz_RevertWhen_DepositTooSmall(uint256 price, uint256 deposit) external {
        price = bound(price, 1, type(uint96).max);
        deposit = bound(deposit, 0, price - 1);
        Lease.Quote memory q = _defaultQuote();
        q.pricePerSecond = price;
        _expectOpenRevert(
            q,
            deposit,
            0,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_DepositTooSmall.selector, deposit, price)
        );
    }
}
