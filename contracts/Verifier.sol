// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {AuditCase, IVerifier} from "./interfaces/IVerifier.sol";
import {NothingToWithdraw, TransferFailed} from "./interfaces/SharedErrors.sol";

/// @title Verifier
/// @notice Re-execution committees for stages the market drew for audit or that someone
/// challenged. A committee of staked nodes other than the stage's own is drawn from the seed the
/// market passes (the hash of the block the result landed in, or of the block before a
/// challenge). Each member re-runs the stage from its transcript on IPFS, commits
/// keccak256(abi.encode(auditId, member, vote, salt)) before `commitDeadline`, then reveals its
/// vote; revealing opens early once every member has committed, and the audit resolves early once
/// every member has revealed. The stage is found wrong when more revealed votes say so than not.
///
/// Consequences, when resolved:
/// - found wrong: the node is slashed max(minSlash, slashMultiple x fee) (its stake, then its
///   pending unstake); the market takes its fee and the coordinator's cut on it back for the
///   client; what could not be taken back is paid to the client from the slash; a challenger
///   gets its bond back twice over from the slash; the rest goes to the treasury;
/// - every member that revealed with the majority is paid budget / committee size (the
///   budget is the client's audit reserve, or the challenger's bond);
/// - a member that revealed against the majority loses `memberPenalty`; one that did not reveal
///   is recorded failed in the NodeRegistry;
/// - what the budget does not pay out goes back to the client (an audit) or, for a challenge
///   not upheld, to the challenged node.
/// @dev Invariant: address(this).balance == sum(credit) + sum(budget of unresolved audits).
///
/// | who | may | when |
/// | --- | --- | --- |
/// | the market | open an audit | when it draws one or a stage is challenged |
/// | a member | commit, then reveal its vote | before the commit, then the reveal deadline |
/// | anyone | resolve an audit | after the reveal deadline, or once every member revealed |
/// | anyone credited | withdraw | any time |
/// | the admin | set the penalties | any time; audits already open use the new ones |
contract Verifier is IVerifier, AccessControl, ReentrancyGuardTransient {
    uint256 private constant BPS = 10_000;

    IJobMarket public immutable market;
    INodeRegistry public immutable nodeRegistry;

    Penalties public penalties;
    uint256 public auditCount;
    mapping(uint256 => Audit) private _audits;
    mapping(uint256 => address[]) private _members;
    mapping(uint256 => mapping(address => Ballot)) private _ballots;
    mapping(address => uint256) public credit;

    constructor(address admin, IJobMarket market_, INodeRegistry nodeRegistry_, Penalties memory penalties_) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        market = market_;
        nodeRegistry = nodeRegistry_;
        _setPenalties(penalties_);
    }

    /// @dev Slashed stake arrives from the NodeRegistry only.
    receive() external payable {
        if (msg.sender != address(nodeRegistry)) revert NotNodeRegistry(msg.sender);
    }

    function setPenalties(Penalties calldata penalties_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setPenalties(penalties_);
    }

    // ---------------------------------------------------------------- the market
    /// @inheritdoc IVerifier
    function open(AuditCase calldata c, bytes32 seed) external payable returns (uint256 auditId) {
        if (msg.sender != address(market)) revert NotMarket(msg.sender);
        (,,,, uint32 commitPeriod, uint32 revealPeriod, uint8 committeeSize,) = market.terms();
        address[] memory members = nodeRegistry.drawActive(seed, committeeSize, c.node);
        auditId = ++auditCount;
        Audit storage a = _audits[auditId];
        a.c = c;
        a.budget = uint96(msg.value);
        a.commitDeadline = uint40(block.timestamp + commitPeriod);
        a.revealDeadline = uint40(block.timestamp + commitPeriod + revealPeriod);
        a.size = uint8(members.length);
        _members[auditId] = members;
        emit AuditOpened(auditId, c.jobId, c.stage, c.node, members, a.commitDeadline, a.revealDeadline, c.challenger);
        if (members.length == 0) _resolve(auditId, a); // nobody to check it: the budget goes back
    }

    // ---------------------------------------------------------------- members
    function commit(uint256 auditId, bytes32 commitment) external {
        Audit storage a = _audit(auditId);
        if (block.timestamp > a.commitDeadline) revert CommitClosed(auditId, a.commitDeadline);
        Ballot storage b = _ballot(auditId, msg.sender);
        if (b.commitment != bytes32(0)) revert AlreadyCommitted(auditId, msg.sender);
        b.commitment = commitment;
        ++a.committed;
        emit VoteCommitted(auditId, msg.sender);
    }

    function reveal(uint256 auditId, Vote vote, bytes32 salt) external {
        Audit storage a = _audit(auditId);
        if (vote == Vote.None) revert InvalidVote();
        if (block.timestamp <= a.commitDeadline && a.committed < a.size) {
            revert RevealNotOpen(auditId, a.commitDeadline + 1);
        }
        if (block.timestamp > a.revealDeadline) revert RevealClosed(auditId, a.revealDeadline);
        Ballot storage b = _ballot(auditId, msg.sender);
        if (b.commitment == bytes32(0)) revert NoCommitment(auditId, msg.sender);
        if (b.vote != Vote.None) revert AlreadyRevealed(auditId, msg.sender);
        if (commitmentOf(auditId, msg.sender, vote, salt) != b.commitment) revert RevealMismatch(auditId, msg.sender);
        b.vote = vote;
        ++a.revealed;
        if (vote == Vote.Wrong) ++a.wrongVotes;
        emit VoteRevealed(auditId, msg.sender, vote);
    }

    // ---------------------------------------------------------------- anyone
    function resolve(uint256 auditId) external nonReentrant {
        Audit storage a = _audit(auditId);
        if (a.revealed < a.size && block.timestamp <= a.revealDeadline) {
            revert NotResolvable(auditId, a.revealDeadline + 1);
        }
        _resolve(auditId, a);
    }

    function withdraw() external nonReentrant {
        uint256 amount = credit[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        credit[msg.sender] = 0;
        emit RewardWithdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed(msg.sender, amount);
    }

    // ---------------------------------------------------------------- views
    function getAudit(uint256 auditId) external view returns (Audit memory) {
        return _audits[auditId];
    }

    function membersOf(uint256 auditId) external view returns (address[] memory) {
        return _members[auditId];
    }

    function ballotOf(uint256 auditId, address member) external view returns (Ballot memory) {
        return _ballots[auditId][member];
    }

    function challengeBond() external view returns (uint256) {
        return penalties.challengeBond;
    }

    /// @notice What a member commits to: keccak256(abi.encode(auditId, member, vote, salt)).
    function commitmentOf(uint256 auditId, address member, Vote vote, bytes32 salt) public pure returns (bytes32) {
        return keccak256(abi.encode(auditId, member, vote, salt));
    }

    // ---------------------------------------------------------------- internal
    function _resolve(uint256 auditId, Audit storage a) private {
        if (a.resolved) revert AlreadyResolved(auditId);
        a.resolved = true;
        AuditCase memory c = a.c;
        if (a.size == 0) {
            // no eligible member: nobody checked it, so the budget goes back to whoever paid it
            _pay(auditId, c.challenger == address(0) ? c.client : c.challenger, a.budget, a.budget, "no committee");
            emit AuditResolved(auditId, c.jobId, c.node, false, 0, 0, 0);
            return;
        }
        uint256 wrong = a.wrongVotes;
        uint256 right = a.revealed - wrong;
        bool upheld = wrong > right;
        a.upheld = upheld;
        uint256 pot = a.budget;
        uint256 slashed;
        if (upheld) {
            Penalties memory p = penalties;
            uint256 amount = uint256(c.fee) * p.slashMultiple;
            if (amount < p.minSlash) amount = p.minSlash;
            slashed = nodeRegistry.slash(c.node, amount, "audit: stage output found wrong");
            pot += slashed;
            (uint256 recovered, uint256 owed) = market.revoke(c);
            if (owed > recovered) pot -= _pay(auditId, c.client, owed - recovered, pot, "refund not recovered");
        }
        uint256 committeePaid;
        (pot, committeePaid) = _settleMembers(auditId, a, upheld ? Vote.Wrong : Vote.Correct, pot);
        uint256 budgetLeft = a.budget - committeePaid;
        if (upheld && c.challenger != address(0)) {
            // the committee's pay came out of the bond: the slash returns it, and the bond again
            pot -= _pay(auditId, c.challenger, 2 * uint256(a.budget), pot, "bond back and reward");
        } else if (!upheld && budgetLeft != 0) {
            // an audit's unspent reserve goes back to the client; a failed challenge's bond to the node
            bool drawn = c.challenger == address(0);
            pot -= _pay(auditId, drawn ? c.client : c.node, budgetLeft, pot, drawn ? "reserve back" : "bond forfeited");
        }
        if (pot != 0) _pay(auditId, nodeRegistry.treasury(), pot, pot, "treasury");
        emit AuditResolved(auditId, c.jobId, c.node, upheld, right, wrong, slashed);
    }

    /// @dev Pays the members who revealed with the majority (budget / size each, from `pot`),
    /// slashes those who revealed against it (into `pot`), records the absent ones failed.
    function _settleMembers(uint256 auditId, Audit storage a, Vote majority, uint256 pot)
        private
        returns (uint256, uint256 paid)
    {
        address[] memory members = _members[auditId];
        address[] memory absent = new address[](members.length);
        uint256 nAbsent;
        uint256 share = a.budget / a.size;
        uint256 penalty = penalties.memberPenalty;
        for (uint256 i; i < members.length; ++i) {
            address m = members[i];
            Vote v = _ballots[auditId][m].vote;
            if (v == Vote.None) {
                absent[nAbsent++] = m;
                emit MemberAbsent(auditId, m);
            } else if (v != majority) {
                uint256 taken = penalty == 0 ? 0 : nodeRegistry.slash(m, penalty, "audit: outvoted");
                pot += taken;
                emit MemberOutvoted(auditId, m, taken);
            } else {
                uint256 got = _pay(auditId, m, share, pot, "verification");
                pot -= got;
                paid += got;
            }
        }
        if (nAbsent != 0) {
            assembly ("memory-safe") {
                mstore(absent, nAbsent)
            }
            nodeRegistry.recordFailures(a.c.jobId, absent);
        }
        return (pot, paid);
    }

    /// @dev Credit min(amount, pot) to `to`; returns it.
    function _pay(uint256 auditId, address to, uint256 amount, uint256 pot, string memory why)
        private
        returns (uint256 paid)
    {
        paid = amount < pot ? amount : pot;
        if (paid == 0) return 0;
        credit[to] += paid;
        emit AuditPaid(auditId, to, paid, why);
    }

    function _audit(uint256 auditId) private view returns (Audit storage a) {
        a = _audits[auditId];
        if (a.commitDeadline == 0) revert UnknownAudit(auditId);
    }

    function _ballot(uint256 auditId, address member) private view returns (Ballot storage) {
        address[] storage members = _members[auditId];
        for (uint256 i; i < members.length; ++i) {
            if (members[i] == member) return _ballots[auditId][member];
        }
        revert NotMember(auditId, member);
    }

    function _setPenalties(Penalties memory p) private {
        if (p.minSlash == 0) revert InvalidParameter("minSlash");
        if (p.challengeBond == 0) revert InvalidParameter("challengeBond");
        penalties = p;
        emit PenaltiesSet(p);
    }
}
