// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {DevToken} from "../../../contracts/token/DevToken.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest} from "./LeaseManagerTest.sol";

contract Constructor_Test is LeaseManagerTest {
    address internal constant BURN = 0x000000000000000000000000000000000000dEaD;

    /// @dev A registry wired to the next contract this test creates: the lease manager each test
    /// deploys first.
    ProviderRegistry internal fresh;

    function setUp() public override {
        super.setUp();
        fresh = new ProviderRegistry(stakingToken, MIN_STAKE, UNBONDING_PERIOD, _nextButOneAddress());
    }

    function _deploy(
        IERC20 token,
        IProviderRegistry registry_,
        uint16 tenantShare,
        uint16 callerShare,
        address treasury,
        uint64 maxTimeout
    ) internal returns (LeaseManager) {
        return new LeaseManager(token, registry_, tenantShare, callerShare, treasury, MIN_HEARTBEAT_TIMEOUT, maxTimeout);
    }

    function _deployWithTimeouts(uint64 minTimeout, uint64 maxTimeout) internal returns (LeaseManager) {
        return new LeaseManager(paymentToken, fresh, TENANT_SHARE_BPS, CALLER_SHARE_BPS, TREASURY, minTimeout, maxTimeout);
    }

    function _wiredElsewhere(IProviderRegistry registry_, address wiredTo) internal pure returns (bytes memory) {
        return
            abi.encodeWithSelector(ILeaseManager.LeaseManager_RegistryWiredElsewhere.selector, registry_, wiredTo);
    }

    function _invalidTimeout(uint64 maxTimeout, uint64 unbonding) internal pure returns (bytes memory) {
        return
            abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidMaxHeartbeatTimeout.selector, maxTimeout, unbonding);
    }

    function _invalidMinTimeout(uint64 minTimeout, uint64 maxTimeout) internal pure returns (bytes memory) {
        return
            abi.encodeWithSelector(
                ILeaseManager.LeaseManager_InvalidMinHeartbeatTimeout.selector,
                minTimeout,
                maxTimeout
            );
    }

    function test_RevertWhen_PaymentTokenZero() external {
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_ZeroAddress.selector));
        _deploy(IERC20(address(0)), fresh, 0, 0, TREASURY, MAX_HEARTBEAT_TIMEOUT);
    }

    function test_RevertWhen_RegistryZero() external {
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_ZeroAddress.selector));
        _deploy(paymentToken, IProviderRegistry(address(0)), 0, 0, TREASURY, MAX_HEARTBEAT_TIMEOUT);
    }

    function test_RevertWhen_RegistryNotAContract() external {
        vm.expectRevert();
        _deploy(paymentToken, IProviderRegistry(address(0xBEEF)), 0, 0, TREASURY, MAX_HEARTBEAT_TIMEOUT);
    }

    /// @dev Issue #11 point 5: the pair is wired at deployment, so a registry that names another lease
    /// manager (here, Base's) can never be paired with a new one.
    function test_RevertWhen_RegistryWiredToAnotherManager() external {
        vm.expectRevert(_wiredElsewhere(registry, address(manager)));
        _deploy(paymentToken, registry, 0, 0, TREASURY, MAX_HEARTBEAT_TIMEOUT);
    }

    /// @dev A deployer that creates another contract between the registry and the manager (the
    /// address the registry names goes to it) gets a reverted deployment, never a mis-wired pair.
    function test_RevertWhen_AnotherContractTookTheManagersAddress() external {
        new DevToken("Squatter", "SQT");
        vm.expectRevert(_wiredElsewhere(fresh, fresh.leaseManager()));
        _deploy(paymentToken, fresh, 0, 0, TREASURY, MAX_HEARTBEAT_TIMEOUT);
    }

    function testFuzz_RevertWhen_RegistryWiredElsewhere(address wiredTo) external {
        if (wiredTo == address(0) || wiredTo == _nextButOneAddress()) wiredTo = address(manager);
        ProviderRegistry miswired = new ProviderRegistry(stakingToken, MIN_STAKE, UNBONDING_PERIOD, wiredTo);

        vm.expectRevert(_wiredElsewhere(miswired, wiredTo));
        _deploy(paymentToken, miswired, 0, 0, TREASURY, MAX_HEARTBEAT_TIMEOUT);
    }

    function test_RevertWhen_SharesExceedAll() external {
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidShares.selector, 9_000, 1_001));
        _deploy(paymentToken, fresh, 9_000, 1_001, TREASURY, MAX_HEARTBEAT_TIMEOUT);
    }

    function test_RevertWhen_SharesOverflowUint16Sum() external {
        // Each share fits in 16 bits; their sum is computed wide.
        vm.expectRevert(
            abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidShares.selector, type(uint16).max, type(uint16).max)
        );
        _deploy(paymentToken, fresh, type(uint16).max, type(uint16).max, TREASURY, MAX_HEARTBEAT_TIMEOUT);
    }

    function test_WhenSharesAddUpToAll() external {
        LeaseManager m = _deploy(paymentToken, fresh, 7_500, 2_500, TREASURY, MAX_HEARTBEAT_TIMEOUT);
        assertEq(m.tenantShareBps(), 7_500, "tenantShareBps");
        assertEq(m.callerShareBps(), 2_500, "callerShareBps");
    }

    function test_RevertWhen_MaxHeartbeatTimeoutZero() external {
        vm.expectRevert(_invalidTimeout(0, UNBONDING_PERIOD));
        _deploy(paymentToken, fresh, 0, 0, TREASURY, 0);
    }

    function test_RevertWhen_MaxHeartbeatTimeoutEqualsUnbondingPeriod() external {
        vm.expectRevert(_invalidTimeout(UNBONDING_PERIOD, UNBONDING_PERIOD));
        _deploy(paymentToken, fresh, 0, 0, TREASURY, UNBONDING_PERIOD);
    }

    function test_RevertWhen_MaxHeartbeatTimeoutAboveUnbondingPeriod() external {
        vm.expectRevert(_invalidTimeout(UNBONDING_PERIOD + 1, UNBONDING_PERIOD));
        _deploy(paymentToken, fresh, 0, 0, TREASURY, UNBONDING_PERIOD + 1);
    }

    function test_RevertWhen_MaxHeartbeatTimeoutAboveUint24() external {
        // With an unbonding period long enough that only the 24-bit storage limit applies.
        uint64 unbonding = uint64(type(uint24).max) + 100;
        ProviderRegistry longRegistry = new ProviderRegistry(stakingToken, MIN_STAKE, unbonding, _nextButOneAddress());
        uint64 maxTimeout = uint64(type(uint24).max) + 1;
        vm.expectRevert(_invalidTimeout(maxTimeout, unbonding));
        _deploy(paymentToken, longRegistry, 0, 0, TREASURY, maxTimeout);
    }

    function test_WhenMaxHeartbeatTimeoutAtUint24() external {
        uint64 unbonding = uint64(type(uint24).max) + 100;
        ProviderRegistry longRegistry = new ProviderRegistry(stakingToken, MIN_STAKE, unbonding, _nextButOneAddress());
        LeaseManager m = _deploy(paymentToken, longRegistry, 0, 0, TREASURY, type(uint24).max);
        assertEq(m.maxHeartbeatTimeout(), type(uint24).max, "maxHeartbeatTimeout");
    }

    function test_WhenMaxHeartbeatTimeoutJustBelowUnbondingPeriod() external {
        LeaseManager m = _deploy(paymentToken, fresh, 0, 0, TREASURY, UNBONDING_PERIOD - 1);
        assertEq(m.maxHeartbeatTimeout(), UNBONDING_PERIOD - 1, "maxHeartbeatTimeout");
    }

    /// @dev Issue #11 point 4: a quote's timeout has a floor of a few block times, itself at least
    /// two seconds (a period of at most half the timeout must be at least one second).
    function test_RevertWhen_MinHeartbeatTimeoutZero() external {
        vm.expectRevert(_invalidMinTimeout(0, MAX_HEARTBEAT_TIMEOUT));
        _deployWithTimeouts(0, MAX_HEARTBEAT_TIMEOUT);
    }

    function test_RevertWhen_MinHeartbeatTimeoutOne() external {
        vm.expectRevert(_invalidMinTimeout(1, MAX_HEARTBEAT_TIMEOUT));
        _deployWithTimeouts(1, MAX_HEARTBEAT_TIMEOUT);
    }

    function test_RevertWhen_MinHeartbeatTimeoutAboveMax() external {
        vm.expectRevert(_invalidMinTimeout(MAX_HEARTBEAT_TIMEOUT + 1, MAX_HEARTBEAT_TIMEOUT));
        _deployWithTimeouts(MAX_HEARTBEAT_TIMEOUT + 1, MAX_HEARTBEAT_TIMEOUT);
    }

    function test_WhenMinHeartbeatTimeoutTwo() external {
        LeaseManager m = _deployWithTimeouts(2, MAX_HEARTBEAT_TIMEOUT);
        assertEq(m.minHeartbeatTimeout(), 2, "minHeartbeatTimeout");
    }

    function test_WhenMinHeartbeatTimeoutEqualsMax() external {
        LeaseManager m = _deployWithTimeouts(MAX_HEARTBEAT_TIMEOUT, MAX_HEARTBEAT_TIMEOUT);
        assertEq(m.minHeartbeatTimeout(), MAX_HEARTBEAT_TIMEOUT, "minHeartbeatTimeout");
        assertEq(m.maxHeartbeatTimeout(), MAX_HEARTBEAT_TIMEOUT, "maxHeartbeatTimeout");
    }

    function test_WhenParametersValid() external {
        LeaseManager m = _deploy(paymentToken, fresh, TENANT_SHARE_BPS, CALLER_SHARE_BPS, TREASURY, MAX_HEARTBEAT_TIMEOUT);
        assertEq(address(m.paymentToken()), address(paymentToken), "paymentToken");
        assertEq(address(m.registry()), address(fresh), "registry");
        assertEq(fresh.leaseManager(), address(m), "the registry names the manager");
        assertEq(m.tenantShareBps(), TENANT_SHARE_BPS, "tenantShareBps");
        assertEq(m.callerShareBps(), CALLER_SHARE_BPS, "callerShareBps");
        assertEq(m.treasury(), TREASURY, "treasury");
        assertEq(m.minHeartbeatTimeout(), MIN_HEARTBEAT_TIMEOUT, "minHeartbeatTimeout");
        assertEq(m.maxHeartbeatTimeout(), MAX_HEARTBEAT_TIMEOUT, "maxHeartbeatTimeout");
        assertEq(m.leaseCount(), 0, "leaseCount");
    }

    function test_WhenTreasuryZero() external {
        // A separate deployment whose treasury share is burned.
        ProviderRegistry registry2 = fresh;
        LeaseManager m = _deploy(paymentToken, registry2, TENANT_SHARE_BPS, CALLER_SHARE_BPS, address(0), MAX_HEARTBEAT_TIMEOUT);
        assertEq(m.treasury(), BURN, "zero treasury means the burn address");
        stakingToken.mint(provider, PROVIDER_STAKE);
        vm.startPrank(provider);
        stakingToken.approve(address(registry2), PROVIDER_STAKE);
        registry2.register("12D3KooWProvider", "{}", PROVIDER_STAKE);
        vm.stopPrank();
        vm.prank(tenant);
        paymentToken.approve(address(m), DEPOSIT);

        Lease.Quote memory q = _defaultQuote();
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, m.hashQuote(q));
        vm.prank(tenant);
        uint256 id = m.openLease(q, abi.encodePacked(r, s, v), DEPOSIT, 0);
        vm.warp(T0 + HEARTBEAT_TIMEOUT + 1);
        vm.prank(keeper);
        m.slashMissedHeartbeat(id);
        // The treasury is not the slash's caller, so its share is credited to 0xdEaD in the
        // registry, where nobody can ever withdraw it: burned all the same.
        assertEq(registry2.creditOf(BURN), COLLATERAL - COLLATERAL / 2 - COLLATERAL / 10, "burned (credited to 0xdEaD)");
        assertEq(stakingToken.balanceOf(address(0)), 0, "nothing sent to zero");
    }

    function testFuzz_Constructor_Shares(uint16 tenantShare, uint16 callerShare) external {
        if (uint256(tenantShare) + callerShare > 10_000) {
            vm.expectRevert(
                abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidShares.selector, tenantShare, callerShare)
            );
            _deploy(paymentToken, fresh, tenantShare, callerShare, TREASURY, MAX_HEARTBEAT_TIMEOUT);
        } else {
            LeaseManager m = _deploy(paymentToken, fresh, tenantShare, callerShare, TREASURY, MAX_HEARTBEAT_TIMEOUT);
            assertEq(m.tenantShareBps(), tenantShare, "tenantShareBps");
            assertEq(m.callerShareBps(), callerShare, "callerShareBps");
        }
    }

    function testFuzz_Constructor_MaxHeartbeatTimeout(uint64 maxTimeout) external {
        maxTimeout = uint64(bound(maxTimeout, 0, 2 * UNBONDING_PERIOD));
        if (maxTimeout == 0 || maxTimeout >= UNBONDING_PERIOD) {
            vm.expectRevert(_invalidTimeout(maxTimeout, UNBONDING_PERIOD));
            _deploy(paymentToken, fresh, 0, 0, TREASURY, maxTimeout);
        } else if (maxTimeout < MIN_HEARTBEAT_TIMEOUT) {
            vm.expectRevert(_invalidMinTimeout(MIN_HEARTBEAT_TIMEOUT, maxTimeout));
            _deploy(paymentToken, fresh, 0, 0, TREASURY, maxTimeout);
        } else {
            LeaseManager m = _deploy(paymentToken, fresh, 0, 0, TREASURY, maxTimeout);
            assertEq(m.maxHeartbeatTimeout(), maxTimeout, "maxHeartbeatTimeout");
        }
    }

    function testFuzz_Constructor_MinHeartbeatTimeout(uint64 minTimeout) external {
        minTimeout = uint64(bound(minTimeout, 0, 2 * MAX_HEARTBEAT_TIMEOUT));
        if (minTimeout < 2 || minTimeout > MAX_HEARTBEAT_TIMEOUT) {
            vm.expectRevert(_invalidMinTimeout(minTimeout, MAX_HEARTBEAT_TIMEOUT));
            _deployWithTimeouts(minTimeout, MAX_HEARTBEAT_TIMEOUT);
        } else {
            LeaseManager m = _deployWithTimeouts(minTimeout, MAX_HEARTBEAT_TIMEOUT);
            assertEq(m.minHeartbeatTimeout(), minTimeout, "minHeartbeatTimeout");
        }
    }
}
