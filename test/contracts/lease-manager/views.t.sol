// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest} from "./LeaseManagerTest.sol";

contract Views_Test is LeaseManagerTest {
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant QUOTE_TYPEHASH =
        keccak256(
            "Quote(address provider,address tenant,bytes32 jobId,bytes32 resources,bytes32 image,"
            "uint256 pricePerSecond,uint256 collateral,uint64 heartbeatPeriod,uint64 heartbeatTimeout,"
            "uint64 maxDuration,uint64 expiry,uint256 nonce)"
        );

    /// @dev The EIP-712 digest of `q`, built field by field without the contract's code.
    function _digest(Lease.Quote memory q, uint256 chainId, address verifyingContract) internal pure returns (bytes32) {
        bytes32 domainSeparator = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("Baton LeaseManager"), keccak256("1"), chainId, verifyingContract)
        );
        // Two encodings of static values, concatenated: the same bytes as one, but not too deep for
        // the legacy code generator (`default` build profile).
        bytes32 structHash = keccak256(
            bytes.concat(
                abi.encode(QUOTE_TYPEHASH, q.provider, q.tenant, q.jobId, q.resources, q.image, q.pricePerSecond),
                abi.encode(q.collateral, q.heartbeatPeriod, q.heartbeatTimeout, q.maxDuration, q.expiry, q.nonce)
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator, structHash));
    }

    /*//////////////////////////////////////////////////////////////
                                 getLease
    //////////////////////////////////////////////////////////////*/

    function test_GetLease_GivenLeaseDoesNotExist() external view {
        Lease.View memory l = _lease(1);
        assertEq(l.provider, address(0), "provider");
        assertEq(l.tenant, address(0), "tenant");
        assertEq(l.jobId, bytes32(0), "jobId");
        assertEq(uint256(l.status), uint256(Lease.Status.None), "status");
        assertFalse(l.expired, "expired");
        assertFalse(l.slashable, "slashable");
        assertEq(l.deadline, 0, "deadline");
        assertEq(l.endsAt, 0, "endsAt");
        assertEq(l.deposit, 0, "deposit");
        assertEq(l.earned, 0, "earned");
    }

    function test_GetLease_GivenActiveBeforeDeadline() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 40);
        vm.warp(T0 + 90);
        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Active), "status");
        assertFalse(l.expired, "expired");
        assertFalse(l.slashable, "slashable");
        assertEq(l.lastHeartbeat, T0 + 40, "lastHeartbeat");
        assertEq(l.deadline, T0 + 100, "deadline = lastHeartbeat + timeout");
        assertEq(l.earned, 40 * PRICE, "earned to the last heartbeat, not to now");
    }

    function test_GetLease_GivenActiveAtExactlyDeadline() external {
        uint256 id = _openLease();
        vm.warp(T0 + HEARTBEAT_TIMEOUT);
        assertFalse(_lease(id).slashable, "not slashable at the deadline");
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        assertTrue(_lease(id).slashable, "slashable after it");
    }

    function test_GetLease_GivenActiveSlashable() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 40);
        vm.warp(T0 + 700); // past the end too, but the deadline (T0+100) came first
        Lease.View memory l = _lease(id);
        assertTrue(l.slashable, "slashable");
        assertFalse(l.expired, "not expired");
        assertEq(l.earned, 40 * PRICE, "earned to the last heartbeat");
    }

    function test_GetLease_GivenActiveExpired() external {
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), SHORT_DEPOSIT + 5, 0);
        _heartbeatAt(id, T0 + 10);
        vm.warp(T0 + 29);
        assertFalse(_lease(id).expired, "not yet");
        assertEq(_lease(id).earned, 10 * PRICE, "to the last heartbeat before the end");
        vm.warp(T0 + 30);
        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Active), "still active until settled");
        assertTrue(l.expired, "expired");
        assertFalse(l.slashable, "slashable");
        assertEq(l.earned, 30 * PRICE, "earned to the end");
    }

    function test_GetLease_GivenActiveAfterClaimAndTopUp() external {
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 50);
        _claim(provider, _ids(id));
        vm.prank(tenant);
        manager.topUp(id, 100 * PRICE);
        _heartbeatAt(id, T0 + 80);
        Lease.View memory l = _lease(id);
        assertEq(l.settledUntil, T0 + 50, "settledUntil");
        assertEq(l.deposit, DEPOSIT + 100 * PRICE - 50 * PRICE, "deposit");
        assertEq(l.endsAt, T0 + 700, "endsAt");
        assertEq(l.earned, 30 * PRICE, "earned since the claim");
    }

    function test_GetLease_GivenClosing() external {
        uint256 id = _closingLease();
        Lease.View memory l = _lease(id);
        assertEq(uint256(l.status), uint256(Lease.Status.Closing), "status");
        assertEq(l.earned, 0, "settled at the close");
        assertEq(l.endsAt, T0 + 20, "ended at the close");
        assertEq(l.deadline, T0 + 20 + HEARTBEAT_TIMEOUT, "deadline: a whole timeout from the close");
        assertFalse(l.slashable, "slashable");
        assertFalse(l.expired, "expired");
        vm.warp(T0 + 10_000);
        assertTrue(_lease(id).slashable, "slashable after the deadline");
        assertFalse(_lease(id).expired, "a closing lease never expires");
    }

    function test_GetLease_GivenEnded() external {
        for (uint256 i = 0; i < 4; ++i) {
            uint256 snapshot = vm.snapshotState();
            vm.warp(T0);
            (uint256 id, Lease.Status status) = _leaseInState(i);
            vm.warp(T0 + 10_000);
            Lease.View memory l = _lease(id);
            assertEq(uint256(l.status), uint256(status), "status");
            assertFalse(l.expired, "expired");
            assertFalse(l.slashable, "slashable");
            assertEq(l.earned, 0, "earned");
            assertEq(l.deposit, 0, "deposit");
            assertEq(l.tenant, tenant, "tenant kept");
            assertEq(l.provider, provider, "provider kept");
            assertEq(l.jobId, JOB, "jobId kept");
            vm.revertToState(snapshot);
        }
    }

    /// @dev `earned` is exactly what a claim pays at that moment, in every state of an active lease.
    function testFuzz_GetLease_EarnedMatchesClaim(uint256 beat, uint256 time, uint256 funded) external {
        funded = bound(funded, 1, 200);
        _ensureProvider();
        uint256 id = _open(_defaultQuote(), funded * PRICE, 0);
        beat = bound(beat, T0, T0 + funded - 1);
        if (beat > T0 + HEARTBEAT_TIMEOUT) _heartbeatAt(id, T0 + HEARTBEAT_TIMEOUT);
        if (beat > T0 + 2 * HEARTBEAT_TIMEOUT) _heartbeatAt(id, T0 + 2 * HEARTBEAT_TIMEOUT);
        if (beat > T0 + 3 * HEARTBEAT_TIMEOUT) _heartbeatAt(id, T0 + 3 * HEARTBEAT_TIMEOUT);
        _heartbeatAt(id, beat);
        time = bound(time, beat, beat + 500);
        vm.warp(time);
        uint256 earned = _lease(id).earned;
        assertEq(_claim(provider, _ids(id)), earned, "claim pays what getLease reports");
    }

    /*//////////////////////////////////////////////////////////////
                                hashQuote
    //////////////////////////////////////////////////////////////*/

    function test_HashQuote() external {
        Lease.Quote memory q = _defaultQuote();
        assertEq(manager.hashQuote(q), _digest(q, block.chainid, address(manager)), "EIP-712 digest");
    }

    function test_HashQuote_GivenOtherChainId() external {
        Lease.Quote memory q = _defaultQuote();
        vm.chainId(1001);
        bytes32 a = manager.hashQuote(q);
        vm.chainId(1002);
        bytes32 b = manager.hashQuote(q);
        assertEq(a, _digest(q, 1001, address(manager)), "chain 1001");
        assertEq(b, _digest(q, 1002, address(manager)), "chain 1002");
        assertTrue(a != b, "bound to the chain id");
    }

    function test_HashQuote_WhenAnyFieldChanges() external {
        Lease.Quote memory q = _defaultQuote();
        bytes32 base = manager.hashQuote(q);
        for (uint256 field = 0; field < 12; ++field) {
            Lease.Quote memory a = _defaultQuote();
            a.nonce = q.nonce;
            a.expiry = q.expiry;
            if (field == 0) a.provider = otherProvider;
            else if (field == 1) a.tenant = otherTenant;
            else if (field == 2) a.jobId = OTHER_JOB;
            else if (field == 3) a.resources = bytes32(0);
            else if (field == 4) a.image = IMAGE;
            else if (field == 5) a.pricePerSecond += 1;
            else if (field == 6) a.collateral += 1;
            else if (field == 7) a.heartbeatPeriod += 1;
            else if (field == 8) a.heartbeatTimeout += 1;
            else if (field == 9) a.maxDuration += 1;
            else if (field == 10) a.expiry += 1;
            else a.nonce += 1;
            assertTrue(manager.hashQuote(a) != base, "every field is signed");
            assertEq(manager.hashQuote(a), _digest(a, block.chainid, address(manager)), "digest");
        }
        assertEq(manager.hashQuote(q), base, "deterministic");
    }

    function test_Eip712Domain() external view {
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            ,

        ) = manager.eip712Domain();
        assertEq(uint256(uint8(fields)), 0x0f, "name, version, chainId, verifyingContract");
        assertEq(name, "Baton LeaseManager", "name");
        assertEq(version, "1", "version");
        assertEq(chainId, block.chainid, "chainId");
        assertEq(verifyingContract, address(manager), "verifyingContract");
    }

    /*//////////////////////////////////////////////////////////////
                    isNonceUsed, claimable, secondsServed
    //////////////////////////////////////////////////////////////*/

    function test_IsNonceUsed() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        assertFalse(manager.isNonceUsed(provider, q.nonce), "unused before");
        _open(q, DEPOSIT, 0);
        assertTrue(manager.isNonceUsed(provider, q.nonce), "used by the lease");
        assertFalse(manager.isNonceUsed(provider, q.nonce + 1), "next nonce");
        assertFalse(manager.isNonceUsed(tenant, q.nonce), "per provider");
    }

    function test_Claimable() external {
        assertEq(manager.claimable(provider), 0, "zero at first");
        _completedLease();
        assertEq(manager.claimable(provider), 20 * PRICE, "credited by the finish");
        _claim(provider, _noIds());
        assertEq(manager.claimable(provider), 0, "emptied by a claim");
    }

    function test_SecondsServed() external {
        assertEq(manager.secondsServed(provider), 0, "zero at first");
        uint256 id = _openLease();
        _heartbeatAt(id, T0 + 50);
        assertEq(manager.secondsServed(provider), 0, "a heartbeat settles nothing");
        _claim(provider, _ids(id));
        assertEq(manager.secondsServed(provider), 50, "counted when settled");
        assertEq(manager.claimable(provider), 0, "the claim emptied the balance...");
        _finishAt(id, T0 + 80);
        assertEq(manager.secondsServed(provider), 80, "...and the finish adds to the same account");
        assertEq(manager.claimable(provider), 30 * PRICE, "claimable");
        _claim(provider, _noIds());
        assertEq(manager.secondsServed(provider), 80, "a claim never resets the service");
        assertEq(manager.secondsServed(otherProvider), 0, "per provider");
    }

    function test_SecondsServed_GivenRegistryView() external {
        assertEq(registry.getProvider(provider).secondsServed, 0, "zero before registering");
        _completedLease();
        assertEq(manager.secondsServed(provider), 20, "manager");
        assertEq(registry.getProvider(provider).secondsServed, 20, "the registry reads the manager's count");
        assertEq(registry.getProvider(otherProvider).secondsServed, 0, "per provider");
    }

    /// @dev In every ended state, the service counted is exactly what the provider was paid for.
    function test_SecondsServed_GivenEnded() external {
        for (uint256 i = 0; i < 5; ++i) {
            uint256 snapshot = vm.snapshotState();
            vm.warp(T0);
            (uint256 id, ) = _leaseInState(i);
            uint256 served = manager.secondsServed(provider);
            assertTrue(served > 0, "something served");
            assertEq(manager.claimable(provider), served * PRICE, "claimable = served seconds * price");
            assertEq(_lease(id).settledUntil - T0, served, "served to the settlement");
            assertEq(registry.getProvider(provider).secondsServed, served, "registry view");
            vm.revertToState(snapshot);
        }
    }
}
