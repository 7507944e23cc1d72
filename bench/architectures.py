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

from shardnet.model.survey import Case, categories, survey

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
    parser.add_argument("--workers", type=int, help="processes running the cases (default: one per core, at most 8)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    cats = categories()
    cases = [Case(label, t, o) for label, (t, o) in NAMED.items()]
    cases += [Case(t, t, {}) for t in sorted(cats)]
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c.model_type in keep]
    named_missing = [c.label for c in cases if c.label in NAMED and c.model_type not in cats]
    started = time.time()
    outcomes = survey(cases, args.workers)
    tried = [o.case.label for o in outcomes if o.verdict != "unconfigured"]
    exact = [o.case.label for o in outcomes if o.verdict == "exact"]
    refused = [f"{o.case.label}: {o.detail}"[:200] for o in outcomes if o.verdict == "refused"]
    unconfigured = [f"{o.case.label} ({o.detail[:80]})" for o in outcomes if o.verdict == "unconfigured"]
    wrong = [f"{o.case.label} ({o.detail})" for o in outcomes if o.verdict == "wrong"]
    named_missing += [o.case.label for o in outcomes if o.verdict == "unconfigured" and o.case.label in NAMED]
    if args.json:
        for o in outcomes:
            if o.check is not None:
                print(json.dumps({"case": o.case.label, "category": o.category, **o.check}), file=sys.stderr)
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
