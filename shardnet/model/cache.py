"""Per-job caches of a span: which layers a job fills, how they grow, and the padded caches
of decode batches (shardnet.model.span runs them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A full-attention cache layer that writes new keys and values in place into a buffer
    that doubles when full; DynamicLayer concatenates, copying the whole cache at every step.
    `keys`/`values` are views of the filled part; if someone replaces them (a batch handing a
    job its rows back), the next update starts a new buffer from them."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._view: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        n = keys.shape[-2] if keys.dim() == 4 else 0
        q = key_states.shape[-2]
        buffers = self._buffers
        if (
            buffers is None
            or keys is not self._view
            or n + q > buffers[0].shape[-2]
            or buffers[0].shape[:-2] != key_states.shape[:-2]
        ):
            capacity = max(2 * (n + q), 64)
            shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
            buffers = (key_states.new_empty(shape), value_states.new_empty(shape))
            if n:
                buffers[0][..., :n, :] = keys
                buffers[1][..., :n, :] = values
            self._buffers = buffers
        buffers[0][..., n : n + q, :] = key_states
        buffers[1][..., n : n + q, :] = value_states
        self.keys, self.values = buffers[0][..., : n + q, :], buffers[1][..., : n + q, :]
        self._view = self.keys
        return self.keys, self.values


MAX_GROUPS = 4  # padded batch caches a span keeps


class SpanCache(DynamicCache):
    """A whole-model cache of which only `active` layers are filled: lengths and mask sizes come
    from an active layer of the same kind (or, with none, from the tokens seen). Full-attention
    layers grow in place (GrowingLayer)."""

    def __init__(self, config: PretrainedConfig, active: list[int]):
        super().__init__(config=config)
        self.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in self.layers]
        self.active = active
        self.seen = 0

    def _mapped(self, layer_idx: int) -> int | None:
        if layer_idx in self.active:
            return layer_idx
        sliding = self.is_sliding
        want = sliding[layer_idx] if layer_idx < len(sliding) else False
        return next((j for j in self.active if j < len(sliding) and sliding[j] == want), None)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        mapped = self._mapped(layer_idx)
        if mapped is None:
            return self.seen + query_length, 0
        sizes: tuple[int, int] = super().get_mask_sizes(query_length, mapped)
        return sizes


@dataclass
class Session:
    """Per-job state at one span: the cache of its layers and how many tokens it has seen."""

    cache: SpanCache | None = None
    seen: int = 0

    def advance(self, tokens: int) -> None:
        """`tokens` more went through the span: the count, and its cache's, move on."""
        self.seen += tokens
        if self.cache is not None:
            self.cache.seen = self.seen


@dataclass
class BatchGroup:
    """A batch's padded cache, reused when the same jobs (keyed by their sessions' ids, in row
    order) step together again; with several stages, jobs form groups that take turns."""

    sessions: list[Session]  # held, so an id() is never another session's
    lengths: list[int]  # each session's length after that step
    cache: SpanCache
    mask: torch.Tensor


def layer_of(cache: DynamicCache, index: int) -> Any:
    """A cache layer holding keys and values (batching takes only plain DynamicLayers)."""
    return cache.layers[index]


def left_pad(t: Any, length: int) -> torch.Tensor:
    """[1, heads, n, d] -> [1, heads, length, d], zeros in front (masked out)."""
    padded: torch.Tensor = F.pad(t, (0, 0, length - t.shape[-2], 0))
    return padded
