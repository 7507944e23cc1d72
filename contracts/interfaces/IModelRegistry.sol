// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {NodeNotActive} from "./SharedErrors.sol";

/// @title IModelRegistry
/// @notice Models published to IPFS and the shard assignments that say which node serves which blocks.
interface IModelRegistry {
    // ---------------------------------------------------------------- types
    /// @dev Slot 0 (owner, blockCount, deprecated, pricePerBlock) is all the market reads.
    struct Model {
        address owner;
        uint32 blockCount; // blocks are numbered [0, blockCount)
        bool deprecated;
        uint56 pricePerBlock; // wei a stage earns at least per block it runs for one job
        bytes32 blocksRoot; // keccak256(abi.encode(blockCids)) : commitment to every block CID
        string name;
        string manifestCid; // IPFS CID of the manifest (config, tokenizer, block CIDs, sha256s)
    }

    /// @dev One slot: a node holds at most one span of a model.
    struct Assignment {
        uint32 start; // first block, inclusive
        uint32 end; // last block, exclusive; 0 = no assignment
        bool confirmed; // the node fetched and verified the span
        address assignedBy; // the coordinator that recorded it
    }

    // ---------------------------------------------------------------- events
    event ModelRegistered(
        uint256 indexed modelId,
        address indexed owner,
        string name,
        string manifestCid,
        uint32 blockCount,
        bytes32 blocksRoot,
        uint56 pricePerBlock
    );
    event ModelDeprecated(uint256 indexed modelId);
    event ShardAssigned(
        uint256 indexed modelId, address indexed node, address indexed coordinator, uint32 start, uint32 end
    );
    event ShardConfirmed(uint256 indexed modelId, address indexed node, uint32 start, uint32 end);
    event ShardReleased(uint256 indexed modelId, address indexed node, address indexed by);

    // ---------------------------------------------------------------- errors
    error UnknownModel(uint256 modelId);
    error ModelIsDeprecated(uint256 modelId);
    error NotModelOwner(uint256 modelId, address caller, address owner);
    error InvalidBlockCount(uint32 blockCount);
    error EmptyManifestCid();
    error InvalidSpan(uint32 start, uint32 end, uint32 blockCount);
    error NoAssignment(uint256 modelId, address node);
    error AlreadyConfirmed(uint256 modelId, address node);
    error NotNodeOrCoordinator(address caller);
    error TooManyStages(uint256 count, uint256 max);

    // ---------------------------------------------------------------- views
    function blockCountOf(uint256 modelId) external view returns (uint32 blockCount);
    function routeInfo(uint256 modelId, address[] calldata nodes, uint32[] calldata starts, uint32[] calldata ends)
        external
        view
        returns (uint32 blockCount, uint56 pricePerBlock, uint256 unconfirmedMask);
    function assignmentOf(uint256 modelId, address node) external view returns (Assignment memory);
}
