// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Provider
/// @notice Types of the provider registry.
library Provider {
    /// @notice A provider as stored. `stake` includes `unbonding` until it is withdrawn; `locked` is
    /// collateral promised to open leases and never exceeds `stake - unbonding`, so a slash always
    /// finds its collateral. Amounts are uint96 (79 billion tokens of 18 decimals) so that opening a
    /// lease writes a single slot here (measured by `npm run bench:gas`).
    struct Record {
        // Slot 0: written by every lease open and end.
        uint96 stake;
        uint96 locked;
        uint64 leasesOpened;
        // Slot 1.
        uint96 unbonding;
        uint64 unbondingEndsAt;
        bool registered;
        uint64 leasesCompleted;
        // Slot 2.
        uint64 leasesSlashed;
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
        /// Kept by the lease manager, where it costs no extra write (see `ILeaseManager.secondsServed`).
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
