"""Compression: dynamic blockwise int8 quantization and mixed matrix decomposition.

Blockwise: a tensor is flattened and cut into blocks of `block_size` values; each block keeps
its absmax scale (fp32) and int8 codes round(x / scale * 127). Used for weights at rest and
for activations on the wire. Mixed decomposition (as LLM.int8() does for linear layers):
input columns whose magnitude stands out are kept in fp16, the rest is blockwise int8.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import torch

from shardnet.errors import ModelError

QUANT_MODES = ("none", "fp16", "int8", "int8-mixed")
DEFAULT_BLOCK_SIZE = 64
DEFAULT_OUTLIER_THRESHOLD = 6.0  # a column is an outlier when its absmax exceeds this many medians


def quantize_blockwise(t: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (int8 codes [n_blocks, block_size], fp32 scales [n_blocks]); pads the tail block with zeros."""
    if block_size < 1:
        raise ModelError(f"block_size must be >= 1, got {block_size}")
    flat = t.detach().reshape(-1).float()
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    blocks = flat.view(-1, block_size)
    scales = blocks.abs().amax(dim=1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(blocks / safe.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return codes, scales


def dequantize_blockwise(codes: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    numel = 1
    for dim in shape:
        numel *= dim
    return (codes.float() * scales.unsqueeze(1)).reshape(-1)[:numel].reshape(shape)


def outlier_columns(weight: torch.Tensor, threshold: float = DEFAULT_OUTLIER_THRESHOLD) -> torch.Tensor:
    """Input columns ([out, in] weight) whose absmax exceeds `threshold` x the median column absmax."""
    col_max = weight.abs().amax(dim=0)
    return torch.nonzero(col_max > threshold * col_max.median().clamp(min=1e-12)).flatten()


def _is_weight(t: torch.Tensor) -> bool:
    """A weight worth quantizing: floating point, 2-D (matrices) or 3-D (the stacked expert
    matrices of a mixture of experts), at least 1024 values."""
    return t.dim() in (2, 3) and t.numel() >= 1024 and t.dtype.is_floating_point


def compress_state(
    tensors: dict[str, torch.Tensor],
    mode: str,
    block_size: int = DEFAULT_BLOCK_SIZE,
    threshold: float = DEFAULT_OUTLIER_THRESHOLD,
    input_axes: dict[str, int] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Encode a block's tensors for storage. Returns (tensors to save, per-tensor metadata).

    Every floating-point weight of 2 or more dimensions is quantized blockwise (int8 modes).
    int8-mixed keeps outlier input channels of a matrix in fp16: `input_axes[name]` is the
    axis that indexes the inputs (1 for `nn.Linear`'s [out, in], the default; 0 for GPT-2's
    `Conv1D` [in, out]). Stacked expert weights (3-D) are quantized without outliers."""
    if mode not in QUANT_MODES:
        raise ModelError(f"quantization '{mode}' unknown; use one of {QUANT_MODES}")
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        if mode == "fp16" and t.dtype.is_floating_point:
            out[name] = t.half().contiguous()
            meta[name] = {"enc": "fp16"}
            continue
        if mode in ("none", "fp16") or not _is_weight(t):
            out[name] = t.contiguous()
            meta[name] = {"enc": "raw"}
            continue
        weight = t.float()
        entry: dict[str, Any] = {"enc": "int8", "shape": list(t.shape), "block_size": block_size}
        if mode == "int8-mixed" and weight.dim() == 2:
            axis = (input_axes or {}).get(name, 1)
            as_linear = weight if axis == 1 else weight.T  # [out, in] either way
            cols = outlier_columns(as_linear, threshold)
            if cols.numel():
                out[f"{name}::outlier_idx"] = cols.to(torch.int32)
                out[f"{name}::outlier_cols"] = as_linear[:, cols].half().contiguous()
                as_linear = as_linear.clone()
                as_linear[:, cols] = 0
                weight = as_linear if axis == 1 else as_linear.T.contiguous()
                entry = {**entry, "enc": "int8-mixed", "outliers": int(cols.numel()), "axis": axis}
        codes, scales = quantize_blockwise(weight, block_size)
        out[f"{name}::q"] = codes
        out[f"{name}::scale"] = scales
        meta[name] = entry
    return out, meta


def decompress_state(stored: dict[str, torch.Tensor], meta: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Inverse of compress_state: fp32 tensors keyed by their original names."""
    out = {}
    for name, entry in meta.items():
        if entry["enc"] in ("raw", "fp16"):
            out[name] = stored[name].float() if entry["enc"] == "fp16" else stored[name]
            continue
        weight = dequantize_blockwise(stored[f"{name}::q"], stored[f"{name}::scale"], tuple(entry["shape"]))
        if entry["enc"] == "int8-mixed":
            cols = stored[f"{name}::outlier_idx"].long()
            kept = stored[f"{name}::outlier_cols"].float()
            if entry.get("axis", 1) == 1:
                weight[:, cols] = kept
            else:  # Conv1D layout [in, out]: the outlier inputs are rows
                weight[cols, :] = kept.T
        out[name] = weight
    return out


# ---------------------------------------------------------------------- activations on the wire
WIRE_MODES = ("fp32", "fp16", "int8")


def encode_activation(t: torch.Tensor, mode: str = "int8", block_size: int = DEFAULT_BLOCK_SIZE) -> bytes:
    """Serialise hidden states for the next stage: a JSON header, then raw little-endian bytes."""
    if mode not in WIRE_MODES:
        raise ModelError(f"wire mode '{mode}' unknown; use one of {WIRE_MODES}")
    header = {"mode": mode, "shape": list(t.shape), "block_size": block_size}
    if mode == "int8":
        # numpy, not torch: the same arithmetic (absmax / 127, round half to even, clamp; tested
        # equal to quantize_blockwise), in far fewer instructions, which counts on a decode
        # step's path right after the span's compute has flushed the caches
        if block_size < 1:
            raise ModelError(f"block_size must be >= 1, got {block_size}")
        t = t.detach()
        flat = (t if t.dtype == torch.float32 else t.float()).reshape(-1).numpy()
        pad = (-flat.size) % block_size
        if pad:
            flat = np.concatenate([flat, np.zeros(pad, np.float32)])
        blocks = flat.reshape(-1, block_size)
        scales = np.abs(blocks).max(axis=1) / np.float32(127.0)
        safe = np.where(scales > 0, scales, np.float32(1.0))
        codes = blocks / safe[:, None]  # (a new array: the rest works in place, without clip's wrapper)
        np.rint(codes, out=codes)
        np.minimum(codes, 127, out=codes)
        np.maximum(codes, -127, out=codes)
        payload: bytes = scales.tobytes() + codes.astype(np.int8).tobytes()
        header["blocks"] = int(scales.size)
    else:
        dtype = torch.float32 if mode == "fp32" else torch.float16
        if t.dtype != dtype or not t.is_contiguous():  # (else no conversion calls: a decode step's path)
            t = t.to(dtype).contiguous()
        payload = t.detach().numpy().tobytes()
    head = orjson.dumps(header)  # (orjson: see node.messages)
    return struct.pack("<I", len(head)) + head + payload


MAX_ACTIVATION_ELEMENTS = 1 << 28  # 1 GiB of fp32: no stage sends more in one message
MAX_HEADER_BYTES = 4096


def decode_activation(data: bytes) -> torch.Tensor:
    """The hidden states `encode_activation` wrote. Every field is checked against the bytes that
    came (shape, mode, block layout, exact payload size) before anything is allocated, so a
    malformed or hostile message is refused with `ModelError` naming what is wrong."""
    if len(data) < 4:
        raise ModelError("activation message shorter than its 4-byte header length")
    (n,) = struct.unpack_from("<I", data)
    if n > MAX_HEADER_BYTES or 4 + n > len(data):
        raise ModelError(f"activation header of {n} bytes does not fit the {len(data)}-byte message")
    try:
        header = orjson.loads(data[4 : 4 + n])
        mode, shape = header["mode"], tuple(header["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"activation header is not valid: {exc}") from None
    if mode not in WIRE_MODES:
        raise ModelError(f"activation wire mode {mode!r} unknown; one of {WIRE_MODES}")
    if not (1 <= len(shape) <= 4 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ModelError(f"activation shape {list(shape)} is not 1 to 4 positive sizes")
    numel = 1
    for dim in shape:
        numel *= dim
    if numel > MAX_ACTIVATION_ELEMENTS:
        raise ModelError(f"activation of {numel} elements is over the limit of {MAX_ACTIVATION_ELEMENTS}")
    body = memoryview(data)[4 + n :]
    if mode == "int8":
        blocks, block_size = header.get("blocks"), header.get("block_size")
        if not (isinstance(blocks, int) and isinstance(block_size, int) and block_size > 0):
            raise ModelError("int8 activation without a valid block layout")
        if blocks != -(-numel // block_size) or len(body) != blocks * (4 + block_size):
            raise ModelError(
                f"int8 activation of shape {list(shape)} needs {-(-numel // block_size)} blocks of {block_size} "
                f"({-(-numel // block_size) * (4 + block_size)} bytes); got {blocks} blocks, {len(body)} bytes"
            )
        scales = np.frombuffer(body, np.float32, count=blocks)
        codes = np.frombuffer(body, np.int8, offset=4 * blocks).reshape(blocks, block_size)
        values = np.multiply(codes, scales[:, None], dtype=np.float32).reshape(-1)
        return torch.from_numpy((values if values.size == numel else values[:numel]).reshape(shape))
    width = 4 if mode == "fp32" else 2
    if len(body) != numel * width:
        raise ModelError(f"{mode} activation of shape {list(shape)} needs {numel * width} bytes; got {len(body)}")
    array = np.frombuffer(body, np.float32 if mode == "fp32" else np.float16).reshape(shape)
    return torch.from_numpy(array.astype(np.float32))  # a copy of its own: the message's bytes are read-only
