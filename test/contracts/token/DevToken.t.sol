// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {DevToken} from "../../../contracts/token/DevToken.sol";

import {Base} from "../utils/Base.t.sol";

contract DevToken_Test is Base {
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// @dev secp256k1 curve order.
    uint256 internal constant N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    uint256 internal constant T0 = 1_700_000_000;
    uint256 internal constant VALUE = 1_000e18;
    uint256 internal constant DEADLINE = T0 + 1 hours;

    DevToken internal token;
    address internal owner;
    address internal spender = address(0x5BE7DE4);

    function setUp() public override {
        super.setUp();
        token = stakingToken;
        owner = provider;
    }

    /*//////////////////////////////////////////////////////////////
                                 HELPERS
    //////////////////////////////////////////////////////////////*/

    function _domainSeparator(DevToken t, string memory name, uint256 chainId) internal pure returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256(bytes(name)), keccak256("1"), chainId, address(t)));
    }

    function _digest(
        bytes32 domainSeparator,
        address owner_,
        address spender_,
        uint256 value,
        uint256 nonce,
        uint256 deadline
    ) internal pure returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, owner_, spender_, value, nonce, deadline));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator, structHash));
    }

    function _signPermit(
        uint256 key,
        address spender_,
        uint256 value,
        uint256 deadline
    ) internal view returns (uint8 v, bytes32 r, bytes32 s) {
        address signer = vm.addr(key);
        bytes32 digest = _digest(token.DOMAIN_SEPARATOR(), signer, spender_, value, token.nonces(signer), deadline);
        (v, r, s) = vm.sign(key, digest);
    }

    /// @dev Submits a permit expected to fail with {ERC2612InvalidSigner} for `owner_`, whatever
    /// address the signature recovers to (a signature over another digest recovers to an unknown
    /// address, and EDR's `expectRevert(bytes4)` compares the whole revert data).
    function _permitExpectingInvalidSigner(
        address owner_,
        address spender_,
        uint256 value,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) internal {
        try token.permit(owner_, spender_, value, deadline, v, r, s) {
            revert AssertionFailed("permit should have reverted");
        } catch (bytes memory data) {
            assertEq(bytes32(bytes4(data)), bytes32(ERC20Permit.ERC2612InvalidSigner.selector), "error selector");
            assertEq(data.length, 4 + 64, "error data length");
            (address recovered, address expectedOwner) = abi.decode(_slice4(data), (address, address));
            assertEq(expectedOwner, owner_, "error owner");
            assertTrue(recovered != owner_, "recovered signer differs from owner");
        }
        assertEq(token.allowance(owner_, spender_), 0, "no allowance");
    }

    function _slice4(bytes memory data) internal pure returns (bytes memory rest) {
        rest = new bytes(data.length - 4);
        for (uint256 i; i < rest.length; ++i) rest[i] = data[i + 4];
    }

    /*//////////////////////////////////////////////////////////////
                               CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    function test_Constructor() public {
        DevToken fresh = new DevToken("Some Token", "SOME");
        assertEq(fresh.name(), "Some Token", "name");
        assertEq(fresh.symbol(), "SOME", "symbol");
        assertEq(fresh.decimals(), 18, "decimals");
        assertEq(fresh.totalSupply(), 0, "totalSupply");
        assertEq(fresh.DOMAIN_SEPARATOR(), _domainSeparator(fresh, "Some Token", block.chainid), "domain separator");
        (, string memory name, string memory version, uint256 chainId, address verifyingContract, , ) = fresh
            .eip712Domain();
        assertEq(name, "Some Token", "domain name");
        assertEq(version, "1", "domain version");
        assertEq(chainId, block.chainid, "domain chainId");
        assertEq(verifyingContract, address(fresh), "domain verifyingContract");
    }

    /*//////////////////////////////////////////////////////////////
                                   MINT
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_MintToZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        token.mint(address(0), VALUE);
    }

    function test_RevertWhen_TotalSupplyOverflows() public {
        token.mint(owner, type(uint256).max);

        vm.expectRevert(abi.encodeWithSignature("Panic(uint256)", 0x11));
        token.mint(spender, 1);
    }

    function test_Mint() public {
        vm.expectEmit(address(token));
        emit IERC20.Transfer(address(0), owner, VALUE);
        vm.prank(keeper);
        token.mint(owner, VALUE);

        assertEq(token.balanceOf(owner), VALUE, "balance");
        assertEq(token.totalSupply(), VALUE, "totalSupply");
        assertEq(token.balanceOf(keeper), 0, "minter balance");
    }

    function testFuzz_Mint(address minter, address to, uint256 first, uint256 second) public {
        if (to == address(0)) to = owner;
        first = bound(first, 0, type(uint256).max);
        second = bound(second, 0, type(uint256).max - first);

        vm.prank(minter);
        token.mint(to, first);
        vm.expectEmit(address(token));
        emit IERC20.Transfer(address(0), to, second);
        vm.prank(minter);
        token.mint(to, second);

        assertEq(token.balanceOf(to), first + second, "balance");
        assertEq(token.totalSupply(), first + second, "totalSupply");
    }

    /*//////////////////////////////////////////////////////////////
                                  PERMIT
    //////////////////////////////////////////////////////////////*/

    function test_RevertWhen_DeadlineHasPassed() public {
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, spender, VALUE, DEADLINE);
        vm.warp(DEADLINE + 1);

        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612ExpiredSignature.selector, DEADLINE));
        token.permit(owner, spender, VALUE, DEADLINE, v, r, s);
    }

    function test_RevertWhen_SignerIsNotOwner() public {
        // The other provider signs the owner's permit.
        bytes32 digest = _digest(token.DOMAIN_SEPARATOR(), owner, spender, VALUE, 0, DEADLINE);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OTHER_PROVIDER_KEY, digest);

        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, otherProvider, owner));
        token.permit(owner, spender, VALUE, DEADLINE, v, r, s);
    }

    function test_RevertWhen_SignedValueDiffers() public {
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, spender, VALUE, DEADLINE);

        _permitExpectingInvalidSigner(owner, spender, VALUE + 1, DEADLINE, v, r, s);
    }

    function test_RevertWhen_SignatureIsReplayed() public {
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, spender, VALUE, DEADLINE);
        token.permit(owner, spender, VALUE, DEADLINE, v, r, s);
        // Spend the allowance, so that a replay would visibly restore it.
        token.mint(owner, VALUE);
        vm.prank(spender);
        token.transferFrom(owner, spender, VALUE);

        _permitExpectingInvalidSigner(owner, spender, VALUE, DEADLINE, v, r, s);
        assertEq(token.nonces(owner), 1, "nonce used once");
    }

    function test_RevertWhen_SignedForAnotherToken() public {
        bytes32 digest = _digest(
            _domainSeparator(paymentToken, "Baton Pay", block.chainid),
            owner,
            spender,
            VALUE,
            0,
            DEADLINE
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, digest);
        // Valid on the payment token...
        paymentToken.permit(owner, spender, VALUE, DEADLINE, v, r, s);
        assertEq(paymentToken.allowance(owner, spender), VALUE, "payment token allowance");

        // ...but not on the staking token.
        _permitExpectingInvalidSigner(owner, spender, VALUE, DEADLINE, v, r, s);
    }

    function test_RevertWhen_SignedOnAnotherChain() public {
        uint256 otherChain = block.chainid + 1;
        bytes32 domainSeparator = _domainSeparator(token, "Baton Stake", otherChain);
        bytes32 digest = _digest(domainSeparator, owner, spender, VALUE, 0, DEADLINE);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, digest);

        _permitExpectingInvalidSigner(owner, spender, VALUE, DEADLINE, v, r, s);
    }

    function test_Permit_AfterChainIdChanges() public {
        uint256 otherChain = block.chainid + 1;
        vm.chainId(otherChain);
        // The domain separator follows the chain id (a fork), so only a signature for the new chain works.
        assertEq(token.DOMAIN_SEPARATOR(), _domainSeparator(token, "Baton Stake", otherChain), "domain separator");
        bytes32 domainSeparator = _domainSeparator(token, "Baton Stake", otherChain);
        bytes32 digest = _digest(domainSeparator, owner, spender, VALUE, 0, DEADLINE);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PROVIDER_KEY, digest);

        token.permit(owner, spender, VALUE, DEADLINE, v, r, s);
        assertEq(token.allowance(owner, spender), VALUE, "allowance");
    }

    function test_RevertWhen_SignatureSIsHigh() public {
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, spender, VALUE, DEADLINE);
        // The malleable twin of a valid signature: (r, n - s, v ^ 1) recovers the same signer.
        bytes32 highS = bytes32(N - uint256(s));
        uint8 flippedV = v == 27 ? 28 : 27;

        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureS.selector, highS));
        token.permit(owner, spender, VALUE, DEADLINE, flippedV, r, highS);
    }

    function test_RevertWhen_VIsInvalid() public {
        (, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, spender, VALUE, DEADLINE);

        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignature.selector));
        token.permit(owner, spender, VALUE, DEADLINE, 29, r, s);
    }

    function test_Permit() public {
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, spender, VALUE, DEADLINE);

        vm.expectEmit(address(token));
        emit IERC20.Approval(owner, spender, VALUE);
        vm.prank(keeper); // anyone may submit the permit
        token.permit(owner, spender, VALUE, DEADLINE, v, r, s);

        assertEq(token.allowance(owner, spender), VALUE, "allowance");
        assertEq(token.nonces(owner), 1, "nonce");
        assertEq(token.nonces(keeper), 0, "submitter nonce");
    }

    function test_Permit_WhenDeadlineIsNow() public {
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, spender, VALUE, T0);
        token.permit(owner, spender, VALUE, T0, v, r, s);
        assertEq(token.allowance(owner, spender), VALUE, "allowance");
    }

    function test_Permit_SpenderPullsTokens() public {
        token.mint(owner, VALUE);
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, spender, VALUE, DEADLINE);
        token.permit(owner, spender, VALUE, DEADLINE, v, r, s);

        vm.prank(spender);
        token.transferFrom(owner, spender, VALUE);

        assertEq(token.balanceOf(spender), VALUE, "spender balance");
        assertEq(token.balanceOf(owner), 0, "owner balance");
        assertEq(token.allowance(owner, spender), 0, "allowance spent");
    }

    function test_Permit_WhenSpenderIsRegistry() public {
        token.mint(owner, MIN_STAKE);
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(PROVIDER_KEY, address(registry), MIN_STAKE, DEADLINE);
        token.permit(owner, address(registry), MIN_STAKE, DEADLINE, v, r, s);

        vm.prank(owner);
        registry.register("12D3KooWPermit", "{}", MIN_STAKE);

        assertEq(registry.getProvider(owner).stake, MIN_STAKE, "staked");
        assertEq(token.balanceOf(address(registry)), MIN_STAKE, "registry balance");
        assertEq(token.allowance(owner, address(registry)), 0, "allowance spent");
    }

    function testFuzz_Permit(uint256 key, address spender_, uint256 value, uint256 deadline) public {
        key = bound(key, 1, N - 1);
        if (spender_ == address(0)) spender_ = spender;
        deadline = bound(deadline, T0, type(uint256).max);
        address signer = vm.addr(key);
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(key, spender_, value, deadline);

        vm.expectEmit(address(token));
        emit IERC20.Approval(signer, spender_, value);
        token.permit(signer, spender_, value, deadline, v, r, s);

        assertEq(token.allowance(signer, spender_), value, "allowance");
        assertEq(token.nonces(signer), 1, "nonce");
    }
}
