"""Every decoder-only, encoder-only and vision model type of the installed transformers, made
small with random weights: the check either calls it exact, and then it is (three spans with
caches equal the whole model), or refuses it with a reason. A new model type in transformers is
covered here without anyone writing a test. Types this survey cannot make small (composite and
encoder-decoder configs, too many parameters even when shrunk) are listed, not tested."""

import pytest
import transformers

from shardnet.model.check import check_model
from shardnet.model.survey import build, categories, small_config, three_spans

pytestmark = pytest.mark.slow  # about two minutes over all types; `make test-fast` leaves it out

# types the network serves today or that the check once got wrong: these must stay exact
MUST_BE_EXACT = {
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "stablelm",
    "gpt2", "gpt_neox", "gpt_bigcode", "falcon", "bloom", "opt", "mixtral", "qwen2_moe",
    "bert", "roberta", "vit", "deit",
}  # fmt: skip


@pytest.mark.timeout(900)  # ~140 model types: about 3 minutes alone on 2 cores, more on a busy machine
def test_every_model_type_is_exact_or_refused_never_wrong():
    transformers.logging.set_verbosity_error()
    exact, refused, wrong, unconfigured = [], {}, {}, {}
    for model_type, (category, cls_name) in sorted(categories().items()):
        try:
            model = build(small_config(model_type, cls_name, {}), seed=0)
        except Exception as exc:  # noqa: BLE001 - recorded: a type this survey cannot make small
            unconfigured[model_type] = f"{type(exc).__name__}: {exc}"[:100]
            continue
        result = check_model(model)
        if not result.exact:
            refused[model_type] = result.reason()
            continue
        exact.append(model_type)
        try:
            diff = three_spans(model, category)
        except Exception as exc:  # noqa: BLE001 - exact by the check but failing split is wrong in fact
            diff, wrong[model_type] = float("inf"), f"{type(exc).__name__}: {exc}"
        if diff > 1e-4:
            wrong.setdefault(model_type, f"three-span max diff {diff:.3g}")
    print(f"exact {len(exact)}, refused {len(refused)}, not made small {len(unconfigured)}")
    assert not wrong, f"exact by the check, wrong in fact: {wrong}"
    assert all("is not exact when split" in r or "cannot be split" in r for r in refused.values())
    assert MUST_BE_EXACT <= set(exact), {t: refused.get(t) or unconfigured.get(t) for t in MUST_BE_EXACT - set(exact)}
    assert len(exact) >= 100  # transformers 5.x: 137 of its types
