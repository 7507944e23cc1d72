"""Is a model exact when split? Run the whole model and its blocks chained one span per block
on seeded probes, and compare every block's output.

Probes: a prefill and 8 cached decode steps (longer than a sliding window when the model has a
small one), a padded batch, and a route entering a span part-way (decoders); a padded batch of
sentence pairs with token types (encoders); a batch of images (vision). fp32 throughout; a
block diverges when its output differs from the whole model's by more than `tolerance` relative
to the largest value it should have produced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from shardnet.errors import ModelError
from shardnet.model.layout import Layout, block_state, cache_argument, layout_for
from shardnet.model.span import Session, SpanModel, _hidden_arg, mean_pool
from shardnet.protocol import Span

TOLERANCE = 1e-5
DECODE_STEPS = 8


@dataclass
class CheckResult:
    model_type: str
    exact: bool
    max_abs_diff: float | None
    first_diverging_block: int | None
    kind: str | None = None
    blocks: int | None = None
    max_rel_diff: float | None = None
    probes: dict[str, float] = field(default_factory=dict)  # probe -> max abs diff of its outputs
    error: str | None = None  # why the model could not be run split at all

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reason(self) -> str:
        if self.exact:
            return f"{self.model_type}: exact when split ({self.blocks} blocks)"
        if self.error:
            return f"{self.model_type} cannot be split: {self.error}"
        return (
            f"{self.model_type} is not exact when split: block {self.first_diverging_block} is the first to "
            f"diverge from the whole model (max abs diff {self.max_abs_diff:.3g}, "
            f"relative {self.max_rel_diff:.3g} > {TOLERANCE:g})"
        )


class _Worst:
    """The largest difference seen per block, relative to the block's largest reference value."""

    def __init__(self, blocks: int):
        self.abs = [0.0] * blocks
        self.rel = [0.0] * blocks
        self.probes: dict[str, float] = {}

    def add(self, probe: str, refs: list[torch.Tensor], gots: list[torch.Tensor], at: list[int] | None = None) -> None:
        """Compare outputs block by block (`at`: which blocks they are; default 0, 1, ...)."""
        for i, (ref, got) in enumerate(zip(refs, gots, strict=True)):
            if ref.shape != got.shape:
                diff = float("inf")
                scale = 1.0
            else:
                diff = float((ref.float() - got.float()).abs().max()) if ref.numel() else 0.0
                scale = max(float(ref.float().abs().max()) if ref.numel() else 0.0, 1e-6)
            block = at[i] if at else i
            self.abs[block] = max(self.abs[block], diff)
            self.rel[block] = max(self.rel[block], diff / scale)
            self.probes[probe] = max(self.probes.get(probe, 0.0), diff)


def _capture(model: nn.Module, layout: Layout) -> tuple[list[torch.Tensor], list[Any]]:
    """Hooks recording what each block of the whole model hands to the next: block 0's output
    is the first layer's input, block i's the output of layer i-1."""
    states: list[torch.Tensor] = []
    layers = model.get_submodule(layout.layers)
    assert isinstance(layers, nn.ModuleList)

    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        states.append(_hidden_arg(args, kwargs).detach().clone())

    def post(module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        states.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handles = [layers[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [layer.register_forward_hook(post, with_kwargs=True) for layer in layers]
    return states, handles


def _final(layout: Layout, out: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if layout.kind == "encoder":
        return mean_pool(out.last_hidden_state, attention_mask)
    logits: torch.Tensor = out.logits
    return logits


def _chain(
    spans: list[SpanModel],
    x: torch.Tensor,
    mask: torch.Tensor | None,
    sessions: list[Session] | None,
    extras: dict[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    outs = []
    for i, span in enumerate(spans):
        x = span(x, attention_mask=mask, session=sessions[i] if sessions else None, extras=extras if i == 0 else None)
        outs.append(x)
    return outs


def check_model(model: nn.Module, tolerance: float = TOLERANCE, seed: int = 0) -> CheckResult:
    """Run `model` whole and split one block per span on seeded probes; see the module doc."""
    config: Any = model.config
    model_type = str(getattr(config, "model_type", type(model).__name__))
    try:
        layout = layout_for(config)
    except ModelError as exc:
        return CheckResult(model_type, False, None, None, error=str(exc))
    n = layout.num_blocks
    try:
        model = model.float().eval()
        blocks = {b: block_state(model, config, b) for b in range(n)}
        # (huge_pages=False: spans run a few times here, and the whole model is already in memory,
        # so moving their weights would only hold it twice)
        spans = [SpanModel(config, Span(b, b + 1), blocks, huge_pages=False) for b in range(n)]
        worst = _Worst(n)
        with torch.no_grad():
            _probe(model, config, layout, spans, blocks, worst, seed)
    except Exception as exc:  # noqa: BLE001 - anything that breaks the split run refuses the model
        return CheckResult(
            model_type, False, None, None, kind=layout.kind, blocks=n, error=f"{type(exc).__name__}: {exc}"
        )
    diverging = next((b for b in range(n) if worst.rel[b] > tolerance), None)
    return CheckResult(
        model_type,
        diverging is None,
        max(worst.abs),
        diverging,
        kind=layout.kind,
        blocks=n,
        max_rel_diff=max(worst.rel),
        probes=worst.probes,
    )


def _window(config: Any) -> int | None:
    for name in ("sliding_window", "attention_chunk_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _probe(
    model: nn.Module,
    config: Any,
    layout: Layout,
    spans: list[SpanModel],
    blocks: dict[int, dict[str, torch.Tensor]],
    worst: _Worst,
    seed: int,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    states, handles = _capture(model, layout)

    def whole(**inputs: Any) -> list[torch.Tensor]:
        states.clear()
        out = model(**inputs)
        got = [*states, _final(layout, out, inputs.get("attention_mask"))]
        return got

    try:
        if layout.kind == "image_classifier":
            size = config.image_size
            hw = (size, size) if isinstance(size, int) else tuple(size)
            pixels = torch.randn(2, config.num_channels, *hw, generator=gen)
            worst.add("images", whole(pixel_values=pixels), _chain(spans, pixels, None, None))
            return
        vocab = int(config.vocab_size)
        window = _window(config)
        length = 12 if window is None or window > 48 else window + 5
        max_len = getattr(config, "max_position_embeddings", None)
        if isinstance(max_len, int):
            length = min(length, max_len - DECODE_STEPS - 2)
        ids = torch.randint(0, vocab, (2, length), generator=gen)
        if layout.kind == "encoder":
            mask = torch.ones(2, length, dtype=torch.long)
            mask[1, length - 3 :] = 0  # right padding
            extras: dict[str, torch.Tensor] = {}
            if int(getattr(config, "type_vocab_size", 1) or 1) > 1:  # sentence pairs
                types = torch.zeros(2, length, dtype=torch.long)
                types[:, length // 2 :] = 1
                extras["token_type_ids"] = types
            ref = whole(input_ids=ids, attention_mask=mask, **extras)
            worst.add("pairs" if extras else "batch", ref, _chain(spans, ids, mask, None, extras))
            return
        _decode(whole, spans, ids[:1], None, worst, "prefill+decode", gen, vocab)
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, :3] = 0  # left padding
        _decode(whole, spans, ids, mask, worst, "padded batch", gen, vocab, steps=2)
        # a route entering a span part-way: [0, 2) then [1, n) entered at block 2
        n = layout.num_blocks
        first = SpanModel(config, Span(0, 2), blocks, huge_pages=False)
        second = SpanModel(config, Span(1, n), blocks, huge_pages=False)
        ref = whole(input_ids=ids[:1], use_cache=False)
        hidden = first(ids[:1])
        got = second(hidden, start=2)
        worst.add("entered part-way", [ref[1], ref[-1]], [hidden, got], at=[1, n - 1])
    finally:
        for handle in handles:
            handle.remove()


def _decode(
    whole: Any,
    spans: list[SpanModel],
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    worst: _Worst,
    probe: str,
    gen: torch.Generator,
    vocab: int,
    steps: int = DECODE_STEPS,
) -> None:
    """Prefill then `steps` cached decode steps, the whole model and the chained spans fed the
    same tokens (the whole model's greedy choices), every block compared at every step."""
    cache = DynamicCache(config=spans[0].config)
    cache_kw = cache_argument(spans[0].model)
    sessions = [span.new_session() for span in spans]
    x = ids
    for _ in range(steps + 1):
        inputs: dict[str, Any] = {"input_ids": x, cache_kw: cache, "use_cache": True}
        if mask is not None:
            inputs["attention_mask"] = mask
        ref = whole(**inputs)
        got = _chain(spans, x, mask, sessions)
        worst.add(probe, ref, got)
        x = ref[-1][:, -1].argmax(-1, keepdim=True)
        if mask is not None:
            mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
