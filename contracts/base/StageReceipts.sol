// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IJobMarket} from "../interfaces/IJobMarket.sol";

/// @title StageReceipts
/// @notice What a stage's receipt is and how the market checks one: an EIP-712 signature
/// (domain "shardnet", version "1", this chain and contract) by the stage's node over the job,
/// its stage on the route (index, span, fee), the coordinator that routed it and the stage's
/// hash chain (input and output hashes). Also the route's commitment (`_routeHash`): routes are
/// not stored, callers pass them back in calldata.
abstract contract StageReceipts is IJobMarket, EIP712 {
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(uint256 jobId,uint256 stage,uint32 start,uint32 end,uint128 fee,address coordinator,"
        "bytes32 inputHash,bytes32 outputHash)"
    );

    constructor() EIP712("shardnet", "1") {}

    /// @notice The EIP-712 digest a stage node signs for its receipt: the job, its stage on the
    /// route (index, span, fee), the coordinator that routed it, and the stage's hash chain.
    function receiptDigest(
        uint256 jobId,
        uint256 stage,
        Stage calldata s,
        address coordinator,
        bytes32 inputHash,
        bytes32 outputHash
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_TYPEHASH, jobId, stage, s.start, s.end, s.fee, coordinator, inputHash, outputHash
                )
            )
        );
    }

    /// @dev Checks receipts[i] for stages[i], i < receipts.length: signer and input/output chain.
    function _verifyReceipts(uint256 jobId, address coordinator, Stage[] calldata stages, Receipt[] calldata receipts)
        internal
        view
    {
        for (uint256 i; i < receipts.length; ++i) {
            Receipt calldata r = receipts[i];
            if (i != 0 && r.inputHash != receipts[i - 1].outputHash) revert BrokenReceiptChain(jobId, i);
            _verifyReceipt(jobId, coordinator, stages[i], i, r);
        }
    }

    /// @dev Reverts unless `r` is signed by stage `i`'s node for that stage of this route. A
    /// signature that does not recover (address zero) never matches a stage.
    function _verifyReceipt(uint256 jobId, address coordinator, Stage calldata s, uint256 i, Receipt calldata r)
        internal
        view
    {
        bytes32 digest = receiptDigest(jobId, i, s, coordinator, r.inputHash, r.outputHash);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, r.signature);
        if (err != ECDSA.RecoverError.NoError || signer == address(0) || signer != s.node) {
            revert InvalidReceiptSigner(jobId, i, s.node, signer);
        }
    }

    /// @dev The commitment a job keeps to its route: the coordinator that routed it and the stages.
    function _routeHash(address coordinator, Stage[] calldata stages) internal pure returns (bytes20) {
        return bytes20(keccak256(abi.encode(coordinator, stages)));
    }

    function _onRoute(address node, Stage[] calldata stages) internal pure returns (bool) {
        for (uint256 i; i < stages.length; ++i) {
            if (stages[i].node == node) return true;
        }
        return false;
    }
}
