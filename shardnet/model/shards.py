"""Shards on IPFS: one safetensors file per block plus a manifest.

The manifest records the architecture config, the tokenizer files, and for every block its
CID, sha256, byte size, dtype and quantization. Fetching verifies every byte twice (the CID
is re-hashed by the storage client, then the sha256); a block that fails is never loaded and
the error names it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from shardnet.errors import ContentMismatch, ModelError, ShardVerificationError
from shardnet.model.layout import block_state, layout_for
from shardnet.model.manifest import FORMAT, Manifest, blocks_root
from shardnet.model.quant import DEFAULT_BLOCK_SIZE, DEFAULT_OUTLIER_THRESHOLD, compress_state, decompress_state
from shardnet.protocol import Span
from shardnet.storage import IpfsClient

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
PROCESSOR_FILES = ("preprocessor_config.json",)  # an image model's own preprocessing


def pooling_of(folder: Path | None) -> dict[str, Any] | None:
    """A sentence-transformers model's pooling (modules.json: Pooling, then Normalize or not),
    or None when the folder has none (encoders then pool by masked mean, normalised)."""
    if folder is None or not (Path(folder) / "modules.json").exists():
        return None
    modules = json.loads((Path(folder) / "modules.json").read_text())
    pooling = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
    if pooling is None:
        return None
    config = json.loads((Path(folder) / pooling["path"] / "config.json").read_text())
    modes = [m for m in ("cls_token", "mean_tokens", "max_tokens") if config.get(f"pooling_mode_{m}")]
    if len(modes) != 1:
        raise ModelError(
            f"{folder}: pooling modes {modes or 'none'}; shardnet pools by exactly one of cls, mean or max"
        )
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    return {"mode": modes[0].split("_")[0], "normalize": normalize}


def encode_block(
    tensors: dict[str, torch.Tensor],
    quant: str,
    block_size: int,
    threshold: float,
    input_axes: dict[str, int] | None = None,
) -> bytes:
    stored, meta = compress_state(tensors, quant, block_size, threshold, input_axes)
    return st_save(stored, metadata={"shardnet": json.dumps(meta)})


def input_axes(model: torch.nn.Module) -> dict[str, int]:
    """For each matrix weight whose inputs are not on its last axis, that axis: GPT-2's `Conv1D`
    stores [in, out], where `nn.Linear` stores [out, in]. Outliers are kept per input channel."""
    from transformers.pytorch_utils import Conv1D

    return {f"{name}.weight": 0 for name, module in model.named_modules() if isinstance(module, Conv1D)}


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
    config: Any = model.config
    layout = layout_for(config)
    blocks: list[dict[str, Any]] = []
    axes = input_axes(model)
    for index in range(layout.num_blocks):
        encoded = encode_block(block_state(model, config, index), quant, block_size, threshold, axes)
        cid = ipfs.add(encoded, name=f"{name}-block{index:03d}.safetensors", progress=progress)
        blocks.append(
            {
                "index": index,
                "cid": cid,
                "sha256": hashlib.sha256(encoded).hexdigest(),
                "bytes": len(encoded),
                "dtype": "float32",
                "quantization": quant,
            }
        )
    tokenizer: dict[str, str] = {}
    processor: dict[str, str] = {}
    if tokenizer_dir:
        for files, into in ((TOKENIZER_FILES, tokenizer), (PROCESSOR_FILES, processor)):
            for file in files:
                path = Path(tokenizer_dir) / file
                if path.exists():
                    into[file] = ipfs.add(path.read_bytes(), name=file)
    data: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "model_type": config.model_type,
        "kind": layout.kind,
        # tensors stored once under another name (tied embeddings): alias -> stored name
        "shared": {alias: source for alias, (source, _) in sorted(layout.tied.items())},
        "config": config.to_dict(),
        "tokenizer": tokenizer,
        "processor": processor,
        "pooling": pooling_of(tokenizer_dir),
        "quantization": {"mode": quant, "block_size": block_size, "outlier_threshold": threshold},
        "blocks": blocks,
        "blocks_root": "0x" + blocks_root([b["cid"] for b in blocks]).hex(),
    }
    cid = ipfs.add(json.dumps(data, sort_keys=True).encode(), name=f"{name}-manifest.json", progress=False)
    return Manifest(data, cid)


def verify_block(entry: dict[str, Any], data: bytes) -> None:
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ShardVerificationError(
            f"block {entry['index']} ({entry['cid']}) does not match the manifest's sha256/size; not loaded"
        )


def span_blocks(manifest: Manifest, span: Span) -> list[int]:
    """The blocks a span of `manifest` reads: its own, and any block holding a tensor it shares
    (tied input and output embeddings are stored once, in block 0)."""
    needed: set[int] = set()
    layout = layout_for(manifest.config) if manifest.data.get("shared") else None
    for index in range(span.start, span.end):
        needed |= layout.needs(index) if layout else {index}
    return sorted(needed)


def span_cids(manifest: Manifest, span: Span) -> list[str]:
    """Every CID a node serving `span` reads: the manifest, the span's blocks, and the tokenizer
    and image processor files at the ends (what it pins, so its daemon serves them onward)."""
    cids = [manifest.cid] if manifest.cid else []
    cids += [manifest.blocks[i]["cid"] for i in span_blocks(manifest, span)]
    for files in (manifest.data.get("tokenizer") or {}, manifest.data.get("processor") or {}):
        cids += list(files.values())
    return cids


def fetch_span(
    ipfs: IpfsClient, manifest: Manifest, span: Span, timeout: float = 60
) -> dict[int, dict[str, torch.Tensor]]:
    """Fetch, verify and decode the blocks of `span`, and any block holding a tensor the span
    shares (tied input and output embeddings are stored once, in block 0)."""
    out = {}
    for index in span_blocks(manifest, span):
        entry = manifest.blocks[index]
        try:
            data = ipfs.cat(entry["cid"], timeout=timeout)
        except ContentMismatch as exc:
            raise ShardVerificationError(f"block {index} ({entry['cid']}) refused: {exc}") from None
        verify_block(entry, data)
        out[index] = decode_block(data)
    return out
