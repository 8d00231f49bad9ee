// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {FeeOnTransferToken} from "../mocks/FeeOnTransferToken.sol";
import {Base} from "../utils/Base.t.sol";

/// @notice The log-recording cheatcodes, which the shared `Vm` interface leaves out. EDR serves them
/// at the same address; the registry tests use them to check that an event is NOT emitted.
interface VmLogs {
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    function recordLogs() external;

    function getRecordedLogs() external returns (Log[] memory logs);
}

/// @notice An ERC-20 that, once armed, calls back into a target on its next transfer (mint
/// excluded), bubbling the callee's revert. Used to exercise the registry's reentrancy guard.
contract ReentrantToken is ERC20 {
    address private _hookTarget;
    bytes private _hookData;

    constructor() ERC20("Reentrant", "REE") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(address target, bytes calldata data) external {
        _hookTarget = target;
        _hookData = data;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        address target = _hookTarget;
        if (target == address(0) || from == address(0)) return;
        _hookTarget = address(0);
        (bool ok, bytes memory returnData) = target.call(_hookData);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(returnData, 32), mload(returnData))
            }
        }
    }
}

/// @notice Shared fixture and helpers of the ProviderRegistry tests.
abstract contract ProviderRegistryBase is Base {
    VmLogs internal constant vmLogs = VmLogs(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @dev The time Base warps to; tests compute times from it instead of re-reading
    /// `block.timestamp` after a warp (the IR optimizer may reuse an earlier read).
    uint256 internal constant T0 = 1_700_000_000;

    uint256 internal constant MAX_PEER_ID_LENGTH = 128;
    uint256 internal constant MAX_METADATA_LENGTH = 4096;

    /// @dev Enough for the min stake plus four default collaterals.
    uint256 internal constant STAKE = MIN_STAKE + 4 * COLLATERAL;

    uint256 internal constant LEASE_ID = 42;
    /// @dev Largest stake the registry's uint96 books hold.
    uint256 internal constant MAX_UINT96 = type(uint96).max;

    string internal constant PEER_ID = "12D3KooWProvider";
    string internal constant OTHER_PEER_ID = "12D3KooWOtherProvider";
    /// @dev Base's `_registerProvider` registers with this metadata.
    string internal constant METADATA = "{}";
    string internal constant NEW_PEER_ID = "12D3KooWMovedProvider";
    string internal constant NEW_METADATA = '{"region":"eu-west","gpu":"1xH100-80GB"}';

    /*//////////////////////////////////////////////////////////////
                                 ACTIONS
    //////////////////////////////////////////////////////////////*/

    /// @dev Mints `amount` staking tokens to `who` and approves the registry for all of them.
    function _fund(address who, uint256 amount) internal {
        stakingToken.mint(who, amount);
        vm.prank(who);
        stakingToken.approve(address(registry), type(uint256).max);
    }

    /// @dev Registers `provider` under PEER_ID with `amount` staked.
    function _registerDefault(uint256 amount) internal {
        _registerProvider(provider, PEER_ID, amount);
    }

    function _lock(address who, uint256 amount) internal {
        vm.prank(address(manager));
        registry.lockCollateral(who, amount);
    }

    function _release(address who, uint256 leaseId, uint256 amount, bool completed) internal {
        vm.prank(address(manager));
        registry.releaseCollateral(who, leaseId, amount, completed);
    }

    function _slash(address who, uint256 leaseId, uint256 amount, Provider.SlashPayout memory payout) internal {
        vm.prank(address(manager));
        registry.slashCollateral(who, leaseId, amount, payout);
    }

    function _requestUnstake(address who, uint256 amount) internal {
        vm.prank(who);
        registry.requestUnstake(amount);
    }

    /*//////////////////////////////////////////////////////////////
                                 BUILDERS
    //////////////////////////////////////////////////////////////*/

    /// @dev A payout to the Base tenant, the Base keeper (as caller) and the Base treasury.
    function _payout(
        uint256 tenantAmount,
        uint256 callerAmount,
        uint256 treasuryAmount
    ) internal view returns (Provider.SlashPayout memory) {
        return
            Provider.SlashPayout({
                tenant: tenant,
                tenantAmount: tenantAmount,
                caller: keeper,
                callerAmount: callerAmount,
                treasury: TREASURY,
                treasuryAmount: treasuryAmount
            });
    }

    /// @dev A string of `length` bytes, all `fill`.
    function _string(uint256 length, bytes1 fill) internal pure returns (string memory) {
        bytes memory b = new bytes(length);
        for (uint256 i; i < length; ++i) b[i] = fill;
        return string(b);
    }

    /// @dev A deployment of the registry over a token that can reenter it, naming the Base lease
    /// manager's address as its lease manager (the tests act as that manager with `vm.prank`).
    function _reentrantRegistry() internal returns (ReentrantToken token, ProviderRegistry reg) {
        token = new ReentrantToken();
        reg = new ProviderRegistry(IERC20(address(token)), MIN_STAKE, UNBONDING_PERIOD, address(manager));
    }

    /// @dev A registry over a token that burns 1 % of every transfer, naming the Base lease manager,
    /// `provider` funded with that token.
    function _feeRegistry() internal returns (FeeOnTransferToken token, ProviderRegistry reg) {
        token = new FeeOnTransferToken("Fee Stake", "FSTK", 100);
        reg = new ProviderRegistry(IERC20(address(token)), MIN_STAKE, UNBONDING_PERIOD, address(manager));
        token.mint(provider, STAKE);
        vm.prank(provider);
        token.approve(address(reg), type(uint256).max);
    }

    /*//////////////////////////////////////////////////////////////
                                ASSERTIONS
    //////////////////////////////////////////////////////////////*/

    /// @dev Checks a provider's stake books, the derived free stake, and the book invariant
    /// `locked <= stake - unbonding`.
    function _assertBooks(address who, uint256 stake_, uint256 locked, uint256 unbonding) internal view {
        Provider.View memory v = registry.getProvider(who);
        assertEq(v.stake, stake_, "stake");
        assertEq(v.locked, locked, "locked");
        assertEq(v.unbonding, unbonding, "unbonding");
        assertEq(registry.freeStake(who), stake_ - unbonding - locked, "free stake");
        assertLe(v.locked + v.unbonding, v.stake, "locked + unbonding <= stake");
    }

    /// @dev Checks a provider's lease counters. Seconds served are kept by the lease manager, which
    /// these tests only impersonate, so they must read as the manager's (zero) count; views.t.sol
    /// checks them after a real lease.
    function _assertCounters(address who, uint256 opened, uint256 completed, uint256 slashed) internal view {
        Provider.View memory v = registry.getProvider(who);
        assertEq(v.leasesOpened, opened, "leasesOpened");
        assertEq(v.leasesCompleted, completed, "leasesCompleted");
        assertEq(v.leasesSlashed, slashed, "leasesSlashed");
        assertEq(v.secondsServed, manager.secondsServed(who), "secondsServed read from the lease manager");
    }

    /// @dev Number of `logs` emitted by `emitter` whose first topic is `topic0`.
    function _countLogs(
        VmLogs.Log[] memory logs,
        address emitter,
        bytes32 topic0
    ) internal pure returns (uint256 count) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == emitter && logs[i].topics.length > 0 && logs[i].topics[0] == topic0) ++count;
        }
    }

    function _panic(uint256 code) internal pure returns (bytes memory) {
        return abi.encodeWithSignature("Panic(uint256)", code);
    }
}
