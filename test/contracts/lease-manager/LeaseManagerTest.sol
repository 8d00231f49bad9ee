// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Lease} from "../../../contracts/types/Lease.sol";
import {Provider} from "../../../contracts/types/Provider.sol";
import {DevToken} from "../../../contracts/token/DevToken.sol";

import {Base} from "../utils/Base.t.sol";

/// @notice The cheatcodes these tests use beyond those of `utils/Vm.sol` (EDR serves them at the
/// same address).
interface VmExt {
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    function recordLogs() external;
    function getRecordedLogs() external returns (Log[] memory logs);
}

/// @notice Shared fixture of the lease manager's tests: the default lease, leases driven into each
/// state, and accounting assertions. Times are absolute (`T0 + n`) rather than read back from
/// `block.timestamp`, so that no test depends on how the compiler caches the timestamp.
abstract contract LeaseManagerTest is Base {
    VmExt internal constant vmx = VmExt(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @dev The time `Base.setUp` warps to.
    uint256 internal constant T0 = 1_700_000_000;

    uint256 internal constant TENANT_FUNDS = 1_000_000e18;
    uint256 internal constant PROVIDER_STAKE = MIN_STAKE + COLLATERAL * 4;

    /// @dev The default lease is funded for 600 seconds: it ends at `T0 + 600`.
    uint256 internal constant DEPOSIT = PRICE * 600;
    uint256 internal constant FUNDED_SECONDS = 600;

    /// @dev A short lease (30 seconds) ends before its first heartbeat deadline (60 seconds), so it
    /// expires without any heartbeat. Only the deposit can end a lease that early: a quote's max
    /// duration must be longer than its heartbeat timeout.
    uint256 internal constant SHORT_DEPOSIT = PRICE * 30;

    bytes32 internal constant JOB = keccak256("job-1");
    bytes32 internal constant OTHER_JOB = keccak256("job-2");

    uint256 internal constant MAX_CID = 256;
    string internal constant CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";

    /*//////////////////////////////////////////////////////////////
                               SMALL HELPERS
    //////////////////////////////////////////////////////////////*/

    function _ids(uint256 a) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = a;
    }

    function _ids(uint256 a, uint256 b) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](2);
        ids[0] = a;
        ids[1] = b;
    }

    function _noIds() internal pure returns (uint256[] memory) {
        return new uint256[](0);
    }

    function _cids(string memory a) internal pure returns (string[] memory cids) {
        cids = new string[](1);
        cids[0] = a;
    }

    function _cids(string memory a, string memory b) internal pure returns (string[] memory cids) {
        cids = new string[](2);
        cids[0] = a;
        cids[1] = b;
    }

    function _noCids() internal pure returns (string[] memory) {
        return new string[](0);
    }

    function _stringOfLength(uint256 length) internal pure returns (string memory) {
        bytes memory b = new bytes(length);
        for (uint256 i = 0; i < length; ++i) b[i] = "a";
        return string(b);
    }

    function _lease(uint256 id) internal view returns (Lease.View memory) {
        return manager.getLease(id);
    }

    function _provider(address who) internal view returns (Provider.View memory) {
        return registry.getProvider(who);
    }

    function _assertStatus(uint256 id, Lease.Status expected) internal view {
        assertEq(uint256(manager.getLease(id).status), uint256(expected), "lease status");
    }

    function _err(bytes4 selector, uint256 leaseId, Lease.Status status) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(selector, leaseId, status);
    }

    /*//////////////////////////////////////////////////////////////
                                 ACTIONS
    //////////////////////////////////////////////////////////////*/

    /// @dev Replaces Base's deployment with one over other tokens (the mocks: a blocklist, a receive
    /// hook, a transfer fee), wired as Base wires it, with both tenants funded and approved.
    function _redeploy(DevToken stakingToken_, DevToken paymentToken_) internal {
        stakingToken = stakingToken_;
        paymentToken = paymentToken_;
        (registry, manager) = _deployPair(stakingToken_, paymentToken_);
        _fundTenant(tenant, TENANT_FUNDS);
        _fundTenant(otherTenant, TENANT_FUNDS);
    }

    /// @dev Registers `provider` with `PROVIDER_STAKE` unless it is registered already.
    function _ensureProvider() internal {
        if (!registry.getProvider(provider).registered) _registerProvider(provider, "12D3KooWProvider", PROVIDER_STAKE);
    }

    function _ensureOtherProvider() internal {
        if (!registry.getProvider(otherProvider).registered) {
            _registerProvider(otherProvider, "12D3KooWOtherProvider", PROVIDER_STAKE);
        }
    }

    /// @dev Opens the default lease (at the current time): 600 seconds funded, 60 s timeout.
    function _openLease() internal returns (uint256) {
        _ensureProvider();
        return _open(_defaultQuote(), DEPOSIT, 0);
    }

    /// @dev Opens a lease funded for 30 seconds: it expires before its first deadline.
    function _openShortLease() internal returns (uint256) {
        _ensureProvider();
        return _open(_defaultQuote(), SHORT_DEPOSIT, 0);
    }

    function _heartbeatAt(uint256 id, uint256 time) internal {
        vm.warp(time);
        _heartbeat(provider, id);
    }

    function _closeAt(uint256 id, uint256 time) internal {
        vm.warp(time);
        vm.prank(tenant);
        manager.close(id);
    }

    function _finishAt(uint256 id, uint256 time) internal {
        vm.warp(time);
        vm.prank(provider);
        manager.finish(id, CID);
    }

    function _slashAt(uint256 id, uint256 time) internal {
        vm.warp(time);
        vm.prank(keeper);
        manager.slashMissedHeartbeat(id);
    }

    function _claim(address who, uint256[] memory ids) internal returns (uint256 amount) {
        vm.prank(who);
        amount = manager.claim(ids);
    }

    /*//////////////////////////////////////////////////////////////
                        LEASES IN EACH STATE
    //////////////////////////////////////////////////////////////*/
    // Each opens the default lease at T0 and leaves the clock at the time given.

    /// @dev Heartbeat at T0+10, close at T0+20: `Closing`, deadline T0+70.
    function _closingLease() internal returns (uint256 id) {
        id = _openLease();
        _heartbeatAt(id, T0 + 10);
        _closeAt(id, T0 + 20);
    }

    /// @dev `_closingLease`, acknowledged at T0+30: `Closed`.
    function _closedLease() internal returns (uint256 id) {
        id = _closingLease();
        _heartbeatAt(id, T0 + 30);
    }

    /// @dev Heartbeat at T0+10, finished at T0+20: `Completed`.
    function _completedLease() internal returns (uint256 id) {
        id = _openLease();
        _heartbeatAt(id, T0 + 10);
        _finishAt(id, T0 + 20);
    }

    /// @dev A short lease settled at T0+40: `Expired`.
    function _expiredLease() internal returns (uint256 id) {
        id = _openShortLease();
        vm.warp(T0 + 40);
        manager.settleExpired(id);
    }

    /// @dev Heartbeat at T0+10, slashed at T0+71: `Slashed`.
    function _slashedLease() internal returns (uint256 id) {
        id = _openLease();
        _heartbeatAt(id, T0 + 10);
        _slashAt(id, T0 + 71);
    }

    /// @dev Drives a default lease opened at T0 into the ended state `index % 5` (Completed, Closed,
    /// Expired, Slashed, or Closing when `index % 5 == 4`).
    function _leaseInState(uint256 index) internal returns (uint256 id, Lease.Status status) {
        index %= 5;
        if (index == 0) return (_completedLease(), Lease.Status.Completed);
        if (index == 1) return (_closedLease(), Lease.Status.Closed);
        if (index == 2) return (_expiredLease(), Lease.Status.Expired);
        if (index == 3) return (_slashedLease(), Lease.Status.Slashed);
        return (_closingLease(), Lease.Status.Closing);
    }

    /*//////////////////////////////////////////////////////////////
                               ACCOUNTING
    //////////////////////////////////////////////////////////////*/

    /// @dev The escrow holds exactly what it owes: unearned deposits, unclaimed earnings and the
    /// tenants' credited refunds; the registry, the stakes and the credited slash shares.
    function _assertConserved() internal view {
        uint256 owed = manager.claimable(provider) + manager.claimable(otherProvider);
        owed += manager.creditOf(tenant) + manager.creditOf(otherTenant);
        uint256 count = manager.leaseCount();
        for (uint256 id = 1; id <= count; ++id) owed += manager.getLease(id).deposit;
        assertEq(paymentToken.balanceOf(address(manager)), owed, "escrow balance == what it owes");
        assertEq(
            stakingToken.balanceOf(address(registry)),
            registry.getProvider(provider).stake +
                registry.getProvider(otherProvider).stake +
                registry.creditOf(tenant) +
                registry.creditOf(otherTenant) +
                registry.creditOf(TREASURY),
            "registry balance == stakes + credits"
        );
    }

    /// @dev Asserts the payment-token balances of the tenant, the provider (claimed), the escrow,
    /// and the provider's claimable balance.
    function _assertPayments(uint256 tenantBal, uint256 providerBal, uint256 managerBal, uint256 claimable_) internal view {
        assertEq(paymentToken.balanceOf(tenant), tenantBal, "tenant payment balance");
        assertEq(paymentToken.balanceOf(provider), providerBal, "provider payment balance");
        assertEq(paymentToken.balanceOf(address(manager)), managerBal, "escrow payment balance");
        assertEq(manager.claimable(provider), claimable_, "provider claimable");
    }

    /// @dev Asserts what the escrow holds for the tenant to withdraw: refunds that arose in other
    /// parties' calls (a provider's, a keeper's) are credited, never pushed.
    function _assertCredit(uint256 credit) internal view {
        assertEq(manager.creditOf(tenant), credit, "tenant credit");
    }

    /// @dev Asserts the provider's registry record: stake, locked collateral and counters. Seconds
    /// served are kept by the manager (packed with the claimable balance) and read through by the
    /// registry's view: both must agree.
    function _assertProvider(
        uint256 stake,
        uint256 locked,
        uint256 opened,
        uint256 completed,
        uint256 slashed,
        uint256 secondsServed
    ) internal view {
        Provider.View memory p = registry.getProvider(provider);
        assertEq(p.stake, stake, "provider stake");
        assertEq(p.locked, locked, "provider locked");
        assertEq(p.leasesOpened, opened, "leasesOpened");
        assertEq(p.leasesCompleted, completed, "leasesCompleted");
        assertEq(p.leasesSlashed, slashed, "leasesSlashed");
        assertEq(p.secondsServed, secondsServed, "secondsServed (registry view)");
        assertEq(manager.secondsServed(provider), secondsServed, "secondsServed (manager)");
    }

    /// @dev Counts the recorded logs emitted by `emitter` whose first topic is `topic0`.
    function _countLogs(VmExt.Log[] memory logs, address emitter, bytes32 topic0) internal pure returns (uint256 n) {
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter == emitter && logs[i].topics.length > 0 && logs[i].topics[0] == topic0) ++n;
        }
    }

    /*//////////////////////////////////////////////////////////////
                           EXPECTED EVENTS
    //////////////////////////////////////////////////////////////*/

    function _expectSettled(uint256 id, uint256 amount, uint256 until) internal {
        vm.expectEmit(address(manager));
        emit ILeaseManager.EarningsSettled(id, provider, amount, uint64(until));
    }

    function _expectReleased(uint256 id, bool completed) internal {
        vm.expectEmit(address(registry));
        emit IProviderRegistry.CollateralReleased(provider, id, COLLATERAL, completed);
    }

    function _expectPayTransfer(address from, address to, uint256 amount) internal {
        vm.expectEmit(address(paymentToken));
        emit Transfer(from, to, amount);
    }

    function _expectStakeTransfer(address from, address to, uint256 amount) internal {
        vm.expectEmit(address(stakingToken));
        emit Transfer(from, to, amount);
    }

    /// @dev ERC-20's event, redeclared to emit it in expectations.
    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
}
