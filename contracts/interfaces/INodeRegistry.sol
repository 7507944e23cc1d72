// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {NothingToWithdraw, TransferFailed} from "./SharedErrors.sol";
import {IJobMarket} from "./IJobMarket.sol";

/// @title INodeRegistry
/// @notice Staked node operators: registration, hardware profile, two-step unstake, slashing;
/// coordinators' bonds, and the contest a node replaced by a reroute may open against them.
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

    /// @notice A coordinator's bond: it must hold at least `minCoordinatorBond` to reroute away
    /// from a node, and it pays the fine when that node proves it was live. Unbonding is two-step, with
    /// the nodes' cooldown, so a coordinator cannot leave before its reroutes can be contested.
    struct Bond {
        uint128 amount;
        uint128 pendingUnbond; // requested out, still fineable until withdrawn
        uint64 unlockAt;
    }

    /// @dev A stage a reroute took from its node, contestable by that node until `contestUntil`.
    struct Replacement {
        address coordinator;
        uint40 contestUntil;
        uint8 stage;
        bytes32 stageHash; // keccak256(abi.encode(the old route's Stage))
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
    event MinCoordinatorBondSet(uint256 minBond);
    event CoordinatorBonded(address indexed coordinator, uint256 amount, uint256 bond);
    event UnbondRequested(address indexed coordinator, uint256 amount, uint256 bond, uint64 unlockAt);
    event UnbondWithdrawn(address indexed coordinator, uint256 amount);
    /// @notice A reroute replaced `node` at `stage` of job `jobId`; it was recorded failed, and it
    /// may contest that until `contestUntil`.
    event StageReplaced(
        uint256 indexed jobId, address indexed node, address indexed coordinator, uint256 stage, uint40 contestUntil
    );
    /// @notice `node` proved it was live after `coordinator` rerouted it away: its failure is
    /// struck off, and `fine` wei of the coordinator's bond went to the treasury.
    event RerouteContested(uint256 indexed jobId, address indexed node, address indexed coordinator, uint256 fine);

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
    error CoordinatorNotBonded(address coordinator, uint256 bond, uint256 minBond);
    error UnbondExceedsBond(address coordinator, uint256 requested, uint256 bond);
    error NotReplaced(uint256 jobId, address node);
    error ContestWindowClosed(uint256 jobId, uint256 closedAt);
    error ReplacementMismatch(uint256 jobId, uint256 stage);
    error BadContestReceipt(uint256 jobId, address node, address recovered);

    // ---------------------------------------------------------------- judges
    /// @notice Each of `nodes` failed a stage of job `jobId` (or an audit of it).
    function recordFailures(uint256 jobId, address[] calldata nodes) external;
    /// @notice Take up to `amount` from `node` (active stake first, then pending unstake) and send
    /// it to the caller; returns what was taken (less than `amount` when the stake runs out).
    function slash(address node, uint256 amount, string calldata reason) external returns (uint256 taken);
    /// @notice A reroute by `coordinator` took stage i of `stages` (the old route) from its node
    /// for each bit i of `replacedMask`: record each failed, contestable for CONTEST_WINDOW.
    /// Reverts CoordinatorNotBonded unless the coordinator holds the minimum bond.
    function recordReplaced(uint256 jobId, address coordinator, IJobMarket.Stage[] calldata stages, uint256 replacedMask)
        external;

    // ---------------------------------------------------------------- views
    function isActive(address node) external view returns (bool);
    function inactiveMask(address[] calldata nodes) external view returns (uint256);
    function minStake() external view returns (uint128);
    function treasury() external view returns (address);
    /// @notice Up to `count` distinct active nodes other than `exclude`, drawn uniformly by `seed`.
    function drawActive(bytes32 seed, uint256 count, address exclude) external view returns (address[] memory);
}
