// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {DevToken} from "../../../contracts/token/DevToken.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {BlocklistToken} from "../mocks/BlocklistToken.sol";
import {HookToken, RefusingReceiver} from "../mocks/HookToken.sol";
import {Test} from "../utils/Test.sol";

/// @notice Drives a deployment whose tokens let a tenant refuse transfers (a blocklist or a receive
/// hook) through random leases while tenants start and stop refusing, and records every call of a
/// provider or a keeper that a tenant's refusal made revert. Smaller than {Handler}: it checks one
/// property, that a tenant can block nobody's call but its own, and leaves the rest to {Handler}.
///
/// As in {Handler}, every action catches reverts itself and records what it found as a violation
/// (the runner ignores handler reverts); {HostileInvariantsTest} asserts the counters stay zero.
contract HostileHandler is Test {
    /// @notice How a tenant refuses tokens.
    enum Refusal {
        Blocklist, // the tokens' owner blocklists it (USDC, USDT)
        Hook // its receive hook reverts (ERC-777 `tokensReceived`)
    }

    struct System {
        LeaseManager manager;
        ProviderRegistry registry;
        DevToken stakingToken;
        DevToken paymentToken;
        Refusal refusal;
        /// The tokens' owner, who blocklists (Blocklist only).
        address tokenOwner;
        address treasury;
    }

    uint256 internal constant STAKE = 10_000e18;
    uint256 internal constant TENANT_FUNDS = 1e30;
    uint256 internal constant MAX_PRICE = 1e16;
    uint256 internal constant MAX_COLLATERAL = 100e18;
    uint256 internal constant MAX_LEASES = 40;
    string internal constant CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";

    LeaseManager public immutable manager;
    ProviderRegistry public immutable registry;
    DevToken public immutable stakingToken;
    DevToken public immutable paymentToken;
    Refusal public immutable refusal;
    address public immutable tokenOwner;
    address public immutable treasury;

    uint256[] internal _providerKeys;
    address[] internal _providers;
    address[] internal _tenants;
    address[] internal _keepers;
    mapping(address provider => uint256) internal _nextNonce;

    /*//////////////////////////////////////////////////////////////
                                GHOST STATE
    //////////////////////////////////////////////////////////////*/

    mapping(address tenant => bool) public isRefusing;
    uint256 public leaseCount;

    /// Calls of a provider (heartbeat, claim, finish) or a keeper (slash, settlement) that were due
    /// to succeed and reverted; and of those, the ones while a tenant refused tokens.
    uint256 public blockedCalls;
    uint256 public blockedCallsWhileRefusing;
    /// Exit probes (see {probeExits}) in which some live lease could not be ended by its provider
    /// or a keeper, and the probes run.
    uint256 public blockedExits;
    uint256 public exitProbes;
    /// Leases ended by a provider's or keeper's call while their tenant refused tokens.
    uint256 public endedWhileRefusing;
    /// Any other expectation broken; the first one in words.
    uint256 public violations;
    string public firstViolation;

    constructor(System memory sut, uint256 tenantCount) {
        manager = sut.manager;
        registry = sut.registry;
        stakingToken = sut.stakingToken;
        paymentToken = sut.paymentToken;
        refusal = sut.refusal;
        tokenOwner = sut.tokenOwner;
        treasury = sut.treasury;

        _providerKeys.push(0xA11CE);
        _providerKeys.push(0xB0B);
        for (uint256 i = 0; i < _providerKeys.length; ++i) {
            address p = vm.addr(_providerKeys[i]);
            _providers.push(p);
            stakingToken.mint(p, STAKE);
            vm.startPrank(p);
            stakingToken.approve(address(registry), type(uint256).max);
            registry.register(string.concat("12D3KooWHostileProvider", Strings.toString(i)), "{}", STAKE);
            vm.stopPrank();
        }

        HookToken[] memory hooked = new HookToken[](refusal == Refusal.Hook ? 2 : 0);
        if (refusal == Refusal.Hook) {
            hooked[0] = HookToken(address(stakingToken));
            hooked[1] = HookToken(address(paymentToken));
        }
        for (uint256 i = 0; i < tenantCount; ++i) {
            address t = address(new RefusingReceiver(hooked));
            _tenants.push(t);
            paymentToken.mint(t, TENANT_FUNDS);
            vm.prank(t);
            paymentToken.approve(address(manager), type(uint256).max);
            vm.label(t, string.concat("tenant", Strings.toString(i)));
        }
        _keepers.push(address(0x5EE9E4));
        _keepers.push(address(0x5EE9E5));
    }

    /*//////////////////////////////////////////////////////////////
                                 ACTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice A tenant opens a lease with a random provider and terms (it may fail: a blocklisted
    /// tenant cannot pay a deposit, which is its own affair).
    function openLease(uint256 parties, uint256 priceSeed, uint256 timingSeed, uint256 depositSeed) external {
        if (leaseCount >= MAX_LEASES) return;
        uint256 pi = parties % _providers.length;
        address t = _tenants[_sub(parties, 1) % _tenants.length];
        uint64 timeout = uint64(bound(timingSeed, manager.minHeartbeatTimeout(), 10 minutes));
        uint64 duration = uint64(bound(_sub(timingSeed, 1), timeout + 1, 3 hours));
        uint256 price = bound(priceSeed, 1, MAX_PRICE);
        Lease.Quote memory q = Lease.Quote({
            provider: _providers[pi],
            tenant: t,
            jobId: keccak256(abi.encode(t, leaseCount)),
            resources: keccak256("gpu:1xH100-80GB"),
            image: bytes32(0),
            pricePerSecond: price,
            collateral: bound(_sub(priceSeed, 1), 0, MAX_COLLATERAL),
            heartbeatPeriod: uint64(bound(_sub(timingSeed, 2), 1, timeout / 2)),
            heartbeatTimeout: timeout,
            maxDuration: duration,
            expiry: uint64(block.timestamp + 5 minutes),
            nonce: _nextNonce[_providers[pi]]++
        });
        // From one second up to a little more than the whole duration.
        uint256 deposit = bound(depositSeed, price, price * (uint256(duration) + 60));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(_providerKeys[pi], manager.hashQuote(q));
        vm.prank(t);
        try manager.openLease(q, abi.encodePacked(r, s, v), deposit, 0) returns (uint256 id) {
            leaseCount = id;
        } catch (bytes memory err) {
            if (!isRefusing[t]) _violate(string.concat("a tenant that takes tokens could not open: ", _sel(err)));
        }
    }

    /// @notice A provider heartbeats every lease it has, in one batch: it must never revert.
    function heartbeat(uint256 providerSeed) external {
        address p = _providers[providerSeed % _providers.length];
        uint256[] memory ids = _leasesOf(p, false);
        vm.prank(p);
        try manager.heartbeat(ids, new string[](0)) {} catch (bytes memory err) {
            _blocked("a provider's heartbeat", err);
        }
    }

    /// @notice A provider claims over every lease it has: it must never revert.
    function claim(uint256 providerSeed) external {
        address p = _providers[providerSeed % _providers.length];
        uint256[] memory ids = _leasesOf(p, true);
        vm.prank(p);
        try manager.claim(ids) {} catch (bytes memory err) {
            _blocked("a provider's claim", err);
        }
    }

    /// @notice A provider finishes one of its leases: it must not revert on a healthy lease.
    function finish(uint256 leaseSeed) external {
        uint256 id = _pickLive(leaseSeed);
        if (id == 0) return;
        Lease.View memory v = manager.getLease(id);
        bool due = v.status == Lease.Status.Active && !v.slashable;
        vm.prank(v.provider);
        try manager.finish(id, CID) {
            _ended(v);
        } catch (bytes memory err) {
            if (due) _blocked("a provider's finish", err);
        }
    }

    /// @notice A keeper (or the lease's provider) slashes a lease: it must not revert on a
    /// slashable one.
    function slash(uint256 leaseSeed, uint256 callerSeed) external {
        uint256 id = _pickLive(leaseSeed);
        if (id == 0) return;
        Lease.View memory v = manager.getLease(id);
        address caller = callerSeed % 4 == 0 ? v.provider : _keepers[callerSeed % _keepers.length];
        vm.prank(caller);
        try manager.slashMissedHeartbeat(id) {
            _ended(v);
        } catch (bytes memory err) {
            if (v.slashable) _blocked("a keeper's slash", err);
        }
    }

    /// @notice A keeper settles a lease: it must not revert on an expired one.
    function settleExpired(uint256 leaseSeed, uint256 keeperSeed) external {
        uint256 id = _pickLive(leaseSeed);
        if (id == 0) return;
        Lease.View memory v = manager.getLease(id);
        vm.prank(_keepers[keeperSeed % _keepers.length]);
        try manager.settleExpired(id) {
            _ended(v);
        } catch (bytes memory err) {
            if (v.expired) _blocked("a keeper's settlement", err);
        }
    }

    /// @notice The tenant closes its lease (its refund is paid at once: a refusing tenant's close
    /// may fail, which is its own affair).
    function close(uint256 leaseSeed) external {
        uint256 id = _pickLive(leaseSeed);
        if (id == 0) return;
        Lease.View memory v = manager.getLease(id);
        bool due = v.status == Lease.Status.Active && !v.slashable && !isRefusing[v.tenant];
        vm.prank(v.tenant);
        try manager.close(id) {} catch (bytes memory err) {
            if (due) _violate(string.concat("a tenant that takes tokens could not close: ", _sel(err)));
        }
    }

    /// @notice The tenant tops up its lease (it may fail for a blocklisted tenant, or a top-up
    /// that would revive the deadline too late).
    function topUp(uint256 leaseSeed, uint256 amountSeed) external {
        uint256 id = _pickLive(leaseSeed);
        if (id == 0) return;
        Lease.View memory v = manager.getLease(id);
        vm.prank(v.tenant);
        try manager.topUp(id, bound(amountSeed, 1, 1e21)) {} catch {} // solhint-disable-line no-empty-blocks
    }

    /// @notice A tenant starts refusing tokens: blocklisted, or its receive hook reverts.
    function refuse(uint256 tenantSeed) external {
        address t = _tenants[tenantSeed % _tenants.length];
        _setRefusing(t, true);
    }

    /// @notice A tenant takes tokens again.
    function accept(uint256 tenantSeed) external {
        address t = _tenants[tenantSeed % _tenants.length];
        _setRefusing(t, false);
    }

    /// @notice A tenant withdraws its credits in both contracts: each must succeed when there is a
    /// credit and the tenant takes tokens, and leave the credit whole when it fails.
    function withdrawCredit(uint256 tenantSeed) external {
        address t = _tenants[tenantSeed % _tenants.length];
        uint256 credit = manager.creditOf(t);
        vm.prank(t);
        try manager.withdrawCredit() {
            if (credit == 0) _violate("withdrawCredit paid with nothing credited");
        } catch (bytes memory err) {
            if (credit != 0 && !isRefusing[t]) _violate(string.concat("a credit could not be withdrawn: ", _sel(err)));
            if (manager.creditOf(t) != credit) _violate("a failed withdrawal changed the credit");
        }
        credit = registry.creditOf(t);
        vm.prank(t);
        try registry.withdrawCredit() {
            if (credit == 0) _violate("registry withdrawCredit paid with nothing credited");
        } catch (bytes memory err) {
            if (credit != 0 && !isRefusing[t]) _violate(string.concat("a compensation could not be withdrawn: ", _sel(err)));
        }
    }

    /// @notice Lets time pass: seconds to minutes, sometimes past every lease's end.
    function warp(uint256 seed) external {
        uint256 dt = seed % 8 == 0 ? bound(_sub(seed, 1), 1 hours, 4 hours) : bound(_sub(seed, 1), 1, 10 minutes);
        vm.warp(block.timestamp + dt);
        vm.roll(block.number + 1);
    }

    /// @notice Checks, then undoes, that every live lease can be ended now without its tenant:
    /// by its provider (a finish, or the acknowledgement of a close) or by a keeper (a slash or a
    /// settlement); with `late`, after a wait past every deadline and end, by keepers alone.
    function probeExits(bool late) external {
        uint256 time = block.timestamp;
        uint256 snapshot = vm.snapshotState();
        if (late) vm.warp(time + 4 hours + 1 days);
        string memory failure;
        for (uint256 id = 1; id <= leaseCount; ++id) {
            string memory f = _tryToEnd(id, late);
            if (bytes(f).length != 0 && bytes(failure).length == 0) failure = f;
        }
        for (uint256 i = 0; i < _providers.length; ++i) {
            if (registry.getProvider(_providers[i]).locked != 0 && bytes(failure).length == 0) {
                failure = "collateral still locked after every lease was ended";
            }
        }
        // The ghost counters live in this contract's storage, which the revert rolls back too.
        vm.revertToState(snapshot);
        vm.warp(time);
        ++exitProbes;
        if (bytes(failure).length != 0) {
            ++blockedExits;
            _violate(failure);
        }
    }

    /*//////////////////////////////////////////////////////////////
                          VIEWS FOR THE INVARIANTS
    //////////////////////////////////////////////////////////////*/

    function providers() external view returns (address[] memory) {
        return _providers;
    }

    function tenants() external view returns (address[] memory) {
        return _tenants;
    }

    function keepers() external view returns (address[] memory) {
        return _keepers;
    }

    function refusingTenants() public view returns (uint256 n) {
        for (uint256 i = 0; i < _tenants.length; ++i) if (isRefusing[_tenants[i]]) ++n;
    }

    /*//////////////////////////////////////////////////////////////
                                 INTERNAL
    //////////////////////////////////////////////////////////////*/

    /// @dev Ends lease `id` the way its provider or a keeper would; returns what failed, if anything.
    function _tryToEnd(uint256 id, bool late) internal returns (string memory) {
        Lease.View memory v = manager.getLease(id);
        if (v.status != Lease.Status.Active && v.status != Lease.Status.Closing) return "";
        address caller = v.provider;
        bytes memory data;
        if (v.slashable) {
            caller = _keepers[id % _keepers.length];
            data = abi.encodeCall(manager.slashMissedHeartbeat, (id));
        } else if (v.expired) {
            caller = _keepers[id % _keepers.length];
            data = abi.encodeCall(manager.settleExpired, (id));
        } else if (late) {
            return string.concat("lease neither slashable nor expired long after its end, lease ", Strings.toString(id));
        } else if (v.status == Lease.Status.Active) {
            data = abi.encodeCall(manager.finish, (id, CID));
        } else {
            uint256[] memory ids = new uint256[](1);
            ids[0] = id;
            data = abi.encodeCall(manager.heartbeat, (ids, new string[](0)));
        }
        vm.prank(caller);
        (bool ok, bytes memory err) = address(manager).call(data);
        if (!ok) return string.concat("a lease could not be ended without its tenant (", _sel(err), "), lease ", Strings.toString(id));
        Lease.Status s = manager.getLease(id).status;
        if (s == Lease.Status.Active || s == Lease.Status.Closing) {
            return string.concat("a lease did not end, lease ", Strings.toString(id));
        }
        return "";
    }

    function _setRefusing(address t, bool refusing) internal {
        isRefusing[t] = refusing;
        if (refusal == Refusal.Hook) {
            RefusingReceiver(t).setRefusing(refusing);
            return;
        }
        vm.startPrank(tokenOwner);
        if (refusing) {
            BlocklistToken(address(stakingToken)).blocklist(t);
            BlocklistToken(address(paymentToken)).blocklist(t);
        } else {
            BlocklistToken(address(stakingToken)).unBlocklist(t);
            BlocklistToken(address(paymentToken)).unBlocklist(t);
        }
        vm.stopPrank();
    }

    /// @dev Records a provider's or keeper's call that was due to succeed and reverted.
    function _blocked(string memory what, bytes memory err) internal {
        ++blockedCalls;
        if (refusingTenants() > 0) ++blockedCallsWhileRefusing;
        _violate(string.concat(what, " reverted: ", _sel(err)));
    }

    function _ended(Lease.View memory before) internal {
        if (isRefusing[before.tenant]) ++endedWhileRefusing;
    }

    /// @dev All of `p`'s leases, or only its live ones.
    function _leasesOf(address p, bool all) internal view returns (uint256[] memory ids) {
        uint256[] memory pool = new uint256[](leaseCount);
        uint256 n;
        for (uint256 id = 1; id <= leaseCount; ++id) {
            Lease.View memory v = manager.getLease(id);
            if (v.provider != p) continue;
            if (all || v.status == Lease.Status.Active || v.status == Lease.Status.Closing) pool[n++] = id;
        }
        ids = new uint256[](n);
        for (uint256 i = 0; i < n; ++i) ids[i] = pool[i];
    }

    /// @dev A random live lease, or zero when there is none.
    function _pickLive(uint256 seed) internal view returns (uint256) {
        uint256[] memory live = new uint256[](leaseCount);
        uint256 n;
        for (uint256 id = 1; id <= leaseCount; ++id) {
            Lease.Status s = manager.getLease(id).status;
            if (s == Lease.Status.Active || s == Lease.Status.Closing) live[n++] = id;
        }
        return n == 0 ? 0 : live[seed % n];
    }

    function _violate(string memory what) internal {
        if (violations == 0) firstViolation = string.concat(what, " (at t=", Strings.toString(block.timestamp), ")");
        ++violations;
    }

    function _sel(bytes memory err) internal pure returns (string memory) {
        if (err.length < 4) return "empty revert";
        return Strings.toHexString(uint32(bytes4(err)), 4);
    }

    function _sub(uint256 seed, uint256 salt) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode(seed, salt)));
    }
}
