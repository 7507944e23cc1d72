"""`make demo`: bring the devnet up and show where everything is.

This grows into the full job demo (nodes, coordinator, a real model) as those parts land.
"""

from __future__ import annotations

import sys

from shardnet import devnet
from shardnet.errors import ShardnetError


def main() -> int:
    try:
        info = devnet.up()
    except ShardnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"devnet up: chain {info['rpc_url']} (id {info['chain_id']}), IPFS {info['ipfs_api']}")
    for name, address in info["contracts"].items():
        print(f"  {name:<14}{address}")
    devnet.down()
    print("devnet down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
