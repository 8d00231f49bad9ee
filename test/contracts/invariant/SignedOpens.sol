// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {DevToken} from "../../../contracts/token/DevToken.sol";
import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {Test} from "../utils/Test.sol";

/// @notice The signed-opening half of {Handler.openLeaseFor}: signs a tenant's opening, submits it
/// as the provider (or, on purpose, as someone it must refuse), and checks what a single call can
/// check. It keeps no books: the handler records what it returns. A contract of its own because the
/// handler is near the largest contract the invariant runner identifies.
contract SignedOpens is Test {
    struct Input {
        Lease.Opening opening;
        /// The tenant's key, or (fault 1) another tenant's.
        uint256 signerKey;
        /// The provider, or (fault 2) another provider.
        address caller;
        /// 0: as it should be; 1: signed by another tenant; 2: submitted by another provider;
        /// 3: mined after its deadline.
        uint256 fault;
        uint256 predecessor;
        bool predecessorValid;
        bool nonceAlreadySpent;
    }

    struct Result {
        /// The lease opened, or zero.
        uint256 leaseId;
        /// The first expectation broken, or "".
        string violation;
        /// Whether the opening slashed its predecessor; then what the slash moved.
        bool slashed;
        Lease.View before;
        uint256 paidOut;
        uint256 registryBefore;
        uint256 oldStakeBefore;
        bool replaySucceeded;
        bool replayWrongReason;
    }

    LeaseManager internal immutable _manager;
    ProviderRegistry internal immutable _registry;
    DevToken internal immutable _stakingToken;
    DevToken internal immutable _paymentToken;
    address internal immutable _treasury;

    constructor(
        LeaseManager manager_,
        ProviderRegistry registry_,
        DevToken stakingToken_,
        DevToken paymentToken_,
        address treasury_
    ) {
        _manager = manager_;
        _registry = registry_;
        _stakingToken = stakingToken_;
        _paymentToken = paymentToken_;
        _treasury = treasury_;
    }

    /// @notice Signs and submits `input`'s opening and checks the outcome. `registryCredits` is what
    /// the registry has credited and not paid, as the handler counts it.
    function submit(Input memory input, uint256 registryCredits) external returns (Result memory r) {
        Lease.Quote memory q = input.opening.quote;
        bytes memory signature = _sign(input.signerKey, _manager.hashOpening(input.opening));
        bool quoteOk = block.timestamp <= q.expiry && _termsValid(q, input.opening.deposit);
        bool expectOk = input.fault == 0 && quoteOk && !input.nonceAlreadySpent && input.predecessorValid;
        if (input.predecessor != 0) r.before = _manager.getLease(input.predecessor);
        uint256 tenantPayBefore = _paymentOwedTo(q.tenant);
        uint256[3] memory stakeBefore = [_stakeOwedTo(q.tenant), _stakeOwedTo(q.provider), _stakeOwedTo(_treasury)];
        r.registryBefore = _stakingToken.balanceOf(address(_registry)) - registryCredits;
        r.oldStakeBefore = _registry.getProvider(r.before.provider).stake;

        vm.prank(input.caller);
        try _manager.openLeaseFor(input.opening, signature) returns (uint256 id) {
            r.leaseId = id;
            if (!expectOk) r.violation = "openLeaseFor accepted a faulty opening";
            else _check(input, r, tenantPayBefore, stakeBefore);
            // The same opening again must fail, for its id is taken (and its nonce spent).
            vm.prank(q.provider);
            try _manager.openLeaseFor(input.opening, signature) {
                r.replaySucceeded = true;
            } catch (bytes memory err) {
                r.replayWrongReason = bytes4(err) != ILeaseManager.LeaseManager_LeaseIdTaken.selector;
            }
        } catch (bytes memory err) {
            r.violation = _refusalViolation(input, expectOk, quoteOk, bytes4(err));
        }
    }

    /// @dev What a successful `openLeaseFor` must have done: the lease under its quote's id, the
    /// predecessor ended as its tenant's own call would have ended it, and the money moved so.
    function _check(
        Input memory input,
        Result memory r,
        uint256 tenantPayBefore,
        uint256[3] memory stakeBefore
    ) internal view {
        Lease.Quote memory q = input.opening.quote;
        if (r.leaseId != _manager.leaseIdOf(q) || r.leaseId < 1 << 63) {
            r.violation = "openLeaseFor's lease id is not leaseIdOf its quote";
        }
        uint256 refund;
        if (input.predecessor != 0) {
            if (_manager.successorOf(input.predecessor) != r.leaseId) r.violation = "successorOf does not name the signed lease";
            Lease.View memory b = r.before;
            Lease.View memory a = _manager.getLease(input.predecessor);
            if (b.status == Lease.Status.Active) {
                refund = b.deposit - b.earned;
                Lease.Status want = b.slashable ? Lease.Status.Slashed : b.expired
                    ? Lease.Status.Expired
                    : Lease.Status.Closing;
                if (a.status != want) r.violation = "openLeaseFor ended its active predecessor the wrong way";
                if (want == Lease.Status.Closing && a.deadline != block.timestamp + b.heartbeatTimeout) {
                    r.violation = "openLeaseFor's close did not give the provider a whole timeout";
                }
                if (want == Lease.Status.Slashed) _checkSlash(input, r, stakeBefore);
            } else if (a.status != b.status) {
                r.violation = "openLeaseFor changed an ended predecessor";
            }
        }
        if (_paymentOwedTo(q.tenant) + input.opening.deposit != tenantPayBefore + refund) {
            r.violation = "openLeaseFor moved the tenant's money other than deposit and predecessor's refund";
        }
    }

    /// @dev The slash of the predecessor paid the tenant and the caller (the submitting provider)
    /// their shares, as `slashMissedHeartbeat` from that caller would have.
    function _checkSlash(Input memory input, Result memory r, uint256[3] memory stakeBefore) internal view {
        Lease.View memory b = r.before;
        r.slashed = true;
        address[3] memory who = [b.tenant, input.caller, _treasury];
        for (uint256 i = 0; i < 3; ++i) {
            bool seen;
            for (uint256 j = 0; j < i; ++j) if (who[j] == who[i]) seen = true;
            uint256 owed = _stakeOwedTo(who[i]);
            if (!seen && owed >= stakeBefore[i]) r.paidOut += owed - stakeBefore[i];
        }
        uint256 tenantShare = (b.collateral * _manager.tenantShareBps()) / 10_000;
        uint256 callerShare = input.caller == b.provider ? 0 : (b.collateral * _manager.callerShareBps()) / 10_000;
        if (_stakeOwedTo(input.caller) != stakeBefore[1] + callerShare) r.violation = "embedded slash paid the caller the wrong share";
        if (_stakeOwedTo(b.tenant) != stakeBefore[0] + tenantShare) r.violation = "embedded slash paid the tenant the wrong share";
    }

    /// @dev Why a refusal breaks an expectation, or "": a good opening may be refused only by the
    /// registry (the provider's free stake or eligibility), a faulty one only for its fault.
    function _refusalViolation(
        Input memory input,
        bool expectOk,
        bool quoteOk,
        bytes4 sel
    ) internal pure returns (string memory) {
        bool registryRefusal = sel == IProviderRegistry.ProviderRegistry_InsufficientFreeStake.selector ||
            sel == IProviderRegistry.ProviderRegistry_BelowMinStake.selector ||
            sel == IProviderRegistry.ProviderRegistry_NotRegistered.selector;
        if (expectOk && !registryRefusal) return "openLeaseFor of a good opening reverted";
        if (input.fault == 1 && quoteOk && sel != ILeaseManager.LeaseManager_InvalidTenantSignature.selector) {
            return "an opening signed by another tenant was refused for the wrong reason";
        }
        if (input.fault == 2 && sel != ILeaseManager.LeaseManager_CallerNotQuoteProvider.selector) {
            return "an opening submitted by another provider was refused for the wrong reason";
        }
        if (input.fault == 3 && sel != ILeaseManager.LeaseManager_OpeningExpired.selector) {
            return "a late opening was refused for the wrong reason";
        }
        return "";
    }

    /// @dev The quote checks `openLease` makes (`_checkQuote`), the signature and nonce aside.
    function _termsValid(Lease.Quote memory q, uint256 deposit) internal view returns (bool) {
        return
            q.pricePerSecond != 0 &&
            q.heartbeatTimeout >= _manager.minHeartbeatTimeout() &&
            q.heartbeatTimeout <= _manager.maxHeartbeatTimeout() &&
            q.heartbeatPeriod != 0 &&
            q.heartbeatPeriod <= q.heartbeatTimeout / 2 &&
            q.maxDuration > q.heartbeatTimeout &&
            block.timestamp + q.maxDuration <= type(uint32).max &&
            deposit >= q.pricePerSecond;
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _paymentOwedTo(address who) internal view returns (uint256) {
        return _paymentToken.balanceOf(who) + _manager.creditOf(who);
    }

    function _stakeOwedTo(address who) internal view returns (uint256) {
        return _stakingToken.balanceOf(who) + _registry.creditOf(who);
    }
}
