// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IJobMarket} from "../interfaces/IJobMarket.sol";
import {NothingToWithdraw, TransferFailed} from "../interfaces/SharedErrors.sol";

/// @title EpochAccounts
/// @notice The market's accounts: what each payee (node, coordinator, client) may withdraw now,
/// and what is credited but still open to audits.
/// @dev Pending credit lives in two buckets per account, one per settlement epoch
/// (`epochLength` seconds): what is credited in epoch e is withdrawable from epoch e + 2, so at
/// least one epoch (longer than the audit window) after the job was submitted. Refunds go to
/// `credit` directly. JobMarket credits (`_pay`), takes back (`_clawback`) and refunds through
/// `_accounts`; payees withdraw here.
abstract contract EpochAccounts is IJobMarket {
    /// @notice Seconds per settlement epoch: pending credit of epoch e is withdrawable from e + 2.
    uint256 public immutable epochLength;

    mapping(address => Account) internal _accounts;

    constructor(uint256 epochLength_) {
        if (epochLength_ == 0 || epochLength_ > type(uint32).max) revert InvalidParameter("epochLength");
        epochLength = epochLength_;
    }

    /// @notice Send the caller everything withdrawable (refunds, and stage fees and coordinator
    /// cuts whose audit window is over).
    function withdraw() external {
        // checks-effects-interactions: the credit is zeroed before the transfer, so a payee that
        // re-enters finds nothing left (tests/test_job_market.py tries it)
        Account memory a = _rolled(_accounts[msg.sender], block.timestamp / epochLength);
        uint256 amount = a.credit;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        a.credit = 0;
        _accounts[msg.sender] = a;
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed(msg.sender, amount);
    }

    /// @notice What `who` may withdraw now, what is pending (credited, not yet past its audit
    /// window), and when the pending part becomes withdrawable in full.
    function balanceOf(address who) external view returns (uint256 withdrawable, uint256 pending, uint256 pendingUntil) {
        uint256 epoch = block.timestamp / epochLength;
        Account memory a = _rolled(_accounts[who], epoch);
        withdrawable = a.credit;
        pending = uint256(a.current) + a.previous;
        if (a.current != 0) pendingUntil = (epoch + 2) * epochLength;
        else if (a.previous != 0) pendingUntil = (epoch + 1) * epochLength;
    }

    /// @dev `a` brought to `epoch`: buckets two or more epochs old become withdrawable credit.
    function _rolled(Account memory a, uint256 epoch) internal pure returns (Account memory) {
        uint16 tag = uint16(epoch);
        if (a.epoch == tag) return a;
        if (a.epoch == uint16(epoch - 1)) {
            a.credit += a.previous;
            a.previous = a.current;
        } else {
            a.credit += a.previous + a.current;
            a.previous = 0;
        }
        a.current = 0;
        a.epoch = tag;
        return a;
    }

    /// @dev Credit `amount` to `who` as pending in `epoch` (the current one).
    function _pay(address who, uint256 amount, uint256 epoch) internal {
        Account memory a = _rolled(_accounts[who], epoch);
        a.current += SafeCast.toUint80(amount);
        _accounts[who] = a;
    }

    /// @dev Take back up to `amount` credited to `who` in `epoch` (its pending bucket, then its
    /// withdrawable credit); returns what was taken. The ETH stays in this contract for the caller.
    function _clawback(address who, uint256 amount, uint256 epoch) internal returns (uint256 taken) {
        uint256 nowEpoch = block.timestamp / epochLength;
        Account memory a = _rolled(_accounts[who], nowEpoch);
        uint80 want = SafeCast.toUint80(amount);
        uint80 take;
        if (epoch == nowEpoch) {
            take = want < a.current ? want : a.current;
            a.current -= take;
        } else if (epoch + 1 == nowEpoch) {
            take = want < a.previous ? want : a.previous;
            a.previous -= take;
        }
        uint80 rest = want - take;
        uint80 more = rest < a.credit ? rest : a.credit;
        a.credit -= more;
        _accounts[who] = a;
        return uint256(take) + more;
    }
}
