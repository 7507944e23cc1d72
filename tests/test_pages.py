"""A span's weights moved into memory advised for huge pages (shardnet.model.pages): the same
values, ties kept, outputs unchanged, and huge pages where the kernel gives them."""

import os
from pathlib import Path

import torch
from torch import nn

from shardnet.model import pages
from shardnet.model.architectures import PRESETS, build_model, num_blocks
from shardnet.model.layout import block_state
from shardnet.model.span import SpanModel
from shardnet.protocol import Span

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _huge_kib() -> int:
    rollup = Path(f"/proc/{os.getpid()}/smaps_rollup").read_text()
    return sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("AnonHugePages"))


def test_large_tensors_move_bit_for_bit_and_ties_stay_tied():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(4096, 256), nn.Linear(256, 4096), nn.LayerNorm(4096))
    model[1].weight = model[0].weight  # tied, as a decoder's embedding and head often are
    before = {name: t.clone() for name, t in model.state_dict().items()}
    x = torch.randint(0, 4096, (2, 5))
    expected = model(x)
    huge_before = _huge_kib()

    moved = pages.to_huge_pages(model)

    assert moved >= 4096 * 256 * 4  # the tied weight, once
    assert moved < 2 * 4096 * 256 * 4
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert model[1].weight is model[0].weight and isinstance(model[0].weight, nn.Parameter)
    assert model[0].weight.requires_grad  # as the module had it (a span's weights have it off)
    assert model[2].weight.nbytes < pages.MIN_BYTES  # small tensors stay where they were
    assert torch.equal(model(x), expected)
    if pages.available() and THP.exists() and "[never]" not in THP.read_text():
        assert _huge_kib() - huge_before >= 2048  # at least one 2 MiB page backs them


def test_without_room_for_the_copy_the_weights_stay_where_they_are(monkeypatch):
    model = nn.Linear(1024, 1024)
    weight = model.weight

    def no_room(*args: object, **kwargs: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(pages.mmap, "mmap", no_room)
    assert pages.to_huge_pages(model) == 0
    assert model.weight is weight


def test_a_span_runs_the_same_on_huge_pages():
    config = PRESETS["llama-512"]()  # its tensors are large enough to move (tiny models' are not)
    model = build_model(config, seed=0)
    n = num_blocks(config)
    blocks = {b: block_state(model, config, b) for b in range(n)}
    span = Span(0, n)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    plain = SpanModel(config, span, blocks, huge_pages=False)
    huge = SpanModel(config, span, blocks)
    assert torch.equal(plain(ids), huge(ids))
    assert [p.data_ptr() for p in plain.parameters()] != [p.data_ptr() for p in huge.parameters()]
