"""The OpenAI-compatible gateway on the real stack, driven by the official `openai` package as an
app would: models, chat (streamed and not), completions, embeddings; each call is an on-chain
job paid from the gateway's wallet within the key's budget, and streamed tokens equal the job's
on-chain output."""

from __future__ import annotations

import json

import openai
import pytest

from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.localnet import Network
from shardnet.protocol import JobStatus

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon, node processes and gateway

BUDGET = 10**17
WALLET = dev_account(13)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway")
    network = Network(home / "net").start()
    for source in ("demo-gpt2", "minilm"):
        model_id, _ = network.publish(source)
        network.wait_confirmed(model_id, 3)
    keys = home / "keys.json"
    keys.write_text(json.dumps({"keys": {"sk-test": {"budget_wei": BUDGET}, "sk-poor": {"budget_wei": 1}}}))
    network.keys = keys
    network.url = network.start_gateway(keys, dev_account_index=13)
    network.api = openai.OpenAI(base_url=network.url, api_key="sk-test", max_retries=0, timeout=120)
    network.client = Client.from_deployment(WALLET, network.deployment)
    yield network
    network.stop()


def _job(gw, response) -> int:
    return int(response.id.split("-")[-1])


def test_models_chat_and_completions_through_the_official_client(gw):
    listed = {m.id for m in gw.api.models.list()}
    assert {"demo-gpt2", "minilm"} <= listed

    messages = [{"role": "user", "content": "hello there, how are you?"}]
    chat = gw.api.chat.completions.create(model="demo-gpt2", messages=messages, max_tokens=6, temperature=0)
    job = gw.client.wait(_job(gw, chat))
    assert job.status == JobStatus.COMPLETED and job.record.client == WALLET.address  # paid from the gateway
    assert chat.choices[0].message.content == job.output["text"]
    assert chat.usage.completion_tokens == len(job.output["tokens"])

    completion = gw.api.completions.create(model="demo-gpt2", prompt="the weather today", max_tokens=5, temperature=0)
    job = gw.client.wait(_job(gw, completion))
    assert completion.choices[0].text == job.output["text"] and len(job.output["tokens"]) <= 5


def test_streamed_chat_equals_the_jobs_on_chain_result(gw):
    stream = gw.api.chat.completions.create(
        model="demo-gpt2",
        messages=[{"role": "user", "content": "tell me a story"}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces  # streamed as server-sent events (tests/test_network.py checks they come while the job runs)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    job = gw.client.wait(_job(gw, chunks[0]))
    assert job.status == JobStatus.COMPLETED
    assert "".join(pieces) == job.output["text"]


def test_embeddings_match_the_network_job(gw):
    out = gw.api.embeddings.create(model="minilm", input=["a cat sat", "on the mat"])
    assert [d.index for d in out.data] == [0, 1] and len(out.data[0].embedding) == 384
    job = gw.client.wait(int(out.model_extra["shardnet"]["job_id"]))
    assert out.data[1].embedding == pytest.approx(job.output["embeddings"][1], rel=1e-6)  # float32 on the wire


def test_errors_use_openais_format_and_budgets_hold(gw):
    with pytest.raises(openai.AuthenticationError) as bad_key:
        openai.OpenAI(base_url=gw.url, api_key="sk-wrong", max_retries=0).models.list()
    assert bad_key.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        gw.api.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.param == "model" and "/v1/models" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad_messages:
        gw.api.chat.completions.create(model="demo-gpt2", messages=[])
    assert bad_messages.value.param == "messages"
    poor = openai.OpenAI(base_url=gw.url, api_key="sk-poor", max_retries=0)
    posted = gw.client.c.market.job_count()
    with pytest.raises(openai.RateLimitError) as broke:
        poor.completions.create(model="demo-gpt2", prompt="hi", max_tokens=2)
    assert broke.value.code == "insufficient_quota"
    assert gw.client.c.market.job_count() == posted  # refused before any job was posted
    spent = json.loads(gw.keys.with_name(gw.keys.name + ".spent.json").read_text())
    assert 0 < spent["sk-test"] < BUDGET and "sk-poor" not in spent
