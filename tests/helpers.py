"""Test helpers shared by the contract tests."""

from __future__ import annotations

from functools import cache

import pytest
import solcx

from shardnet import contract_errors, tools
from tests.conftest import REPO


@cache
def attacker_artifact() -> tuple[list, str]:
    source = (REPO / "tests/contracts/Attacker.sol").read_text()
    out = solcx.compile_standard(
        {
            "language": "Solidity",
            "sources": {"Attacker.sol": {"content": source}},
            "settings": {"outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}, "evmVersion": "cancun"},
        },
        solc_binary=tools.solc_binary(),
    )
    data = out["contracts"]["Attacker.sol"]["Attacker"]
    return data["abi"], "0x" + data["evm"]["bytecode"]["object"]


def deploy_attacker(chain):
    abi, bytecode = attacker_artifact()
    factory = chain.w3.eth.contract(abi=abi, bytecode=bytecode)
    with chain._nonce_lock:
        tx = factory.constructor().build_transaction(
            {
                "from": chain.account.address,
                "chainId": chain.chain_id,
                "nonce": chain.w3.eth.get_transaction_count(chain.account.address, "pending"),
            }
        )
        receipt = chain._send(tx, chain.account)
    return chain.w3.eth.contract(address=receipt["contractAddress"], abi=abi)


def reverts(error_name: str, /, **expected_args):
    """pytest.raises for the named contract error, checking the given args."""
    cls = getattr(contract_errors, error_name)

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(cls)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            for key, value in expected_args.items():
                assert self.info.value.error_args[key] == value, (key, self.info.value.error_args)
            return handled

    return _Check()
