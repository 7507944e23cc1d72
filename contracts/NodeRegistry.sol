// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {NothingToWithdraw, TransferFailed} from "./interfaces/SharedErrors.sol";

/// @title NodeRegistry
/// @notice Node operators stake native ETH to serve model blocks. Unstaking is two-step
/// (request, then withdraw after `unstakeCooldown`), and stake cannot be requested out while
/// the node sits on the route of an open job. Each node's reputation (open, delivered and failed
/// stages) lives here too; only the market records it, as routes open and close.
/// @dev Slashed funds leave the node's stake (then its pending unstake) and are credited to
/// `treasury`, which withdraws them with `withdrawSlashed` (pull payment). Invariant:
/// address(this).balance == sum(stake) + sum(pendingUnstake) + slashedBalance.
///
/// | who | may |
/// | --- | --- |
/// | anyone | register (with stake >= minStake), add stake, update its profile, unstake in two steps |
/// | the market | record routes opening and closing (`openRoute`, `closeRoute`), slash |
/// | a verifier (SLASHER_ROLE) | slash |
/// | the treasury's admin | set parameters, wire the market once; anyone sends slashed funds to the treasury |
contract NodeRegistry is INodeRegistry, AccessControl, ReentrancyGuardTransient {
    // ---------------------------------------------------------------- constants
    /// @notice May slash: the market, and verifiers (re-execution committees).
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");

    // ---------------------------------------------------------------- storage
    uint256 public minStake;
    uint64 public unstakeCooldown; // seconds
    address public treasury;
    address public market; // the JobMarket: records routes (reputation, open-job locks) and may slash
    uint256 public slashedBalance; // wei owed to the treasury
    mapping(address => Node) private _nodes;
    address[] public nodeList;

    // ---------------------------------------------------------------- modifiers
    modifier onlyMarket() {
        if (msg.sender != market) revert NotMarket(msg.sender);
        _;
    }

    // ---------------------------------------------------------------- constructor
    constructor(address admin, uint256 minStake_, uint64 unstakeCooldown_, address treasury_) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        minStake = minStake_;
        unstakeCooldown = unstakeCooldown_;
        treasury = treasury_;
        emit ParametersSet(minStake_, unstakeCooldown_, treasury_);
    }

    // ---------------------------------------------------------------- admin
    /// @notice Wire the market once; it becomes a slasher and the source of open-job locks.
    function setMarket(address market_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (market != address(0)) revert MarketAlreadySet(market);
        market = market_;
        _grantRole(SLASHER_ROLE, market_);
        emit MarketSet(market_);
    }

    function setParameters(uint256 minStake_, uint64 unstakeCooldown_, address treasury_)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        minStake = minStake_;
        unstakeCooldown = unstakeCooldown_;
        treasury = treasury_;
        emit ParametersSet(minStake_, unstakeCooldown_, treasury_);
    }

    // ---------------------------------------------------------------- operators
    /// @notice Register the caller as a node with `msg.value` as its stake.
    function register(string calldata endpoint, Hardware calldata hardware, bytes calldata dataKey)
        external
        payable
    {
        Node storage n = _nodes[msg.sender];
        if (n.registeredAt != 0) revert AlreadyRegistered(msg.sender);
        if (msg.value < minStake) revert InsufficientStake(msg.sender, msg.value, minStake);
        _checkProfile(endpoint, hardware);
        n.stake = uint128(msg.value);
        n.registeredAt = uint64(block.timestamp);
        n.hardware = hardware;
        n.endpoint = endpoint;
        n.dataKey = dataKey;
        nodeList.push(msg.sender);
        emit NodeRegistered(msg.sender, msg.value, endpoint, hardware, dataKey);
    }

    /// @notice Add `msg.value` to the caller's stake.
    function addStake() external payable {
        Node storage n = _registered(msg.sender);
        if (msg.value == 0) revert ZeroAmount();
        n.stake += uint128(msg.value);
        emit StakeAdded(msg.sender, msg.value, n.stake);
    }

    function updateProfile(string calldata endpoint, Hardware calldata hardware, bytes calldata dataKey) external {
        Node storage n = _registered(msg.sender);
        _checkProfile(endpoint, hardware);
        n.hardware = hardware;
        n.endpoint = endpoint;
        n.dataKey = dataKey;
        emit ProfileUpdated(msg.sender, endpoint, hardware, dataKey);
    }

    /// @notice Step one of unstaking: move `amount` out of the active stake. It stays slashable
    /// until withdrawn. What remains must be 0 (leaving) or at least `minStake`.
    function requestUnstake(uint256 amount) external {
        Node storage n = _registered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        if (amount > n.stake) revert UnstakeExceedsStake(msg.sender, amount, n.stake);
        if (n.openJobs != 0) revert UnstakeWhileOnOpenRoute(msg.sender, n.openJobs);
        uint256 remaining = n.stake - amount;
        if (remaining != 0 && remaining < minStake) revert UnstakeLeavesDust(msg.sender, remaining, minStake);
        n.stake = uint128(remaining);
        n.pendingUnstake += uint128(amount);
        n.unlockAt = uint64(block.timestamp) + unstakeCooldown;
        emit UnstakeRequested(msg.sender, amount, remaining, n.unlockAt);
    }

    /// @notice Step two: after the cooldown, send the pending unstake to the caller.
    function withdrawUnstaked() external nonReentrant {
        Node storage n = _registered(msg.sender);
        uint256 amount = n.pendingUnstake;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp < n.unlockAt) revert CooldownNotOver(msg.sender, n.unlockAt, uint64(block.timestamp));
        n.pendingUnstake = 0;
        emit UnstakeWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ---------------------------------------------------------------- the market
    /// @inheritdoc INodeRegistry
    function openRoute(address[] calldata nodes) external onlyMarket {
        for (uint256 i; i < nodes.length; ++i) {
            ++_nodes[nodes[i]].openJobs;
        }
    }

    /// @inheritdoc INodeRegistry
    function closeRoute(address[] calldata nodes, bool delivered, address[] calldata failed) external onlyMarket {
        for (uint256 i; i < nodes.length; ++i) {
            Node storage n = _nodes[nodes[i]];
            --n.openJobs;
            if (delivered) ++n.jobsDone;
        }
        for (uint256 i; i < failed.length; ++i) {
            ++_nodes[failed[i]].jobsFailed;
        }
    }

    // ---------------------------------------------------------------- slashing
    /// @notice Take `amount` from `node` (active stake first, then pending unstake) and credit
    /// it to the treasury. Only the market or a verifier.
    function slash(address node, uint256 amount, string calldata reason) external onlyRole(SLASHER_ROLE) {
        Node storage n = _registered(node);
        if (amount == 0) revert ZeroAmount();
        uint256 available = uint256(n.stake) + n.pendingUnstake;
        if (amount > available) revert SlashExceedsStake(node, amount, available);
        uint256 fromStake = amount <= n.stake ? amount : n.stake;
        n.stake -= uint128(fromStake);
        n.pendingUnstake -= uint128(amount - fromStake);
        slashedBalance += amount;
        emit NodeSlashed(node, msg.sender, amount, reason);
    }

    /// @notice Send everything slashed so far to the treasury.
    function withdrawSlashed() external nonReentrant {
        uint256 amount = slashedBalance;
        if (amount == 0) revert NothingToWithdraw(treasury);
        slashedBalance = 0;
        emit SlashedFundsWithdrawn(treasury, amount);
        _send(treasury, amount);
    }

    // ---------------------------------------------------------------- views
    function isActive(address node) external view returns (bool) {
        Node storage n = _nodes[node];
        return n.registeredAt != 0 && n.stake >= minStake && n.stake != 0;
    }

    /// @notice Bit i set when nodes[i] is not active (one call for a whole route).
    function inactiveMask(address[] calldata nodes) external view returns (uint256 mask) {
        if (nodes.length > 256) revert TooManyNodes(nodes.length, 256);
        uint256 need = minStake;
        for (uint256 i; i < nodes.length; ++i) {
            Node storage n = _nodes[nodes[i]];
            if (n.registeredAt == 0 || n.stake < need || n.stake == 0) mask |= 1 << i;
        }
    }

    function getNode(address node) external view returns (Node memory) {
        return _nodes[node];
    }

    function nodeCount() external view returns (uint256) {
        return nodeList.length;
    }

    /// @notice (jobs done, jobs failed, open jobs) as recorded by the market.
    function reputationOf(address node) external view returns (uint32 done, uint32 failed, uint32 open) {
        Node storage n = _nodes[node];
        return (n.jobsDone, n.jobsFailed, n.openJobs);
    }

    // ---------------------------------------------------------------- internal
    function _registered(address node) private view returns (Node storage n) {
        n = _nodes[node];
        if (n.registeredAt == 0) revert NotRegistered(node);
    }

    function _checkProfile(string calldata endpoint, Hardware calldata hardware) private pure {
        if (bytes(endpoint).length == 0) revert EmptyEndpoint();
        if (hardware.memoryMb == 0) revert InvalidHardware("memoryMb");
        if (hardware.computeScore == 0) revert InvalidHardware("computeScore");
        if (hardware.bandwidthMbps == 0) revert InvalidHardware("bandwidthMbps");
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
