// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest} from "./LeaseManagerTest.sol";

contract InvalidateNonce_Test is LeaseManagerTest {
    function _invalidate(address who, uint256 nonce) internal {
        vm.prank(who);
        manager.invalidateNonce(nonce);
    }

    function _nonceUsed(address who, uint256 nonce) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(ILeaseManager.LeaseManager_NonceUsed.selector, who, nonce);
    }

    function test_RevertWhen_NonceAlreadyInvalidated() external {
        _invalidate(provider, 42);
        vm.prank(provider);
        vm.expectRevert(_nonceUsed(provider, 42));
        manager.invalidateNonce(42);
    }

    function test_RevertWhen_NonceUsedByLease() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        _open(q, DEPOSIT, 0);
        vm.prank(provider);
        vm.expectRevert(_nonceUsed(provider, q.nonce));
        manager.invalidateNonce(q.nonce);
    }

    function test_WhenNonceUnused() external {
        assertFalse(manager.isNonceUsed(provider, 42), "unused before");
        vm.expectEmit(address(manager));
        emit ILeaseManager.NonceInvalidated(provider, 42);
        _invalidate(provider, 42);
        assertTrue(manager.isNonceUsed(provider, 42), "used after");
        assertFalse(manager.isNonceUsed(provider, 41), "neighbour below untouched");
        assertFalse(manager.isNonceUsed(provider, 43), "neighbour above untouched");
        assertEq(manager.leaseCount(), 0, "no lease");
    }

    function test_WhenNonceUnused_ItShouldBlockTheQuote() external {
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        _invalidate(provider, q.nonce);
        vm.prank(tenant);
        vm.expectRevert(_nonceUsed(provider, q.nonce));
        manager.openLease(q, sig, DEPOSIT, 0);
    }

    function test_WhenCallerIsNotTheQuotesProvider() external {
        // Anyone may invalidate nonces, but only its own: the provider's quote still opens.
        _ensureProvider();
        Lease.Quote memory q = _defaultQuote();
        vm.expectEmit(address(manager));
        emit ILeaseManager.NonceInvalidated(keeper, q.nonce);
        _invalidate(keeper, q.nonce);
        _invalidate(otherProvider, q.nonce);
        assertTrue(manager.isNonceUsed(keeper, q.nonce), "keeper's nonce");
        assertFalse(manager.isNonceUsed(provider, q.nonce), "provider's nonce untouched");
        uint256 id = _open(q, DEPOSIT, 0);
        _assertStatus(id, Lease.Status.Active);
    }

    function test_WhenNoncesAtWordBoundaries() external {
        uint256[5] memory nonces = [uint256(0), 255, 256, 511, type(uint256).max];
        for (uint256 i = 0; i < nonces.length; ++i) {
            assertFalse(manager.isNonceUsed(provider, nonces[i]), "unused");
            _invalidate(provider, nonces[i]);
            for (uint256 j = 0; j < nonces.length; ++j) {
                assertEq(manager.isNonceUsed(provider, nonces[j]), j <= i, "only the invalidated ones");
            }
        }
        assertFalse(manager.isNonceUsed(provider, 1), "1");
        assertFalse(manager.isNonceUsed(provider, 257), "257");
        assertFalse(manager.isNonceUsed(provider, type(uint256).max - 1), "max - 1");
    }

    function testFuzz_InvalidateNonce(uint256 nonce, uint256 other) external {
        vm.assume(other != nonce);
        _invalidate(provider, nonce);
        assertTrue(manager.isNonceUsed(provider, nonce), "invalidated");
        assertFalse(manager.isNonceUsed(provider, other), "any other nonce untouched");
        assertFalse(manager.isNonceUsed(otherProvider, nonce), "other providers untouched");
        vm.prank(provider);
        vm.expectRevert(_nonceUsed(provider, nonce));
        manager.invalidateNonce(nonce);
    }
}
