// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {NothingToWithdraw, TransferFailed} from "./SharedErrors.sol";

/// @notice One stage of a completed job sent to a committee: what the market knows of it.
struct AuditCase {
    uint256 jobId;
    uint8 stage; // index on the route
    address node; // the stage's node
    uint96 fee; // the stage's fee
    address client; // who posted the job (refunded when the stage is found wrong)
    address coordinator; // who routed it (its cut on the stage is taken back too)
    address challenger; // who challenged it with a bond; zero for an audit drawn at random
}

/// @title IVerifier
/// @notice Re-execution committees: a stage drawn for audit (or challenged) is re-run by nodes
/// drawn at random from the staked ones; they commit to a vote, then reveal it; the majority of
/// revealed votes decides; the losing side pays.
interface IVerifier {
    // ---------------------------------------------------------------- types
    enum Vote {
        None,
        Correct,
        Wrong
    }

    struct Audit {
        AuditCase c;
        uint96 budget; // wei paid in: the client's reserve (drawn) or the challenger's bond
        uint40 commitDeadline;
        uint40 revealDeadline;
        uint8 size; // committee members drawn
        uint8 committed;
        uint8 revealed;
        uint8 wrongVotes;
        bool resolved;
        bool upheld; // the committee found the stage wrong
    }

    struct Ballot {
        bytes32 commitment; // keccak256(abi.encode(auditId, member, vote, salt))
        Vote vote;
    }

    /// @notice Slashing and bonds (the admin sets them).
    struct Penalties {
        uint128 minSlash; // wei a node found wrong loses at least
        uint16 slashMultiple; // ... or this many times the stage's fee, whichever is more
        uint128 memberPenalty; // wei a member on the losing side of the majority loses
        uint128 challengeBond; // wei a challenger puts up at least
    }

    // ---------------------------------------------------------------- events
    event AuditOpened(
        uint256 indexed auditId,
        uint256 indexed jobId,
        uint256 stage,
        address indexed node,
        address[] members,
        uint40 commitDeadline,
        uint40 revealDeadline,
        address challenger
    );
    event VoteCommitted(uint256 indexed auditId, address indexed member);
    event VoteRevealed(uint256 indexed auditId, address indexed member, Vote vote);
    event AuditResolved(
        uint256 indexed auditId,
        uint256 indexed jobId,
        address indexed node,
        bool upheld,
        uint256 correctVotes,
        uint256 wrongVotes,
        uint256 slashed
    );
    event MemberAbsent(uint256 indexed auditId, address indexed member);
    event MemberOutvoted(uint256 indexed auditId, address indexed member, uint256 slashed);
    event AuditPaid(uint256 indexed auditId, address indexed to, uint256 amount, string why);
    event RewardWithdrawn(address indexed account, uint256 amount);
    event PenaltiesSet(Penalties penalties);

    // ---------------------------------------------------------------- errors
    error NotMarket(address caller);
    error NotNodeRegistry(address caller);
    error UnknownAudit(uint256 auditId);
    error NotMember(uint256 auditId, address caller);
    error CommitClosed(uint256 auditId, uint256 closedAt);
    error AlreadyCommitted(uint256 auditId, address member);
    error RevealNotOpen(uint256 auditId, uint256 opensAt);
    error RevealClosed(uint256 auditId, uint256 closedAt);
    error NoCommitment(uint256 auditId, address member);
    error AlreadyRevealed(uint256 auditId, address member);
    error RevealMismatch(uint256 auditId, address member);
    error NotResolvable(uint256 auditId, uint256 resolvableAt);
    error AlreadyResolved(uint256 auditId);
    error InvalidVote();
    error InvalidParameter(string name);

    // ---------------------------------------------------------------- the market
    /// @notice Send a stage to a committee drawn by `seed`; `msg.value` is its budget.
    function open(AuditCase calldata c, bytes32 seed) external payable returns (uint256 auditId);
    function challengeBond() external view returns (uint256);
}
