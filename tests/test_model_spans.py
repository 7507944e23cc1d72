"""Sharding is exact: three spans in sequence equal the whole model, for every architecture."""

import pytest
import torch

from shardnet.model.architectures import PRESETS, block_state, build_model, num_blocks
from shardnet.model.quant import (
    compress_state,
    decode_activation,
    decompress_state,
    dequantize_blockwise,
    encode_activation,
    quantize_blockwise,
)
from shardnet.model.span import BlockLoadError, SpanModel, mean_pool, split_even
from shardnet.model.survey import greedy_spans, greedy_whole
from shardnet.protocol import Span

ARCHS = ["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gpt2", "tiny-bert", "tiny-vit"]
DECODERS = ["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gpt2"]
TOL = 1e-5


def _spans(name, seed=0, parts=3):
    cfg = PRESETS[name]()
    model = build_model(cfg, seed)
    blocks = {b: block_state(model, cfg, b) for b in range(num_blocks(cfg))}
    return cfg, model, [SpanModel(cfg, s, blocks) for s in split_even(num_blocks(cfg), parts)]


@pytest.mark.parametrize("name", ARCHS)
def test_three_spans_equal_whole_model(name):
    cfg, model, spans = _spans(name, seed=11)
    torch.manual_seed(0)
    mask = None
    with torch.no_grad():
        if cfg.model_type == "vit":
            x = torch.randn(2, 3, 32, 32)
            ref = model(pixel_values=x).logits
        elif cfg.model_type == "bert":
            x = torch.randint(0, cfg.vocab_size, (3, 12))
            mask = torch.ones_like(x)
            mask[1, 8:] = 0
            mask[2, 5:] = 0
            ref = mean_pool(model(input_ids=x, attention_mask=mask).last_hidden_state, mask)
        else:
            x = torch.randint(0, cfg.vocab_size, (1, 24))
            ref = model(input_ids=x).logits
    h = x
    for span in spans:
        h = span(h, attention_mask=mask)
    assert h.shape == ref.shape
    assert (h - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("name", DECODERS)
def test_twenty_greedy_tokens_with_kv_cache(name):
    cfg, model, spans = _spans(name, seed=5)
    prompt = torch.randint(0, cfg.vocab_size, (1, 7))
    expected = greedy_whole(model, prompt, 20)  # whole model, no cache: recompute everything each step
    tokens, sessions = greedy_spans(spans, prompt, 20)
    assert torch.equal(tokens, expected)
    assert sessions[1].cache.get_seq_length() == 7 + 19


@pytest.mark.parametrize("name", DECODERS)
def test_routes_entering_spans_part_way_match_the_whole_model(name):
    """Overlapping spans [0, 3) and [1, n): a route runs the first, then enters the second at
    block 3; another job on the same span enters at its start. Greedy tokens with KV caches
    equal the whole model for both, interleaved."""
    cfg = PRESETS[name]()
    model = build_model(cfg, 9)
    n = num_blocks(cfg)
    blocks = {b: block_state(model, cfg, b) for b in range(n)}
    first, second = SpanModel(cfg, Span(0, 3), blocks), SpanModel(cfg, Span(1, n), blocks)
    embed = SpanModel(cfg, Span(0, 1), blocks)  # block 0 alone: embeddings (and learned positions)
    prompt = torch.randint(0, cfg.vocab_size, (1, 6))
    expected = prompt
    with torch.no_grad():
        for _ in range(12):
            expected = torch.cat([expected, model(input_ids=expected).logits[:, -1:].argmax(-1)], 1)
    a, b = first.new_session(), second.new_session()  # job 1: [0, 3) then [3, n) of the second span
    c, e = second.new_session(), embed.new_session()  # job 2: [0, 1) then the whole second span
    tokens1 = tokens2 = prompt
    step1 = step2 = prompt
    for _ in range(12):
        logits1 = second(first(step1, session=a), session=b, start=3)
        logits2 = second(embed(step2, session=e), session=c)
        step1, step2 = logits1[:, -1:].argmax(-1), logits2[:, -1:].argmax(-1)
        tokens1, tokens2 = torch.cat([tokens1, step1], 1), torch.cat([tokens2, step2], 1)
    assert torch.equal(tokens1, expected) and torch.equal(tokens2, expected)
    with pytest.raises(ValueError, match="outside span"):
        second(prompt, start=0)


def test_a_span_holds_only_its_blocks():
    cfg = PRESETS["tiny-llama"]()
    model = build_model(cfg)
    blocks = {b: block_state(model, cfg, b) for b in range(num_blocks(cfg))}
    span = SpanModel(cfg, Span(2, 4), {2: blocks[2], 3: blocks[3]})  # other blocks are never handed over
    held = sum(p.numel() for p in span.parameters() if p.device.type == "cpu")
    wanted = sum(
        t.numel()
        for b in (2, 3)
        for n, t in blocks[b].items()
        if "rotary" not in n and t.dtype.is_floating_point and n in dict(model.named_parameters())
    )
    assert held == wanted
    assert held < sum(p.numel() for p in model.parameters()) / 2
    assert span.memory_bytes() < sum(p.numel() * 4 for p in model.parameters()) / 2
    assert all(p.device.type in ("cpu", "meta") for p in span.parameters())  # the rest takes no memory
    with pytest.raises(BlockLoadError, match="block 4"):
        SpanModel(cfg, Span(3, 5), {3: blocks[3]})


def test_missing_tensor_names_the_block():
    cfg = PRESETS["tiny-gpt2"]()
    model = build_model(cfg)
    broken = block_state(model, cfg, 1)
    broken.pop(next(iter(broken)))
    with pytest.raises(BlockLoadError, match="block 1 lacks"):
        SpanModel(cfg, Span(1, 2), {1: broken})


def test_blockwise_quantization_error_is_bounded():
    t = torch.randn(1000, 37)
    codes, scales = quantize_blockwise(t, 64)
    back = dequantize_blockwise(codes, scales, t.shape)
    assert codes.dtype == torch.int8 and back.shape == t.shape
    # error per value is at most half a quantization step of its block
    step = scales.repeat_interleave(64)[: t.numel()].reshape(t.shape)
    assert ((back - t).abs() <= step / 2 + 1e-7).all()


def test_mixed_decomposition_keeps_outlier_columns_exact():
    w = torch.randn(64, 128) * 0.02
    w[:, 7] *= 400  # an outlier input column
    stored, meta = compress_state({"lin.weight": w}, "int8-mixed", 64)
    back = decompress_state(stored, meta)["lin.weight"]
    assert meta["lin.weight"]["outliers"] == 1
    assert torch.allclose(back[:, 7], w[:, 7].half().float())
    plain = decompress_state(*compress_state({"lin.weight": w}, "int8", 64))["lin.weight"]
    assert (back - w).abs().mean() < (plain - w).abs().mean() / 5


def test_outliers_are_taken_along_the_input_axis_whatever_the_layout():
    """GPT-2's Conv1D stores [in, out]: an outlier input is a row there, kept exact in fp16."""
    w = torch.randn(128, 64) * 0.02
    w[7, :] *= 400  # an outlier input channel
    stored, meta = compress_state({"c.weight": w}, "int8-mixed", 64, input_axes={"c.weight": 0})
    back = decompress_state(stored, meta)["c.weight"]
    assert meta["c.weight"]["outliers"] == 1 and meta["c.weight"]["axis"] == 0
    assert torch.allclose(back[7, :], w[7, :].half().float())
    stored, wrong = compress_state({"c.weight": w}, "int8-mixed", 64)  # read as if [out, in]
    assert wrong["c.weight"].get("outliers", 0) != 1  # the wrong axis misses the outlier input
    assert (back - w).abs().mean() < (decompress_state(stored, wrong)["c.weight"] - w).abs().mean() / 2


def test_gpt2_conv1d_weights_are_known_to_publish_as_input_first():
    from shardnet.model.architectures import PRESETS, build_model
    from shardnet.model.shards import input_axes

    axes = input_axes(build_model(PRESETS["tiny-gpt2"]()))
    assert axes["transformer.h.0.attn.c_attn.weight"] == 0 and axes["transformer.h.3.mlp.c_proj.weight"] == 0
    assert "lm_head.weight" not in axes  # an nn.Linear: [out, in], the default


def test_stacked_expert_weights_are_quantized():
    """A mixture of experts' 3-D expert tensors are int8 too: at most 0.3 of their fp32 bytes."""
    experts = torch.randn(8, 64, 32) * 0.02
    stored, meta = compress_state({"experts.down_proj": experts}, "int8-mixed", 64)
    assert meta["experts.down_proj"]["enc"] == "int8"
    size = sum(t.numel() * t.element_size() for t in stored.values())
    assert size <= 0.3 * experts.numel() * 4
    back = decompress_state(stored, meta)["experts.down_proj"]
    assert back.shape == experts.shape and (back - experts).abs().max() < experts.abs().max() / 100


@pytest.mark.parametrize("mode, ratio", [("fp32", 1.0), ("fp16", 0.5), ("int8", 0.27)])
def test_activation_wire_roundtrip(mode, ratio):
    h = torch.randn(2, 128, 256)
    data = encode_activation(h, mode)
    back = decode_activation(data)
    assert back.shape == h.shape
    assert len(data) <= h.numel() * 4 * ratio + 200
    tol = {"fp32": 0, "fp16": 1e-2, "int8": 0.05}[mode]
    assert (back - h).abs().max().item() <= tol


@pytest.mark.parametrize("shape", [(1, 1, 768), (1, 7, 100), (2, 3, 5)])
def test_int8_wire_codes_are_the_blockwise_quantizer_s(shape):
    """The wire's int8 codec (numpy, on a decode step's path) gives exactly what
    quantize_blockwise and dequantize_blockwise give, padded tails and all-zero blocks included."""
    gen = torch.Generator().manual_seed(3)
    for scale in (1e-3, 1.0, 1e3):
        h = torch.randn(shape, generator=gen) * scale
        h.view(-1)[: min(64, h.numel())] = 0  # one all-zero block (scale 0)
        codes, scales = quantize_blockwise(h)
        assert torch.equal(decode_activation(encode_activation(h, "int8")), dequantize_blockwise(codes, scales, shape))
        back = decode_activation(encode_activation(h, "fp16"))
        assert back.dtype == torch.float32 and torch.equal(back, h.half().float())


def test_a_batch_cache_is_let_go_when_one_of_its_generations_ends():
    """A span keeps the padded cache of a decode batch for the same jobs' next step; once one
    of them ends, `release` drops it (it holds that job's rows)."""
    cfg, _, spans = _spans("tiny-llama", parts=1)
    span = spans[0]
    sessions = [span.new_session() for _ in range(3)]
    for k, session in enumerate(sessions):
        span(torch.randint(0, cfg.vocab_size, (1, 4 + k)), session=session)
    step = [torch.randint(0, cfg.vocab_size, (1, 1)) for _ in sessions]
    span.forward_batch(step[:2], sessions[:2])
    span.forward_batch(step, sessions)
    assert len(span._groups) == 2
    span.release(sessions[2])
    assert [len(group.sessions) for group in span._groups.values()] == [2]
    span.release(sessions[0])
    assert not span._groups


@pytest.mark.parametrize("name", DECODERS)
def test_last_only_computes_the_last_positions_logits_alone(name):
    """A generation's prefill at the last span needs the logits of the last position only:
    `last_only` gives those (the whole vocabulary projection of every prompt position is
    skipped), and earlier spans are unaffected."""
    cfg, _, spans = _spans(name, seed=3)
    x = torch.randint(0, cfg.vocab_size, (1, 9))
    full, last = x, x
    for span in spans:
        full, last = span(full), span(last, last_only=True)
    assert full.shape == (1, 9, cfg.vocab_size) and last.shape == (1, 1, cfg.vocab_size)
    assert (last[0, -1] - full[0, -1]).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_the_lean_decode_step_is_bitwise_the_model_s_forward(name):
    """GPT-2 and Llama decode steps of one token skip the model's forward (shardnet.model.fastpath):
    over ten greedy steps through three spans, and through spans [0, 3) then [1, n) entered at
    block 3, every output is bitwise what the model's own forward gives, and the lean step is
    the one that ran."""
    cfg = PRESETS[name]()
    model = build_model(cfg, 3)
    n = num_blocks(cfg)
    blocks = {b: block_state(model, cfg, b) for b in range(n)}
    ran = []

    def routes(lean):
        spans = [SpanModel(cfg, s, blocks) for s in split_even(n, 3)]
        first, second = SpanModel(cfg, Span(0, 3), blocks), SpanModel(cfg, Span(1, n), blocks)
        for span in [*spans, first, second]:
            step = span._fast
            assert step is not None, f"{name} has a lean decode step"
            span._fast = (lambda *args, _step=step: ran.append(1) or _step(*args)) if lean else None
        return [[(s, s.span.start) for s in spans], [(first, 0), (second, 3)]]

    prompt = torch.randint(0, cfg.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
    outs: dict[bool, list[torch.Tensor]] = {}
    for lean in (True, False):
        outs[lean] = []
        for route in routes(lean):
            sessions = [span.new_session() for span, _ in route]
            x = prompt
            for _ in range(10):
                for (span, start), session in zip(route, sessions, strict=True):
                    x = span(x, session=session, start=start)
                    outs[lean].append(x)
                x = x[:, -1:].argmax(-1)
    assert len(ran) == 9 * (3 + 2)  # every step but the prompt's, at every stage of both routes
    assert all(torch.equal(a, b) for a, b in zip(outs[True], outs[False], strict=True))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_a_lean_decode_batch_is_bitwise_the_model_s_forward(name):
    """Three generations of different prompt lengths step together through two spans
    (`forward_batch`: left-padded caches, a mask over the padding, a position per row): the
    lean batch gives bitwise the model's own batched forward, and is the one that ran."""
    cfg = PRESETS[name]()
    model = build_model(cfg, 4)
    n = num_blocks(cfg)
    blocks = {b: block_state(model, cfg, b) for b in range(n)}
    ran = []
    outs: dict[bool, list[torch.Tensor]] = {}
    for lean in (True, False):
        spans = [SpanModel(cfg, s, blocks) for s in split_even(n, 2)]
        for span in spans:
            step = span._fast
            span._fast = (lambda *args, _step=step: ran.append(args[0].shape[0]) or _step(*args)) if lean else None
        sessions = [[span.new_session() for span in spans] for _ in range(3)]
        xs = []
        for i, length in enumerate([5, 9, 7]):
            x = torch.randint(0, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(i))
            for span, session in zip(spans, sessions[i], strict=True):
                x = span(x, session=session)
            xs.append(x[:, -1:].argmax(-1))
        outs[lean] = []
        for _ in range(6):
            h = xs
            for k, span in enumerate(spans):
                h = span.forward_batch(h, [s[k] for s in sessions])
                outs[lean].extend(h)
            xs = [o[:, -1:].argmax(-1) for o in h]
    assert ran == [3] * 6 * 2  # every step a batch of three, at both spans
    assert all(torch.equal(a, b) for a, b in zip(outs[True], outs[False], strict=True))
