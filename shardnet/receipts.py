"""Stage receipts: the one place that knows the EIP-712 `Receipt` type, how a stage signs it,
how a signer is recovered, the running hash chain a receipt commits to, and how a whole job's
receipts are checked (by the node that submits them, by the auditor, and by the tests).

A stage's `inputHash` / `outputHash` fold every message that entered / left it, in order
(`fold`); stage k's input hash equals stage k-1's output hash, and the last stage's output
hash is keccak256 of the output CID (`output_hash_of`). The market checks the same on-chain
(`_verifyReceipts`, in contracts/base/StageReceipts.sol).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3

from shardnet.protocol import Receipt, Stage

ZERO_HASH = b"\x00" * 32
RECEIPT_TYPES: dict[str, list[dict[str, str]]] = {
    "Receipt": [
        {"name": "jobId", "type": "uint256"},
        {"name": "stage", "type": "uint256"},
        {"name": "start", "type": "uint32"},
        {"name": "end", "type": "uint32"},
        {"name": "fee", "type": "uint128"},
        {"name": "coordinator", "type": "address"},
        {"name": "inputHash", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"},
    ]
}


def fold(running: bytes, payload: bytes) -> bytes:
    """The running hash over every message a stage received or sent, in order."""
    return bytes(keccak(running + keccak(payload)))


def output_hash_of(output_cid: str) -> bytes:
    """What the last stage signs as its output hash: keccak256 of the output CID's UTF-8 bytes."""
    return bytes(keccak(text=output_cid))


class ReceiptDomain:
    """The EIP-712 domain of one deployment's JobMarket (chain id + market address)."""

    def __init__(self, chain_id: int, market: str):
        self.chain_id = chain_id
        self.market = Web3.to_checksum_address(market)

    def as_dict(self) -> dict[str, Any]:
        return {"name": "shardnet", "version": "1", "chainId": self.chain_id, "verifyingContract": self.market}

    def _signable(
        self, job_id: int, stage: int, span: Stage, coordinator: str, input_hash: bytes, output_hash: bytes
    ) -> Any:
        message = {
            "jobId": job_id,
            "stage": stage,
            "start": span.start,
            "end": span.end,
            "fee": span.fee,
            "coordinator": Web3.to_checksum_address(coordinator),
            "inputHash": bytes(input_hash),
            "outputHash": bytes(output_hash),
        }
        return encode_typed_data(self.as_dict(), RECEIPT_TYPES, message)

    def sign(
        self,
        account: LocalAccount,
        job_id: int,
        stage: int,
        span: Stage,
        coordinator: str,
        input_hash: bytes,
        output_hash: bytes,
    ) -> Receipt:
        """The receipt `account` signs for running `span` (stage `stage` of the route that
        `coordinator` recorded, fee included) of a job."""
        signed = account.sign_message(self._signable(job_id, stage, span, coordinator, input_hash, output_hash))
        return Receipt(bytes(input_hash), bytes(output_hash), bytes(signed.signature))

    def signer(self, job_id: int, stage: int, span: Stage, coordinator: str, receipt: Receipt) -> str:
        """The address that signed `receipt`; raises ValueError for an unreadable signature."""
        signable = self._signable(job_id, stage, span, coordinator, receipt.input_hash, receipt.output_hash)
        return str(Account.recover_message(signable, signature=bytes(receipt.signature)))

    def problems(
        self,
        job_id: int,
        coordinator: str,
        route: Sequence[Stage],
        receipts: Sequence[Receipt],
        output_cid: str | None,
    ) -> list[str]:
        """Every way a job's receipts fail what the contract checks: a signer other than the
        stage's node, a broken hash chain, a last output hash that is not keccak(output CID).
        Empty when all is well. `receipts` may be a prefix of the route (delivered stages)."""
        found: list[str] = []
        for k, (stage, receipt) in enumerate(zip(route, receipts, strict=False)):
            try:
                signer = self.signer(job_id, k, stage, coordinator, receipt)
            except ValueError as exc:
                found.append(f"job {job_id} stage {k}: unreadable signature ({exc})")
                continue
            if signer != stage.node:
                found.append(f"job {job_id} stage {k}: receipt signed by {signer}, route names {stage.node}")
            if k and receipt.input_hash != receipts[k - 1].output_hash:
                found.append(f"job {job_id} stage {k}: input hash does not follow stage {k - 1}'s output")
        if output_cid is not None and receipts and receipts[-1].output_hash != output_hash_of(output_cid):
            found.append(f"job {job_id}: last output hash is not keccak(output CID)")
        return found
