"""The manifest of a published model: its architecture config, tokenizer files, and every
block's CID, sha256, byte size and quantization. Reading one needs no torch, so the
coordinator (which plans from block sizes) never imports it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils.crypto import keccak

from shardnet.errors import ContentMismatch, ShardVerificationError
from shardnet.storage import IpfsClient

if TYPE_CHECKING:
    from transformers import PretrainedConfig

FORMAT = "shardnet-manifest/1"


@dataclass(frozen=True)
class Manifest:
    data: dict[str, Any]
    cid: str | None = None

    @cached_property
    def config(self) -> PretrainedConfig:
        """The architecture config, built once (~0.7 ms each time, and a generation reads it
        every step): shared, so read it only; a model is built from `new_config()`."""
        return self.new_config()

    def new_config(self) -> PretrainedConfig:
        """A config of its own, for building a model (transformers may set fields on it)."""
        import transformers  # only the model side needs the config object

        return transformers.AutoConfig.for_model(**self.data["config"])

    @property
    def blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = self.data["blocks"]
        return blocks

    @property
    def blocks_root(self) -> bytes:
        return bytes.fromhex(self.data["blocks_root"][2:])


def blocks_root(cids: list[str]) -> bytes:
    """The on-chain commitment to every block CID (ModelRegistry.blocksRoot)."""
    return bytes(keccak(text=",".join(cids)))


def fetch_manifest(ipfs: IpfsClient, cid: str, timeout: float = 30) -> Manifest:
    try:
        raw = ipfs.cat(cid, timeout=timeout)
    except ContentMismatch as exc:
        raise ShardVerificationError(f"manifest {cid} refused: {exc}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise ShardVerificationError(f"manifest {cid} is not JSON; is this CID a shardnet manifest?") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ShardVerificationError(f"{cid} is not a {FORMAT} manifest (format={found!r})")
    if blocks_root([b["cid"] for b in data["blocks"]]).hex() != data["blocks_root"][2:]:
        raise ShardVerificationError(f"manifest {cid}: blocks_root does not match its block CIDs")
    return Manifest(data, cid)


def _folder_of(ipfs: IpfsClient, files: dict[str, str], timeout: float, prefix: str) -> Path:
    """A local folder holding `files` (name -> CID) read from IPFS, for transformers to load."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    for name, cid in files.items():
        (folder / name).write_bytes(ipfs.cat(cid, timeout=timeout))
    return folder


def fetch_processor(ipfs: IpfsClient, manifest: Manifest, timeout: float = 30) -> Any | None:
    """An image model's own image processor, from the files its manifest lists (None without)."""
    files = manifest.data.get("processor") or {}
    if not files:
        return None
    import transformers

    folder = _folder_of(ipfs, files, timeout, "shardnet-processor-")
    return transformers.AutoImageProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]


def fetch_tokenizer(ipfs: IpfsClient, manifest: Manifest, timeout: float = 30) -> Any | None:
    """The model's transformers tokenizer, from the files its manifest lists (None without any)."""
    files = manifest.data.get("tokenizer") or {}
    if not files:
        return None
    import transformers

    return transformers.AutoTokenizer.from_pretrained(_folder_of(ipfs, files, timeout, "shardnet-tok-"))
