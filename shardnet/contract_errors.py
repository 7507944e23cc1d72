"""Contract custom errors as named Python exceptions.

Every error declared in the project ABIs becomes a subclass of `ContractRevert` with the
same name, importable from here: `from shardnet.contract_errors import InsufficientStake`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from shardnet.errors import ShardnetError

_HINTS = {
    "InsufficientStake": "send at least the minimum stake (NodeRegistry.minStake) with the call",
    "UnknownModel": "check the model id with 'shardnet audit network' or the ModelRegistered events",
    "UnknownJob": "check the job id with 'shardnet job status' or the JobPosted events",
    "NothingToWithdraw": "nothing is withdrawable yet: stage fees wait out the job's audit window "
    "('shardnet node earnings' says until when)",
    "EscrowMismatch": "send exactly maxFee as the transaction value",
    "BadDeadline": "pick a deadline between now and now + the market's terms().maxJobDuration",
    "CooldownNotOver": "wait until unlockAt, then withdraw again",
    "FeeExceedsEscrow": "post with a max fee covering the stage fees, the coordinator's cut and, for a job that "
    "may be audited, the committees' reserve (committeeSize x verifyFeeBps of the fees)",
    "AuditWindowClosed": "audits and challenges are open only within the market's challengeWindow after the result",
    "OnlyFirstStageAborts": "a later stage cannot abort; a job it cannot finish expires, and stages that "
    "delivered claim their fee",
    "BondTooSmall": "send at least the verifier's challengeBond with the challenge",
    "RevealNotOpen": "reveal once every member committed or the commit period is over",
    "AccessControlUnauthorizedAccount": "this account lacks the role the call needs; ask the deployment's admin "
    "to grant it (e.g. Contracts(chain).models.grant_publisher(address) to publish models)",
}


class ContractRevert(ShardnetError):
    """A contract call reverted with a custom error."""

    error_name = "ContractRevert"

    def __init__(self, args: dict[str, Any] | None = None, raw: str = ""):
        self.error_args = args or {}
        self.raw = raw
        shown = ", ".join(f"{k}={v}" for k, v in self.error_args.items())
        hint = _HINTS.get(self.error_name)
        super().__init__(f"{self.error_name}({shown})" + (f": {hint}" if hint else ""))


@cache
def error_class(name: str) -> type[ContractRevert]:
    """The exception class for custom error `name` (one class per name, so except-clauses match)."""
    return type(name, (ContractRevert,), {"error_name": name, "__module__": __name__})


def __getattr__(name: str) -> type[ContractRevert]:
    if name[:1].isupper():
        return error_class(name)
    raise AttributeError(name)


def _signature_types(inputs: list[dict[str, Any]]) -> list[str]:
    out = []
    for item in inputs:
        if item["type"].startswith("tuple"):
            out.append(f"({','.join(_signature_types(item['components']))})" + item["type"][5:])
        else:
            out.append(item["type"])
    return out


def selectors(abi: list[dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
    """4-byte selector -> error ABI entry, for every error in `abi`."""
    table = {}
    for entry in abi:
        if entry.get("type") == "error":
            sig = f"{entry['name']}({','.join(_signature_types(entry['inputs']))})"
            table[keccak(text=sig)[:4]] = entry
    return table


def decode_revert(data: str | bytes, abi: list[dict[str, Any]]) -> ContractRevert:
    """Turn raw revert data into the named exception (or a generic one if unknown)."""
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else bytes(data)
    entry = selectors(abi).get(raw[:4])
    if entry is None:
        exc = ContractRevert({"data": "0x" + raw.hex()}, raw.hex())
        return exc
    types = _signature_types(entry["inputs"])
    values = abi_decode(types, raw[4:]) if types else ()
    args: dict[str, Any] = {}
    for item, value in zip(entry["inputs"], values, strict=True):
        if item["type"] == "address":
            value = to_checksum_address(value)
        elif isinstance(value, bytes):
            value = "0x" + value.hex()
        args[item["name"] or f"arg{len(args)}"] = value
    return error_class(entry["name"])(args, raw.hex())
