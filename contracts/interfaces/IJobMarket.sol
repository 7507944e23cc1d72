// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {NodeNotActive, NothingToWithdraw, TransferFailed} from "./SharedErrors.sol";

/// @title IJobMarket
/// @notice Inference jobs with escrow: post, route through staked nodes, pay per signed receipt.
interface IJobMarket {
    // ---------------------------------------------------------------- types
    enum Status {
        None,
        Posted,
        Routed,
        Completed,
        Expired,
        Cancelled,
        Aborted
    }

    /// @notice One hop of a route: `node` runs blocks [start, end) for `fee` wei.
    struct Stage {
        address node;
        uint32 start;
        uint32 end;
        uint128 fee;
    }

    /// @notice What a stage node signs (EIP-712 type `Receipt`), minus the fields the contract
    /// already knows (jobId, stage index, span, fee, the routing coordinator): a receipt signed
    /// for one route never pays on another. `inputHash`/`outputHash` are keccak256 of the
    /// activations that entered and left the stage; the last stage's `outputHash` is
    /// keccak256(bytes(outputCid)) and each stage's `inputHash` equals the previous `outputHash`.
    struct Receipt {
        bytes32 inputHash;
        bytes32 outputHash;
        bytes signature; // 65-byte secp256k1 signature over the EIP-712 digest
    }

    /// @dev One slot per account. `withdrawn` keeps the slot non-zero once an account has been
    /// paid out, so crediting it again costs a warm write, not a fresh one.
    struct Account {
        uint128 credit; // wei withdrawable: stage fees, coordinator cuts, refunds
        uint128 withdrawn; // wei withdrawn so far
    }

    /// @dev Two slots. The route lives in calldata and events only: `routeHash` is the first 20
    /// bytes of keccak256(abi.encode(coordinator, stages)) of the current route, so the
    /// coordinator that routed the job and its stages are passed back by whoever settles it.
    struct Job {
        address client;
        uint96 escrow; // wei held for this job until it settles
        uint40 deadline;
        uint32 modelId;
        Status status;
        bytes20 routeHash;
        uint16 coordinatorFeeBps; // the coordinator's cut, fixed when the job is routed
    }

    // ---------------------------------------------------------------- events
    event JobPosted(
        uint256 indexed jobId,
        address indexed client,
        uint256 indexed modelId,
        string inputCid,
        bytes params,
        uint256 maxFee,
        uint40 deadline
    );
    event JobRouted(uint256 indexed jobId, address indexed coordinator, Stage[] stages);
    event JobRerouted(uint256 indexed jobId, address indexed coordinator, Stage[] stages, address[] failedNodes);
    event ResultSubmitted(uint256 indexed jobId, address indexed submitter, string outputCid, Receipt[] receipts);
    event StagePaid(uint256 indexed jobId, address indexed node, uint256 stage, uint256 amount);
    event CoordinatorPaid(uint256 indexed jobId, address indexed coordinator, uint256 amount);
    event JobRefunded(uint256 indexed jobId, address indexed client, uint256 amount);
    event JobExpired(uint256 indexed jobId, address[] failedNodes);
    event JobCancelled(uint256 indexed jobId);
    event JobAborted(uint256 indexed jobId, address indexed by, string reason);
    event StageFailed(uint256 indexed jobId, address indexed node);
    event DeliveryClaimed(uint256 indexed jobId, address indexed node, uint256 stage);
    event Withdrawn(address indexed account, uint256 amount);
    event ParametersSet(uint16 coordinatorFeeBps, uint40 maxJobDuration);

    // ---------------------------------------------------------------- errors
    error UnknownJob(uint256 jobId);
    error WrongStatus(uint256 jobId, Status have, Status need);
    error EscrowMismatch(uint256 sent, uint256 maxFee);
    error ZeroFee();
    error FeeTooLarge(uint256 maxFee);
    error BadDeadline(uint256 deadline, uint256 earliest, uint256 latest);
    error EmptyInputCid();
    error NotClient(uint256 jobId, address caller);
    error EmptyRoute(uint256 jobId);
    error IncompleteCover(uint256 jobId, uint256 stage, uint32 expectedStart, uint32 start);
    error SpanNotConfirmed(uint256 jobId, address node, uint32 start, uint32 end);
    error StageFeeMismatch(uint256 stage, uint256 fee, uint256 price);
    error RouteTooLong(uint256 jobId, uint256 stages, uint256 max);
    error NotRoutingCoordinator(uint256 jobId, address caller, address coordinator);
    error FeeExceedsEscrow(uint256 jobId, uint256 total, uint256 escrow);
    error RouteMismatch(uint256 jobId);
    error ReceiptCountMismatch(uint256 jobId, uint256 receipts, uint256 stages);
    error InvalidReceiptSigner(uint256 jobId, uint256 stage, address expected, address recovered);
    error BrokenReceiptChain(uint256 jobId, uint256 stage);
    error OutputHashMismatch(uint256 jobId);
    error DeadlinePassed(uint256 jobId, uint40 deadline);
    error DeadlineNotPassed(uint256 jobId, uint40 deadline);
    error InvalidParameter(string name);
    error NotOnRoute(uint256 jobId, address caller);
    error ClaimWindowClosed(uint256 jobId, uint256 closedAt);
    error ClaimWindowOpen(uint256 jobId, uint256 closesAt);
    error NoSuchStage(uint256 jobId, uint256 stage, uint256 stages);
    error AlreadyClaimed(uint256 jobId, uint256 stage);
}
