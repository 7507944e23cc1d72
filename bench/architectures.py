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
import json
import os
import sys
import time
import warnings
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers

from shardnet.model.check import check_model
from shardnet.model.survey import build, categories, small_config, three_spans

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
