// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Provider
/// @notice Types of the provider registry.
library Provider {
    /// @notice A provider as stored. `bonded` is the stake that is not unbonding: the stake views
    /// report is `bonded + unbonding`, as unbonding stake stays here (slashable) until it is
    /// withdrawn. `locked` is collateral promised to open leases and never exceeds `bonded`, so a
    /// slash always finds its collateral. Storing `bonded` rather than the whole stake puts all that
    /// opening a lease checks and changes (registered, bonded, locked, the opened counter) in one
    /// slot, read and written once (measured by `npm run bench:gas`); amounts stay uint96 (79 billion
    /// tokens of 18 decimals), and the opened counter is narrowed to 56 bits to fit.
    struct Record {
        // Slot 0: read and written by every lease open and end.
        uint96 bonded;
        uint96 locked;
        uint56 leasesOpened;
        bool registered;
        // Slot 1.
        uint96 unbonding;
        uint64 unbondingEndsAt;
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
