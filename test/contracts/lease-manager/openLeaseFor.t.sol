// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest, VmExt} from "./LeaseManagerTest.sol";
import {Erc1271Wallet} from "./Mocks.sol";

/// @notice `openLeaseFor`: the provider submits a tenant's signed opening (see openLeaseFor.tree).
contract OpenLeaseFor_Test is LeaseManagerTest {
    uint256 internal constant SIGNER_KEY = 0x5161E4;
    uint256 internal constant OTHER_SIGNER_KEY = 0x0751;
    uint64 internal constant WINDOW = 30;

    uint256 internal constant TENANT_CUT = (COLLATERAL * TENANT_SHARE_BPS) / 10_000;
    uint256 internal constant CALLER_CUT = (COLLATERAL * CALLER_SHARE_BPS) / 10_000;
    uint256 internal constant TREASURY_CUT = COLLATERAL - TENANT_CUT - CALLER_CUT;

    /// @dev A tenant with a key (to sign openings), funded and approved.
    address internal signer;
    address internal otherSigner;

    function setUp() public override {
        super.setUp();
        signer = vm.addr(SIGNER_KEY);
        otherSigner = vm.addr(OTHER_SIGNER_KEY);
        vm.label(signer, "signer");
        vm.label(otherSigner, "otherSigner");
        _fundTenant(signer, TENANT_FUNDS);
        _fundTenant(otherSigner, TENANT_FUNDS);
        _ensureProvider();
        _ensureOtherProvider();
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    function _opening(
        address provider_,
        address tenant_,
        bytes32 jobId,
        uint256 predecessor
    ) internal returns (Lease.Opening memory) {
        return
            Lease.Opening({
                quote: _quote(provider_, tenant_, jobId),
                deposit: DEPOSIT,
                predecessor: predecessor,
                deadline: uint64(block.timestamp + WINDOW)
            });
    }

    /// @dev The default opening: `otherProvider` continues `predecessor` of `signer`'s job.
    function _handOff(uint256 predecessor) internal returns (Lease.Opening memory) {
        return _opening(otherProvider, signer, JOB, predecessor);
    }

    function _signOpening(uint256 key, Lease.Opening memory opening) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, manager.hashOpening(opening));
        return abi.encodePacked(r, s, v);
    }

    function _submit(Lease.Opening memory opening, bytes memory signature) internal returns (uint256) {
        vm.prank(opening.quote.provider);
        return manager.openLeaseFor(opening, signature);
    }

    function _submitSigned(Lease.Opening memory opening) internal returns (uint256) {
        return _submit(opening, _signOpening(SIGNER_KEY, opening));
    }

    function _expectSubmitRevert(Lease.Opening memory opening, bytes memory signature, bytes memory revertData) internal {
        vm.prank(opening.quote.provider);
        vm.expectRevert(revertData);
        manager.openLeaseFor(opening, signature);
    }

    /// @dev A lease of `signer` on `provider` for `JOB`, opened now the ordinary way.
    function _signerLease() internal returns (uint256) {
        return _open(_quote(provider, signer, JOB), DEPOSIT, 0);
    }

    /// @dev The escrow holds exactly the deposits of `ids`, the providers' claimable and the tenants' credits.
    function _assertEscrow(uint256[] memory ids) internal view {
        uint256 owed = manager.claimable(provider) + manager.claimable(otherProvider);
        owed += manager.creditOf(signer) + manager.creditOf(otherSigner);
        for (uint256 i = 0; i < ids.length; ++i) owed += manager.getLease(ids[i]).deposit;
        assertEq(paymentToken.balanceOf(address(manager)), owed, "escrow balance == what it owes");
    }

    /*//////////////////////////////////////////////////////////////
                              WITHOUT PREDECESSOR
    //////////////////////////////////////////////////////////////*/

    function test_WhenOpeningValid() external {
        Lease.Opening memory o = _handOff(0);
        uint256 expectedId = manager.leaseIdOf(o.quote);
        uint256 tenantBefore = paymentToken.balanceOf(signer);

        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseOpened(
            expectedId,
            JOB,
            otherProvider,
            signer,
            0,
            DEPOSIT,
            uint64(T0 + FUNDED_SECONDS),
            _terms(o.quote)
        );
        uint256 id = _submitSigned(o);

        assertEq(id, expectedId, "id is leaseIdOf(quote)");
        assertGe(id, 1 << 63, "id in the high range");
        assertLe(id, type(uint64).max, "id fits 64 bits");
        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Active), "active");
        assertEq(l.tenant, signer, "tenant is the signer");
        assertEq(l.provider, otherProvider, "provider is the caller");
        assertEq(l.deposit, DEPOSIT, "deposit");
        assertEq(l.lastHeartbeat, T0, "opened now");
        assertEq(paymentToken.balanceOf(signer), tenantBefore - DEPOSIT, "deposit pulled from the tenant");
        assertEq(_provider(otherProvider).locked, COLLATERAL, "collateral locked");
        assertTrue(manager.isNonceUsed(otherProvider, o.quote.nonce), "nonce used");
        assertEq(manager.leaseCount(), 0, "not counted among openLease's ids");
        _assertEscrow(_ids(id));
    }

    function test_WhenMinedAtTheDeadline() external {
        Lease.Opening memory o = _handOff(0);
        vm.warp(o.deadline);
        uint256 id = _submitSigned(o);
        assertEq(_lease(id).lastHeartbeat, o.deadline, "opened at the deadline");
    }

    function test_WhenTenantIsAContract() external {
        Erc1271Wallet wallet = new Erc1271Wallet();
        _fundTenant(address(wallet), TENANT_FUNDS);
        Lease.Opening memory o = _opening(otherProvider, address(wallet), JOB, 0);
        wallet.approveDigest(manager.hashOpening(o));
        uint256 id = _submit(o, "any bytes");
        assertEq(_lease(id).tenant, address(wallet), "ERC-1271 tenant");
    }

    function test_RevertWhen_CallerNotQuoteProvider() external {
        Lease.Opening memory o = _handOff(0);
        bytes memory sig = _signOpening(SIGNER_KEY, o);
        vm.prank(signer);
        vm.expectRevert(
            abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotQuoteProvider.selector, otherProvider, signer)
        );
        manager.openLeaseFor(o, sig);
    }

    function test_RevertWhen_DeadlinePassed() external {
        Lease.Opening memory o = _handOff(0);
        bytes memory sig = _signOpening(SIGNER_KEY, o);
        vm.warp(uint256(o.deadline) + 1);
        _expectSubmitRevert(
            o,
            sig,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_OpeningExpired.selector, o.deadline, o.deadline + 1)
        );
    }

    function test_RevertWhen_QuoteExpired() external {
        Lease.Opening memory o = _handOff(0);
        o.deadline = o.quote.expiry + 100;
        bytes memory sig = _signOpening(SIGNER_KEY, o);
        vm.warp(uint256(o.quote.expiry) + 1);
        _expectSubmitRevert(
            o,
            sig,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_QuoteExpired.selector, o.quote.expiry, o.quote.expiry + 1)
        );
    }

    function test_RevertWhen_SignedByAnotherKey() external {
        Lease.Opening memory o = _handOff(0);
        _expectSubmitRevert(
            o,
            _signOpening(OTHER_SIGNER_KEY, o),
            abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidTenantSignature.selector, signer)
        );
    }

    function test_RevertWhen_SignatureGarbage() external {
        Lease.Opening memory o = _handOff(0);
        _expectSubmitRevert(
            o,
            hex"0102",
            abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidTenantSignature.selector, signer)
        );
    }

    /// @dev The provider cannot raise the deposit, move the deadline, name a predecessor or change a
    /// term of the quote that the tenant signed.
    function test_RevertWhen_OpeningAltered() external {
        Lease.Opening memory o = _handOff(0);
        bytes memory sig = _signOpening(SIGNER_KEY, o);
        bytes memory invalid = abi.encodeWithSelector(
            ILeaseManager.LeaseManager_InvalidTenantSignature.selector,
            signer
        );

        o.deposit = DEPOSIT * 2;
        _expectSubmitRevert(o, sig, invalid);
        o.deposit = DEPOSIT;
        o.deadline += 60;
        _expectSubmitRevert(o, sig, invalid);
        o.deadline -= 60;
        o.quote.pricePerSecond = PRICE * 2;
        _expectSubmitRevert(o, sig, invalid);
        o.quote.pricePerSecond = PRICE;
        o.quote.collateral = COLLATERAL / 2;
        _expectSubmitRevert(o, sig, invalid);
        o.quote.collateral = COLLATERAL;

        assertEq(_submit(o, sig), manager.leaseIdOf(o.quote), "the opening as signed still opens");
    }

    function test_RevertWhen_SignedForAnotherChainOrContract() external {
        Lease.Opening memory o = _handOff(0);
        bytes memory sig = _signOpening(SIGNER_KEY, o);
        vm.chainId(block.chainid + 1);
        _expectSubmitRevert(
            o,
            sig,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidTenantSignature.selector, signer)
        );
    }

    function test_RevertWhen_Replayed() external {
        Lease.Opening memory o = _handOff(0);
        bytes memory sig = _signOpening(SIGNER_KEY, o);
        _submit(o, sig);
        _expectSubmitRevert(
            o,
            sig,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_LeaseIdTaken.selector, manager.leaseIdOf(o.quote))
        );
    }

    function test_RevertWhen_QuoteNonceUsed() external {
        Lease.Opening memory o = _handOff(0);
        bytes memory sig = _signOpening(SIGNER_KEY, o);
        vm.prank(otherProvider);
        manager.invalidateNonce(o.quote.nonce);
        _expectSubmitRevert(
            o,
            sig,
            abi.encodeWithSelector(ILeaseManager.LeaseManager_NonceUsed.selector, otherProvider, o.quote.nonce)
        );
    }

    function test_RevertWhen_QuoteInvalid() external {
        Lease.Opening memory o = _handOff(0);
        o.quote.heartbeatTimeout = MIN_HEARTBEAT_TIMEOUT - 1;
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(
                ILeaseManager.LeaseManager_HeartbeatTimeoutOutOfRange.selector,
                MIN_HEARTBEAT_TIMEOUT - 1,
                MIN_HEARTBEAT_TIMEOUT,
                MAX_HEARTBEAT_TIMEOUT
            )
        );
    }

    function test_RevertWhen_AllowanceShort() external {
        vm.prank(signer);
        paymentToken.approve(address(manager), DEPOSIT - 1);
        Lease.Opening memory o = _handOff(0);
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector,
                address(manager),
                DEPOSIT - 1,
                DEPOSIT
            )
        );
    }

    function test_RevertWhen_BalanceShort() external {
        uint256 balance = paymentToken.balanceOf(signer);
        vm.prank(signer);
        paymentToken.transfer(keeper, balance - (DEPOSIT - 1));
        Lease.Opening memory o = _handOff(0);
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, signer, DEPOSIT - 1, DEPOSIT)
        );
    }

    function test_RevertWhen_StakeShort() external {
        Lease.Opening memory o = _handOff(0);
        o.quote.collateral = PROVIDER_STAKE + 1; // more than the whole stake
        bytes memory sig = _signOpening(SIGNER_KEY, o);
        vm.prank(otherProvider);
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector,
                otherProvider,
                PROVIDER_STAKE + 1,
                PROVIDER_STAKE
            )
        );
        manager.openLeaseFor(o, sig);
    }

    /*//////////////////////////////////////////////////////////////
                              WITH PREDECESSOR
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_PredecessorDoesNotExist() external {
        Lease.Opening memory o = _handOff(7);
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidPredecessor.selector, 7)
        );
    }

    function test_RevertWhen_PredecessorOfAnotherTenant() external {
        uint256 p = _open(_quote(provider, otherSigner, JOB), DEPOSIT, 0);
        Lease.Opening memory o = _handOff(p);
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidPredecessor.selector, p)
        );
        _assertStatus(p, Lease.Status.Active);
    }

    function test_RevertWhen_PredecessorOfAnotherJob() external {
        uint256 p = _open(_quote(provider, signer, OTHER_JOB), DEPOSIT, 0);
        Lease.Opening memory o = _handOff(p);
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidPredecessor.selector, p)
        );
        _assertStatus(p, Lease.Status.Active);
    }

    function test_RevertWhen_PredecessorContinuedByOpenLease() external {
        uint256 p = _signerLease();
        _heartbeatAt(p, T0 + 10);
        vm.warp(T0 + 20);
        vm.prank(signer);
        manager.close(p);
        uint256 next = _open(_quote(provider, signer, JOB), DEPOSIT, p);
        Lease.Opening memory o = _handOff(p);
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(ILeaseManager.LeaseManager_PredecessorContinued.selector, p, next)
        );
    }

    function test_RevertWhen_PredecessorContinuedByOpenLeaseFor() external {
        uint256 p = _signerLease();
        uint256 first = _submitSigned(_handOff(p));
        Lease.Opening memory o = _opening(provider, signer, JOB, p);
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(ILeaseManager.LeaseManager_PredecessorContinued.selector, p, first)
        );
        // And openLease refuses it too: a job has one line of succession.
        Lease.Quote memory q = _quote(provider, signer, JOB);
        bytes memory qsig = _sign(PROVIDER_KEY, q);
        vm.prank(signer);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_PredecessorContinued.selector, p, first));
        manager.openLease(q, qsig, DEPOSIT, p);
    }

    function test_WhenPredecessorActiveAndNotSlashable() external {
        uint256 p = _signerLease();
        _heartbeatAt(p, T0 + 10);
        vm.warp(T0 + 20);
        uint256 refund = DEPOSIT - 10 * PRICE;

        Lease.Opening memory o = _handOff(p);
        vm.expectEmit(address(manager));
        emit ILeaseManager.EarningsSettled(p, provider, 10 * PRICE, uint64(T0 + 10));
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseCloseRequested(p, refund);
        vm.expectEmit(address(manager));
        emit ILeaseManager.Credited(signer, refund);
        uint256 id = _submitSigned(o);

        // Closed exactly as the tenant's close would have: paid to the last heartbeat, the rest
        // refunded (credited: the provider's call), waiting for its provider's acknowledgement.
        _assertStatus(p, Lease.Status.Closing);
        assertEq(_lease(p).endsAt, T0 + 20, "closed now");
        assertEq(manager.claimable(provider), 10 * PRICE, "old provider paid to its last heartbeat");
        assertEq(manager.creditOf(signer), refund, "refund credited");
        assertEq(manager.successorOf(p), id, "successor");
        _assertStatus(id, Lease.Status.Active);
        _assertEscrow(_ids(p, id));

        // The old provider acknowledges, and its collateral is released as after any close.
        _heartbeatAt(p, T0 + 30);
        _assertStatus(p, Lease.Status.Closed);
        assertEq(_provider(provider).locked, 0, "old collateral released");
    }

    function test_WhenPredecessorActiveAndSlashable() external {
        uint256 p = _signerLease();
        _heartbeatAt(p, T0 + 10);
        vm.warp(T0 + 71); // past the deadline T0 + 70
        uint256 refund = DEPOSIT - 10 * PRICE;

        Lease.Opening memory o = _handOff(p);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(p, otherProvider, refund, TENANT_CUT, CALLER_CUT, TREASURY_CUT);
        uint256 id = _submitSigned(o);

        // Slashed exactly as a slashMissedHeartbeat from the submitter would have.
        _assertStatus(p, Lease.Status.Slashed);
        assertEq(manager.claimable(provider), 10 * PRICE, "old provider paid to its last heartbeat");
        assertEq(manager.creditOf(signer), refund, "refund credited");
        assertEq(registry.creditOf(signer), TENANT_CUT, "compensation credited");
        assertEq(stakingToken.balanceOf(otherProvider), CALLER_CUT, "submitter took the caller's share");
        assertEq(registry.creditOf(TREASURY), TREASURY_CUT, "treasury's share credited");
        assertEq(_provider(provider).leasesSlashed, 1, "slash counted");
        assertEq(_provider(provider).stake, PROVIDER_STAKE - COLLATERAL, "collateral gone");
        assertEq(manager.successorOf(p), id, "successor");
        _assertEscrow(_ids(p, id));
    }

    function test_WhenPredecessorSlashableAndSameProvider() external {
        uint256 p = _signerLease();
        _heartbeatAt(p, T0 + 10);
        vm.warp(T0 + 71);
        Lease.Opening memory o = _opening(provider, signer, JOB, p);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseSlashed(p, provider, DEPOSIT - 10 * PRICE, TENANT_CUT, 0, COLLATERAL - TENANT_CUT);
        _submitSigned(o);
        assertEq(stakingToken.balanceOf(provider), 0, "no reward for slashing one's own lease");
    }

    function test_WhenPredecessorExpired() external {
        uint256 p = _open(_quote(provider, signer, JOB), SHORT_DEPOSIT, 0);
        vm.warp(T0 + 40);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseExpired(p, 0);
        uint256 id = _submitSigned(_handOff(p));
        _assertStatus(p, Lease.Status.Expired);
        assertEq(manager.claimable(provider), SHORT_DEPOSIT, "old provider paid to the end");
        assertEq(manager.successorOf(p), id, "successor");
        assertEq(_provider(provider).locked, 0, "old collateral released");
    }

    /// @dev An ended predecessor (in any state) is left as it is, as with openLease.
    function test_WhenPredecessorEnded() external {
        for (uint256 i = 0; i < 5; ++i) {
            uint256 snap = vm.snapshotState();
            (uint256 p, Lease.Status status) = _signerLeaseInState(i);
            vmx.recordLogs();
            uint256 id = _submitSigned(_handOff(p));
            VmExt.Log[] memory logs = vmx.getRecordedLogs();
            _assertStatus(p, status);
            assertEq(manager.successorOf(p), id, "successor");
            assertEq(_countLogs(logs, address(manager), ILeaseManager.LeaseSlashed.selector), 0, "no slash");
            assertEq(_countLogs(logs, address(manager), ILeaseManager.LeaseCloseRequested.selector), 0, "no close");
            vm.revertToState(snap);
        }
    }

    /// @dev `signer`'s lease on `provider` driven into an ended state, as `_leaseInState` does.
    function _signerLeaseInState(uint256 index) internal returns (uint256 p, Lease.Status status) {
        p = index == 2 ? _open(_quote(provider, signer, JOB), SHORT_DEPOSIT, 0) : _signerLease();
        if (index == 0) {
            _heartbeatAt(p, T0 + 10);
            _finishAt(p, T0 + 20);
            return (p, Lease.Status.Completed);
        }
        if (index == 2) {
            vm.warp(T0 + 40);
            manager.settleExpired(p);
            return (p, Lease.Status.Expired);
        }
        if (index == 3) {
            _heartbeatAt(p, T0 + 10);
            _slashAt(p, T0 + 71);
            return (p, Lease.Status.Slashed);
        }
        _heartbeatAt(p, T0 + 10);
        vm.warp(T0 + 20);
        vm.prank(signer);
        manager.close(p);
        if (index == 1) {
            _heartbeatAt(p, T0 + 30);
            return (p, Lease.Status.Closed);
        }
        return (p, Lease.Status.Closing);
    }

    /// @dev A failed opening (here: the tenant cannot pay) leaves the predecessor as it was.
    function test_RevertWhen_OpeningFailsItLeavesThePredecessor() external {
        uint256 p = _signerLease();
        _heartbeatAt(p, T0 + 10);
        vm.warp(T0 + 71);
        vm.prank(signer);
        paymentToken.approve(address(manager), 0);
        Lease.Opening memory o = _handOff(p);
        _expectSubmitRevert(
            o,
            _signOpening(SIGNER_KEY, o),
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(manager), 0, DEPOSIT)
        );
        _assertStatus(p, Lease.Status.Active);
        assertTrue(_lease(p).slashable, "still slashable by anyone");
        assertEq(manager.successorOf(p), 0, "no successor");
    }

    /*//////////////////////////////////////////////////////////////
                                   FUZZ
    //////////////////////////////////////////////////////////////*/

    struct FuzzCase {
        uint256 predecessor;
        uint256 allowance;
        uint256 minedAt;
        Lease.Opening opening;
        bytes signature;
    }

    /// @dev Opens iff mined by the deadline with the allowance covering the deposit; the active
    /// predecessor is slashed iff its deadline passed at that block, expired iff its deposit ran out,
    /// else closed; money is conserved.
    function testFuzz_OpenLeaseFor(
        uint256 deposit,
        uint256 allowance,
        uint256 heartbeatAt,
        uint256 signedAt,
        uint256 minedAt,
        uint64 window
    ) external {
        FuzzCase memory c = _fuzzCase(deposit, allowance, heartbeatAt, signedAt, window);
        c.minedAt = bound(minedAt, block.timestamp, block.timestamp + 150);
        vm.warp(c.minedAt);
        Lease.View memory before = _lease(c.predecessor);

        bool opens = c.minedAt <= c.opening.deadline &&
            c.minedAt <= c.opening.quote.expiry &&
            c.allowance >= c.opening.deposit;
        vm.prank(otherProvider);
        if (!opens) {
            vm.expectRevert();
            manager.openLeaseFor(c.opening, c.signature);
            _assertStatus(c.predecessor, Lease.Status.Active);
            return;
        }
        uint256 id = manager.openLeaseFor(c.opening, c.signature);

        Lease.Status expected = before.slashable
            ? Lease.Status.Slashed
            : before.expired
                ? Lease.Status.Expired
                : Lease.Status.Closing;
        _assertStatus(c.predecessor, expected);
        assertEq(_lease(id).deposit, c.opening.deposit, "deposit");
        assertEq(manager.successorOf(c.predecessor), id, "successor");
        assertEq(paymentToken.allowance(signer, address(manager)), c.allowance - c.opening.deposit, "allowance spent");
        _assertEscrow(_ids(c.predecessor, id));
    }

    function _fuzzCase(
        uint256 deposit,
        uint256 allowance,
        uint256 heartbeatAt,
        uint256 signedAt,
        uint64 window
    ) internal returns (FuzzCase memory c) {
        // A predecessor (funded for 600 s) heartbeating once or never; the tenant signs when it hands off.
        c.predecessor = _signerLease();
        heartbeatAt = bound(heartbeatAt, T0, T0 + 60);
        if (heartbeatAt > T0) _heartbeatAt(c.predecessor, heartbeatAt);
        vm.warp(bound(signedAt, heartbeatAt, T0 + 700));
        c.opening = _handOff(c.predecessor);
        c.opening.deposit = bound(deposit, PRICE, PRICE * 3600);
        c.opening.deadline = uint64(block.timestamp + bound(window, 1, 120));
        c.signature = _signOpening(SIGNER_KEY, c.opening);
        c.allowance = bound(allowance, 0, PRICE * 4000);
        vm.prank(signer);
        paymentToken.approve(address(manager), c.allowance);
    }
}
