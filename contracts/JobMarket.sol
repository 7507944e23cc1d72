// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {AuditCase, IVerifier} from "./interfaces/IVerifier.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {NodeNotActive} from "./interfaces/SharedErrors.sol";
import {AddressArrays} from "./libraries/AddressArrays.sol";
import {EpochAccounts} from "./base/EpochAccounts.sol";
import {StageReceipts} from "./base/StageReceipts.sol";

/// @title JobMarket
/// @notice Clients post inference jobs with escrow; a coordinator routes each job through a
/// chain of staked nodes that covers every block of the model; the result is accepted with
/// one EIP-712 receipt per stage (base/StageReceipts.sol). Nothing is paid before it could be
/// checked: stage fees and the coordinator's cut are credited as *pending* and become
/// withdrawable only once the job's audit window has passed; until then an audit drawn by chain
/// randomness, or a challenge anyone opens with a bond, sends the stage to a re-execution
/// committee (the Verifier), which takes the fee back for the client when the stage is found
/// wrong.
/// @dev Pending credit lives in two buckets per account, one per settlement epoch: what is
/// credited in epoch e is withdrawable from epoch e + 2 (the accounts and withdrawals are in
/// base/EpochAccounts.sol). Escrow invariant:
/// address(this).balance == sum(job.escrow of unsettled jobs) + sum(account credit + buckets).
/// A job settles exactly once (Completed, Expired, Cancelled or Aborted), so it is never both paid
/// and refunded. Routes are not stored: `routeHash` commits to the stages, which callers
/// pass back in calldata (with the coordinator that routed) and which the `JobRouted` /
/// `JobRerouted` events publish. Failed stages are recorded in the NodeRegistry; delivered
/// ones only in events, so a job that goes well writes nothing there.
///
/// | who | may | when |
/// | --- | --- | --- |
/// | anyone | post a job with escrow | any time, on an active model |
/// | the job's client | cancel it | while it is posted |
/// | a coordinator (COORDINATOR_ROLE) | route it, at the model's price | while posted, before the deadline |
/// | the coordinator that routed it, bonded in the NodeRegistry | reroute it (each replaced node may contest) | while routed, before the deadline |
/// | anyone (in practice the last stage) | submit the result with every stage's receipt | while routed, before the deadline |
/// | anyone (in practice node agents) | draw the job's audits (`drawAudits`) | completed, after its block, within the challenge window |
/// | anyone (the client, an auditor) | challenge a stage with a bond | completed, within the challenge window |
/// | the verifier | take a stage's fee back for the client (`revoke`) | when its committee finds the stage wrong |
/// | anyone (in practice each stage) | claim a stage's delivery with that stage's receipt | routed or aborting, within CLAIM_WINDOW after the deadline (an abort's time) |
/// | anyone | expire it: delivered stages paid, the others recorded failed | posted: after the deadline; routed or aborting: after the claim window |
/// | its route's first stage, or its coordinator | abort it: it settles like an expiry, from now | while routed, before the deadline |
/// | any coordinator | abort it | while posted, before the deadline |
/// | any payee | withdraw its credit (pending credit once its epoch has matured) | any time |
contract JobMarket is IJobMarket, AccessControl, ReentrancyGuardTransient, EpochAccounts, StageReceipts {
    using AddressArrays for address[];

    // ---------------------------------------------------------------- constants
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    /// @notice A route has at most this many stages (the route checks keep one bit per stage).
    uint256 public constant MAX_ROUTE_STAGES = 64;
    /// @notice After the deadline of a routed job that did not complete, its stages have this
    /// long to prove delivery with their own receipts; only then may it expire.
    uint256 public constant CLAIM_WINDOW = 10 minutes;
    uint16 public constant MAX_COORDINATOR_FEE_BPS = 2_000;
    uint16 public constant BPS = 10_000;
    uint8 public constant MAX_COMMITTEE = 15;
    uint64 private constant DRAWN = uint64(1) << 63; // in _stageBits: the job's audits were drawn

    // ---------------------------------------------------------------- immutables
    INodeRegistry public immutable nodeRegistry;
    IModelRegistry public immutable modelRegistry;

    // ---------------------------------------------------------------- storage
    Terms public terms; // one slot: fee rate, deadlines, audit rate, windows, committee
    uint256 public jobCount;
    IVerifier public verifier; // set once by the admin
    mapping(uint256 => Job) private _jobs;
    /// @dev job -> bits. Routed past its deadline: bit i when stage i proved delivery. Completed:
    /// bit i when stage i is under audit, and DRAWN once the audit draw was made.
    mapping(uint256 => uint64) private _stageBits;

    // ---------------------------------------------------------------- constructor
    constructor(
        address admin,
        INodeRegistry nodeRegistry_,
        IModelRegistry modelRegistry_,
        uint256 epochLength_,
        Terms memory terms_
    ) EpochAccounts(epochLength_) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        nodeRegistry = nodeRegistry_;
        modelRegistry = modelRegistry_;
        _setTerms(terms_);
    }

    // ---------------------------------------------------------------- admin
    /// @notice Change the market's terms. Jobs already routed keep their cut rate and audit rate.
    function setTerms(Terms calldata terms_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTerms(terms_);
    }

    /// @notice Wire the verifier once (it is deployed after the market).
    function setVerifier(IVerifier verifier_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (address(verifier) != address(0)) revert VerifierAlreadySet(address(verifier));
        verifier = verifier_;
        emit VerifierSet(address(verifier_));
    }

    // ---------------------------------------------------------------- clients
    /// @notice Post a job on `modelId` with `msg.value == maxFee` held in escrow until it settles.
    /// @param params job parameters for the nodes (UTF-8 JSON: kind, max_new_tokens, ...).
    /// @param auditBps the chance, in basis points, that each stage is re-executed by a committee;
    /// the network's minimum applies when it is higher. A client pays for more checking with it:
    /// each audited stage costs `committeeSize * verifyFeeBps` of its fee on top.
    function postJob(
        uint256 modelId,
        string calldata inputCid,
        bytes calldata params,
        uint256 maxFee,
        uint40 deadline,
        uint16 auditBps
    ) external payable returns (uint256 jobId) {
        if (msg.value != maxFee) revert EscrowMismatch(msg.value, maxFee);
        if (maxFee == 0) revert ZeroFee();
        if (maxFee > type(uint80).max) revert FeeTooLarge(maxFee);
        if (bytes(inputCid).length == 0) revert EmptyInputCid();
        if (auditBps > BPS) revert InvalidParameter("auditBps");
        Terms memory t = terms;
        uint256 latest = block.timestamp + t.maxJobDuration;
        if (deadline <= block.timestamp || deadline > latest) revert BadDeadline(deadline, block.timestamp + 1, latest);
        modelRegistry.blockCountOf(modelId); // reverts for unknown or deprecated models
        if (auditBps < t.minAuditBps) auditBps = t.minAuditBps;
        jobId = ++jobCount;
        _jobs[jobId] = Job({
            client: msg.sender,
            escrow: uint80(maxFee),
            auditBps: auditBps,
            deadline: deadline,
            modelId: uint32(modelId),
            status: Status.Posted,
            routeHash: bytes20(0),
            coordinatorFeeBps: 0
        });
        emit JobPosted(jobId, msg.sender, modelId, inputCid, params, maxFee, deadline, auditBps);
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
        job.coordinatorFeeBps = terms.coordinatorFeeBps;
        _checkRoute(jobId, job, stages);
        job.status = Status.Routed;
        job.routeHash = _routeHash(msg.sender, stages);
        emit JobRouted(jobId, msg.sender, stages);
    }

    /// @notice Failover: replace the route of a routed job. Nodes of the old route that are not
    /// on the new one are recorded as failed; each may contest that in the NodeRegistry with its
    /// receipt, and a contested reroute fines this coordinator's bond (a reroute that replaces a
    /// node needs the minimum bond). Only the coordinator that routed the job may reroute it; the
    /// cut rate stays the one fixed at routing.
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
        _checkRoute(jobId, job, newStages);
        address[] memory failed = new address[](oldStages.length);
        uint256 nFailed;
        uint256 replaced;
        for (uint256 i; i < oldStages.length; ++i) {
            address node = oldStages[i].node;
            if (!_onRoute(node, newStages)) {
                failed[nFailed++] = node;
                replaced |= 1 << i;
                emit StageFailed(jobId, node);
            }
        }
        failed = failed.truncate(nFailed);
        if (replaced != 0) nodeRegistry.recordReplaced(jobId, msg.sender, oldStages, replaced);
        job.routeHash = _routeHash(msg.sender, newStages);
        emit JobRerouted(jobId, msg.sender, newStages, failed);
    }

    // ---------------------------------------------------------------- nodes
    /// @notice Accept the result of a routed job with one signed receipt per stage. Each stage's
    /// fee and the coordinator's cut are credited as pending (withdrawable once the audit window
    /// is over); the client gets the rest of the escrow back now, except the reserve that pays
    /// a committee should a stage be audited, which it gets back with the same delay.
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

        uint256 epoch = block.timestamp / epochLength;
        uint256 paid;
        for (uint256 i; i < stages.length; ++i) {
            Stage calldata s = stages[i];
            _pay(s.node, s.fee, epoch);
            paid += s.fee;
        }
        uint256 cut = paid * job.coordinatorFeeBps / BPS;
        if (cut != 0) _pay(coordinator, cut, epoch);
        uint256 left = job.escrow - paid - cut;
        uint256 reserve = _auditReserve(job.auditBps, paid);
        if (reserve > left) reserve = left;
        // once completed, `deadline` and `escrow` record when the result came: the audit window
        // runs from this time, and the audit draw is seeded by this block's hash
        job.status = Status.Completed;
        job.deadline = uint40(block.timestamp);
        job.escrow = uint80(block.number);
        Account memory a = _rolled(_accounts[job.client], epoch);
        a.credit += uint80(left - reserve);
        a.current += uint80(reserve);
        _accounts[job.client] = a;
        emit ResultSubmitted(jobId, outputCid, receipts, cut, left);
    }

    // ---------------------------------------------------------------- audits
    /// @notice Stages of a completed job drawn for audit (bit i = stage i): a pure function of the
    /// hash of the block its result was submitted in, so nobody who sends the result can see or
    /// steer it. Zero once that block hash is out of reach (256 blocks later).
    function auditedStages(uint256 jobId, uint256 stageCount) public view returns (uint64 mask) {
        Job storage job = _jobWithStatus(jobId, Status.Completed);
        bytes32 seed = blockhash(job.escrow);
        if (seed == bytes32(0)) return 0;
        uint256 rate = job.auditBps;
        for (uint256 i; i < stageCount && i < MAX_ROUTE_STAGES; ++i) {
            if (uint256(keccak256(abi.encode(seed, jobId, i))) % BPS < rate) mask |= uint64(1) << i;
        }
    }

    /// @notice Open the audits drawn for a completed job (anyone may, once; node agents do as soon
    /// as they see the draw): each drawn stage goes to a committee, paid from the client's reserve.
    function drawAudits(uint256 jobId, address coordinator, Stage[] calldata stages) external nonReentrant {
        Job storage job = _jobWithStatus(jobId, Status.Completed);
        if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
        _checkAuditWindow(jobId, job);
        uint64 bits = _stageBits[jobId];
        if (bits & DRAWN != 0) revert AlreadyDrawn(jobId);
        if (block.number <= job.escrow) revert DrawNotReady(jobId, job.escrow);
        uint64 mask = auditedStages(jobId, stages.length);
        if (mask == 0) revert NothingDrawn(jobId);
        _stageBits[jobId] = bits | mask | DRAWN;
        bytes32 seed = keccak256(abi.encode(blockhash(job.escrow), jobId, "committee"));
        for (uint256 i; i < stages.length; ++i) {
            if (mask & (uint64(1) << i) != 0 && bits & (uint64(1) << i) == 0) {
                _openDrawn(job, AuditCase(jobId, uint8(i), stages[i].node, uint96(stages[i].fee), job.client, coordinator, address(0)), seed);
            }
        }
    }

    /// @dev A drawn audit: its committee is paid from the client's reserve.
    function _openDrawn(Job storage job, AuditCase memory c, bytes32 seed) private {
        Terms memory t = terms;
        uint256 budget = _clawback(c.client, uint256(c.fee) * t.committeeSize * t.verifyFeeBps / BPS, job.deadline / epochLength);
        emit AuditDrawn(c.jobId, c.stage, c.node, budget);
        verifier.open{value: budget}(c, keccak256(abi.encode(seed, c.stage)));
    }

    /// @notice Anyone who believes a stage of a completed job is wrong sends it to a committee,
    /// with a bond of at least the verifier's `challengeBond`, within the challenge window. The
    /// bond pays the committee when the stage is found right; it comes back doubled from the
    /// cheater's slash when it is found wrong.
    function challenge(uint256 jobId, address coordinator, Stage[] calldata stages, uint256 stage)
        external
        payable
        nonReentrant
    {
        Job storage job = _jobWithStatus(jobId, Status.Completed);
        if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
        _checkAuditWindow(jobId, job);
        if (stage >= stages.length) revert NoSuchStage(jobId, stage, stages.length);
        uint256 bond = verifier.challengeBond();
        if (msg.value < bond) revert BondTooSmall(msg.value, bond);
        uint64 bit = uint64(1) << stage;
        uint64 bits = _stageBits[jobId];
        if (bits & bit != 0) revert AlreadyUnderAudit(jobId, stage);
        _stageBits[jobId] = bits | bit;
        Stage calldata s = stages[stage];
        emit StageChallenged(jobId, stage, s.node, msg.sender, msg.value);
        verifier.open{value: msg.value}(
            AuditCase(jobId, uint8(stage), s.node, uint96(s.fee), job.client, coordinator, msg.sender),
            keccak256(abi.encode(blockhash(block.number - 1), jobId, stage, msg.sender))
        );
    }

    /// @notice The verifier found stage `c.stage` of job `c.jobId` wrong: take its fee back from
    /// the node's (still pending) credit, and the coordinator's cut on it, and credit them to the
    /// client now. Returns what was taken back and what the client was owed (fee and cut); the
    /// verifier makes up any shortfall from the slash.
    function revoke(AuditCase calldata c) external override returns (uint256 recovered, uint256 owed) {
        if (msg.sender != address(verifier)) revert NotVerifier(msg.sender);
        Job storage job = _jobWithStatus(c.jobId, Status.Completed);
        uint256 epoch = job.deadline / epochLength;
        uint256 cut = uint256(c.fee) * job.coordinatorFeeBps / BPS;
        owed = uint256(c.fee) + cut;
        uint256 fromNode = _clawback(c.node, c.fee, epoch);
        uint256 fromCoordinator = _clawback(c.coordinator, cut, epoch);
        recovered = fromNode + fromCoordinator;
        _accounts[c.client].credit += uint80(recovered);
        emit StageRevoked(c.jobId, c.stage, c.node, fromNode, fromCoordinator);
    }

    /// @notice After the deadline of a routed job that did not complete (or after its abort), and
    /// within CLAIM_WINDOW, a stage proves it delivered: its own receipt for its stage of the current route (anyone
    /// may send it). Stages that prove delivery are paid when the job expires; the others are
    /// recorded failed. Whoever expires the job chooses nothing.
    function claimDelivery(
        uint256 jobId,
        address coordinator,
        Stage[] calldata stages,
        uint256 stage,
        Receipt calldata receipt
    ) external {
        Job storage job = _job(jobId);
        if (job.status != Status.Routed && job.status != Status.Aborting) {
            revert WrongStatus(jobId, job.status, Status.Routed);
        }
        // an aborting job's deadline is its abort's time: claims are open from then on
        if (job.status == Status.Routed && block.timestamp <= job.deadline) {
            revert DeadlineNotPassed(jobId, job.deadline);
        }
        uint256 closesAt = uint256(job.deadline) + CLAIM_WINDOW;
        if (block.timestamp > closesAt) revert ClaimWindowClosed(jobId, closesAt);
        if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
        if (stage >= stages.length) revert NoSuchStage(jobId, stage, stages.length);
        uint64 bit = uint64(1) << stage; // routes have at most MAX_ROUTE_STAGES = 64 stages
        if (_stageBits[jobId] & bit != 0) revert AlreadyClaimed(jobId, stage);
        _verifyReceipt(jobId, coordinator, stages[stage], stage, receipt);
        _stageBits[jobId] |= bit;
        emit DeliveryClaimed(jobId, stages[stage].node, stage);
    }

    // ---------------------------------------------------------------- anyone
    /// @notice Settle a job that did not complete. A posted job expires after its deadline (pass
    /// no stages): the whole escrow goes back to the client. A routed job expires once the
    /// claim window after its deadline is over (pass its route): each stage that proved
    /// delivery is paid its fee, every other stage is recorded failed, the client gets the rest.
    /// An aborted routed job settles the same way once the claim window after its abort is over,
    /// except that when no stage claimed, nobody is recorded failed (the input was at fault);
    /// it ends Aborted.
    function expireJob(uint256 jobId, address coordinator, Stage[] calldata stages) external {
        Job storage job = _job(jobId);
        Status status = job.status;
        if (status != Status.Posted && status != Status.Routed && status != Status.Aborting) {
            revert WrongStatus(jobId, status, Status.Routed);
        }
        if (status != Status.Aborting && block.timestamp <= job.deadline) {
            revert DeadlineNotPassed(jobId, job.deadline);
        }
        address[] memory failed = new address[](stages.length);
        uint256 nFailed;
        if (status != Status.Posted) {
            uint256 closesAt = uint256(job.deadline) + CLAIM_WINDOW;
            if (block.timestamp <= closesAt) revert ClaimWindowOpen(jobId, closesAt);
            if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
            uint64 claimed = _stageBits[jobId];
            uint256 paid;
            for (uint256 i; i < stages.length; ++i) {
                Stage calldata s = stages[i];
                if (claimed & (uint64(1) << i) != 0) {
                    _accounts[s.node].credit += uint80(s.fee);
                    paid += s.fee;
                    emit StagePaid(jobId, s.node, i, s.fee);
                } else if (claimed != 0 || status == Status.Routed) {
                    failed[nFailed++] = s.node;
                    emit StageFailed(jobId, s.node);
                }
            }
            delete _stageBits[jobId];
            job.escrow -= uint80(paid);
            failed = failed.truncate(nFailed);
            if (nFailed != 0) nodeRegistry.recordFailures(jobId, failed);
        } else if (stages.length != 0) {
            revert RouteMismatch(jobId);
        }
        job.status = status == Status.Aborting ? Status.Aborted : Status.Expired;
        _refund(jobId, job);
        emit JobExpired(jobId, failed);
    }

    /// @notice Give up on a job that cannot be served as posted (its input is missing or
    /// malformed, its parameters out of range). A job not yet routed (any coordinator may abort
    /// it): the whole escrow goes back to the client at once. A routed job (its route's first
    /// stage, the only one that reads the client's input, or the coordinator that routed it may
    /// abort it): it becomes Aborting and settles like an expiry from now on, so an abort never
    /// takes the pay of stages that already did their work. Each stage that delivered claims
    /// within CLAIM_WINDOW and is paid; if none did, the input was at fault and nobody is recorded
    /// failed; if some did, the silent ones are. A later stage cannot abort at all.
    function abortJob(uint256 jobId, address coordinator, Stage[] calldata stages, string calldata reason) external {
        Job storage job = _job(jobId);
        Status status = job.status;
        // past the deadline a job settles by expiry, where stages that delivered are paid
        if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);
        if (status == Status.Posted) {
            if (!hasRole(COORDINATOR_ROLE, msg.sender)) revert NotOnRoute(jobId, msg.sender);
        } else if (status == Status.Routed) {
            if (_routeHash(coordinator, stages) != job.routeHash) revert RouteMismatch(jobId);
            if (msg.sender != coordinator && msg.sender != stages[0].node) {
                if (_onRoute(msg.sender, stages)) revert OnlyFirstStageAborts(jobId, msg.sender);
                revert NotOnRoute(jobId, msg.sender);
            }
            job.status = Status.Aborting;
            job.deadline = uint40(block.timestamp);
            emit JobAborted(jobId, msg.sender, reason, job.deadline);
            return;
        } else {
            revert WrongStatus(jobId, status, Status.Routed);
        }
        job.status = Status.Aborted;
        _refund(jobId, job);
        emit JobAborted(jobId, msg.sender, reason, job.deadline);
    }

    // ---------------------------------------------------------------- views
    function getJob(uint256 jobId) external view returns (Job memory) {
        return _job(jobId);
    }

    /// @notice The longest a node's stake must stay slashable after it asks to leave: a job routed
    /// now may run to its deadline, be claimed, and be audited in the epochs after it settles.
    function settlementHorizon() external view returns (uint256) {
        return uint256(terms.maxJobDuration) + CLAIM_WINDOW + 2 * epochLength;
    }

    // ---------------------------------------------------------------- internal
    function _setTerms(Terms memory t) private {
        if (t.coordinatorFeeBps > MAX_COORDINATOR_FEE_BPS) revert InvalidParameter("coordinatorFeeBps");
        if (t.maxJobDuration == 0) revert InvalidParameter("maxJobDuration");
        if (t.minAuditBps > BPS) revert InvalidParameter("minAuditBps");
        if (t.committeeSize == 0 || t.committeeSize > MAX_COMMITTEE) revert InvalidParameter("committeeSize");
        if (t.commitPeriod == 0 || t.revealPeriod == 0) revert InvalidParameter("commitPeriod/revealPeriod");
        // an audit opened at the end of the challenge window must be settled before the fees it
        // may take back become withdrawable (one epoch after submission at the earliest)
        if (uint256(t.challengeWindow) + t.commitPeriod + t.revealPeriod > epochLength) {
            revert InvalidParameter("challengeWindow + commitPeriod + revealPeriod must fit in epochLength");
        }
        terms = t;
        emit TermsSet(t);
    }

    /// @dev What a job keeps back from its client's refund to pay committees: the verifiers' pay
    /// for every stage, were each audited (nothing when the job is never audited).
    function _auditReserve(uint16 auditBps, uint256 fees) private view returns (uint256) {
        if (auditBps == 0) return 0;
        Terms storage t = terms;
        return fees * t.committeeSize * t.verifyFeeBps / BPS;
    }

    function _checkAuditWindow(uint256 jobId, Job storage job) private view {
        uint256 closesAt = uint256(job.deadline) + terms.challengeWindow;
        if (block.timestamp > closesAt) revert AuditWindowClosed(jobId, closesAt);
    }

    function _job(uint256 jobId) private view returns (Job storage job) {
        job = _jobs[jobId];
        if (job.status == Status.None) revert UnknownJob(jobId);
    }

    function _jobWithStatus(uint256 jobId, Status need) private view returns (Job storage job) {
        job = _job(jobId);
        if (job.status != need) revert WrongStatus(jobId, job.status, need);
    }

    /// @dev Reverts unless `stages` is a valid route for the job.
    function _checkRoute(uint256 jobId, Job storage job, Stage[] calldata stages) private view {
        uint256 n = stages.length;
        if (n == 0) revert EmptyRoute(jobId);
        if (n > MAX_ROUTE_STAGES) revert RouteTooLong(jobId, n, MAX_ROUTE_STAGES);
        address[] memory nodes = new address[](n);
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
        total += total * job.coordinatorFeeBps / BPS + _auditReserve(job.auditBps, total);
        if (total > job.escrow) revert FeeExceedsEscrow(jobId, total, job.escrow);
    }

    /// @dev Credits the job's remaining escrow to its client.
    function _refund(uint256 jobId, Job storage job) private {
        uint256 amount = job.escrow;
        if (amount == 0) return;
        job.escrow = 0;
        _accounts[job.client].credit += uint80(amount);
        emit JobRefunded(jobId, job.client, amount);
    }
}
