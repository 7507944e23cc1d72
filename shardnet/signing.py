"""Data-plane request signatures: every request between stages is signed by the sender's
operator key (EIP-191 over a digest of the job, the path and the body), and a receiver
accepts it only from the node its job's on-chain route names. A client signs its request for
its job's token stream the same way, with the key that posted the job."""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError

DOMAIN = b"shardnet-dataplane/1"


def request_digest(path: str, body: bytes) -> bytes:
    return keccak(DOMAIN + path.encode() + keccak(body))


def sign_request(account: LocalAccount, path: str, body: bytes) -> dict[str, str]:
    signed = account.sign_message(encode_defunct(primitive=request_digest(path, body)))
    return {"x-shardnet-from": account.address, "x-shardnet-signature": "0x" + bytes(signed.signature).hex()}


def recover_sender(path: str, body: bytes, signature: str) -> str | None:
    try:
        return str(
            Account.recover_message(
                encode_defunct(primitive=request_digest(path, body)),
                signature=bytes.fromhex(signature.removeprefix("0x")),
            )
        )
    except (ValueError, TypeError, IndexError, ValidationError):  # IndexError: empty; ValidationError: short
        return None
