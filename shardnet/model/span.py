"""Run a span [start, end) of a model's blocks with the model's own forward code.

A span builds the whole model with its parameters on the meta device (no memory), puts its own
blocks' tensors in place, and calls the model's forward as transformers wrote it, so that the
model itself computes masks (causal, sliding, alternating), positions (rotary, learned, alibi),
caches and its final processing (norms, softcaps, heads). Each layer is wrapped in a gate:

- layers before the span's entry are skipped and the hidden states that came from the previous
  stage are put in at the entry layer;
- modules outside the span that still run before the layers (embeddings of a later span)
  compute only their output's shape on the meta device and return zeros (never used);
- a span that ends before the last block stops at its boundary and returns the hidden states.

Each job keeps a cache of its own layers; lengths, masks and positions are taken from the span's
layers (or from the count of tokens seen, for a span without layers), so every span sees what
the whole model would.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map
from transformers import PretrainedConfig

from shardnet.errors import BlockLoadError, ModelError
from shardnet.model import fastpath, packed, pages
from shardnet.model.cache import MAX_GROUPS, BatchGroup, GrowingLayer, Session, SpanCache, layer_of, left_pad
from shardnet.model.layout import Layout, cache_argument, layout_for, probe_inputs, skeleton
from shardnet.model.pooling import mean_pool, pool
from shardnet.protocol import Span

__all__ = ["BlockLoadError", "Session", "SpanCache", "SpanModel", "mean_pool", "pool", "split_even"]


class _Stop(Exception):
    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


@dataclass
class _Plan:
    first: int  # layers [first, last) run here
    last: int
    inject: torch.Tensor | None  # hidden states entering at layer `first`
    stop_before: int | None  # raise with the input of this layer
    stop_after: int | None  # raise with the output of this layer


def _hidden_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args:
        hidden: torch.Tensor = args[0]
        return hidden
    if "hidden_states" in kwargs:
        found: torch.Tensor = kwargs["hidden_states"]
        return found
    raise ModelError("a layer was called without hidden states as its first argument; the model cannot be split")


def _with_hidden(
    args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _shadow(module: nn.Module) -> None:
    """`module` holds weights this span lacks but runs before the layers: compute its output's
    shape on the meta device and return zeros of that shape (the entry layer replaces them)."""
    original = module.forward

    def to_meta(t: Any) -> Any:
        return t.to("meta") if isinstance(t, torch.Tensor) else t

    def to_zeros(t: Any) -> Any:
        return torch.zeros(t.shape, dtype=t.dtype) if isinstance(t, torch.Tensor) else t

    shapes: dict[Any, Any] = {}  # input signature -> output structure of meta tensors

    def signature(leaf: Any) -> Any:
        return (tuple(leaf.shape), leaf.dtype) if isinstance(leaf, torch.Tensor) else leaf

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):  # the usual call, keyed cheaply
            key: Any = (tuple(args[0].shape), args[0].dtype)
        else:
            key = repr(tree_map(signature, (args, sorted(kwargs.items()))))
        if key not in shapes:
            owners = [(m, name, buf) for m in module.modules() for name, buf in m._buffers.items() if buf is not None]
            for m, name, buf in owners:
                m._buffers[name] = buf.to("meta")
            try:
                out = original(*tree_map(to_meta, args), **tree_map(to_meta, kwargs))
            finally:
                for m, name, buf in owners:
                    m._buffers[name] = buf
            if len(shapes) >= 64:  # inputs of many shapes (prefills): keep the table small
                shapes.clear()
            shapes[key] = out
        out = shapes[key]
        return to_zeros(out) if isinstance(out, torch.Tensor) else tree_map(to_zeros, out)

    module.forward = forward


class SpanModel(nn.Module):
    def __init__(
        self,
        config: PretrainedConfig,
        span: Span,
        blocks: dict[int, dict[str, torch.Tensor]],
        pooling: dict[str, Any] | None = None,
        huge_pages: bool = True,
    ):
        """pooling: how an encoder's last span makes a sentence embedding, as the manifest
        records it ({"mode": "mean" | "cls" | "max", "normalize": bool}); default mean, normalised.
        huge_pages: move the large weights onto 2 MiB pages (shardnet.model.pages); False leaves
        them where they were loaded."""
        super().__init__()
        self.config = config
        self.pooling = pooling or {"mode": "mean", "normalize": True}
        self.layout: Layout = layout_for(config)
        self.span = span
        self.total_blocks = self.layout.num_blocks
        if not 0 <= span.start < span.end <= self.total_blocks:
            raise ModelError(f"span [{span.start}, {span.end}) exceeds the model's {self.total_blocks} blocks")
        for block in range(span.start, span.end):
            if block not in blocks:
                raise BlockLoadError(f"block {block} was not provided to span [{span.start}, {span.end})")
        model = skeleton(config)
        self._place(model, blocks)
        if huge_pages:
            pages.to_huge_pages(model)
        layers = model.get_submodule(self.layout.layers)
        assert isinstance(layers, nn.ModuleList)
        for index, layer in enumerate(layers):
            layer.forward = self._gate(index, layer.forward)
        shadowed: list[str] = []
        for path, module in model.named_modules():  # parents come before their children
            if path not in self.layout.before or any(path.startswith(s + ".") for s in shadowed):
                continue
            if any(p.device.type == "meta" for p in module.parameters(recurse=False)):
                _shadow(module)
                shadowed.append(path)
        self.model = model
        self._cache_kw = cache_argument(model)
        self._groups: dict[tuple[int, ...], BatchGroup] = {}
        parameters = inspect.signature(type(model).forward).parameters
        self._takes_positions = "position_ids" in parameters
        self._keeps_logits = "logits_to_keep" in parameters  # a causal LM that can skip logits
        self._plan = _Plan(0, 0, None, None, None)
        self._lock = threading.Lock()
        self._fast = fastpath.fast_step(model)  # one-token decode steps, for some families
        # a decoder's last span: batched decode steps project onto the vocabulary with a packed weight
        self._head = packed.pack_head(model) if self.has_final and self.layout.is_decoder else None
        self.eval()

    # ------------------------------------------------------------------ weights
    def _place(self, model: nn.Module, blocks: dict[int, dict[str, torch.Tensor]]) -> None:
        span, layout = self.span, self.layout
        placed: dict[str, nn.Parameter] = {}

        def put(name: str, block: int) -> None:
            source = blocks.get(block)
            if source is None or name not in source:
                raise BlockLoadError(
                    f"block {block} lacks tensor {name}"
                    + ("" if block in blocks else f" (block {block} was not provided; the span shares it)")
                )
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            target = module._parameters.get(attr) if attr in module._parameters else module._buffers.get(attr)
            if target is None:
                raise BlockLoadError(f"block {block}: the architecture has no tensor {name}")
            tensor = source[name]
            if tuple(tensor.shape) != tuple(target.shape):
                raise BlockLoadError(
                    f"block {block}: {name} has shape {tuple(tensor.shape)}, "
                    f"the architecture needs {tuple(target.shape)}"
                )
            tensor = tensor.to(target.dtype)
            if attr in module._parameters:
                placed[name] = nn.Parameter(tensor, requires_grad=False)
                module._parameters[attr] = placed[name]
            else:
                module._buffers[attr] = tensor

        for block in range(span.start, span.end):
            expected = layout.names_in(block)
            missing = sorted(set(expected) - set(blocks[block]))
            if missing:
                more = "..." if len(missing) > 3 else ""
                raise BlockLoadError(f"block {block} lacks tensors {missing[:3]}{more}")
            for name in expected:
                put(name, block)
        for alias, (source, at) in layout.tied.items():
            if span.start <= at < span.end:
                if source not in placed:
                    put(source, layout.blocks[source])
                owner, _, attr = alias.rpartition(".")
                model.get_submodule(owner)._parameters[attr] = placed[source]

    # ------------------------------------------------------------------ gates
    def _gate(self, index: int, original: Callable[..., Any]) -> Callable[..., Any]:
        returns_tuple = self.layout.layer_returns_tuple

        def forward(*args: Any, **kwargs: Any) -> Any:
            plan = self._plan
            if index == plan.stop_before:
                raise _Stop(_hidden_arg(args, kwargs))
            if not plan.first <= index < plan.last:  # another span's layer: pass the entering states on
                hidden = plan.inject if plan.inject is not None else _hidden_arg(args, kwargs)
                return (hidden,) if returns_tuple else hidden
            if index == plan.first and plan.inject is not None:
                args, kwargs = _with_hidden(args, kwargs, plan.inject)
            out = original(*args, **kwargs)
            if index == plan.stop_after:
                raise _Stop(out[0] if isinstance(out, tuple) else out)
            return out

        return forward

    # ------------------------------------------------------------------ running
    @property
    def kind(self) -> str:
        return self.layout.kind

    @property
    def model_type(self) -> str:
        return self.layout.model_type

    @property
    def is_decoder(self) -> bool:
        return self.layout.is_decoder

    @property
    def has_embed(self) -> bool:
        return self.span.start == 0

    @property
    def has_final(self) -> bool:
        return self.span.end == self.total_blocks

    def memory_bytes(self) -> int:
        """Bytes of the tensors this span holds (its blocks, and buffers such as rotary
        frequencies); the rest of the model's parameters are on the meta device and hold none."""
        tensors = {id(t): t for t in [*self.model.parameters(), *self.model.buffers()] if t.device.type != "meta"}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def new_session(self) -> Session:
        return Session()

    def layers_from(self, start: int) -> tuple[int, int]:
        """The layers [first, last) a stage entering this span at block `start` runs."""
        n = self.layout.num_layers
        return max(start, 1) - 1, min(self.span.end, n + 1) - 1

    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        session: Session | None = None,
        start: int | None = None,
        extras: dict[str, torch.Tensor] | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """x: token ids [b, q] (pixels [b, c, h, w] for image models) at block 0, else hidden
        states [b, q, d]. attention_mask: [b, s] of 1/0 over the whole sequence so far.
        session: a generation's state (its cache); None for a single pass. start: run blocks
        [start, span end) only (a route entering this span part-way); a job keeps one entry for
        all its steps. extras: further inputs of block 0 (token_type_ids). last_only: a causal
        LM's last span computes the logits of the last position only (a generation needs no
        others, and the vocabulary projection of every prompt position is much of a small
        model's last span). Returns hidden states
        [b, q, d], or at the last span logits [b, q, vocab] (causal LMs), [b, labels] (image
        classifiers), a normalised mean-pooled embedding [b, d] (encoders)."""
        start = self.span.start if start is None else start
        if not self.span.start <= start < self.span.end:
            raise ModelError(f"entry block {start} is outside span [{self.span.start}, {self.span.end})")
        with self._lock:  # the gates' plan is shared by the span's jobs: one forward at a time
            return self._forward(x, attention_mask, session, start, extras or {}, last_only)

    def _inputs(self, x: torch.Tensor, start: int, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Set the gates' plan for a pass entering at block `start` and return the model inputs:
        the real ones at block 0, placeholders of the right shape after it."""
        layout = self.layout
        first, last = self.layers_from(start)
        stop_before = stop_after = None
        if not self.has_final:
            if last < layout.num_layers:
                stop_before = last
            else:
                stop_after = layout.num_layers - 1
        self._plan = _Plan(first, last, x if start > 0 else None, stop_before, stop_after)
        if start == 0:
            key = "pixel_values" if layout.kind == "image_classifier" else "input_ids"
            return {key: x, **extras}
        length = x.shape[1] if x.dim() > 2 else 1
        return probe_inputs(self.config, layout.kind, x.shape[0], length, "cpu")

    def _run(self, inputs: dict[str, Any], attention_mask: torch.Tensor | None) -> torch.Tensor:
        try:
            out = self.model(**inputs)
            result = self._final(out, attention_mask)
        except _Stop as stop:
            result = stop.hidden
        finally:
            self._plan = _Plan(0, 0, None, None, None)
        return result

    def _final(self, out: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layout.kind == "encoder":
            return pool(out.last_hidden_state, attention_mask, self.pooling)
        logits: torch.Tensor = out.logits
        return logits

    def _forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        session: Session | None,
        start: int,
        extras: dict[str, torch.Tensor],
        last_only: bool = False,
    ) -> torch.Tensor:
        if self._fast is not None and attention_mask is None and not extras and fastpath.eligible(x, session, start):
            assert session is not None and session.cache is not None
            first, last = self.layers_from(start)
            out = self._fast(
                x, session.cache, torch.tensor([[session.seen]]), None, first, last, start == 0, self.has_final
            )
            session.advance(1)
            return out
        layout = self.layout
        inputs = self._inputs(x, start, extras)
        if last_only and self._keeps_logits and self.has_final:
            inputs["logits_to_keep"] = 1
        if attention_mask is not None and layout.kind != "image_classifier":
            inputs["attention_mask"] = attention_mask
        q = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
        if layout.is_decoder:
            if session is not None:
                if session.cache is None:
                    first, last = self.layers_from(start)
                    session.cache = SpanCache(self.config, list(range(first, last)))
                session.cache.seen = session.seen
                inputs.update({self._cache_kw: session.cache, "use_cache": True})
            else:
                inputs["use_cache"] = False
        result = self._run(inputs, attention_mask)
        if session is not None:
            session.advance(q)
        return result

    # ------------------------------------------------------------------ batched decode
    @torch.no_grad()
    def forward_batch(
        self, xs: list[torch.Tensor], sessions: list[Session], start: int | None = None
    ) -> list[torch.Tensor]:
        """One decode step of several generations at once: `xs[i]` ([1, 1] ids or [1, 1, d]
        hidden states) continues `sessions[i]`. Their caches are left-padded to one length and
        run as a batch (masks hide the padding, each row keeps its own positions), so the
        span's weights are read once for all of them; each session then keeps its own rows.
        Steps that cannot be batched (a prefill, sliding-window caches, a model whose forward
        takes no position ids) run one after another."""
        start = self.span.start if start is None else start
        if not self.span.start <= start < self.span.end:
            raise ModelError(f"entry block {start} is outside span [{self.span.start}, {self.span.end})")
        with self._lock:
            if len(xs) < 2 or not self._batchable(xs, sessions):
                return [self._forward(x, None, s, start, {}) for x, s in zip(xs, sessions, strict=True)]
            return self._batch(xs, sessions, start)

    def release(self, session: Session) -> None:
        """A generation ended: forget the padded batch caches it is part of (they hold its rows,
        and would otherwise stay until MAX_GROUPS newer batches pushed them out)."""
        for members, group in list(self._groups.items()):  # a snapshot: a batch may run in a worker thread
            if any(s is session for s in group.sessions):
                self._groups.pop(members, None)

    def _batchable(self, xs: list[torch.Tensor], sessions: list[Session]) -> bool:
        if not (self.layout.is_decoder and self._takes_positions):
            return False
        caches = [s.cache for s in sessions]
        if any(c is None or s.seen == 0 for c, s in zip(caches, sessions, strict=True)):
            return False
        active = caches[0].active if caches[0] is not None else []
        if any(c is None or c.active != active for c in caches) or any(tuple(x.shape[:2]) != (1, 1) for x in xs):
            return False
        return all(type(c.layers[j]) is GrowingLayer for c in caches if c is not None for j in active)

    def _batch(self, xs: list[torch.Tensor], sessions: list[Session], start: int) -> list[torch.Tensor]:
        caches = [s.cache for s in sessions if s.cache is not None]
        lengths = [s.seen for s in sessions]
        active = caches[0].active
        members = tuple(id(s) for s in sessions)
        group = self._groups.pop(members, None)
        same = group is not None and all(a is b for a, b in zip(group.sessions, sessions, strict=True))
        if group is not None and same and group.lengths == lengths:
            combined, mask = group.cache, group.mask  # the same jobs as an earlier batch: their rows are in place
        else:
            longest = max(lengths)
            combined = SpanCache(self.config, active)
            for j in active:
                keys = torch.cat([left_pad(layer_of(c, j).keys, longest) for c in caches])
                values = torch.cat([left_pad(layer_of(c, j).values, longest) for c in caches])
                layer_of(combined, j).lazy_initialization(keys, values)
                layer_of(combined, j).keys, layer_of(combined, j).values = keys, values
            mask = torch.zeros(len(xs), longest, dtype=torch.long)
            for i, n in enumerate(lengths):
                mask[i, longest - n :] = 1
        mask = torch.cat([mask, torch.ones(len(xs), 1, dtype=torch.long)], dim=1)
        combined.seen = mask.shape[1] - 1
        positions = torch.tensor(lengths).unsqueeze(1)
        if self._fast is not None:
            first, last = self.layers_from(start)
            out = self._fast(
                torch.cat(xs), combined, positions, fastpath.batch_mask(mask), first, last, start == 0, self.has_final
            )
        else:
            inputs = self._inputs(torch.cat(xs), start, {})
            inputs.update(
                {"attention_mask": mask, "position_ids": positions, self._cache_kw: combined, "use_cache": True}
            )
            out = self._run(inputs, mask)
        for i, (session, cache) in enumerate(zip(sessions, caches, strict=True)):
            keep = lengths[i] + 1  # each job's own rows, without the padding (views: no copy)
            for j in active:
                rows = layer_of(combined, j)
                layer_of(cache, j).keys = rows.keys[i : i + 1, :, -keep:]
                layer_of(cache, j).values = rows.values[i : i + 1, :, -keep:]
            session.advance(1)
        self._groups[members] = BatchGroup(list(sessions), [n + 1 for n in lengths], combined, mask)
        while len(self._groups) > MAX_GROUPS:  # the oldest first (dicts keep insertion order)
            self._groups.pop(next(iter(self._groups)))
        return [out[i : i + 1] for i in range(len(xs))]


def split_even(total_blocks: int, parts: int) -> list[Span]:
    return [Span(total_blocks * i // parts, total_blocks * (i + 1) // parts) for i in range(parts)]
