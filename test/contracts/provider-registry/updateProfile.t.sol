// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IProviderRegistry} from "../../../contracts/interfaces/IProviderRegistry.sol";
import {Provider} from "../../../contracts/types/Provider.sol";

import {ProviderRegistryBase} from "./ProviderRegistryBase.t.sol";

contract UpdateProfile_ProviderRegistry_Test is ProviderRegistryBase {
    function setUp() public override {
        super.setUp();
        _registerDefault(STAKE);
        _registerProvider(otherProvider, OTHER_PEER_ID, STAKE);
        _lock(provider, COLLATERAL);
    }

    function test_RevertGiven_CallerNotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_NotRegistered.selector, keeper));
        vm.prank(keeper);
        registry.updateProfile(NEW_PEER_ID, NEW_METADATA);
    }

    function test_RevertWhen_NewPeerIdIsEmpty() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InvalidPeerId.selector, 0));
        vm.prank(provider);
        registry.updateProfile("", NEW_METADATA);
    }

    function test_RevertWhen_NewPeerIdIsTooLong() public {
        string memory peerId = _string(MAX_PEER_ID_LENGTH + 1, "p");
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.ProviderRegistry_InvalidPeerId.selector, MAX_PEER_ID_LENGTH + 1)
        );
        vm.prank(provider);
        registry.updateProfile(peerId, NEW_METADATA);
    }

    /// @dev Issue #11 point 2: a peer id another provider claimed (maybe a squatter) can still be
    /// moved to; neither claim disturbs the other.
    function test_WhenNewPeerIdIsClaimedByAnotherProvider() public {
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProfileUpdated(provider, OTHER_PEER_ID, NEW_METADATA);
        vm.prank(provider);
        registry.updateProfile(OTHER_PEER_ID, NEW_METADATA);

        assertEq(registry.getProvider(provider).peerId, OTHER_PEER_ID, "provider moved to the claimed id");
        assertEq(registry.getProvider(otherProvider).peerId, OTHER_PEER_ID, "other claim kept");
        _assertBooks(provider, STAKE, COLLATERAL, 0);
    }

    function test_RevertWhen_PeerIdChangesAndMetadataIsTooLong() public {
        string memory metadata = _string(MAX_METADATA_LENGTH + 1, "m");
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_MetadataTooLong.selector,
                MAX_METADATA_LENGTH + 1,
                MAX_METADATA_LENGTH
            )
        );
        vm.prank(provider);
        registry.updateProfile(NEW_PEER_ID, metadata);
    }

    function test_RevertWhen_PeerIdStaysAndMetadataIsTooLong() public {
        string memory metadata = _string(MAX_METADATA_LENGTH + 1, "m");
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.ProviderRegistry_MetadataTooLong.selector,
                MAX_METADATA_LENGTH + 1,
                MAX_METADATA_LENGTH
            )
        );
        vm.prank(provider);
        registry.updateProfile(PEER_ID, metadata);
    }

    function test_WhenPeerIdChanges() public {
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProfileUpdated(provider, NEW_PEER_ID, NEW_METADATA);
        vm.prank(provider);
        registry.updateProfile(NEW_PEER_ID, NEW_METADATA);

        Provider.View memory v = registry.getProvider(provider);
        assertEq(v.peerId, NEW_PEER_ID, "peerId");
        assertEq(v.metadata, NEW_METADATA, "metadata");
        assertTrue(v.registered, "registered");
        assertTrue(v.eligible, "eligible");
        assertEq(registry.getProvider(otherProvider).peerId, OTHER_PEER_ID, "other provider's peer id kept");
        _assertBooks(provider, STAKE, COLLATERAL, 0);
        _assertCounters(provider, 1, 0, 0);
    }

    function test_WhenPeerIdChanges_OldPeerIdCanBeRegisteredByAnotherProvider() public {
        vm.prank(provider);
        registry.updateProfile(NEW_PEER_ID, NEW_METADATA);

        _registerProvider(keeper, PEER_ID, 0);

        assertEq(registry.getProvider(keeper).peerId, PEER_ID, "old peer id taken over");
        assertEq(registry.getProvider(provider).peerId, NEW_PEER_ID, "new peer id kept");
    }

    function test_WhenPeerIdChangesAndProfileIsAtTheLimits() public {
        string memory peerId = _string(MAX_PEER_ID_LENGTH, "p");
        string memory metadata = _string(MAX_METADATA_LENGTH, "m");

        vm.prank(provider);
        registry.updateProfile(peerId, metadata);

        Provider.View memory v = registry.getProvider(provider);
        assertEq(v.peerId, peerId, "peerId");
        assertEq(v.metadata, metadata, "metadata");
    }

    function test_WhenPeerIdStaysTheSame() public {
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProfileUpdated(provider, PEER_ID, NEW_METADATA);
        vm.prank(provider);
        registry.updateProfile(PEER_ID, NEW_METADATA);

        Provider.View memory v = registry.getProvider(provider);
        assertEq(v.peerId, PEER_ID, "peerId");
        assertEq(v.metadata, NEW_METADATA, "metadata");
        _assertBooks(provider, STAKE, COLLATERAL, 0);
        _assertCounters(provider, 1, 0, 0);
    }

    function test_WhenPeerIdStaysAndMetadataIsEmpty() public {
        vm.prank(provider);
        registry.updateProfile(PEER_ID, "");

        assertEq(registry.getProvider(provider).metadata, "", "metadata cleared");
    }

    function testFuzz_UpdateProfile(uint256 peerIdLength, uint256 metadataLength) public {
        peerIdLength = bound(peerIdLength, 1, MAX_PEER_ID_LENGTH);
        metadataLength = bound(metadataLength, 0, MAX_METADATA_LENGTH);
        // An all-'q' peer id never equals PEER_ID or OTHER_PEER_ID.
        string memory peerId = _string(peerIdLength, "q");
        string memory metadata = _string(metadataLength, "m");

        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProfileUpdated(provider, peerId, metadata);
        vm.prank(provider);
        registry.updateProfile(peerId, metadata);

        Provider.View memory v = registry.getProvider(provider);
        assertEq(v.peerId, peerId, "peerId");
        assertEq(v.metadata, metadata, "metadata");
    }
}
