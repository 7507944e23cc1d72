"""Private jobs' cryptography (shardnet.sealing): content under a job key, the key sealed to a
node's X25519 key; anything opened with another key or context, or tampered with, is refused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from shardnet.jobs import JobParams
from shardnet.sealing import SealError, decrypt, encrypt, is_sealed, key_context, new_job_key, open_key, seal_key


def _pair() -> tuple[bytes, bytes]:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return private, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_content_opens_only_with_its_key_and_context_and_untampered():
    key, text = new_job_key(), b'{"input_ids": [1, 2, 3]}'
    sealed = encrypt(key, text, "input")
    assert is_sealed(sealed) and text not in sealed and encrypt(key, text, "input") != sealed  # fresh nonce
    assert decrypt(key, sealed, "input") == text
    with pytest.raises(SealError, match="does not open"):
        decrypt(new_job_key(), sealed, "input")
    with pytest.raises(SealError, match="does not open"):
        decrypt(key, sealed, "output:1")  # an input passed off as an output
    with pytest.raises(SealError, match="does not open"):
        decrypt(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), "input")
    with pytest.raises(SealError, match="not sealed"):
        decrypt(key, text, "input")


def test_a_job_key_sealed_to_a_node_opens_only_with_that_nodes_key_for_that_job():
    (private, public), (other, _) = _pair(), _pair()
    key, context = new_job_key(), key_context(7, 31337, "0x" + "ab" * 20)
    sealed = seal_key(public, key, context)
    assert key not in sealed and open_key(private, sealed, context) == key
    with pytest.raises(SealError):
        open_key(other, sealed, context)
    with pytest.raises(SealError):
        open_key(private, sealed, key_context(8, 31337, "0x" + "ab" * 20))  # another job's
    with pytest.raises(SealError, match="32-byte"):
        seal_key(b"\x01" * 20, key, context)  # a dataKey that is no X25519 key


def test_params_post_only_what_differs_from_the_defaults():
    assert JobParams().encode() == b"{}"
    private = JobParams(kind="forward", private=True)
    assert private.encode() == b'{"kind":"forward","private":true}'
    assert JobParams.decode(private.encode()) == private
    from shardnet.errors import JobInputError

    with pytest.raises(JobInputError, match="params.private"):
        JobParams.decode(b'{"private": "yes"}')
