"""Shards on IPFS: one safetensors file per block plus a manifest.

The manifest records the architecture config, the tokenizer files, and for every block its
CID, sha256, byte size, dtype and quantization. Fetching verifies every byte twice (the CID
is re-hashed by the storage client, then the sha256); a block that fails is never loaded and
the error names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from eth_utils import keccak
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from shardnet.errors import ContentMismatch, ShardnetError
from shardnet.model.architectures import arch_for, block_state, num_blocks
from shardnet.model.quant import DEFAULT_BLOCK_SIZE, DEFAULT_OUTLIER_THRESHOLD, compress_state, decompress_state
from shardnet.protocol import Span
from shardnet.storage import IpfsClient

FORMAT = "shardnet-manifest/1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


class ShardVerificationError(ShardnetError):
    """A fetched block or manifest does not match what the manifest / CID promised."""


@dataclass(frozen=True)
class Manifest:
    data: dict
    cid: str | None = None

    @property
    def config(self):
        return transformers.AutoConfig.for_model(**self.data["config"])

    @property
    def blocks(self) -> list[dict]:
        return self.data["blocks"]

    @property
    def blocks_root(self) -> bytes:
        return bytes.fromhex(self.data["blocks_root"][2:])


def blocks_root(cids: list[str]) -> bytes:
    """The on-chain commitment to every block CID (ModelRegistry.blocksRoot)."""
    return keccak(text=",".join(cids))


def encode_block(tensors: dict[str, torch.Tensor], quant: str, block_size: int, threshold: float) -> bytes:
    stored, meta = compress_state(tensors, quant, block_size, threshold)
    return st_save(stored, metadata={"shardnet": json.dumps(meta)})


def decode_block(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors import safe_open  # noqa: F401  (format check happens in st_load)

    stored = st_load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["shardnet"])
    return decompress_state(stored, meta)


def publish(
    model: torch.nn.Module,
    ipfs: IpfsClient,
    name: str,
    quant: str = "int8",
    block_size: int = DEFAULT_BLOCK_SIZE,
    threshold: float = DEFAULT_OUTLIER_THRESHOLD,
    tokenizer_dir: Path | None = None,
    progress: bool = False,
) -> Manifest:
    """Cut `model` into blocks, add each to IPFS, then the manifest. Returns it with its CID."""
    config = model.config
    arch_for(config)
    blocks = []
    for index in range(num_blocks(config)):
        data = encode_block(block_state(model, config, index), quant, block_size, threshold)
        cid = ipfs.add(data, name=f"{name}-block{index:03d}.safetensors", progress=progress)
        blocks.append(
            {
                "index": index,
                "cid": cid,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "dtype": "float32",
                "quantization": quant,
            }
        )
    tokenizer = {}
    if tokenizer_dir:
        for file in TOKENIZER_FILES:
            path = Path(tokenizer_dir) / file
            if path.exists():
                tokenizer[file] = ipfs.add(path.read_bytes(), name=file)
    data = {
        "format": FORMAT,
        "name": name,
        "model_type": config.model_type,
        "config": config.to_dict(),
        "tokenizer": tokenizer,
        "quantization": {"mode": quant, "block_size": block_size, "outlier_threshold": threshold},
        "blocks": blocks,
        "blocks_root": "0x" + blocks_root([b["cid"] for b in blocks]).hex(),
    }
    cid = ipfs.add(json.dumps(data, sort_keys=True).encode(), name=f"{name}-manifest.json", progress=False)
    return Manifest(data, cid)


def fetch_manifest(ipfs: IpfsClient, cid: str, timeout: float = 30) -> Manifest:
    try:
        raw = ipfs.cat(cid, timeout=timeout)
    except ContentMismatch as exc:
        raise ShardVerificationError(f"manifest {cid} refused: {exc}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise ShardVerificationError(f"manifest {cid} is not JSON; is this CID a shardnet manifest?") from None
    if data.get("format") != FORMAT:
        raise ShardVerificationError(f"{cid} is not a {FORMAT} manifest (format={data.get('format')!r})")
    if blocks_root([b["cid"] for b in data["blocks"]]).hex() != data["blocks_root"][2:]:
        raise ShardVerificationError(f"manifest {cid}: blocks_root does not match its block CIDs")
    return Manifest(data, cid)


def verify_block(entry: dict, data: bytes) -> None:
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ShardVerificationError(
            f"block {entry['index']} ({entry['cid']}) does not match the manifest's sha256/size; not loaded"
        )


def fetch_span(ipfs: IpfsClient, manifest: Manifest, span: Span, timeout: float = 60) -> dict[int, dict]:
    """Fetch, verify and decode exactly the blocks of `span`."""
    out = {}
    for index in range(span.start, span.end):
        entry = manifest.blocks[index]
        try:
            data = ipfs.cat(entry["cid"], timeout=timeout)
        except ContentMismatch as exc:
            raise ShardVerificationError(f"block {index} ({entry['cid']}) refused: {exc}") from None
        verify_block(entry, data)
        out[index] = decode_block(data)
    return out
