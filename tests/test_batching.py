"""Batched decode on the real stack: generations running at the same time on the same nodes
share their decode steps (one batch through a span instead of one pass each), and every one of
them still gives exactly the tokens it gives alone."""

import httpx
import pytest
import torch

from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.architectures import PRESETS, build_model, num_blocks
from shardnet.model.layout import block_state
from shardnet.model.span import SpanModel, split_even
from shardnet.protocol import JobStatus

pytestmark = pytest.mark.stack

JOBS = 8
NEW_TOKENS = 24


def _greedy_alone(prompt):
    """Each prompt alone, in one process: the whole model, fp32, with a cache."""
    config = PRESETS["tiny-llama"]()
    model = build_model(config, seed=0)
    n = num_blocks(config)
    blocks = {b: block_state(model, config, b) for b in range(n)}
    spans = [SpanModel(config, s, blocks) for s in split_even(n, 1)]
    sessions = [s.new_session() for s in spans]
    tokens, step = [], torch.tensor([prompt])
    for _ in range(NEW_TOKENS):
        x = step
        for span, session in zip(spans, sessions, strict=True):
            x = span(x, session=session)
        tokens.append(int(x[0, -1].argmax()))
        step = torch.tensor([[tokens[-1]]])
    return tokens


def test_concurrent_generations_are_batched_and_exact(tmp_path):
    net = Network(tmp_path, nodes=2).start()
    try:
        model_id, _ = net.publish("tiny-llama", quant="none")
        net.wait_confirmed(model_id, 2)
        client = Client.from_deployment(dev_account(12), net.deployment)
        prompts = [[(13 * i + j) % 500 + 1 for j in range(4 + i)] for i in range(JOBS)]
        params = JobParams(kind="generate", max_new_tokens=NEW_TOKENS, wire="fp32")
        jobs = [client.submit(model_id, {"input_ids": p}, params, 10**15) for p in prompts]
        results = [client.wait(j, timeout_s=180) for j in jobs]
        for prompt, result in zip(prompts, results, strict=True):
            assert result.status == JobStatus.COMPLETED, result.record.abort_reason
            assert result.output["tokens"] == _greedy_alone(prompt)
        health = [httpx.get(f"http://127.0.0.1:{port}/health").json() for port in net.node_ports]
        assert sum(h["decode_batches"] for h in health) > 0, health
        assert sum(h["batched_steps"] for h in health) > 2 * sum(h["decode_batches"] for h in health) - 1
    finally:
        net.stop()
