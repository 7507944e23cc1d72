"""Private jobs' cryptography, from maintained libraries: content under a job key with
ChaCha20-Poly1305 (`cryptography`), and the job key sealed to a node's registered X25519 key
(its on-chain `dataKey`) with the Noise protocol's one-way pattern N (`noiseprotocol`).

A private job's client makes a random 32-byte job key. The input on IPFS is encrypted under
it; once the job is routed, the client seals the key to each stage's `dataKey` and hands it
to that node (signed with the key that posted the job). The stages encrypt their transcripts
and the last stage the output under the same key, so IPFS holds only ciphertext. A committee
member drawn to check a stage asks the route's nodes for the key (signed with its own key; a
node gives it only to members of an audit of that job, sealed to the member's `dataKey`), so
the transcripts stay checkable by whoever must re-run them, and by nobody else.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage, NoiseValueError

from shardnet.errors import ShardnetError

KEY_BYTES = 32
NONCE_BYTES = 12
MAGIC = b"SNSEAL1\n"  # starts every encrypted file, so a reader knows it is sealed
PATTERN = b"Noise_N_25519_ChaChaPoly_SHA256"


class SealError(ShardnetError):
    """Ciphertext that does not open with this key and context."""


def new_job_key() -> bytes:
    return os.urandom(KEY_BYTES)


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC)


def encrypt(key: bytes, plaintext: bytes, context: str) -> bytes:
    """`plaintext` under the job key, bound to `context` (e.g. "output:7"): a random nonce each
    time, so one key serves a job's input, transcripts and output."""
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, context.encode())


def decrypt(key: bytes, data: bytes, context: str) -> bytes:
    if not is_sealed(data) or len(data) < len(MAGIC) + NONCE_BYTES + 16:
        raise SealError(f"the {context} is not sealed content")
    nonce = data[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, data[len(MAGIC) + NONCE_BYTES :], context.encode())
    except (InvalidTag, ValueError):
        raise SealError(f"the {context} does not open with this job key") from None


def seal_key(recipient: bytes, job_key: bytes, context: str) -> bytes:
    """`job_key` sealed to `recipient`'s X25519 public key (one-way Noise N message)."""
    if len(recipient) != 32:
        raise SealError(f"a node's dataKey must be a 32-byte X25519 key, not {len(recipient)} bytes")
    noise = NoiseConnection.from_name(PATTERN)
    noise.set_as_initiator()
    noise.set_prologue(context.encode())
    noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, recipient)
    noise.start_handshake()
    return bytes(noise.write_message(job_key))


def open_key(private: bytes, sealed: bytes, context: str) -> bytes:
    """The job key in `sealed`, with the recipient's X25519 private key."""
    noise = NoiseConnection.from_name(PATTERN)
    noise.set_as_responder()
    noise.set_prologue(context.encode())
    noise.set_keypair_from_private_bytes(Keypair.STATIC, private)
    noise.start_handshake()
    try:
        key = bytes(noise.read_message(sealed))
    except (NoiseInvalidMessage, NoiseValueError, InvalidTag, ValueError):
        raise SealError(f"the sealed key for {context} does not open with this node's key") from None
    if len(key) != KEY_BYTES:
        raise SealError(f"the sealed key for {context} is {len(key)} bytes, not {KEY_BYTES}")
    return key


def key_context(job_id: int, chain_id: int, market: str) -> str:
    """What a sealed job key is bound to: this job on this deployment."""
    return f"shardnet-job-key/1:{chain_id}:{market.lower()}:{job_id}"
