"""Sentence embeddings from an encoder's last hidden states, as the model's own
sentence-transformers config says (shardnet.model.shards reads it into the manifest)."""

from __future__ import annotations

from typing import Any

import torch

from shardnet.errors import ModelError


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Sentence embedding as all-MiniLM-L6-v2 makes it: masked mean, then L2 normalisation. [b, d]"""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2])
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: dict[str, Any]) -> torch.Tensor:
    """A sentence embedding [b, d] the way the model's sentence-transformers config says."""
    mode = pooling.get("mode", "mean")
    if mode == "mean":
        if pooling.get("normalize", True):
            return mean_pool(hidden, attention_mask)
        mask = (torch.ones(hidden.shape[:2]) if attention_mask is None else attention_mask).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        mask = (torch.ones(hidden.shape[:2]) if attention_mask is None else attention_mask).unsqueeze(-1)
        pooled = hidden.masked_fill(mask == 0, float("-inf")).amax(1)
    else:
        raise ModelError(f"pooling mode {mode!r} is not one of mean, cls, max")
    return torch.nn.functional.normalize(pooled, p=2, dim=1) if pooling.get("normalize", True) else pooled
