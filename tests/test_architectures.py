"""Every decoder-only, encoder-only and vision model type of the installed transformers, made
small with random weights: the check either calls it exact, and then it is (three spans with
caches equal the whole model), or refuses it with a reason. A new model type in transformers is
covered here without anyone writing a test. Types this survey cannot make small (composite and
encoder-decoder configs, too many parameters even when shrunk) are listed, not tested."""

from typing import get_args

import pytest

from shardnet.model.survey import Case, Verdict, categories, survey

pytestmark = pytest.mark.slow  # a minute or two over all types; `make test-fast` leaves it out

# types the network serves today or that the check once got wrong: these must stay exact
MUST_BE_EXACT = {
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "stablelm",
    "gpt2", "gpt_neox", "gpt_bigcode", "falcon", "bloom", "opt", "mixtral", "qwen2_moe",
    "bert", "roberta", "vit", "deit",
}  # fmt: skip
VERDICTS = get_args(Verdict)


@pytest.mark.timeout(900)  # 268 model types (187 made small): about 1.5 minutes on 2 cores
def test_every_model_type_is_exact_or_refused_never_wrong():
    outcomes = survey(Case(t, t, {}) for t in sorted(categories()))
    by = {verdict: {o.case.model_type: o.detail for o in outcomes if o.verdict == verdict} for verdict in VERDICTS}
    exact, refused, wrong, unconfigured = by["exact"], by["refused"], by["wrong"], by["unconfigured"]
    print(f"exact {len(exact)}, refused {len(refused)}, not made small {len(unconfigured)}")
    assert not wrong, f"exact by the check, wrong in fact: {wrong}"
    assert all("is not exact when split" in r or "cannot be split" in r for r in refused.values())
    assert MUST_BE_EXACT <= set(exact), {t: refused.get(t) or unconfigured.get(t) for t in MUST_BE_EXACT - set(exact)}
    assert len(exact) >= 100  # transformers 5.x: 119 of its 268 types
