// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {NodeNotActive, NothingToWithdraw, TransferFailed} from "./SharedErrors.sol";
import {AuditCase} from "./IVerifier.sol";

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
        Aborted,
        Aborting // a routed job was aborted: its stages may claim delivery, then it settles as Aborted
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

    /// @dev One slot per account. Stage fees and cuts enter `current` (the epoch `epoch`, mod
    /// 2^16), move to `previous` the next epoch and to `credit` the one after; refunds go to
    /// `credit` directly. The epoch tag keeps the slot non-zero, so crediting it again is a warm
    /// write.
    struct Account {
        uint80 credit; // wei withdrawable now
        uint80 current; // wei credited in epoch `epoch`, still open to audits
        uint80 previous; // wei credited in epoch `epoch - 1`, still open to audits
        uint16 epoch;
    }

    /// @notice The market's terms, one slot (the admin sets them; routed jobs keep their rates).
    struct Terms {
        uint16 coordinatorFeeBps; // coordinator's cut, on top of the stage fees
        uint40 maxJobDuration; // seconds a deadline may lie in the future
        uint16 minAuditBps; // the network's audit rate: the least chance each stage is re-executed
        uint32 challengeWindow; // seconds after a result during which audits are drawn and challenges opened
        uint32 commitPeriod; // seconds a committee has to commit its votes
        uint32 revealPeriod; // then to reveal them
        uint8 committeeSize; // members drawn per audited stage (fewer when the network is smaller)
        uint16 verifyFeeBps; // each member's pay, in basis points of the audited stage's fee
    }

    /// @dev Two slots. The route lives in calldata and events only: `routeHash` is the first 20
    /// bytes of keccak256(abi.encode(coordinator, stages)) of the current route, so the
    /// coordinator that routed the job and its stages are passed back by whoever settles it.
    /// Once Completed, the escrow has been paid out and two fields record when the result came:
    /// `deadline` is the time it was submitted (the audit window runs from it) and `escrow` the
    /// number of its block (whose hash seeds the audit draw).
    struct Job {
        address client;
        uint80 escrow; // wei held for this job until it settles (Completed: the result's block)
        uint16 auditBps; // chance per stage of an audit: the client's, at least the network's
        uint40 deadline; // (Completed: the result's time)
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
        uint40 deadline,
        uint16 auditBps
    );
    event JobRouted(uint256 indexed jobId, address indexed coordinator, Stage[] stages);
    event JobRerouted(uint256 indexed jobId, address indexed coordinator, Stage[] stages, address[] failedNodes);
    /// @notice The result is accepted: each stage of the route is credited its fee and the
    /// coordinator `coordinatorCut` (pending until the audit window is over), the client `refund`
    /// (of which a reserve for audits comes back with the same delay). One event, not one per
    /// payee: the route (JobRouted / JobRerouted) names each stage's node and fee.
    event ResultSubmitted(
        uint256 indexed jobId, string outputCid, Receipt[] receipts, uint256 coordinatorCut, uint256 refund
    );
    event StagePaid(uint256 indexed jobId, address indexed node, uint256 stage, uint256 amount);
    event CoordinatorPaid(uint256 indexed jobId, address indexed coordinator, uint256 amount);
    event JobRefunded(uint256 indexed jobId, address indexed client, uint256 amount);
    event JobExpired(uint256 indexed jobId, address[] failedNodes);
    event JobCancelled(uint256 indexed jobId);
    /// @notice `deadline` is the job's deadline from now on: the abort's time for a routed job (its
    /// stages may claim delivery for CLAIM_WINDOW after it, then it settles), unchanged for a
    /// posted one (settled at once).
    event JobAborted(uint256 indexed jobId, address indexed by, string reason, uint40 deadline);
    event StageFailed(uint256 indexed jobId, address indexed node);
    event DeliveryClaimed(uint256 indexed jobId, address indexed node, uint256 stage);
    event Withdrawn(address indexed account, uint256 amount);
    event TermsSet(Terms terms);
    event VerifierSet(address verifier);
    event AuditDrawn(uint256 indexed jobId, uint256 stage, address indexed node, uint256 budget);
    event StageChallenged(
        uint256 indexed jobId, uint256 stage, address indexed node, address indexed challenger, uint256 bond
    );
    event StageRevoked(
        uint256 indexed jobId, uint256 stage, address indexed node, uint256 fromNode, uint256 fromCoordinator
    );

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
    error OnlyFirstStageAborts(uint256 jobId, address caller);
    error ClaimWindowClosed(uint256 jobId, uint256 closedAt);
    error ClaimWindowOpen(uint256 jobId, uint256 closesAt);
    error NoSuchStage(uint256 jobId, uint256 stage, uint256 stages);
    error AlreadyClaimed(uint256 jobId, uint256 stage);
    error VerifierAlreadySet(address verifier);
    error NotVerifier(address caller);
    error AuditWindowClosed(uint256 jobId, uint256 closedAt);
    error AlreadyDrawn(uint256 jobId);
    error DrawNotReady(uint256 jobId, uint256 resultBlock);
    error NothingDrawn(uint256 jobId);
    error BondTooSmall(uint256 sent, uint256 bond);
    error AlreadyUnderAudit(uint256 jobId, uint256 stage);

    // ---------------------------------------------------------------- the verifier
    /// @notice Take a stage's fee (and the coordinator's cut on it) back for the client.
    function revoke(AuditCase calldata c) external returns (uint256 recovered, uint256 owed);
    function epochLength() external view returns (uint256);
    function getJob(uint256 jobId) external view returns (Job memory);
    /// @notice The EIP-712 digest stage `stage` (`s`) of job `jobId` signs for its receipt.
    function receiptDigest(
        uint256 jobId,
        uint256 stage,
        Stage calldata s,
        address coordinator,
        bytes32 inputHash,
        bytes32 outputHash
    ) external view returns (bytes32);
    function terms()
        external
        view
        returns (
            uint16 coordinatorFeeBps,
            uint40 maxJobDuration,
            uint16 minAuditBps,
            uint32 challengeWindow,
            uint32 commitPeriod,
            uint32 revealPeriod,
            uint8 committeeSize,
            uint16 verifyFeeBps
        );
}
