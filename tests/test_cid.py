"""The local CID hasher against known Kubo CIDs and against the real daemon."""

import os

import pytest

from shardnet.cid import MAX_LINKS, cid_v0


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
        (b"hello world\n", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
    ],
)
def test_known_kubo_cids(data, expected):
    assert cid_v0(data) == expected


def test_one_byte_changes_the_cid():
    data = bytearray(os.urandom(600_000))
    before = cid_v0(bytes(data))
    data[300_000] ^= 1
    assert cid_v0(bytes(data)) != before


def test_two_level_tree_matches_daemon(ipfs):
    """More chunks than one node may link (174) forces a second tree level."""
    chunk = 1024
    data = os.urandom(chunk * (MAX_LINKS + 30))
    response = ipfs._post(
        "/add", params={"cid-version": "0", "chunker": f"size-{chunk}", "pin": "false"}, files={"file": ("x", data)}
    )
    assert response.json()["Hash"] == cid_v0(data, chunk)
