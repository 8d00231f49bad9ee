// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Provider
/// @notice Types of the provider registry.
library Provider {
    /// @notice A provider as stored. `stake` includes `unbonding`, which stays slashable until it is
    /// withdrawn; `locked` is collateral promised to open leases and never exceeds
    /// `stake - unbonding`.
    struct Record {
        // Slot 0: read and written by every lease open and end.
        uint128 stake;
        uint128 locked;
        // Slot 1.
        uint128 unbonding;
        uint64 unbondingEndsAt;
        bool registered;
        // Slot 2: counters that feed provider selection.
        uint64 leasesOpened;
        uint64 leasesCompleted;
        uint64 leasesSlashed;
        uint64 secondsServed;
        // Dynamic data.
        string peerId;
        string metadata;
    }

    /// @notice A provider as returned by views.
    struct View {
        bool registered;
        bool eligible;
        string peerId;
        string metadata;
        uint256 stake;
        uint256 locked;
        uint256 unbonding;
        uint64 unbondingEndsAt;
        uint64 leasesOpened;
        uint64 leasesCompleted;
        uint64 leasesSlashed;
        uint64 secondsServed;
    }

    /// @notice Where a slashed collateral goes.
    struct SlashPayout {
        address tenant;
        uint256 tenantAmount;
        address caller;
        uint256 callerAmount;
        address treasury;
        uint256 treasuryAmount;
    }
}
