"""Every architecture the installed transformers has, split and checked, offline.

For each decoder-only (causal LM), encoder-only (masked LM families, run as their base model) and
vision (image classification) model type, build a small config with random weights (seeded),
run `shardnet model check` on it, and then, independently of the check, run the model split
into three spans the way the network does (a greedy generation with caches for decoders, a
padded batch for encoders, images for vision) against the whole model. A model the check calls
exact but whose three-span run differs is "wrong in fact": there must be none.

Named cases are always included: sliding and alternating windows with contexts longer than the
window, alibi, learned positions with an offset, logit softcapping, parallel attention and MLP,
multi-query attention, mixture of experts, tied embeddings, an encoder with token types, a
vision transformer.

Prints `name: value` lines: architectures_tried, architectures_exact, architectures_refused,
architectures_unconfigured (types this script could not build small), architectures_wrong_in_fact
(target 0), then the lists. `--only a,b` limits the run to some model types.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import warnings
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from transformers.models.auto import modeling_auto as auto

from shardnet.model.check import check_model
from shardnet.model.layout import model_class
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

# named cases, each the feature the acceptance list names (type, overrides)
NAMED: dict[str, tuple[str, dict[str, Any]]] = {
    "sliding window (mistral, window 6)": ("mistral", {"sliding_window": 6}),
    "sliding window (qwen2, window 6)": ("qwen2", {"use_sliding_window": True, "sliding_window": 6}),
    "alternating windows + logit softcap (gemma2)": ("gemma2", {"sliding_window": 6}),
    "alternating windows (gemma3_text)": ("gemma3_text", {"sliding_window": 6}),
    "alibi (falcon)": ("falcon", {"alibi": True, "new_decoder_architecture": False}),
    "alibi (bloom)": ("bloom", {}),
    "learned positions with an offset (opt)": ("opt", {"word_embed_proj_dim": 32}),
    "parallel attention and MLP (gpt_neox)": ("gpt_neox", {"use_parallel_residual": True}),
    "parallel attention and MLP (gptj)": ("gptj", {"rotary_dim": 8}),
    "multi-query attention (gpt_bigcode)": ("gpt_bigcode", {"multi_query": True}),
    "multi-query attention (falcon)": ("falcon", {"multi_query": True, "alibi": False}),
    "mixture of experts (mixtral)": ("mixtral", {}),
    "mixture of experts (qwen2_moe)": ("qwen2_moe", {}),
    "tied embeddings (gpt2)": ("gpt2", {"tie_word_embeddings": True}),
    "tied embeddings (llama)": ("llama", {"tie_word_embeddings": True}),
    "encoder with token types (bert)": ("bert", {"type_vocab_size": 2}),
    "vision transformer (vit)": ("vit", {}),
}


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
    from shardnet.model.layout import block_state, layout_for

    n = layout_for(config).num_blocks
    blocks = {b: block_state(model, config, b) for b in range(n)}
    spans = [SpanModel(config, s, blocks) for s in split_even(n, 3)]
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
        expected = prompt
        for _ in range(10):  # whole model, no cache
            expected = torch.cat([expected, model(input_ids=expected).logits[:, -1:].argmax(-1)], 1)
        sessions = [s.new_session() for s in spans]
        tokens, step = prompt, prompt
        for _ in range(10):
            h = step
            for span, session in zip(spans, sessions, strict=True):
                h = span(h, session=session)
            step = h[:, -1:].argmax(-1)
            tokens = torch.cat([tokens, step], 1)
        return 0.0 if torch.equal(tokens, expected) else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated model types")
    parser.add_argument("--json", action="store_true", help="one JSON object per model on stderr")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    cats = categories()
    cases: list[tuple[str, str, dict[str, Any]]] = [(label, t, o) for label, (t, o) in NAMED.items()]
    cases += [(t, t, {}) for t in sorted(cats)]
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c[1] in keep]
    tried: list[str] = []
    exact: list[str] = []
    refused: list[str] = []
    unconfigured: list[str] = []
    wrong: list[str] = []
    named_missing: list[str] = []
    started = time.time()
    for label, model_type, overrides in cases:
        if model_type not in cats:
            if label in NAMED:
                named_missing.append(label)
            continue
        category, cls_name = cats[model_type]
        try:
            config = small_config(model_type, cls_name, overrides)
            model = build(config, seed=0)
        except Exception as exc:  # noqa: BLE001 - a type this script cannot make small is reported, not fatal
            unconfigured.append(f"{label} ({type(exc).__name__}: {str(exc)[:80]})")
            if label in NAMED:
                named_missing.append(label)
            continue
        tried.append(label)
        result = check_model(model)
        if args.json:
            print(json.dumps({"case": label, "category": category, **result.as_dict()}), file=sys.stderr)
        if not result.exact:
            refused.append(f"{label}: {result.reason()}"[:200])
            continue
        exact.append(label)
        try:
            diff = three_spans(model, category)
        except Exception as exc:  # noqa: BLE001 - an exact-by-check model that then fails is wrong in fact
            diff = float("inf")
            print(f"# {label}: three-span run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if diff > 1e-4:
            wrong.append(f"{label} (three-span max diff {diff:.3g})")
    print(f"architectures_tried: {len(tried)}")
    print(f"architectures_exact: {len(exact)}")
    print(f"architectures_refused: {len(refused)}")
    print(f"architectures_unconfigured: {len(unconfigured)}")
    print(f"architectures_wrong_in_fact: {len(wrong)}")
    print(f"named_cases_missing: {len(named_missing)}")
    print(f"seconds: {time.time() - started:.0f}")
    for title, items in (
        ("exact", exact),
        ("refused", refused),
        ("wrong_in_fact", wrong),
        ("named_cases_missing", named_missing),
        ("unconfigured", unconfigured),
    ):
        print(f"{title}_list:")
        for item in items:
            print(f"  - {item}")


if __name__ == "__main__":
    main()
