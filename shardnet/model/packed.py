"""A last span's vocabulary projection for batched decode steps, on its weight packed once.

On one CPU thread a batch of 8 decode steps of `llama-512` spent half its last span's time in the
vocabulary projection ([8, 512] x [512, 32000]): MKL's GEMM packs the whole weight into its own
layout on every call, about as costly as the product itself. `torch.ops.mkl` packs it once
(what torch's own compiler does for a frozen linear layer): the projection of a batch of 8 took
11 ms instead of 16. A single row (a generation alone, a committee re-running a stage, the
in-process reference), a prefill and a forward keep the plain `F.linear`, so they compute the
floats they compute anywhere else; batched rows may differ from unbatched ones in the last bits, as they already do. The
packed copy (about 1.3 times the weight) is made on a span's first batched step, not before.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("shardnet.model")

CHECK_TOLERANCE = 1e-3  # a packed product's largest difference to F.linear's, relative to its scale


def packing_available() -> bool:
    """Whether this torch build has MKL's packed GEMM (x86 builds with MKL)."""
    mkl = getattr(torch.ops, "mkl", None)
    return bool(getattr(torch._C, "has_mkl", False)) and mkl is not None and hasattr(mkl, "_mkl_linear")


class PackedHead:
    """Stands in for an `nn.Linear`'s forward (the module, its parameter and any tying stay as
    they are): a batch of rows of one position each ([b, 1, d], b > 1: decode steps) goes through
    the weight packed for MKL, anything else (one row, a prefill, a forward) through `F.linear`.
    Each batch size is checked once against `F.linear`; a mismatch, an error or a weight that is
    not a contiguous float32 CPU tensor turns packing off for good."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self.packed: torch.Tensor | None = None
        self.checked: set[int] = set()
        self.enabled = packing_available()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        rows = x.shape[0]
        if x.dim() != 3 or x.shape[1] != 1 or rows < 2 or not self.enabled or torch.is_grad_enabled():
            return F.linear(x, weight, bias)  # not a batch of one-position rows
        try:
            return self._packed(x, rows)
        except RuntimeError as exc:  # a build or shape the packed GEMM does not take
            log.warning("packed vocabulary projection off: %s", exc)
            self.enabled, self.packed = False, None
            return F.linear(x, weight, bias)

    def _packed(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        if self.packed is None:
            if weight.dtype != torch.float32 or weight.device.type != "cpu" or not weight.is_contiguous():
                raise RuntimeError(f"weight is {weight.dtype} on {weight.device}, contiguous={weight.is_contiguous()}")
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), rows)
        out: torch.Tensor = torch.ops.mkl._mkl_linear(x, self.packed, weight, bias, rows)
        if rows not in self.checked:
            plain = F.linear(x, weight, bias)
            scale = float(plain.abs().max()) or 1.0
            if out.shape != plain.shape or float((out - plain).abs().max()) > CHECK_TOLERANCE * scale:
                raise RuntimeError(f"the packed product of {rows} rows differs from F.linear's")
            self.checked.add(rows)
        return out


def pack_head(model: Any) -> PackedHead | None:
    """Give a causal LM's output projection (`get_output_embeddings`) a PackedHead; None when it
    has none that is a plain linear layer, or torch has no packed GEMM."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward or not packing_available():
        return None
    packed = PackedHead(head)
    head.forward = packed  # type: ignore[method-assign,assignment]
    return packed
