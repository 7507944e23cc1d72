"""A link's cryptography (node.link): the node's X25519 link key, the Noise session each link
runs (`Noise_IK_25519_ChaChaPoly_SHA256`, via the maintained `noiseprotocol` package on
`cryptography`), and the sealing of frames into Noise-sized chunks, each prefixed by its 4-byte
length (Noise messages are at most 65,535 bytes)."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseHandshakeError, NoiseInvalidMessage, NoiseValidationError, NoiseValueError

log = logging.getLogger("shardnet.node.link")

PROTOCOL = b"Noise_IK_25519_ChaChaPoly_SHA256"
KEY_FILE = "link.key"
CHUNK = 65535 - 16  # Noise's largest message, less the ChaChaPoly tag

# what noiseprotocol raises on input that is not a valid message for the session's state
NOISE_ERRORS = (
    NoiseInvalidMessage,
    NoiseValueError,
    NoiseHandshakeError,
    NoiseValidationError,
    InvalidTag,
    ValueError,
)


def prologue(chain_id: int, market: str) -> bytes:
    """What both ends mix into the handshake: a session is valid for this deployment only."""
    return f"shardnet-link/1:{chain_id}:{market.lower()}".encode()


class LinkKey:
    """This node's X25519 link key, created on first start and kept in the state folder."""

    def __init__(self, private: bytes):
        self.private = private
        key = X25519PrivateKey.from_private_bytes(private)
        self.public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> LinkKey:
        path = Path(state_dir) / KEY_FILE
        if path.exists():
            raw = path.read_bytes()
            if len(raw) == 32:
                return cls(raw)
            log.warning("%s is not a 32-byte X25519 key; making a new one", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(raw)
        tmp.chmod(0o600)
        tmp.replace(path)
        return cls(raw)


def handshake_state(prologue: bytes, key: LinkKey, remote: bytes | None = None) -> NoiseConnection:
    """A session about to shake hands: as the sender (knowing the receiver's key, `remote`) or
    as the receiver."""
    noise = NoiseConnection.from_name(PROTOCOL)
    if remote is None:
        noise.set_as_responder()
    else:
        noise.set_as_initiator()
        noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    noise.set_prologue(prologue)
    noise.set_keypair_from_private_bytes(Keypair.STATIC, key.private)
    noise.start_handshake()
    return noise


def seal(noise: NoiseConnection, plaintext: bytes) -> bytes:
    """Encrypt a frame in Noise-sized chunks, each prefixed by its length."""
    parts: list[bytes] = []
    for i in range(0, max(len(plaintext), 1), CHUNK):  # (one chunk: the slice and the join copy nothing)
        sealed = noise.encrypt(plaintext[i : i + CHUNK])
        parts += (struct.pack("<I", len(sealed)), sealed)
    return b"".join(parts)


def unseal(noise: NoiseConnection, data: bytes) -> bytes:
    """Decrypt a sealed frame; ValueError if it is truncated, padded, reordered or forged."""
    parts: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            raise ValueError("frame ends inside a chunk length")
        (n,) = struct.unpack_from("<I", data, at)
        if n < 16 or n > CHUNK + 16 or at + 4 + n > len(data):
            raise ValueError("frame chunk runs past the frame")
        try:
            parts.append(noise.decrypt(data[at + 4 : at + 4 + n]))
        except NOISE_ERRORS:
            raise ValueError("frame does not decrypt (replayed, reordered or forged)") from None
        at += 4 + n
    if not at:
        raise ValueError("empty frame")
    return b"".join(parts)  # (one chunk, every decode step's: the join returns it as it is)
