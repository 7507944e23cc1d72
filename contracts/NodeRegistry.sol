// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {NothingToWithdraw, TransferFailed} from "./interfaces/SharedErrors.sol";

/// @dev What the registry reads from the market: its settlement horizon and receipt digests.
interface IJobMarketHorizon {
    function settlementHorizon() external view returns (uint256);
}

/// @title NodeRegistry
/// @notice Node operators stake native ETH to serve model blocks. Unstaking is two-step
/// (request, then withdraw after a cooldown). The cooldown is never shorter than the market's
/// settlement horizon (the longest job, its claim window and its audit window), so stake asked
/// out stays slashable until every job the node could be on has been checked. Failed stages are
/// counted here (the market and the verifier record them); delivered stages are counted from
/// the market's events, so a job that goes well writes nothing here.
/// @dev Slashed funds leave the node's stake (then its pending unstake) and go to the slasher
/// (the Verifier), which pays the wronged client, the committee and the treasury. Invariant:
/// address(this).balance == sum(stake) + sum(pendingUnstake) + sum(bond) + sum(pendingUnbond).
///
/// Coordinators bond here too. Whether a node answered a coordinator's probes cannot be proven
/// on-chain, so a reroute is optimistic: it takes effect at once and records each replaced node
/// failed, and a replaced node that is live proves it on-chain within CONTEST_WINDOW by sending
/// its own receipt for its stage of the old route. Its failure is then struck off and the
/// coordinator is fined twice that stage's fee (more than the fee it could move to a node of its
/// own), paid to the treasury, not to the node, so a node gains nothing by stalling its data
/// plane while staying live on-chain.
///
/// | who | may |
/// | --- | --- |
/// | anyone | register (with stake >= minStake), add stake, update its profile, unstake in two steps |
/// | anyone (a coordinator) | bond, unbond in two steps (the nodes' cooldown) |
/// | a judge (SLASHER_ROLE: the market, the verifier) | record failed stages (`recordFailures`) |
/// | the market (SLASHER_ROLE) | record stages a reroute replaced (`recordReplaced`) |
/// | a replaced node | contest its replacement with its receipt, within CONTEST_WINDOW |
/// | the verifier (SLASHER_ROLE) | slash; the slashed ETH is sent to it |
/// | the admin | set parameters and the minimum coordinator bond, wire the market once |
contract NodeRegistry is INodeRegistry, AccessControl, ReentrancyGuardTransient {
    // ---------------------------------------------------------------- constants
    /// @notice May record failed stages and slash: the market and the verifier.
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");
    /// @notice How long a node replaced by a reroute has to contest it (shorter than any
    /// cooldown: the market's settlement horizon includes a claim window this long).
    uint256 public constant CONTEST_WINDOW = 10 minutes;
    /// @notice A contested reroute costs its coordinator this many times the replaced stage's fee.
    uint256 public constant REROUTE_FINE_MULTIPLE = 2;

    // ---------------------------------------------------------------- storage
    uint128 public minStake;
    /// @notice What a coordinator must hold in bond to reroute away from a node (which may be fined).
    uint128 public minCoordinatorBond;
    uint64 public unstakeCooldown; // seconds
    address public treasury;
    address public market; // the JobMarket: its settlement horizon bounds the unstake cooldown
    mapping(address => Node) private _nodes;
    address[] public nodeList;
    mapping(address => Bond) private _bonds;
    mapping(bytes32 => Replacement) private _replaced; // keccak256(jobId, node)

    // ---------------------------------------------------------------- constructor
    constructor(address admin, uint256 minStake_, uint64 unstakeCooldown_, address treasury_) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        minStake = SafeCast.toUint128(minStake_);
        unstakeCooldown = unstakeCooldown_;
        treasury = treasury_;
        emit ParametersSet(minStake_, unstakeCooldown_, treasury_);
    }

    // ---------------------------------------------------------------- admin
    /// @notice Wire the market once; it may record failed stages, and its settlement horizon
    /// becomes the shortest unstake cooldown.
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
        minStake = SafeCast.toUint128(minStake_);
        unstakeCooldown = unstakeCooldown_;
        treasury = treasury_;
        emit ParametersSet(minStake_, unstakeCooldown_, treasury_);
    }

    /// @notice Coordinators must hold at least `minBond` wei of bond to reroute away from a node.
    function setMinCoordinatorBond(uint256 minBond) external onlyRole(DEFAULT_ADMIN_ROLE) {
        minCoordinatorBond = SafeCast.toUint128(minBond);
        emit MinCoordinatorBondSet(minBond);
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
    /// until withdrawn, after `cooldown()`: every job the node may be on settles and is checked
    /// before then. What remains must be 0 (leaving) or at least `minStake`.
    function requestUnstake(uint256 amount) external {
        Node storage n = _registered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        if (amount > n.stake) revert UnstakeExceedsStake(msg.sender, amount, n.stake);
        uint256 remaining = n.stake - amount;
        if (remaining != 0 && remaining < minStake) revert UnstakeLeavesDust(msg.sender, remaining, minStake);
        n.stake = uint128(remaining);
        n.pendingUnstake += uint128(amount);
        n.unlockAt = uint64(block.timestamp + cooldown());
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

    // ---------------------------------------------------------------- coordinators
    /// @notice Add `msg.value` to the caller's coordinator bond.
    function bondCoordinator() external payable {
        if (msg.value == 0) revert ZeroAmount();
        Bond storage b = _bonds[msg.sender];
        b.amount += uint128(msg.value);
        emit CoordinatorBonded(msg.sender, msg.value, b.amount);
    }

    /// @notice Step one of unbonding: `amount` stays fineable until withdrawn after `cooldown()`.
    function requestUnbond(uint256 amount) external {
        Bond storage b = _bonds[msg.sender];
        if (amount == 0) revert ZeroAmount();
        if (amount > b.amount) revert UnbondExceedsBond(msg.sender, amount, b.amount);
        b.amount -= uint128(amount);
        b.pendingUnbond += uint128(amount);
        b.unlockAt = uint64(block.timestamp + cooldown());
        emit UnbondRequested(msg.sender, amount, b.amount, b.unlockAt);
    }

    /// @notice Step two: after the cooldown, send the pending unbond to the caller.
    function withdrawUnbonded() external nonReentrant {
        Bond storage b = _bonds[msg.sender];
        uint256 amount = b.pendingUnbond;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp < b.unlockAt) revert CooldownNotOver(msg.sender, b.unlockAt, uint64(block.timestamp));
        b.pendingUnbond = 0;
        emit UnbondWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ---------------------------------------------------------------- replaced nodes
    /// @notice The caller, replaced at `stage` of job `jobId` by a reroute less than
    /// CONTEST_WINDOW ago, proves it is live: with its own receipt for that stage of the old route
    /// (`s`, as the JobRerouted event before it published it). Its failure is struck off, and the
    /// coordinator that rerouted pays REROUTE_FINE_MULTIPLE times the stage's fee from its bond
    /// (as much as it has) to the treasury. A node contests each replacement once.
    function contestReplacement(
        uint256 jobId,
        uint256 stage,
        IJobMarket.Stage calldata s,
        IJobMarket.Receipt calldata receipt
    ) external nonReentrant {
        bytes32 key = keccak256(abi.encode(jobId, msg.sender));
        Replacement memory r = _replaced[key];
        if (r.coordinator == address(0)) revert NotReplaced(jobId, msg.sender);
        if (block.timestamp > r.contestUntil) revert ContestWindowClosed(jobId, r.contestUntil);
        if (stage != r.stage || s.node != msg.sender || keccak256(abi.encode(s)) != r.stageHash) {
            revert ReplacementMismatch(jobId, stage);
        }
        bytes32 digest = IJobMarket(market).receiptDigest(
            jobId, stage, s, r.coordinator, receipt.inputHash, receipt.outputHash
        );
        (address signer,,) = ECDSA.tryRecover(digest, receipt.signature);
        if (signer != msg.sender) revert BadContestReceipt(jobId, msg.sender, signer);
        delete _replaced[key];
        Node storage n = _nodes[msg.sender];
        if (n.jobsFailed != 0) --n.jobsFailed;
        Bond storage b = _bonds[r.coordinator];
        uint256 fine;
        (b.amount, b.pendingUnbond, fine) = _take(b.amount, b.pendingUnbond, REROUTE_FINE_MULTIPLE * s.fee);
        emit RerouteContested(jobId, msg.sender, r.coordinator, fine);
        if (fine != 0) _send(treasury, fine);
    }

    /// @notice What a replaced node may still contest: zero coordinator when nothing.
    function replacementOf(uint256 jobId, address node) external view returns (Replacement memory) {
        return _replaced[keccak256(abi.encode(jobId, node))];
    }

    function coordinatorBondOf(address coordinator) external view returns (Bond memory) {
        return _bonds[coordinator];
    }

    // ---------------------------------------------------------------- judges
    /// @inheritdoc INodeRegistry
    function recordFailures(uint256 jobId, address[] calldata nodes) external onlyRole(SLASHER_ROLE) {
        for (uint256 i; i < nodes.length; ++i) {
            ++_nodes[nodes[i]].jobsFailed;
            emit FailureRecorded(nodes[i], jobId, msg.sender);
        }
    }

    /// @inheritdoc INodeRegistry
    function recordReplaced(uint256 jobId, address coordinator, IJobMarket.Stage[] calldata stages, uint256 replacedMask)
        external
        onlyRole(SLASHER_ROLE)
    {
        // only a reroute can be fined, so it (not routing, which the market checks in full) needs the bond
        uint256 bond = _bonds[coordinator].amount;
        if (bond < minCoordinatorBond) revert CoordinatorNotBonded(coordinator, bond, minCoordinatorBond);
        uint40 until = uint40(block.timestamp + CONTEST_WINDOW);
        for (uint256 i; i < stages.length; ++i) {
            if (replacedMask & (1 << i) == 0) continue;
            address node = stages[i].node;
            ++_nodes[node].jobsFailed;
            _replaced[keccak256(abi.encode(jobId, node))] =
                Replacement(coordinator, until, uint8(i), keccak256(abi.encode(stages[i])));
            emit FailureRecorded(node, jobId, msg.sender);
            emit StageReplaced(jobId, node, coordinator, i, until);
        }
    }

    /// @inheritdoc INodeRegistry
    function slash(address node, uint256 amount, string calldata reason)
        external
        onlyRole(SLASHER_ROLE)
        nonReentrant
        returns (uint256 taken)
    {
        Node storage n = _registered(node);
        if (amount == 0) revert ZeroAmount();
        (n.stake, n.pendingUnstake, taken) = _take(n.stake, n.pendingUnstake, amount);
        emit NodeSlashed(node, msg.sender, taken, reason);
        if (taken != 0) _send(msg.sender, taken);
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

    /// @notice Stages the node failed (expired, rerouted away, aborted, or an audit it did not
    /// answer), as the market and the verifier recorded them.
    function failuresOf(address node) external view returns (uint32) {
        return _nodes[node].jobsFailed;
    }

    /// @notice How long an unstake request waits: the admin's cooldown, but never less than the
    /// market's settlement horizon.
    function cooldown() public view returns (uint256) {
        uint256 horizon = market == address(0) ? 0 : IJobMarketHorizon(market).settlementHorizon();
        return unstakeCooldown > horizon ? unstakeCooldown : horizon;
    }

    /// @inheritdoc INodeRegistry
    function drawActive(bytes32 seed, uint256 count, address exclude)
        external
        view
        returns (address[] memory drawn)
    {
        uint256 total = nodeList.length;
        address[] memory pool = new address[](total);
        uint256 n;
        uint256 need = minStake;
        for (uint256 i; i < total; ++i) {
            address a = nodeList[i];
            uint256 stake = _nodes[a].stake;
            if (a != exclude && stake >= need && stake != 0) pool[n++] = a;
        }
        if (count > n) count = n;
        drawn = new address[](count);
        for (uint256 i; i < count; ++i) {
            // partial Fisher-Yates over the eligible nodes
            uint256 j = i + uint256(keccak256(abi.encode(seed, i))) % (n - i);
            (pool[i], pool[j]) = (pool[j], pool[i]);
            drawn[i] = pool[i];
        }
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

    /// @dev Up to `amount` out of `active`, then out of `pending` (what was asked out stays at
    /// stake until withdrawn): the new balances and what was taken. Slashes and fines share it.
    function _take(uint128 active, uint128 pending, uint256 amount)
        private
        pure
        returns (uint128, uint128, uint256 taken)
    {
        uint256 available = uint256(active) + pending;
        taken = amount < available ? amount : available;
        uint256 fromActive = taken <= active ? taken : active;
        return (active - uint128(fromActive), pending - uint128(taken - fromActive), taken);
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
