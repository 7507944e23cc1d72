"""Run a span [start, end) of a model's blocks, holding only those blocks' weights.

The whole model is instantiated on the meta device (no memory), the span's modules are
materialised on the CPU and filled from the block tensors; everything else is dropped.
Decoder spans keep a KV cache per session, with layer indices renumbered to the span.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from shardnet.errors import BlockLoadError, ModelError
from shardnet.model.architectures import arch_for, block_paths, get_module, model_class, num_blocks, num_layers
from shardnet.protocol import Span


@dataclass
class Session:
    """Per-job state at one span: the KV cache of its layers and how many tokens it has seen."""

    cache: DynamicCache | None = None
    seen: int = 0  # tokens already processed (position offset)


def _fill(module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], block: int) -> None:
    expected = {f"{prefix}.{n}": t for n, t in [*module.named_parameters(), *module.named_buffers()]}
    mine = {k: v for k, v in tensors.items() if k == prefix or k.startswith(prefix + ".")}
    missing = sorted(set(expected) - set(mine))
    if missing:
        raise BlockLoadError(f"block {block} lacks tensors {missing[:3]}{'...' if len(missing) > 3 else ''}")
    for name, target in expected.items():
        source = mine[name]
        if source.shape != target.shape:
            raise BlockLoadError(
                f"block {block}: {name} has shape {tuple(source.shape)}, the architecture needs {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(source.to(target.dtype))


class SpanModel(nn.Module):
    def __init__(self, config: PretrainedConfig, span: Span, blocks: dict[int, dict[str, torch.Tensor]]):
        super().__init__()
        self.config = config
        self.arch = arch_for(config)
        self.span = span
        self.total_blocks = num_blocks(config)
        if span.end > self.total_blocks:
            raise ModelError(f"span [{span.start}, {span.end}) exceeds the model's {self.total_blocks} blocks")
        with torch.device("meta"):
            skeleton = model_class(self.arch)(config)
        self.parts = nn.ModuleDict()  # whole-model path (dots as '/') -> module
        self.layer_list: list[nn.Module] = []
        for block in range(span.start, span.end):
            if block not in blocks:
                raise BlockLoadError(f"block {block} was not provided to span [{span.start}, {span.end})")
            for path in block_paths(self.arch, config, block):
                module = get_module(skeleton, path).to_empty(device="cpu")
                _fill(module, path, blocks[block], block)
                self.parts[path.replace(".", "/")] = module
                if 1 <= block <= num_layers(config):
                    self.layer_list.append(module)
        for path in self.arch.shared:  # weight-free, rebuilt from the config
            self.parts[path.replace(".", "/")] = type(get_module(skeleton, path))(config=config)
        del skeleton
        self.layer_blocks = [b for b in range(span.start, span.end) if 1 <= b <= num_layers(config)]
        self._entry: int | None = None  # the block the layers' cache indices are numbered from (see _number_layers)
        self._lock = threading.Lock()
        self._number_layers(span.start)
        self.eval()

    def _number_layers(self, entry: int) -> int:
        """A job's cache holds only the layers it runs: number them from 0 at its entry block.
        Returns how many of the span's layers come before the entry."""
        skip = sum(1 for b in self.layer_blocks if b < entry)
        if self._entry != entry:
            for local, layer in enumerate(self.layer_list):
                for sub in layer.modules():
                    if hasattr(sub, "layer_idx"):
                        setattr(sub, "layer_idx", local - skip)  # noqa: B010 - nn.Module attribute
            self._entry = entry
        return skip

    def part(self, path: str) -> nn.Module:
        return self.parts[path.replace(".", "/")]

    @property
    def has_embed(self) -> bool:
        return self.span.start == 0

    @property
    def has_final(self) -> bool:
        return self.span.end == self.total_blocks

    def new_session(self) -> Session:
        return Session(cache=DynamicCache() if self.arch.is_decoder and self.layer_list else None)

    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        session: Session | None = None,
        start: int | None = None,
    ) -> torch.Tensor:
        """x: token ids [b, q] (first span; pixels [b, c, h, w] for ViT) or hidden states [b, q, d].
        attention_mask: [b, s] of 1/0 over the whole sequence so far (encoders: padding).
        start: run blocks [start, span end) only (a route entering this span part-way); a job
        keeps the same entry for all its steps. Returns hidden states [b, q, d], or at the last
        span logits [b, q, vocab] (decoders, ViT: [b, labels]) or a normalised embedding [b, d]
        (BERT, mean pooling)."""
        start = self.span.start if start is None else start
        if not self.span.start <= start < self.span.end:
            raise ModelError(f"entry block {start} is outside span [{self.span.start}, {self.span.end})")
        with self._lock:  # layer numbering is shared by the span's jobs: one forward at a time
            skip = self._number_layers(start)
            return self._forward(x, attention_mask, session, start, self.layer_list[skip:])

    def _forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        session: Session | None,
        start: int,
        layers: list[nn.Module],
    ) -> torch.Tensor:
        family = self.arch.family
        q = x.shape[1]
        seen = session.seen if session else 0
        cache = session.cache if session else None
        position_ids = torch.arange(seen, seen + q).unsqueeze(0) if self.arch.is_decoder else None
        hidden = self._embed(x, position_ids) if start == 0 else x

        if layers:
            if family == "rope_decoder":
                mask = create_causal_mask(
                    config=self.config,
                    inputs_embeds=hidden,
                    attention_mask=attention_mask,
                    cache=cache,
                    position_ids=position_ids,
                )
                rope = self.part(self.arch.shared[0])(hidden, position_ids=position_ids)
                for layer in layers:
                    hidden = layer(
                        hidden,
                        attention_mask=mask,
                        position_ids=position_ids,
                        cache=cache,
                        use_cache=cache is not None,
                        position_embeddings=rope,
                    )
            elif family == "gpt2":
                mask = create_causal_mask(
                    config=self.config,
                    inputs_embeds=hidden,
                    attention_mask=attention_mask,
                    cache=cache,
                    position_ids=position_ids,
                )
                for layer in layers:
                    hidden = layer(hidden, cache=cache, attention_mask=mask, use_cache=cache is not None)
            elif family == "bert":
                mask = create_bidirectional_mask(
                    config=self.config, inputs_embeds=hidden, attention_mask=attention_mask
                )
                for layer in layers:
                    hidden = layer(hidden, attention_mask=mask)
            else:
                for layer in layers:
                    hidden = layer(hidden)
            out: Any = hidden  # some layers return a tuple (hidden, ...)
            hidden = out[0] if isinstance(out, tuple) else out
        if session is not None:
            session.seen += q
        return self._final(hidden, attention_mask) if self.has_final else hidden

    def _embed(self, x: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        family = self.arch.family
        if family == "rope_decoder":
            return self._run(self.arch.embed[0], x)
        if family == "gpt2":
            return self._run("transformer.wte", x) + self._run("transformer.wpe", position_ids)
        if family == "bert":
            return self._run("embeddings", input_ids=x)
        return self._run("vit.embeddings", x)

    def _final(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        family = self.arch.family
        if family == "rope_decoder":
            return self._run("lm_head", self._run("model.norm", hidden))
        if family == "gpt2":
            return self._run("lm_head", self._run("transformer.ln_f", hidden))
        if family == "bert":
            assert attention_mask is not None  # sentence embeddings always come with their mask
            return mean_pool(hidden, attention_mask)
        return self._run("classifier", self._run("vit.layernorm", hidden)[:, 0])

    def _run(self, path: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Call the part of the model at `path`: [b, n, ...] in, [b, n, ...] out."""
        out: torch.Tensor = self.part(path)(*args, **kwargs)
        return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Sentence embedding as all-MiniLM-L6-v2 makes it: masked mean, then L2 normalisation. [b, d]"""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2])
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def split_even(total_blocks: int, parts: int) -> list[Span]:
    return [Span(total_blocks * i // parts, total_blocks * (i + 1) // parts) for i in range(parts)]
