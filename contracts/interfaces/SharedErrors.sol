// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice Errors that more than one shardnet contract raises, declared once.

/// @notice `node` is not registered with at least the minimum stake.
error NodeNotActive(address node);
/// @notice `account` has nothing credited to withdraw.
error NothingToWithdraw(address account);
/// @notice Sending `amount` wei to `to` failed; the amount stays credited.
error TransferFailed(address to, uint256 amount);
