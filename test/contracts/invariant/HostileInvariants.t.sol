// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {DevToken} from "../../../contracts/token/DevToken.sol";

import {BlocklistToken} from "../mocks/BlocklistToken.sol";
import {HookToken} from "../mocks/HookToken.sol";
import {Base} from "../utils/Base.t.sol";
import {HostileHandler} from "./HostileHandler.sol";

/// @notice Invariants of a deployment whose staking and payment tokens let tenants refuse
/// transfers, checked after every call of random {HostileHandler} sequences in which tenants start
/// and stop refusing. Run once with a blocklist token and once with a receive-hook token (the two
/// contracts at the end). See README.md next to this file.
abstract contract HostileInvariantsTest is Base {
    uint256 internal constant TENANTS = 3;

    HostileHandler internal handler;

    function _deployTokens() internal virtual returns (DevToken, DevToken, HostileHandler.Refusal);

    function setUp() public override {
        super.setUp();
        HostileHandler.Refusal refusal;
        (stakingToken, paymentToken, refusal) = _deployTokens();
        (registry, manager) = _deployPair(stakingToken, paymentToken);
        handler = new HostileHandler(
            HostileHandler.System(manager, registry, stakingToken, paymentToken, refusal, address(this), TREASURY),
            TENANTS
        );

        bytes4[] memory selectors = new bytes4[](14);
        selectors[0] = HostileHandler.openLease.selector;
        selectors[1] = HostileHandler.heartbeat.selector;
        selectors[2] = HostileHandler.claim.selector;
        selectors[3] = HostileHandler.finish.selector;
        selectors[4] = HostileHandler.slash.selector;
        selectors[5] = HostileHandler.settleExpired.selector;
        selectors[6] = HostileHandler.close.selector;
        selectors[7] = HostileHandler.topUp.selector;
        selectors[8] = HostileHandler.refuse.selector;
        selectors[9] = HostileHandler.accept.selector;
        selectors[10] = HostileHandler.withdrawCredit.selector;
        selectors[11] = HostileHandler.warp.selector;
        selectors[12] = HostileHandler.probeExits.selector;
        // Twice the weight: leases must be open for the other actions to matter.
        selectors[13] = HostileHandler.openLease.selector;
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /*//////////////////////////////////////////////////////////////
                               INVARIANTS
    //////////////////////////////////////////////////////////////*/

    /// @notice The three below, checked after every call of one campaign: each invariant function
    /// gets a campaign of its own (256 runs of 50 calls), and all three watch the same handler, so
    /// one campaign tests them as well at a third of the time.
    function invariant_refusingTenantsBlockNobody() public view {
        _refusingTenantBlocksOnlyItself();
        _noExitBlockedByTenant();
        _tokensConserved();
    }

    /// @notice A tenant that refuses tokens blocks nobody's call but its own: no provider's
    /// heartbeat, claim or finish and no keeper's slash or settlement that was due ever reverted,
    /// and every other expectation of the handler held (a credit is withdrawable once its tenant
    /// takes tokens again, and a failed withdrawal leaves it whole).
    function _refusingTenantBlocksOnlyItself() internal view {
        assertEq(handler.blockedCalls(), 0, handler.firstViolation());
        assertEq(handler.violations(), 0, handler.firstViolation());
    }

    /// @notice No exit of a lease can be blocked by its tenant: at any moment every live lease can
    /// be ended by its provider (finish, or the acknowledgement of a close) or a keeper (slash,
    /// settlement), and after a wait past every deadline by keepers alone, freeing or slashing all
    /// collateral. Each {HostileHandler.probeExits} tries it and undoes it.
    function _noExitBlockedByTenant() internal view {
        assertEq(handler.blockedExits(), 0, handler.firstViolation());
    }

    /// @notice Tokens are conserved: the manager holds the deposits, the claimable earnings and the
    /// credited refunds; the registry the stake and the credited slash shares; and no token is
    /// anywhere but with the parties and the two contracts.
    function _tokensConserved() internal view {
        address[] memory providers = handler.providers();
        address[] memory tenants = handler.tenants();
        address[] memory keepers = handler.keepers();

        uint256 owed;
        uint256 n = handler.leaseCount();
        for (uint256 id = 1; id <= n; ++id) owed += manager.getLease(id).deposit;
        for (uint256 i = 0; i < providers.length; ++i) owed += manager.claimable(providers[i]);
        for (uint256 i = 0; i < tenants.length; ++i) owed += manager.creditOf(tenants[i]);
        uint256 managerBalance = paymentToken.balanceOf(address(manager));
        assertEq(managerBalance, owed, "manager balance != deposits + claimable + credits");

        uint256 staked;
        for (uint256 i = 0; i < providers.length; ++i) staked += registry.getProvider(providers[i]).stake;
        uint256 credited = registry.creditOf(TREASURY);
        for (uint256 i = 0; i < tenants.length; ++i) credited += registry.creditOf(tenants[i]);
        for (uint256 i = 0; i < keepers.length; ++i) credited += registry.creditOf(keepers[i]);
        uint256 registryBalance = stakingToken.balanceOf(address(registry));
        assertEq(registryBalance, staked + credited, "registry balance != stake + credits");

        uint256 held = managerBalance;
        for (uint256 i = 0; i < tenants.length; ++i) held += paymentToken.balanceOf(tenants[i]);
        for (uint256 i = 0; i < providers.length; ++i) held += paymentToken.balanceOf(providers[i]);
        assertEq(paymentToken.totalSupply(), held, "payment tokens outside the tenants, providers and manager");

        held = registryBalance + stakingToken.balanceOf(TREASURY);
        for (uint256 i = 0; i < tenants.length; ++i) held += stakingToken.balanceOf(tenants[i]);
        for (uint256 i = 0; i < providers.length; ++i) held += stakingToken.balanceOf(providers[i]);
        for (uint256 i = 0; i < keepers.length; ++i) held += stakingToken.balanceOf(keepers[i]);
        assertEq(stakingToken.totalSupply(), held, "staking tokens outside the parties and the registry");
    }
}

/// @notice Tenants refuse by being blocklisted by the tokens' owner (this test contract).
contract HostileInvariants_Blocklist_Test is HostileInvariantsTest {
    function _deployTokens() internal override returns (DevToken, DevToken, HostileHandler.Refusal) {
        return (
            new BlocklistToken("Blocklist Stake", "BSTK", address(this)),
            new BlocklistToken("Blocklist Pay", "BPAY", address(this)),
            HostileHandler.Refusal.Blocklist
        );
    }
}

/// @notice Tenants are contracts whose receive hook reverts while they refuse.
contract HostileInvariants_Hook_Test is HostileInvariantsTest {
    function _deployTokens() internal override returns (DevToken, DevToken, HostileHandler.Refusal) {
        return (new HookToken("Hook Stake", "HSTK"), new HookToken("Hook Pay", "HPAY"), HostileHandler.Refusal.Hook);
    }
}
