"""Every model type of the installed transformers, made small: for the architecture bench and
the tests that parametrize over all of them (a new type gets checked without anyone writing
a test). Random weights, seeded; nothing is downloaded.

`survey` runs the cases (build small, `check_model`, then a three-span run of every model the
check calls exact) in worker processes of one torch thread each: the models are small, so a
case costs Python more than arithmetic, and one process per core goes about as many times
faster as there are cores."""

from __future__ import annotations

import inspect
import multiprocessing
import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import torch
import transformers
from transformers.models.auto import modeling_auto as auto

from shardnet.model.check import check_model
from shardnet.model.layout import block_state, layout_for, model_class
from shardnet.model.span import SpanModel, mean_pool, split_even

MAX_PARAMS = 20_000_000

SMALL: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    head_dim=16,
    max_position_embeddings=128,
    n_positions=128,
    n_embd=64,
    n_layer=4,
    n_head=4,
    d_model=64,
    ffn_dim=128,
    num_local_experts=4,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=64,
    shared_expert_intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_channels=3,
    num_labels=5,
    type_vocab_size=2,
    embedding_size=64,
)


def names(mapping: Any) -> dict[str, str]:
    out = {}
    for key, value in mapping.items():
        out[key] = value[0] if isinstance(value, tuple | list) else value
    return out


def categories() -> dict[str, tuple[str, str]]:
    """model_type -> (category, transformers class name)."""
    causal = names(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    masked = names(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    base = names(auto.MODEL_MAPPING_NAMES)
    vision = names(auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    out: dict[str, tuple[str, str]] = {}
    for t, cls in vision.items():
        out[t] = ("vision", cls)
    for t in masked:
        if t in base and t not in out:
            out[t] = ("encoder", base[t])
    for t, cls in causal.items():
        if t not in out:
            out[t] = ("decoder", cls)
    return out


def small_config(model_type: str, cls_name: str, extra: dict[str, Any]) -> Any:
    config_cls = transformers.CONFIG_MAPPING[model_type]
    accepted = set(inspect.signature(config_cls.__init__).parameters)
    wanted = {**SMALL, **extra}
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    config = config_cls(**kwargs)
    if any(hasattr(config, sub) for sub in ("text_config", "vision_config", "encoder", "decoder")):
        raise ValueError("a composite (multimodal or encoder-decoder) config")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("an encoder-decoder model")
    config.architectures = [cls_name]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= int(getattr(config, "vocab_size", 1 << 30) or 1 << 30):
            setattr(config, key, 0)
    return config


def build(config: Any, seed: int) -> torch.nn.Module:
    cls = model_class(config)
    with torch.device("meta"):
        size = sum(p.numel() for p in cls(config).parameters())
    if size > MAX_PARAMS:
        raise ValueError(f"{size / 1e6:.0f}M parameters even when made small")
    torch.manual_seed(seed)
    model: torch.nn.Module = cls(config)
    return model.float().eval()


def three_spans(model: torch.nn.Module, category: str) -> float:
    """Max abs diff of the network-style three-span run against the whole model."""
    config: Any = model.config
    n = layout_for(config).num_blocks
    blocks = {b: block_state(model, config, b) for b in range(n)}
    spans = [SpanModel(config, s, blocks, huge_pages=False) for s in split_even(n, 3)]  # (run once: see model.check)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if category == "vision":
            size = config.image_size
            x = torch.randn(2, config.num_channels, size, size, generator=gen)
            ref = model(pixel_values=x).logits
            h = x
            for s in spans:
                h = s(h)
            return float((h - ref).abs().max())
        vocab = int(config.vocab_size)
        if category == "encoder":
            ids = torch.randint(0, vocab, (2, 10), generator=gen)
            mask = torch.ones_like(ids)
            mask[1, 7:] = 0
            ref = mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
            h = ids
            for s in spans:
                h = s(h, attention_mask=mask)
            return float((h - ref).abs().max())
        prompt = torch.randint(0, vocab, (1, 11), generator=gen)
        expected = greedy_whole(model, prompt, 10)
        tokens, _ = greedy_spans(spans, prompt, 10)
        return 0.0 if torch.equal(tokens, expected) else float("inf")


def greedy_whole(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Prompt plus `steps` greedy tokens of the whole model, recomputing everything each step
    (no cache: the plainest reference). [1, prompt + steps]"""
    tokens = prompt
    with torch.no_grad():
        for _ in range(steps):
            tokens = torch.cat([tokens, model(input_ids=tokens).logits[:, -1:].argmax(-1)], 1)
    return tokens


def greedy_spans(spans: list[SpanModel], prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[Any]]:
    """Prompt plus `steps` greedy tokens through chained spans with their caches, and the
    sessions (to inspect their caches)."""
    sessions = [s.new_session() for s in spans]
    tokens, step = prompt, prompt
    for _ in range(steps):
        h = step
        for span, session in zip(spans, sessions, strict=True):
            h = span(h, session=session)
        step = h[:, -1:].argmax(-1)
        tokens = torch.cat([tokens, step], 1)
    return tokens, sessions


Verdict = Literal["exact", "refused", "unconfigured", "wrong"]


@dataclass(frozen=True)
class Case:
    label: str  # what the case is called in reports (the model type, or a named feature)
    model_type: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    case: Case
    category: str
    verdict: Verdict  # wrong: exact by the check, yet the three-span run differs or fails
    detail: str  # the check's reason for a refusal, why the type could not be made small, or how it was wrong
    check: dict[str, Any] | None  # the check's result (CheckResult.as_dict), when it ran


def survey_one(case: Case, category: str, cls_name: str) -> Outcome:
    """One case: build it small, check it, and run an exact one as three spans."""
    try:
        model = build(small_config(case.model_type, cls_name, case.overrides), seed=0)
    except Exception as exc:  # noqa: BLE001 - a type this survey cannot make small is reported, not fatal
        return Outcome(case, category, "unconfigured", f"{type(exc).__name__}: {exc}"[:100], None)
    result = check_model(model)
    if not result.exact:
        return Outcome(case, category, "refused", result.reason(), result.as_dict())
    try:
        diff = three_spans(model, category)
    except Exception as exc:  # noqa: BLE001 - exact by the check but failing split is wrong in fact
        return Outcome(case, category, "wrong", f"three-span run failed: {type(exc).__name__}: {exc}", result.as_dict())
    if diff > 1e-4:
        return Outcome(case, category, "wrong", f"three-span max diff {diff:.3g}", result.as_dict())
    return Outcome(case, category, "exact", "", result.as_dict())


def _quiet_worker() -> None:
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore")


def _survey_args(item: tuple[Case, str, str]) -> Outcome:
    return survey_one(*item)


def survey(cases: Iterable[Case], workers: int | None = None) -> list[Outcome]:
    """Every case of a type the installed transformers has, in the order given, run by `workers`
    processes (default: one per core this process may use, at most 8: each worker holds torch
    and transformers, about 400 MB; 1 runs them here)."""
    cats = categories()
    items = [(c, *cats[c.model_type]) for c in cases if c.model_type in cats]
    workers = workers or min(8, len(os.sched_getaffinity(0)))
    if workers == 1:
        return [_survey_args(item) for item in items]
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker) as pool:
        return list(pool.map(_survey_args, items, chunksize=1))
