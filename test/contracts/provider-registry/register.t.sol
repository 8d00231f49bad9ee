// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {ProviderRegistry} from "../../../contracts/ProviderRegistry.sol";
import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {FeeOnTransferToken} from "../mocks/FeeOnTransferToken.sol";
import {ProviderRegistryBase, ReentrantToken, VmLogs} from "./ProviderRegistryBase.t.sol";

contract Register_ProviderRegistry_Test is ProviderRegistryBase {
    function test_RevertGiven_CallerAlreadyRegistered() public {
        _registerDefault(STAKE);

        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_AlreadyRegistered.selector, provider)
        );
        vm.prank(provider);
        registry.register(OTHER_PEER_ID, METADATA, 0);
    }

    function test_RevertWhen_PeerIdIsEmpty() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InvalidPeerId.selector, 0));
        vm.prank(provider);
        registry.register("", METADATA, 0);
    }

    function test_RevertWhen_PeerIdIsTooLong() public {
        string memory peerId = _string(MAX_PEER_ID_LENGTH + 1, "p");
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InvalidPeerId.selector, MAX_PEER_ID_LENGTH + 1)
        );
        vm.prank(provider);
        registry.register(peerId, METADATA, 0);
    }

    function testFuzz_RevertWhen_PeerIdIsTooLong(uint256 length) public {
        length = bound(length, MAX_PEER_ID_LENGTH + 1, 1_000);
        string memory peerId = _string(length, "p");
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InvalidPeerId.selector, length));
        vm.prank(provider);
        registry.register(peerId, METADATA, 0);
    }

    /// @dev Issue #11 point 2: a squatter that registers someone's peer id first, for free, does
    /// not lock its owner out (a peer id is a claim; the proof of the key lives in the metadata).
    function test_WhenPeerIdIsClaimedByAnotherProvider() public {
        address squatter = address(0x5A77);
        vm.prank(squatter);
        registry.register(PEER_ID, METADATA, 0);

        _fund(provider, STAKE);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProviderRegistered(provider, PEER_ID, NEW_METADATA);
        vm.prank(provider);
        registry.register(PEER_ID, NEW_METADATA, STAKE);

        assertEq(registry.getProvider(provider).peerId, PEER_ID, "owner registered with its peer id");
        assertTrue(registry.isEligible(provider), "owner eligible");
        assertEq(registry.getProvider(squatter).peerId, PEER_ID, "the squatter's claim stays, harmless");
        _assertBooks(provider, STAKE, 0, 0);
    }

    function test_WhenPeerIdIsClaimedByManyProviders() public {
        _registerProvider(otherProvider, PEER_ID, STAKE);
        _registerProvider(keeper, PEER_ID, 0);
        _registerDefault(STAKE);
        assertEq(registry.getProvider(provider).peerId, PEER_ID, "provider");
        assertEq(registry.getProvider(otherProvider).peerId, PEER_ID, "otherProvider");
        assertEq(registry.getProvider(keeper).peerId, PEER_ID, "keeper");
    }

    function test_RevertWhen_MetadataIsTooLong() public {
        string memory metadata = _string(MAX_METADATA_LENGTH + 1, "m");
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_MetadataTooLong.selector,
                MAX_METADATA_LENGTH + 1,
                MAX_METADATA_LENGTH
            )
        );
        vm.prank(provider);
        registry.register(PEER_ID, metadata, 0);
    }

    function test_RevertWhen_AmountExceedsUint96Max() public {
        uint256 amount = MAX_UINT96 + 1;
        _fund(provider, amount);

        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_AmountTooLarge.selector, amount));
        vm.prank(provider);
        registry.register(PEER_ID, METADATA, amount);
    }

    function test_RevertWhen_AllowanceIsBelowAmount() public {
        stakingToken.mint(provider, STAKE);
        vm.prank(provider);
        stakingToken.approve(address(registry), STAKE - 1);

        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector,
                address(registry),
                STAKE - 1,
                STAKE
            )
        );
        vm.prank(provider);
        registry.register(PEER_ID, METADATA, STAKE);
    }

    function test_RevertWhen_BalanceIsBelowAmount() public {
        _fund(provider, STAKE - 1);

        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, provider, STAKE - 1, STAKE)
        );
        vm.prank(provider);
        registry.register(PEER_ID, METADATA, STAKE);
    }

    /// @dev Issue #11 point 5: the registry is wired at construction, so registering with stake
    /// works straight after deployment.
    function test_GivenFreshDeployment_WhenAmountIsNotZero() public {
        (ProviderRegistry reg, ) = _deployPair(stakingToken, paymentToken);
        stakingToken.mint(provider, STAKE);
        vm.startPrank(provider);
        stakingToken.approve(address(reg), type(uint256).max);
        reg.register(PEER_ID, METADATA, STAKE);
        vm.stopPrank();

        assertTrue(reg.isEligible(provider), "registered and eligible");
        assertEq(stakingToken.balanceOf(address(reg)), STAKE, "registry balance");
    }

    /// @dev Issue #11 point 6.
    function test_RevertWhen_TokenTakesFee() public {
        (, ProviderRegistry reg) = _feeRegistry();
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_UnsupportedToken.selector,
                STAKE,
                STAKE - STAKE / 100
            )
        );
        vm.prank(provider);
        reg.register(PEER_ID, METADATA, STAKE);
        assertFalse(reg.getProvider(provider).registered, "not registered");
    }

    function test_RevertWhen_TokenReentersRegistry() public {
        (ReentrantToken token, ProviderRegistry reg) = _reentrantRegistry();
        token.mint(provider, STAKE);
        vm.prank(provider);
        token.approve(address(reg), type(uint256).max);
        token.arm(address(reg), abi.encodeCall(IProviderRegistry.stake, (1)));

        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        vm.prank(provider);
        reg.register(PEER_ID, METADATA, STAKE);
    }

    function test_WhenPeerIdAndMetadataAreAtTheirLimits() public {
        string memory peerId = _string(MAX_PEER_ID_LENGTH, "p");
        string memory metadata = _string(MAX_METADATA_LENGTH, "m");

        vm.prank(provider);
        registry.register(peerId, metadata, 0);

        Provider.View memory v = registry.getProvider(provider);
        assertTrue(v.registered, "registered");
        assertEq(v.peerId, peerId, "peerId");
        assertEq(v.metadata, metadata, "metadata");
    }

    function test_WhenAmountIsZero() public {
        vmLogs.recordLogs();
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProviderRegistered(provider, PEER_ID, NEW_METADATA);

        vm.prank(provider);
        registry.register(PEER_ID, NEW_METADATA, 0);

        VmLogs.Log[] memory logs = vmLogs.getRecordedLogs();
        assertEq(
            _countLogs(logs, address(registry), IProviderRegistry.ProviderRegistered.selector),
            1,
            "logs recorded"
        );
        assertEq(_countLogs(logs, address(registry), IProviderRegistry.Staked.selector), 0, "no Staked event");
        assertEq(_countLogs(logs, address(stakingToken), IERC20.Transfer.selector), 0, "no Transfer event");
        Provider.View memory v = registry.getProvider(provider);
        assertTrue(v.registered, "registered");
        assertFalse(v.eligible, "eligible");
        assertEq(v.peerId, PEER_ID, "peerId");
        assertEq(v.metadata, NEW_METADATA, "metadata");
        _assertBooks(provider, 0, 0, 0);
        _assertCounters(provider, 0, 0, 0);
        assertEq(stakingToken.balanceOf(address(registry)), 0, "registry balance");
    }

    function test_WhenCallerApprovedAndHoldsAmount() public {
        _fund(provider, STAKE);

        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProviderRegistered(provider, PEER_ID, NEW_METADATA);
        vm.expectEmit(address(registry));
        emit IProviderRegistry.Staked(provider, STAKE, STAKE);
        vm.expectEmit(address(stakingToken));
        emit IERC20.Transfer(provider, address(registry), STAKE);

        vm.prank(provider);
        registry.register(PEER_ID, NEW_METADATA, STAKE);

        Provider.View memory v = registry.getProvider(provider);
        assertTrue(v.registered, "registered");
        assertTrue(v.eligible, "eligible");
        assertTrue(registry.isEligible(provider), "isEligible");
        assertEq(v.peerId, PEER_ID, "peerId");
        assertEq(v.metadata, NEW_METADATA, "metadata");
        assertEq(v.unbondingEndsAt, 0, "unbondingEndsAt");
        _assertBooks(provider, STAKE, 0, 0);
        _assertCounters(provider, 0, 0, 0);
        assertEq(stakingToken.balanceOf(address(registry)), STAKE, "registry balance");
        assertEq(stakingToken.balanceOf(provider), 0, "provider balance");
    }

    function test_WhenAmountIsExactlyMinStake() public {
        _registerDefault(MIN_STAKE);
        assertTrue(registry.isEligible(provider), "eligible at min stake");
    }

    function test_WhenAmountIsBelowMinStake() public {
        _registerDefault(MIN_STAKE - 1);
        Provider.View memory v = registry.getProvider(provider);
        assertTrue(v.registered, "registered");
        assertFalse(v.eligible, "eligible below min stake");
        _assertBooks(provider, MIN_STAKE - 1, 0, 0);
    }

    function testFuzz_Register(uint256 amount, uint256 peerIdLength, uint256 metadataLength) public {
        amount = bound(amount, 0, MAX_UINT96);
        peerIdLength = bound(peerIdLength, 1, MAX_PEER_ID_LENGTH);
        metadataLength = bound(metadataLength, 0, MAX_METADATA_LENGTH);
        string memory peerId = _string(peerIdLength, "p");
        string memory metadata = _string(metadataLength, "m");
        _fund(provider, amount);

        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProviderRegistered(provider, peerId, metadata);
        vm.prank(provider);
        registry.register(peerId, metadata, amount);

        Provider.View memory v = registry.getProvider(provider);
        assertTrue(v.registered, "registered");
        assertEq(v.eligible, amount >= MIN_STAKE, "eligible");
        assertEq(v.peerId, peerId, "peerId");
        assertEq(v.metadata, metadata, "metadata");
        _assertBooks(provider, amount, 0, 0);
        assertEq(stakingToken.balanceOf(address(registry)), amount, "registry balance");
        assertEq(stakingToken.balanceOf(provider), 0, "provider balance");
    }
}
