// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// Test-only account that is a contract: forwards calls, and on receiving ETH either re-enters
/// the sender's withdraw() (mode 0) or refuses the payment (mode 1).
contract Attacker {
    uint8 public mode;
    uint256 public reentries;

    function setMode(uint8 mode_) external {
        mode = mode_;
    }

    function exec(address target, bytes calldata data) external payable returns (bytes memory) {
        (bool ok, bytes memory ret) = target.call{value: msg.value}(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        if (mode == 1) revert("no thanks");
        if (reentries++ == 0) {
            (bool ok, bytes memory ret) = msg.sender.call(abi.encodeWithSignature("withdraw()"));
            if (!ok) {
                assembly {
                    revert(add(ret, 32), mload(ret))
                }
            }
        }
    }
}
