"""The last span's vocabulary projection on a packed weight (shardnet.model.packed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shardnet.model import packed
from shardnet.model.architectures import num_blocks
from shardnet.model.layout import block_state
from shardnet.model.loading import load_model
from shardnet.model.span import SpanModel, split_even

MKL = packed.packing_available()  # x86 builds with MKL (the pinned CPU wheel); elsewhere F.linear throughout


def _head(bias: bool) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(64, 1000, bias=bias)


@pytest.mark.parametrize("bias", [False, True])
def test_rows_of_a_batch_go_through_the_packed_weight_and_one_row_through_f_linear(bias: bool):
    head = _head(bias)
    wrapped = packed.PackedHead(head)
    with torch.no_grad():
        one = torch.randn(1, 1, 64)
        assert torch.equal(wrapped(one), F.linear(one, head.weight, head.bias))  # bit for bit
        prefill = torch.randn(1, 9, 64)
        assert torch.equal(wrapped(prefill), F.linear(prefill, head.weight, head.bias))
        assert wrapped.packed is None  # not packed until a batch of decode steps comes
        for rows in (2, 5, 8):
            x = torch.randn(rows, 1, 64)
            out = wrapped(x)
            assert out.shape == (rows, 1, 1000)
            torch.testing.assert_close(out, F.linear(x, head.weight, head.bias), rtol=1e-4, atol=1e-4)
        assert (wrapped.packed is not None and wrapped.checked == {2, 5, 8}) if MKL else wrapped.packed is None
    x = torch.randn(3, 1, 64)
    assert torch.equal(wrapped(x), F.linear(x, head.weight, head.bias))  # with autograd on: the plain product
    assert wrapped.checked == ({2, 5, 8} if MKL else set())


def test_a_packed_product_that_disagrees_with_f_linear_turns_packing_off():
    head = _head(False)
    wrapped = packed.PackedHead(head)
    with torch.no_grad():
        wrapped(torch.randn(2, 1, 64))
        if MKL:  # (without a packed GEMM, packing is off from the start: the same assertions hold)
            assert wrapped.packed is not None
            wrapped.packed.zero_()  # a packed layout gone wrong
        x = torch.randn(4, 1, 64)
        assert torch.equal(wrapped(x), F.linear(x, head.weight))
    assert not wrapped.enabled and wrapped.packed is None


def test_without_a_packed_gemm_the_head_is_left_alone(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(packed, "packing_available", lambda: False)
    model = nn.Module()
    model.get_output_embeddings = lambda: model.head  # type: ignore[method-assign,assignment]
    model.head = _head(False)
    assert packed.pack_head(model) is None
    assert "forward" not in vars(model.head)


def test_a_decoders_last_span_batches_through_the_packed_head_with_the_tokens_of_each_alone():
    torch.set_num_threads(1)
    model, _ = load_model("llama-512")
    config = model.config
    first, last = split_even(num_blocks(config), 2)
    tail = SpanModel(config, last, {i: block_state(model, config, i) for i in range(last.start, last.end)})
    head = SpanModel(config, first, {i: block_state(model, config, i) for i in range(first.start, first.end)})
    assert (isinstance(tail._head, packed.PackedHead) if MKL else tail._head is None) and head._head is None
    seeded = [torch.Generator().manual_seed(i) for i in range(4)]
    prompts = [torch.randint(0, config.vocab_size, (1, 12), generator=g) for g in seeded]
    alone, together = [], []
    for batched, tokens in ((False, alone), (True, together)):
        starts = [head.new_session() for _ in prompts], [tail.new_session() for _ in prompts]
        firsts = zip(prompts, *starts, strict=True)
        xs = [tail(head(p, session=a), session=b, last_only=True)[:, -1:].argmax(-1) for p, a, b in firsts]
        steps = []
        for _ in range(6):
            if batched:
                hidden = head.forward_batch(xs, starts[0])
                logits = tail.forward_batch(hidden, starts[1])
            else:
                logits = [
                    tail(head(x, session=a), session=b, last_only=True) for x, a, b in zip(xs, *starts, strict=True)
                ]
            xs = [out[:, -1:].argmax(-1) for out in logits]
            steps.append([int(x) for x in xs])
        tokens.extend(steps)
    assert together == alone
    if MKL:
        assert tail._head is not None and tail._head.packed is not None and tail._head.checked == {4}
