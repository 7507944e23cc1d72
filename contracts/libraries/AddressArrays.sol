// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title AddressArrays
/// @notice Fixed-size memory arrays filled part-way, cut to the part that was filled.
library AddressArrays {
    /// @dev Shortens `items` in place to its first `length` entries (length <= items.length) and
    /// returns it. The memory past the new end is left as it was; nothing reads it.
    function truncate(address[] memory items, uint256 length) internal pure returns (address[] memory) {
        assert(length <= items.length);
        assembly ("memory-safe") {
            mstore(items, length)
        }
        return items;
    }
}
