// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {NodeNotActive, NothingToWithdraw, TransferFailed} from "./interfaces/SharedErrors.sol";
import {AddressArrays} from "./libraries/AddressArrays.sol";

/// @title JobMarket
/// @notice Clients post inference jobs with escrow; a coordinator routes each job through a
/// chain of staked nodes that covers every block of the model; the result is accepted with
/// one EIP-712 receipt per stage, and every payee withdraws its credit (pull payments).
/// Each node's open, delivered and failed stages are recorded in the NodeRegistry as routes
/// open and close.
/// @dev Escrow invariant: address(this).balance == sum(job.escrow) + sum(account.credit).
/// A job settles exactly once (Completed, Expired, Cancelled or Aborted), so it is never both paid
/// and refunded. Routes are not stored: `routeHash` commits to the stages, which callers
/// pass back in calldata (with the coordinator that routed) and which the `JobRouted` /
/// `JobRerouted` events publish.
///
/// | who | may | when |
/// | --- | --- | --- |
/// | anyone | post a job with escrow | any time, on an active model |
/// | the job's client | cancel it | while it is posted |
/// | a coordinator (COORDINATOR_ROLE) | route it, at the model's price | while posted, before the deadline |
/// | the coordinator that routed it | reroute it | while routed, before the deadline |
/// | anyone (in practice the last stage) | submit the result with every stage's receipt | while routed, before the deadline |
/// | anyone (in practice each stage) | claim a stage's delivery with that stage's receipt | routed, within CLAIM_WINDOW after the deadline |
/// | anyone | expire it: delivered stages paid, the others recorded failed | posted: after the deadline; routed: after the claim window |
/// | a node on its route, or its coordinator | abort it | while routed, before the deadline |
/// | any coordinator | abort it | while posted, before the deadline |
/// | any payee | withdraw its credit | any time |
contract JobMarket is IJobMarket, AccessControl, ReentrancyGuardTransient, EIP712 {
    using AddressArrays for address[];

    // ---------------------------------------------------------------- constants
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(uint256 jobId,uint256 stage,uint32 start,uint32 end,uint128 fee,address coordinator,"
        "bytes32 inputHash,bytes32 outputHash)"
    );
    /// @notice A route has at most this many stages (the route checks keep one bit per stage).
    uint256 public constant MAX_ROUTE_STAGES = 64;
    /// @notice After the deadline of a routed job that did not complete, its stages have this
    /// long to prove delivery with their own receipts; only then may it expire.
    uint256 public constant CLAIM_WINDOW = 10 minutes;
    uint16 public constant MAX_COORDINATOR_FEE_BPS = 2_000;

    // ---------------------------------------------------------------- immutables
    INodeRegistry public immutable nodeRegistry;
    IModelRegistry public immutable modelRegistry;

    // ---------------------------------------------------------------- storage
    uint16 public coordinatorFeeBps; // coordinator's cut, on top of the stage fees
    uint40 public maxJobDuration; // seconds a deadline may lie in the future
    uint256 public jobCount;
    mapping(uint256 => Job) private _jobs;
    mapping(address => Account) public accounts;
    mapping(uint256 => uint64) private _claimed; // job -> bit i set when stage i proved delivery

    // ---------------------------------------------------------------- constructor
    constructor(
        address admin,
        INodeRegistry nodeRegistry_,
        IModelRegistry modelRegistry_,
        uint16 coordinatorFeeBps_,
        uint40 maxJobDuration_
    ) EIP712("shardnet", "1") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        nodeRegistry = nodeRegistry_;
        modelRegistry = modelRegistry_;
        _setParameters(coordinatorFeeBps_, maxJobDuration_);
    }

    // ---------------------------------------------------------------- admin
    function setParameters(uint16 coordinatorFeeBps_, uint40 maxJobDuration_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setParameters(coordinatorFeeBps_, maxJobDuration_);
    }

    // ---------------------------------------------------------------- clients
    /// @notice Post a job on `modelId` with `msg.value == maxFee` held in escrow until it settles.
    /// @param params job parameters for the nodes (UTF-8 JSON: kind, max_new_tokens, ...).
    function postJob(
        uint256 modelId,
        string calldata inputCid,
        bytes calldata params,
        uint256 maxFee,
        uint40 deadline
    ) external payable returns (uint256 jobId) {
        if (msg.value != maxFee) revert EscrowMismatch(msg.value, maxFee);
        if (maxFee == 0) revert ZeroFee();
        if (maxFee > type(uint96).max) revert FeeTooLarge(maxFee);
        if (bytes(inputCid).length == 0) revert EmptyInputCid();
        uint256 latest = block.timestamp + maxJobDuration;
        if (deadline <= block.timestamp || deadline > latest) revert BadDeadline(deadline, block.timestamp + 1, latest);
        modelRegistry.blockCountOf(modelId); // reverts for unknown or deprecated models
        jobId = ++jobCount;
        _jobs[jobId] = Job({
            client: msg.sender,
            escrow: uint96(maxFee),
            deadline: deadline,
            modelId: uint32(modelId),
            status: Status.Posted,
            routeHash: bytes20(0),
            coordinatorFeeBps: 0
        });
        emit JobPosted(jobId, msg.sender, modelId, inputCid, params, maxFee, deadline);
    }

    /// @notice Withdraw a job that no coordinator has routed yet; the escrow is credited back.
    function cancelJob(uint256 jobId) external {
        Job storage job = _jobWithStatus(jobId, Status.Posted);
        if (job.client != msg.sender) revert NotClient(jobId, msg.sender);
        job.status = Status.Cancelled;
        _refund(jobId, job);
        emit JobCancelled(jobId);
    }

    // ---------------------------------------------------------------- coordinators
    /// @notice Record the chain of nodes that will run the job. The stages (at most
    /// MAX_ROUTE_STAGES) must cover [0, blockCount) contiguously, each within a confirmed span of
    /// an active node, each fee exactly the model's price for its blocks (a coordinator chooses
    /// routes, never prices), and fees plus the coordinator's cut (the rate in force now, fixed
    /// for this job) within escrow.
    function routeJob(uint256 jobId, Stage[] calldata stages) external onlyRole(COORDINATOR_ROLE) {
        Job storage job = _jobWithStatus(jobId, Status.Posted);
        if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);
        job.coordinatorFeeBps = coordinatorFeeBps;
        address[] memory nodes = _checkRoute(jobId, job, stages);
        nodeRegistry.openRoute(nodes);
        job.status = Status.Routed;
        job.routeHash = _routeHash(msg.sender, stages);
        emit JobRouted(jobId, msg.sender, stages);
    }

    /// @notice Failover: replace the route of a routed job. Nodes of the old route that are not
    /// on the new one are recorded as failed. Only the coordinator that routed the job may
    /// reroute it; the cut rate stays the one fixed at routing.
    function rerouteJob(
        uint256 jobId,
        address oldCoordinator,
        Stage[] calldata oldStages,
        Stage[] calldata newStages
    ) external onlyRole(COORDINATOR_ROLE) {
        Job storage job = _jobWithStatus(jobId, Status.Routed);
        if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);
        if (_routeHash(oldCoordinator, oldStages) != job.routeHash) revert RouteMismatch(jobId);
        if (msg.sender != oldCoordinator) revert NotRoutingCoordinator(jobId, msg.sender, oldCoordinator);
        address[] memory newNodes = _checkRoute(jobId, job, newStages);
        address[] memory oldNodes = _nodes(oldStages);
        address[] memory failed = new address[](oldStages.length);
        uint256 nFailed;
        for (uint256 i; i < oldStages.length; ++i) {
            address node = oldStages[i].node;
            if (!_onRoute(node, newStages)) {
                failed[nFailed++] = node;
                emit StageFailed(jobId, node);
            }
        }
        failed = failed.truncate(nFailed);
        nodeRegistry.closeRoute(oldNodes, false, failed);
        nodeRegistry.openRoute(newNodes);
        job.routeHash = _routeHash(msg.sender, newStages);
        emit JobRerouted(jobId, msg.sender, newStages, failed);
    }

    // ---------------------------------------------------------------- nodes
    /// @notice Accept the result of a routed job with one signed receipt per stage; credit each
    /// stage its fee, the coordinator its cut, and the client the rest of the escrow.
    function submitResult(
        uint256 jobId,
        address coordinator,
        Stage[] calldata stages,
        string calldata outputCid,
        Receipt[] calldata receipts
    ) external {
        Job storage job = _jobWithStatus(jobId, Status.Routed);
        if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);
        if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
        if (receipts.length != stages.length) revert ReceiptCountMismatch(jobId, receipts.length, stages.length);
        _verifyReceipts(jobId, coordinator, stages, receipts);
        if (receipts[receipts.length - 1].outputHash != keccak256(bytes(outputCid))) revert OutputHashMismatch(jobId);

        job.status = Status.Completed;
        emit ResultSubmitted(jobId, msg.sender, outputCid, receipts);
        uint256 paid;
        for (uint256 i; i < stages.length; ++i) {
            Stage calldata s = stages[i];
            accounts[s.node].credit += s.fee;
            paid += s.fee;
            emit StagePaid(jobId, s.node, i, s.fee);
        }
        nodeRegistry.closeRoute(_nodes(stages), true, new address[](0));
        uint256 cut = paid * job.coordinatorFeeBps / 10_000;
        if (cut != 0) {
            accounts[coordinator].credit += uint128(cut);
            emit CoordinatorPaid(jobId, coordinator, cut);
        }
        job.escrow -= uint96(paid + cut);
        _refund(jobId, job);
    }

    /// @notice After the deadline of a routed job that did not complete, and within CLAIM_WINDOW,
    /// a stage proves it delivered: its own receipt for its stage of the current route (anyone
    /// may send it). Stages that prove delivery are paid when the job expires; the others are
    /// recorded failed. Whoever expires the job chooses nothing.
    function claimDelivery(
        uint256 jobId,
        address coordinator,
        Stage[] calldata stages,
        uint256 stage,
        Receipt calldata receipt
    ) external {
        Job storage job = _jobWithStatus(jobId, Status.Routed);
        if (block.timestamp <= job.deadline) revert DeadlineNotPassed(jobId, job.deadline);
        uint256 closesAt = uint256(job.deadline) + CLAIM_WINDOW;
        if (block.timestamp > closesAt) revert ClaimWindowClosed(jobId, closesAt);
        if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
        if (stage >= stages.length) revert NoSuchStage(jobId, stage, stages.length);
        uint64 bit = uint64(1) << stage; // routes have at most MAX_ROUTE_STAGES = 64 stages
        if (_claimed[jobId] & bit != 0) revert AlreadyClaimed(jobId, stage);
        _verifyReceipt(jobId, coordinator, stages[stage], stage, receipt);
        _claimed[jobId] |= bit;
        emit DeliveryClaimed(jobId, stages[stage].node, stage);
    }

    // ---------------------------------------------------------------- anyone
    /// @notice Settle a job that did not complete. A posted job expires after its deadline (pass
    /// no stages): the whole escrow goes back to the client. A routed job expires once the
    /// claim window after its deadline is over (pass its route): each stage that proved
    /// delivery is paid its fee, every other stage is recorded failed, the client gets the rest.
    function expireJob(uint256 jobId, address coordinator, Stage[] calldata stages) external {
        Job storage job = _job(jobId);
        Status status = job.status;
        if (status != Status.Posted && status != Status.Routed) revert WrongStatus(jobId, status, Status.Routed);
        if (block.timestamp <= job.deadline) revert DeadlineNotPassed(jobId, job.deadline);
        address[] memory failed = new address[](stages.length);
        uint256 nFailed;
        if (status == Status.Routed) {
            uint256 closesAt = uint256(job.deadline) + CLAIM_WINDOW;
            if (block.timestamp <= closesAt) revert ClaimWindowOpen(jobId, closesAt);
            if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
            uint64 claimed = _claimed[jobId];
            uint256 paid;
            for (uint256 i; i < stages.length; ++i) {
                Stage calldata s = stages[i];
                if (claimed & (uint64(1) << i) != 0) {
                    accounts[s.node].credit += s.fee;
                    paid += s.fee;
                    emit StagePaid(jobId, s.node, i, s.fee);
                } else {
                    failed[nFailed++] = s.node;
                    emit StageFailed(jobId, s.node);
                }
            }
            delete _claimed[jobId];
            job.escrow -= uint96(paid);
            failed = failed.truncate(nFailed);
            nodeRegistry.closeRoute(_nodes(stages), false, failed);
        } else if (stages.length != 0) {
            revert RouteMismatch(jobId);
        }
        job.status = Status.Expired;
        _refund(jobId, job);
        emit JobExpired(jobId, failed);
    }

    /// @notice Give up on a job that cannot be served as posted (its input is missing or
    /// malformed, its parameters out of range): the whole escrow goes back to the client and
    /// nobody's record is marked failed. Callable by a node on the current route or by the
    /// coordinator that routed it; a job not yet routed, by any coordinator.
    function abortJob(uint256 jobId, address coordinator, Stage[] calldata stages, string calldata reason) external {
        Job storage job = _job(jobId);
        Status status = job.status;
        // past the deadline a job settles by expiry, where stages that delivered are paid
        if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);
        if (status == Status.Posted) {
            if (!hasRole(COORDINATOR_ROLE, msg.sender)) revert NotOnRoute(jobId, msg.sender);
        } else if (status == Status.Routed) {
            if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
            if (msg.sender != coordinator && !_onRoute(msg.sender, stages)) revert NotOnRoute(jobId, msg.sender);
            nodeRegistry.closeRoute(_nodes(stages), false, new address[](0));
        } else {
            revert WrongStatus(jobId, status, Status.Routed);
        }
        job.status = Status.Aborted;
        _refund(jobId, job);
        emit JobAborted(jobId, msg.sender, reason);
    }

    /// @notice Send the caller everything credited to it (stage fees, coordinator cuts, refunds).
    function withdraw() external nonReentrant {
        Account storage account = accounts[msg.sender];
        uint256 amount = account.credit;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        account.credit = 0;
        account.withdrawn += uint128(amount);
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed(msg.sender, amount);
    }

    // ---------------------------------------------------------------- views
    function getJob(uint256 jobId) external view returns (Job memory) {
        return _job(jobId);
    }

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

    // ---------------------------------------------------------------- internal
    function _setParameters(uint16 coordinatorFeeBps_, uint40 maxJobDuration_) private {
        if (coordinatorFeeBps_ > MAX_COORDINATOR_FEE_BPS) revert InvalidParameter("coordinatorFeeBps");
        if (maxJobDuration_ == 0) revert InvalidParameter("maxJobDuration");
        coordinatorFeeBps = coordinatorFeeBps_;
        maxJobDuration = maxJobDuration_;
        emit ParametersSet(coordinatorFeeBps_, maxJobDuration_);
    }

    function _job(uint256 jobId) private view returns (Job storage job) {
        job = _jobs[jobId];
        if (job.status == Status.None) revert UnknownJob(jobId);
    }

    function _jobWithStatus(uint256 jobId, Status need) private view returns (Job storage job) {
        job = _job(jobId);
        if (job.status != need) revert WrongStatus(jobId, job.status, need);
    }

    /// @dev Reverts unless `stages` is a valid route for the job; returns the stages' nodes.
    function _checkRoute(uint256 jobId, Job storage job, Stage[] calldata stages)
        private
        view
        returns (address[] memory nodes)
    {
        uint256 n = stages.length;
        if (n == 0) revert EmptyRoute(jobId);
        if (n > MAX_ROUTE_STAGES) revert RouteTooLong(jobId, n, MAX_ROUTE_STAGES);
        nodes = new address[](n);
        uint32[] memory starts = new uint32[](n);
        uint32[] memory ends = new uint32[](n);
        uint32 next;
        for (uint256 i; i < n; ++i) {
            Stage calldata s = stages[i];
            if (s.start != next || s.end <= s.start) revert IncompleteCover(jobId, i, next, s.start);
            (nodes[i], starts[i], ends[i]) = (s.node, s.start, s.end);
            next = s.end;
        }
        (uint32 blockCount, uint56 price, uint256 unconfirmed) =
            modelRegistry.routeInfo(job.modelId, nodes, starts, ends);
        if (next != blockCount) revert IncompleteCover(jobId, n, blockCount, next);
        uint256 inactive = nodeRegistry.inactiveMask(nodes);
        uint256 total;
        for (uint256 i; i < n; ++i) {
            Stage calldata s = stages[i];
            if (unconfirmed & (1 << i) != 0) revert SpanNotConfirmed(jobId, s.node, s.start, s.end);
            if (inactive & (1 << i) != 0) revert NodeNotActive(s.node);
            uint256 fee = uint256(price) * (s.end - s.start);
            if (s.fee != fee) revert StageFeeMismatch(i, s.fee, fee);
            total += fee;
        }
        total += total * job.coordinatorFeeBps / 10_000;
        if (total > job.escrow) revert FeeExceedsEscrow(jobId, total, job.escrow);
    }

    /// @dev Checks receipts[i] for stages[i], i < receipts.length: signer and input/output chain.
    function _verifyReceipts(uint256 jobId, address coordinator, Stage[] calldata stages, Receipt[] calldata receipts)
        private
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
        private
        view
    {
        bytes32 digest = receiptDigest(jobId, i, s, coordinator, r.inputHash, r.outputHash);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, r.signature);
        if (err != ECDSA.RecoverError.NoError || signer == address(0) || signer != s.node) {
            revert InvalidReceiptSigner(jobId, i, s.node, signer);
        }
    }

    /// @dev Credits the job's remaining escrow to its client.
    function _refund(uint256 jobId, Job storage job) private {
        uint256 amount = job.escrow;
        if (amount == 0) return;
        job.escrow = 0;
        accounts[job.client].credit += uint128(amount);
        emit JobRefunded(jobId, job.client, amount);
    }

    function _routeHash(address coordinator, Stage[] calldata stages) private pure returns (bytes20) {
        return bytes20(keccak256(abi.encode(coordinator, stages)));
    }

    function _nodes(Stage[] calldata stages) private pure returns (address[] memory nodes) {
        nodes = new address[](stages.length);
        for (uint256 i; i < stages.length; ++i) {
            nodes[i] = stages[i].node;
        }
    }

    function _onRoute(address node, Stage[] calldata stages) private pure returns (bool) {
        for (uint256 i; i < stages.length; ++i) {
            if (stages[i].node == node) return true;
        }
        return false;
    }
}
