// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {LeaseManager} from "../../../contracts/LeaseManager.sol";
import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {ILeaseManager} from "../../../contracts/interfaces/ILeaseManager.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Lease} from "../../../contracts/types/Lease.sol";

import {LeaseManagerTest} from "./LeaseManagerTest.sol";
import {PlainToken} from "./Mocks.sol";

contract OpenLeaseWithPermit_Test is LeaseManagerTest {
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    uint256 internal constant PERMIT_TENANT_KEY = 0x7E4A47;
    uint256 internal constant PERMIT_DEADLINE = T0 + 1 hours;

    /// @dev A tenant with a private key (to sign permits), funded but with no allowance.
    address internal permitTenant;

    function setUp() public override {
        super.setUp();
        permitTenant = vm.addr(PERMIT_TENANT_KEY);
        vm.label(permitTenant, "permitTenant");
        paymentToken.mint(permitTenant, TENANT_FUNDS);
        _ensureProvider();
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    function _permit(
        uint256 ownerKey,
        address spender,
        uint256 value,
        uint256 deadline
    ) internal view returns (Lease.Permit memory permit) {
        address owner = vm.addr(ownerKey);
        bytes32 structHash = keccak256(
            abi.encode(PERMIT_TYPEHASH, owner, spender, value, paymentToken.nonces(owner), deadline)
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", paymentToken.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(ownerKey, digest);
        permit = Lease.Permit({value: value, deadline: deadline, v: v, r: r, s: s});
    }

    function _validPermit() internal view returns (Lease.Permit memory) {
        return _permit(PERMIT_TENANT_KEY, address(manager), DEPOSIT, PERMIT_DEADLINE);
    }

    function _garbagePermit() internal pure returns (Lease.Permit memory) {
        return
            Lease.Permit({
                value: DEPOSIT,
                deadline: PERMIT_DEADLINE,
                v: 27,
                r: bytes32(uint256(1)),
                s: bytes32(uint256(2))
            });
    }

    function _permitQuote() internal returns (Lease.Quote memory) {
        return _quote(provider, permitTenant, JOB);
    }

    function _expectNoAllowance(uint256 allowance) internal {
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector,
                address(manager),
                allowance,
                DEPOSIT
            )
        );
    }

    /// @dev Opens with `permit` as `permitTenant` and checks the lease and the money.
    function _openAndCheck(Lease.Permit memory permit) internal returns (uint256 id) {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.prank(permitTenant);
        id = manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
        assertEq(id, 1, "lease id");
        _assertStatus(id, Lease.Status.Active);
        assertEq(_lease(id).tenant, permitTenant, "tenant");
        assertEq(_lease(id).deposit, DEPOSIT, "deposit");
        assertEq(paymentToken.balanceOf(permitTenant), TENANT_FUNDS - DEPOSIT, "tenant paid");
        assertEq(paymentToken.balanceOf(address(manager)), DEPOSIT, "escrow");
        assertEq(registry.getProvider(provider).locked, COLLATERAL, "collateral locked");
        _assertConserved();
    }

    /*//////////////////////////////////////////////////////////////
                                  TESTS
    //////////////////////////////////////////////////////////////*/

    function test_WhenPermitValid() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _validPermit();
        assertEq(paymentToken.allowance(permitTenant, address(manager)), 0, "no allowance before");

        vm.expectEmit(address(paymentToken));
        emit Approval(permitTenant, address(manager), DEPOSIT);
        vm.expectEmit(address(manager));
        emit ILeaseManager.LeaseOpened(1, JOB, provider, permitTenant, 0, DEPOSIT, uint64(T0 + FUNDED_SECONDS), _terms(q));
        _expectPayTransfer(permitTenant, address(manager), DEPOSIT);
        vm.prank(permitTenant);
        uint256 id = manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);

        assertEq(id, 1, "lease id");
        assertEq(paymentToken.nonces(permitTenant), 1, "permit nonce used");
        assertEq(paymentToken.allowance(permitTenant, address(manager)), 0, "allowance spent");
        assertEq(paymentToken.balanceOf(permitTenant), TENANT_FUNDS - DEPOSIT, "tenant paid");
        assertEq(paymentToken.balanceOf(address(manager)), DEPOSIT, "escrow");
        assertEq(_lease(id).tenant, permitTenant, "tenant");
        assertEq(_lease(id).endsAt, T0 + FUNDED_SECONDS, "endsAt");
        _assertProvider(PROVIDER_STAKE, COLLATERAL, 1, 0, 0, 0);
        _assertConserved();
    }

    function test_WhenPermitFrontRun() external {
        Lease.Permit memory permit = _validPermit();
        // Someone submits the tenant's permit first: the manager's permit call then fails, but the
        // allowance it would have set is in place.
        vm.prank(keeper);
        paymentToken.permit(permitTenant, address(manager), DEPOSIT, permit.deadline, permit.v, permit.r, permit.s);
        _openAndCheck(permit);
        assertEq(paymentToken.allowance(permitTenant, address(manager)), 0, "allowance spent");
    }

    function test_WhenPermitInvalidButAllowanceExists() external {
        vm.prank(permitTenant);
        paymentToken.approve(address(manager), DEPOSIT * 2);
        _openAndCheck(_garbagePermit());
        assertEq(paymentToken.allowance(permitTenant, address(manager)), DEPOSIT, "rest of the allowance");
    }

    function test_WhenPermitExpiredButAllowanceExists() external {
        vm.prank(permitTenant);
        paymentToken.approve(address(manager), DEPOSIT);
        _openAndCheck(_permit(PERMIT_TENANT_KEY, address(manager), DEPOSIT, T0 - 1));
    }

    function test_RevertWhen_PermitInvalidAndNoAllowance() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _garbagePermit();
        vm.prank(permitTenant);
        _expectNoAllowance(0);
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function test_RevertWhen_PermitExpiredAndNoAllowance() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _permit(PERMIT_TENANT_KEY, address(manager), DEPOSIT, T0 - 1);
        vm.prank(permitTenant);
        _expectNoAllowance(0);
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function test_RevertWhen_PermitForLessThanDeposit() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _permit(PERMIT_TENANT_KEY, address(manager), DEPOSIT - 1, PERMIT_DEADLINE);
        vm.prank(permitTenant);
        _expectNoAllowance(DEPOSIT - 1);
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    /// @dev A permit for more than the deposit leaves the rest as an allowance: what a tenant keeps
    /// for its next hand-off's signed opening.
    function test_WhenPermitForMoreThanDeposit() external {
        _openAndCheck(_permit(PERMIT_TENANT_KEY, address(manager), DEPOSIT * 3, PERMIT_DEADLINE));
        assertEq(paymentToken.allowance(permitTenant, address(manager)), DEPOSIT * 2, "the rest is left approved");
    }

    /// @dev The permit's value is what it was signed for: another value in the struct fails the
    /// permit (ignored), and the open then needs an allowance.
    function test_RevertWhen_PermitValueAltered() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _validPermit();
        permit.value = DEPOSIT * 2;
        vm.prank(permitTenant);
        _expectNoAllowance(0);
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function test_RevertWhen_PermitForOtherSpender() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _permit(PERMIT_TENANT_KEY, keeper, DEPOSIT, PERMIT_DEADLINE);
        vm.prank(permitTenant);
        _expectNoAllowance(0);
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function test_RevertWhen_PermitSignedByOtherOwner() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _permit(OTHER_PROVIDER_KEY, address(manager), DEPOSIT, PERMIT_DEADLINE);
        vm.prank(permitTenant);
        _expectNoAllowance(0);
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function test_RevertWhen_PermitAlreadyUsedAndAllowanceSpent() external {
        Lease.Permit memory permit = _validPermit();
        _openAndCheck(permit);
        // Replaying the permit fails (nonce used) and the allowance it gave is spent.
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        vm.prank(permitTenant);
        _expectNoAllowance(0);
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function test_RevertWhen_CallerNotQuoteTenant() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _validPermit();
        vm.prank(tenant);
        vm.expectRevert(
            abi.encodeWithSelector(ILeaseManager.LeaseManager_CallerNotQuoteTenant.selector, permitTenant, tenant)
        );
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function test_RevertWhen_QuoteSignatureInvalid() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(OTHER_PROVIDER_KEY, q);
        Lease.Permit memory permit = _validPermit();
        vm.prank(permitTenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidSignature.selector, provider));
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
        // The revert undid the permit too.
        assertEq(paymentToken.nonces(permitTenant), 0, "permit nonce unused");
        assertEq(paymentToken.allowance(permitTenant, address(manager)), 0, "no allowance");
    }

    function test_RevertWhen_QuoteReused() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory first = _validPermit();
        vm.prank(permitTenant);
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, first);
        Lease.Permit memory permit = _validPermit();
        vm.prank(permitTenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_NonceUsed.selector, provider, q.nonce));
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function test_RevertWhen_QuoteInvalid() external {
        Lease.Quote memory q = _permitQuote();
        q.pricePerSecond = 0;
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _validPermit();
        vm.prank(permitTenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_PriceOutOfRange.selector, 0));
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    /// @dev Expects opening `q` with a valid permit to revert on the timeout check, undoing the permit.
    function _expectTimeoutNotShorter(Lease.Quote memory q) internal {
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _validPermit();
        vm.prank(permitTenant);
        vm.expectRevert(
            abi.encodeWithSelector(
                ILeaseManager.LeaseManager_MaxDurationOutOfRange.selector,
                q.maxDuration,
                q.heartbeatTimeout
            )
        );
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
        assertEq(paymentToken.nonces(permitTenant), 0, "permit nonce unused");
        assertEq(paymentToken.allowance(permitTenant, address(manager)), 0, "no allowance");
    }

    function test_RevertWhen_HeartbeatTimeoutEqualsMaxDuration() external {
        Lease.Quote memory q = _permitQuote();
        q.heartbeatTimeout = q.maxDuration;
        _expectTimeoutNotShorter(q);
    }

    function test_RevertWhen_HeartbeatTimeoutAboveMaxDuration() external {
        Lease.Quote memory q = _permitQuote();
        q.maxDuration = HEARTBEAT_TIMEOUT - 1;
        _expectTimeoutNotShorter(q);
    }

    function test_RevertWhen_PredecessorInvalid() external {
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = _validPermit();
        vm.prank(permitTenant);
        vm.expectRevert(abi.encodeWithSelector(ILeaseManager.LeaseManager_InvalidPredecessor.selector, 7));
        manager.openLeaseWithPermit(q, sig, DEPOSIT, 7, permit);
    }

    /*//////////////////////////////////////////////////////////////
                           TOKEN WITHOUT PERMIT
    //////////////////////////////////////////////////////////////*/

    function _deployPlain() internal returns (PlainToken token, LeaseManager manager2) {
        token = new PlainToken();
        ProviderRegistry registry2;
        (registry2, manager2) = _deployPair(stakingToken, token);
        stakingToken.mint(provider, PROVIDER_STAKE);
        vm.startPrank(provider);
        stakingToken.approve(address(registry2), PROVIDER_STAKE);
        registry2.register("12D3KooWProvider", "{}", PROVIDER_STAKE);
        vm.stopPrank();
        token.mint(tenant, DEPOSIT);
    }

    function _signFor(LeaseManager manager2, Lease.Quote memory q) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, manager2.hashQuote(q));
        return abi.encodePacked(r, s, v);
    }

    function test_WhenTokenHasNoPermitButAllowanceExists() external {
        (PlainToken token, LeaseManager manager2) = _deployPlain();
        vm.prank(tenant);
        token.approve(address(manager2), DEPOSIT);
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _signFor(manager2, q);
        vm.prank(tenant);
        uint256 id = manager2.openLeaseWithPermit(q, sig, DEPOSIT, 0, _garbagePermit());
        assertEq(id, 1, "lease id");
        assertEq(token.balanceOf(address(manager2)), DEPOSIT, "escrow");
        assertEq(token.balanceOf(tenant), 0, "tenant paid");
    }

    function test_RevertWhen_TokenHasNoPermitAndNoAllowance() external {
        (, LeaseManager manager2) = _deployPlain();
        Lease.Quote memory q = _defaultQuote();
        bytes memory sig = _signFor(manager2, q);
        Lease.Permit memory permit = _garbagePermit();
        vm.prank(tenant);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(manager2), 0, DEPOSIT)
        );
        manager2.openLeaseWithPermit(q, sig, DEPOSIT, 0, permit);
    }

    function testFuzz_OpenLeaseWithPermit(uint256 deposit, uint256 extraAllowance, bool validPermit) external {
        deposit = bound(deposit, PRICE, TENANT_FUNDS);
        extraAllowance = bound(extraAllowance, 0, TENANT_FUNDS);
        // A pre-existing allowance of `extraAllowance`; the permit, if valid, replaces it with `deposit`.
        vm.prank(permitTenant);
        paymentToken.approve(address(manager), extraAllowance);
        Lease.Quote memory q = _permitQuote();
        bytes memory sig = _sign(PROVIDER_KEY, q);
        Lease.Permit memory permit = validPermit
            ? _permit(PERMIT_TENANT_KEY, address(manager), deposit, PERMIT_DEADLINE)
            : _garbagePermit();
        uint256 allowance = validPermit ? deposit : extraAllowance;

        vm.prank(permitTenant);
        if (allowance < deposit) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    IERC20Errors.ERC20InsufficientAllowance.selector,
                    address(manager),
                    allowance,
                    deposit
                )
            );
            manager.openLeaseWithPermit(q, sig, deposit, 0, permit);
        } else {
            manager.openLeaseWithPermit(q, sig, deposit, 0, permit);
            assertEq(paymentToken.allowance(permitTenant, address(manager)), allowance - deposit, "allowance");
            assertEq(paymentToken.balanceOf(address(manager)), deposit, "escrow");
            assertEq(_lease(1).endsAt, T0 + deposit / PRICE < T0 + MAX_DURATION ? T0 + deposit / PRICE : T0 + MAX_DURATION, "endsAt");
        }
    }
}
