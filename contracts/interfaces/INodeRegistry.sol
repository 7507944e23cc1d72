// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {NothingToWithdraw, TransferFailed} from "./SharedErrors.sol";

/// @title INodeRegistry
/// @notice Staked node operators: registration, hardware profile, two-step unstake, slashing.
interface INodeRegistry {
    // ---------------------------------------------------------------- types
    /// @notice What an operator declares about its machine. Measured figures live off-chain.
    struct Hardware {
        uint32 memoryMb; // usable accelerator/CPU memory for blocks, MiB
        uint32 computeScore; // relative compute throughput, higher is faster
        uint32 bandwidthMbps; // network bandwidth, Mbit/s
    }

    /// @dev Slot 0 (stake, unlockAt, registeredAt) is all `isActive` reads; slot 1 holds the
    /// pending unstake and the failed-stage counter (delivered stages are counted from events).
    struct Node {
        uint128 stake; // wei backing the node
        uint64 unlockAt; // unix time when pendingUnstake may be withdrawn
        uint64 registeredAt; // unix time of registration, 0 = not registered
        uint128 pendingUnstake; // wei requested out, still slashable until withdrawn
        uint32 jobsFailed; // stages it failed: expired, rerouted away, aborted, audits not answered
        Hardware hardware;
        string endpoint; // data-plane base URL, e.g. http://10.0.0.5:7001
        bytes dataKey; // data-plane public key (the address or pubkey that signs requests)
    }

    // ---------------------------------------------------------------- events
    event NodeRegistered(
        address indexed node, uint256 stake, string endpoint, Hardware hardware, bytes dataKey
    );
    event StakeAdded(address indexed node, uint256 amount, uint256 stake);
    event ProfileUpdated(address indexed node, string endpoint, Hardware hardware, bytes dataKey);
    event UnstakeRequested(address indexed node, uint256 amount, uint256 stake, uint64 unlockAt);
    event UnstakeWithdrawn(address indexed node, uint256 amount);
    event NodeSlashed(address indexed node, address indexed by, uint256 amount, string reason);
    event FailureRecorded(address indexed node, uint256 indexed jobId, address indexed by);
    event MarketSet(address indexed market);
    event ParametersSet(uint256 minStake, uint64 unstakeCooldown, address treasury);

    // ---------------------------------------------------------------- errors
    error AlreadyRegistered(address node);
    error NotRegistered(address node);
    error InsufficientStake(address node, uint256 have, uint256 need);
    error InvalidHardware(string field);
    error EmptyEndpoint();
    error ZeroAmount();
    error UnstakeExceedsStake(address node, uint256 requested, uint256 stake);
    error UnstakeLeavesDust(address node, uint256 remaining, uint256 minStake);
    error CooldownNotOver(address node, uint64 unlockAt, uint64 nowTs);
    error MarketAlreadySet(address market);
    error TooManyNodes(uint256 count, uint256 max);

    // ---------------------------------------------------------------- judges
    /// @notice Each of `nodes` failed a stage of job `jobId` (or an audit of it).
    function recordFailures(uint256 jobId, address[] calldata nodes) external;
    /// @notice Take up to `amount` from `node` (active stake first, then pending unstake) and send
    /// it to the caller; returns what was taken (less than `amount` when the stake runs out).
    function slash(address node, uint256 amount, string calldata reason) external returns (uint256 taken);

    // ---------------------------------------------------------------- views
    function isActive(address node) external view returns (bool);
    function inactiveMask(address[] calldata nodes) external view returns (uint256);
    function minStake() external view returns (uint256);
    function treasury() external view returns (address);
    /// @notice Up to `count` distinct active nodes other than `exclude`, drawn uniformly by `seed`.
    function drawActive(bytes32 seed, uint256 count, address exclude) external view returns (address[] memory);
}
