// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Lease
/// @notice Types shared by the lease manager, its interface and its clients.
library Lease {
    /// @notice The lease state machine. Only transitions the chain can check exist:
    ///
    ///   None ──openLease──► Active ──finish──────────────► Completed
    ///                        │  ├──deposit or max duration ran out (settled on next touch) ──► Expired
    ///                        │  ├──slashMissedHeartbeat (after the heartbeat timeout) ──────► Slashed
    ///                        │  └──close (tenant) ──► Closing ──provider heartbeat──► Closed
    ///                        │                          └──slashMissedHeartbeat──► Slashed
    ///
    /// (`openLeaseWithPermit` and `openLeaseFor`, the provider's submission of a tenant's signed
    /// {Opening}, open a lease the same way.)
    ///
    /// `Closing` exists because a tenant hands a job on as soon as it *suspects* its provider, long
    /// before the on-chain timeout: the tenant's money is settled at once, but the provider's
    /// collateral stays locked until the provider proves it was alive (one more heartbeat before its
    /// deadline) or the deadline passes and anyone may slash it.
    enum Status {
        None,
        Active,
        Closing,
        Completed,
        Closed,
        Expired,
        Slashed
    }

    /// @notice A provider's offer for one lease, signed with EIP-712 and usable once.
    /// @param provider The provider that signs the quote and will serve the lease.
    /// @param tenant The only account that may open a lease with this quote.
    /// @param jobId The tenant's job identifier; every lease of one job shares it.
    /// @param resources Hash of the canonical resource description (GPUs, VRAM, CPU, memory).
    /// @param image The SHA-256 digest of the OCI manifest (or image index) of the container image the
    /// lease runs, the `sha256:` of a pinned reference or of an image layout's `index.json` entry; zero
    /// for a job that runs no image. The provider signs it, so it commits to running that image only.
    /// @param pricePerSecond Payment tokens earned per second of heartbeat-covered service.
    /// @param collateral Staking tokens locked from the provider's stake for the lease's life.
    /// @param heartbeatPeriod Seconds between the provider's on-chain heartbeats (informational).
    /// @param heartbeatTimeout Seconds after the last heartbeat past which anyone may slash.
    /// @param maxDuration Longest the lease may run, in seconds from its opening.
    /// @param expiry Last timestamp at which the quote may be used.
    /// @param nonce Single-use number chosen by the provider.
    struct Quote {
        address provider;
        address tenant;
        bytes32 jobId;
        bytes32 resources;
        bytes32 image;
        uint256 pricePerSecond;
        uint256 collateral;
        uint64 heartbeatPeriod;
        uint64 heartbeatTimeout;
        uint64 maxDuration;
        uint64 expiry;
        uint256 nonce;
    }

    /// @notice A quote's terms: everything in {Quote} but the parties and the job, which `LeaseOpened`
    /// carries once each (the provider and the job id as indexed topics). See {Quote} for each field.
    struct Terms {
        bytes32 resources;
        bytes32 image;
        uint256 pricePerSecond;
        uint256 collateral;
        uint64 heartbeatPeriod;
        uint64 heartbeatTimeout;
        uint64 maxDuration;
        uint64 expiry;
        uint256 nonce;
    }

    /// @notice A tenant's EIP-712 authorization to open a lease on a provider's quote, which the
    /// provider submits itself with `openLeaseFor` (paying the gas) after starting the job on it: a
    /// hand-off then waits for no block. Single-use through the quote's nonce.
    /// @param quote The provider's quote the tenant accepts (its EIP-712 struct, so that the tenant
    /// signs every term, and a wallet can show them).
    /// @param deposit Payment tokens to pull from the tenant (its allowance) into the lease.
    /// @param predecessor The lease of the same job this one continues, or zero; if it is still
    /// `Active` it is ended in the same transaction (slashed when slashable then, else closed).
    /// @param deadline Last timestamp at which the opening may be mined: what bounds the provider's
    /// risk of running a job whose lease never opens.
    struct Opening {
        Quote quote;
        uint256 deposit;
        uint256 predecessor;
        uint64 deadline;
    }

    /// @notice An ERC-2612 permit for the deposit, passed to `openLeaseWithPermit`.
    /// @param value The allowance it grants: the deposit, or more to leave an allowance for later
    /// pulls (a hand-off's signed opening, which the tenant then need not approve first).
    struct Permit {
        uint256 value;
        uint256 deadline;
        uint8 v;
        bytes32 r;
        bytes32 s;
    }

    /// @notice A lease as stored, packed into four slots. Timestamps are uint32 (good until 2106)
    /// and amounts uint96 so that a heartbeat reads and writes exactly one slot per lease.
    struct Record {
        // Slot 0: everything a heartbeat reads and writes.
        address provider;
        uint32 lastHeartbeat;
        uint32 endsAt;
        uint24 heartbeatTimeout;
        Status status;
        // Slot 1.
        address tenant;
        uint96 deposit;
        // Slot 2.
        uint96 pricePerSecond;
        uint96 collateral;
        uint32 settledUntil;
        uint32 maxEnd;
        // Slot 3.
        bytes32 jobId;
    }

    /// @notice What the lease manager owes a provider, and the service it was paid for, in one slot
    /// so that a claim or settlement updates both with a single write.
    struct ProviderAccount {
        uint192 claimable;
        uint64 secondsServed;
    }

    /// @notice A lease as returned by views, with the derived fields a client needs.
    struct View {
        address provider;
        address tenant;
        bytes32 jobId;
        Status status;
        bool expired;
        bool slashable;
        uint64 lastHeartbeat;
        uint64 deadline;
        uint64 endsAt;
        uint64 maxEnd;
        uint64 settledUntil;
        uint64 heartbeatTimeout;
        uint256 pricePerSecond;
        uint256 collateral;
        uint256 deposit;
        uint256 earned;
    }
}
