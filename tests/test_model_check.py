"""Any transformers model runs split and exact, and what would not be exact is refused.

Each case below was once wrong with no error (a plain causal mask and a cache built without the
config, final processing by hand, a fixed set of layer arguments); the generic runner drives
the model's own forward, and `check_model` compares every block with the whole model.
"""

import json

import pytest
import torch
import transformers
from click.testing import CliRunner

from shardnet.cli import main
from shardnet.errors import BlockLoadError
from shardnet.model.architectures import PRESETS, build_model, num_blocks
from shardnet.model.check import check_model
from shardnet.model.layout import block_state, layout_for
from shardnet.model.span import SpanCache, SpanModel, mean_pool, split_even
from shardnet.model.survey import greedy_spans, greedy_whole
from shardnet.protocol import Span

SMALL = dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)

CASES = {
    # a window shorter than the probe's context: the window must apply in every span
    "mistral-window": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=6),
    "qwen2-window": lambda: transformers.Qwen2Config(
        **SMALL, num_key_value_heads=2, use_sliding_window=True, sliding_window=6, max_window_layers=2
    ),
    # alternating sliding/full layers and a final logit softcap
    "gemma2": lambda: transformers.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16, sliding_window=6),
    # layers that want their cache under another name; parallel attention and MLP
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**SMALL),
    "falcon-alibi": lambda: transformers.FalconConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, alibi=True
    ),
    # learned positions with an offset, project_in/out around the layers
    "opt": lambda: transformers.OPTConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=4, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=32
    ),
    "phi": lambda: transformers.PhiConfig(**SMALL),
    "gptj": lambda: transformers.GPTJConfig(vocab_size=256, n_embd=64, n_layer=4, n_head=4, rotary_dim=8),
    "mixtral": lambda: transformers.MixtralConfig(
        **SMALL, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2
    ),
    # sentence pairs: token types reach the embeddings
    "bert-pairs": lambda: transformers.BertConfig(**SMALL, type_vocab_size=2, architectures=["BertModel"]),
    "tiny-vit": PRESETS["tiny-vit"],
    "tiny-gpt2": PRESETS["tiny-gpt2"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_split_model_is_exact(name):
    result = check_model(build_model(CASES[name](), seed=3))
    assert result.error is None
    assert result.exact, result.reason()
    assert result.first_diverging_block is None and result.max_abs_diff <= 1e-5
    if result.kind == "causal_lm":
        assert set(result.probes) == {"prefill+decode", "padded batch", "entered part-way"}


def test_sliding_window_applies_past_the_window_in_three_spans():
    """Greedy tokens of a Mistral with window 4 over a 13-token prompt, three spans with caches,
    equal the whole model's (the window changes the tokens: a model without it differs)."""
    config = transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=4)
    model = build_model(config, seed=1)
    n = num_blocks(config)
    blocks = {b: block_state(model, config, b) for b in range(n)}
    spans = [SpanModel(config, s, blocks) for s in split_even(n, 3)]
    prompt = torch.randint(0, 256, (1, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        windowed = model(input_ids=prompt).logits
        unwindowed_config = transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=None)
        unwindowed = build_model(unwindowed_config, seed=1)(input_ids=prompt).logits
    assert (windowed - unwindowed).abs().max() > 1e-3  # the window matters for this prompt
    tokens, _ = greedy_spans(spans, prompt, 8)
    assert torch.equal(tokens, greedy_whole(model, prompt, 8))


def test_bert_sentence_pairs_use_token_types():
    config = CASES["bert-pairs"]()
    model = build_model(config, seed=2)
    n = num_blocks(config)
    blocks = {b: block_state(model, config, b) for b in range(n)}
    spans = [SpanModel(config, s, blocks) for s in split_even(n, 3)]
    ids = torch.randint(0, 256, (2, 10))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    with torch.no_grad():
        ref = mean_pool(model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state, mask)
        without = mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    assert (ref - without).abs().max() > 1e-3
    h = spans[0](ids, attention_mask=mask, extras={"token_type_ids": types})
    for span in spans[1:]:
        h = span(h, attention_mask=mask)
    assert (h - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("preset, block", [("tiny-llama", 1), ("tiny-gpt2", 0)])
def test_check_names_the_first_diverging_block(monkeypatch, preset, block):
    """A split that forgets how many tokens it has seen (positions restart at 0 at each decode
    step) is caught at the first block that uses positions: GPT-2's learned positions are in
    block 0, Llama's rotary embeddings act in its first layer."""
    monkeypatch.setattr(SpanCache, "get_seq_length", lambda self, layer_idx=0: 0)
    result = check_model(build_model(PRESETS[preset](), seed=0))
    assert not result.exact and result.error is None
    assert result.first_diverging_block == block
    assert result.max_abs_diff > 1e-3
    assert f"block {block} is the first to diverge" in result.reason()


def test_tied_embeddings_are_stored_once_and_shared():
    config = PRESETS["tiny-gpt2"]()  # GPT-2 ties lm_head to wte
    layout = layout_for(config)
    assert layout.tied == {"lm_head.weight": ("transformer.wte.weight", num_blocks(config) - 1)}
    model = build_model(config, seed=0)
    n = num_blocks(config)
    blocks = {b: block_state(model, config, b) for b in range(n)}
    assert "lm_head.weight" not in blocks[n - 1] and "transformer.wte.weight" in blocks[0]
    assert layout.needs(n - 1) == {0, n - 1}
    whole = SpanModel(config, Span(0, n), blocks)
    assert whole.model.lm_head.weight is whole.model.transformer.wte.weight  # one copy in memory
    with pytest.raises(BlockLoadError, match="block 0 was not provided"):
        SpanModel(config, Span(n - 1, n), {n - 1: blocks[n - 1]})
    last = SpanModel(config, Span(n - 1, n), {0: blocks[0], n - 1: blocks[n - 1]})
    hidden = torch.randn(1, 3, 64)
    with torch.no_grad():
        expected = model.lm_head(model.transformer.ln_f(hidden))
    assert (last(hidden, session=last.new_session(), start=n - 1) - expected).abs().max() <= 1e-6


def test_cli_check_prints_json_and_publish_refuses_an_inexact_model(monkeypatch):
    runner = CliRunner()
    ok = runner.invoke(main, ["model", "check", "tiny-llama", "--json"])
    assert ok.exit_code == 0, ok.output
    last = json.loads(ok.output.strip().splitlines()[-1])
    assert last["exact"] is True and last["first_diverging_block"] is None and last["model_type"] == "llama"
    assert last["max_abs_diff"] <= 1e-5
    monkeypatch.setattr(SpanCache, "get_seq_length", lambda self, layer_idx=0: 0)
    bad = runner.invoke(main, ["model", "check", "tiny-llama", "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.output.strip().splitlines()[-1])["first_diverging_block"] == 1
    refused = runner.invoke(main, ["model", "publish", "tiny-llama", "--ipfs-api", "http://127.0.0.1:9"])
    assert refused.exit_code != 0
    assert "not published" in refused.output and "block 1" in refused.output


def test_int8_shards_of_a_mixture_of_experts_are_at_most_0_3_of_fp32():
    from shardnet.model.shards import decode_block, encode_block, input_axes

    config = transformers.MixtralConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    model = build_model(config)
    layout = layout_for(config)
    assert any(t.dim() == 3 for t in block_state(model, config, 1).values())  # stacked expert weights
    fp32 = stored = 0
    blocks = {}
    for b in range(layout.num_blocks):
        state = block_state(model, config, b)
        fp32 += sum(t.numel() * t.element_size() for t in state.values())
        data = encode_block(state, "int8", 64, 6.0, input_axes(model))
        stored += len(data)
        blocks[b] = decode_block(data)
    assert stored <= 0.3 * fp32
    spans = [SpanModel(config, s, blocks) for s in split_even(layout.num_blocks, 2)]
    ids = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    got = spans[1](spans[0](ids))
    assert torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.99


def test_embeddings_pool_as_the_models_sentence_transformers_config_says(tmp_path):
    from shardnet.model.loading import minilm_dir
    from shardnet.model.shards import pooling_of
    from shardnet.model.span import pool

    assert pooling_of(minilm_dir()) == {"mode": "mean", "normalize": True}
    assert pooling_of(tmp_path) is None  # no modules.json: mean, normalised, by default
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        json.dumps([{"path": "", "type": "sentence_transformers.models.Transformer"},
                    {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )  # fmt: skip
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    cls = pooling_of(tmp_path)
    assert cls == {"mode": "cls", "normalize": False}
    config = CASES["bert-pairs"]()
    model = build_model(config, seed=1)
    n = num_blocks(config)
    blocks = {b: block_state(model, config, b) for b in range(n)}
    ids = torch.randint(0, 256, (2, 7))
    mask = torch.ones_like(ids)
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    span = SpanModel(config, Span(0, n), blocks, cls)
    assert torch.allclose(span(ids, attention_mask=mask), hidden[:, 0], atol=1e-5)  # the first token, as is
    assert torch.allclose(pool(hidden, mask, {"mode": "max", "normalize": False}), hidden.amax(1))
