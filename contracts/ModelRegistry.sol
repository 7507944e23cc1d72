// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {NodeNotActive} from "./interfaces/SharedErrors.sol";
import {AddressArrays} from "./libraries/AddressArrays.sol";

/// @title ModelRegistry
/// @notice Models (their IPFS manifests) and shard assignments: which node serves which
/// consecutive blocks. Coordinators assign, nodes confirm once they fetched and verified.
/// Publishing is role-gated (PUBLISHER_ROLE, granted by the admin): every registered model costs
/// coordinators gas to assign, so registering one is not free for anyone to spam.
/// @dev Model ids start at 1. A node holds at most one span per model.
///
/// | who | may |
/// | --- | --- |
/// | a publisher (PUBLISHER_ROLE; the admin has it) | register a model |
/// | the model's owner | deprecate it |
/// | a coordinator (COORDINATOR_ROLE) | assign spans to active nodes, release any span |
/// | the assigned node | confirm its span, release it |
contract ModelRegistry is IModelRegistry, AccessControl {
    using AddressArrays for address[];

    // ---------------------------------------------------------------- constants
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    bytes32 public constant PUBLISHER_ROLE = keccak256("PUBLISHER_ROLE");

    // ---------------------------------------------------------------- immutables
    INodeRegistry public immutable nodeRegistry;

    // ---------------------------------------------------------------- storage
    uint256 public modelCount;
    mapping(uint256 => Model) private _models;
    mapping(uint256 => mapping(address => Assignment)) private _assignments;
    mapping(uint256 => address[]) private _assignedNodes; // every node ever assigned, per model

    // ---------------------------------------------------------------- constructor
    constructor(address admin, INodeRegistry nodeRegistry_) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PUBLISHER_ROLE, admin);
        nodeRegistry = nodeRegistry_;
    }

    // ---------------------------------------------------------------- model owners
    /// @notice Record a model whose shards are on IPFS. Returns its id.
    function registerModel(
        string calldata name,
        string calldata manifestCid,
        uint32 blockCount,
        bytes32 blocksRoot,
        uint56 pricePerBlock
    ) external onlyRole(PUBLISHER_ROLE) returns (uint256 modelId) {
        if (blockCount == 0) revert InvalidBlockCount(blockCount);
        if (bytes(manifestCid).length == 0) revert EmptyManifestCid();
        modelId = ++modelCount;
        _models[modelId] = Model({
            owner: msg.sender,
            blockCount: blockCount,
            deprecated: false,
            pricePerBlock: pricePerBlock,
            blocksRoot: blocksRoot,
            name: name,
            manifestCid: manifestCid
        });
        emit ModelRegistered(modelId, msg.sender, name, manifestCid, blockCount, blocksRoot, pricePerBlock);
    }

    /// @notice Stop new jobs for a model. Jobs already posted settle as usual.
    function deprecateModel(uint256 modelId) external {
        Model storage m = _model(modelId);
        if (m.owner != msg.sender) revert NotModelOwner(modelId, msg.sender, m.owner);
        if (m.deprecated) revert ModelIsDeprecated(modelId);
        m.deprecated = true;
        emit ModelDeprecated(modelId);
    }

    // ---------------------------------------------------------------- shard assignments
    /// @notice Assign blocks [start, end) of a model to an active node (replaces its old span).
    function assignShard(uint256 modelId, address node, uint32 start, uint32 end)
        external
        onlyRole(COORDINATOR_ROLE)
    {
        Model storage m = _model(modelId);
        if (m.deprecated) revert ModelIsDeprecated(modelId);
        if (start >= end || end > m.blockCount) revert InvalidSpan(start, end, m.blockCount);
        if (!nodeRegistry.isActive(node)) revert NodeNotActive(node);
        Assignment storage a = _assignments[modelId][node];
        if (a.end == 0 && a.assignedBy == address(0)) _assignedNodes[modelId].push(node);
        _assignments[modelId][node] = Assignment({start: start, end: end, confirmed: false, assignedBy: msg.sender});
        emit ShardAssigned(modelId, node, msg.sender, start, end);
    }

    /// @notice Called by the node once it fetched, verified and loaded its span.
    function confirmShard(uint256 modelId) external {
        _model(modelId);
        Assignment storage a = _assignments[modelId][msg.sender];
        if (a.end == 0) revert NoAssignment(modelId, msg.sender);
        if (a.confirmed) revert AlreadyConfirmed(modelId, msg.sender);
        a.confirmed = true;
        emit ShardConfirmed(modelId, msg.sender, a.start, a.end);
    }

    /// @notice Drop a node's span, by the node itself or any coordinator.
    function releaseShard(uint256 modelId, address node) external {
        if (msg.sender != node && !hasRole(COORDINATOR_ROLE, msg.sender)) revert NotNodeOrCoordinator(msg.sender);
        Assignment storage a = _assignments[modelId][node];
        if (a.end == 0) revert NoAssignment(modelId, node);
        a.start = 0;
        a.end = 0;
        a.confirmed = false;
        emit ShardReleased(modelId, node, msg.sender);
    }

    // ---------------------------------------------------------------- views
    function getModel(uint256 modelId) external view returns (Model memory) {
        return _model(modelId);
    }

    /// @notice Block count of a model that takes jobs, reverting for unknown or deprecated models.
    function blockCountOf(uint256 modelId) external view returns (uint32) {
        Model storage m = _model(modelId);
        if (m.deprecated) revert ModelIsDeprecated(modelId);
        return m.blockCount;
    }

    /// @notice For the market, in one call: block count and price of an active model, and a bit
    /// per stage (bit i set) when [starts[i], ends[i]) is not inside a confirmed span of nodes[i].
    function routeInfo(uint256 modelId, address[] calldata nodes, uint32[] calldata starts, uint32[] calldata ends)
        external
        view
        returns (uint32 blockCount, uint56 pricePerBlock, uint256 unconfirmedMask)
    {
        Model storage m = _model(modelId);
        if (m.deprecated) revert ModelIsDeprecated(modelId);
        if (nodes.length > 256) revert TooManyStages(nodes.length, 256);
        for (uint256 i; i < nodes.length; ++i) {
            Assignment storage a = _assignments[modelId][nodes[i]];
            if (!a.confirmed || starts[i] < a.start || ends[i] > a.end) unconfirmedMask |= 1 << i;
        }
        return (m.blockCount, m.pricePerBlock, unconfirmedMask);
    }

    function assignmentOf(uint256 modelId, address node) external view returns (Assignment memory) {
        return _assignments[modelId][node];
    }

    /// @notice Nodes with a confirmed span covering `blockIndex`.
    function nodesForBlock(uint256 modelId, uint32 blockIndex) external view returns (address[] memory nodes) {
        address[] storage all = _assignedNodes[modelId];
        nodes = new address[](all.length);
        uint256 k;
        for (uint256 i; i < all.length; ++i) {
            Assignment storage a = _assignments[modelId][all[i]];
            if (a.confirmed && a.start <= blockIndex && blockIndex < a.end) nodes[k++] = all[i];
        }
        return nodes.truncate(k);
    }

    function assignedNodes(uint256 modelId) external view returns (address[] memory) {
        return _assignedNodes[modelId];
    }

    // ---------------------------------------------------------------- internal
    function _model(uint256 modelId) private view returns (Model storage m) {
        m = _models[modelId];
        if (m.blockCount == 0) revert UnknownModel(modelId);
    }
}
