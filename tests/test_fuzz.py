"""Fuzzing what anyone can send: job params and inputs (posted on-chain and to IPFS by anyone),
activation messages, and every HTTP endpoint of a node and of the gateway. Whatever comes, the
answer is a clear refusal naming the problem, never a crash and never a 5xx."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.inputs import parse_input
from node.server import create_app as node_app
from shardnet.errors import JobInputError, ModelError
from shardnet.jobs import JobParams
from shardnet.model.quant import decode_activation

FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from([*JobParams.__dataclass_fields__, "colour", ""])
params_objects = st.dictionaries(field_names, json_values, max_size=6)


@FAST
@given(raw=st.binary(max_size=200) | params_objects.map(lambda d: json.dumps(d).encode()))
def test_job_params_are_decoded_or_refused_with_a_reason(raw: bytes):
    try:
        params = JobParams.decode(raw)
    except JobInputError as exc:
        assert str(exc)  # names the field and the fix
        return
    params.validate()  # what decodes is valid


inputs = st.dictionaries(st.sampled_from(["prompt", "text", "texts", "input_ids", "x"]), json_values, max_size=3)


@FAST
@given(
    kind=st.sampled_from(["generate", "embed", "forward"]),
    raw=st.binary(max_size=200)
    | inputs.map(lambda d: json.dumps(d).encode())
    | json_values.map(json.dumps).map(str.encode),
)
def test_job_inputs_are_accepted_or_refused_with_a_reason(kind: str, raw: bytes):
    try:
        data = parse_input(JobParams(kind=kind), raw)
    except JobInputError as exc:
        assert str(exc)
        return
    assert isinstance(data, dict)


@FAST
@given(raw=st.binary(max_size=300))
def test_activation_messages_are_decoded_or_refused_with_a_reason(raw: bytes):
    try:
        decode_activation(raw)
    except ModelError as exc:
        assert str(exc)


class _Counter:
    def labels(self, *_: str) -> _Counter:
        return self

    def inc(self, *_: Any) -> None:
        pass


def _node_client() -> TestClient:
    ledger = SimpleNamespace(jobs={}, endpoints={})

    async def accept(*_: Any) -> tuple[bool, str]:
        return False, "no such job"

    async def no_route(*_: Any) -> bool:
        return False

    async def receipt_for(*_: Any) -> tuple[None, str]:
        return None, "this node has no state for the job"

    async def no_daemon() -> dict[str, Any]:
        raise ConnectionError("the IPFS RPC API is not reachable")

    agent = SimpleNamespace(
        metrics=SimpleNamespace(refused=_Counter(), bytes_in=_Counter(), registry=None),
        health=lambda: {"ready": True},
        pipeline=SimpleNamespace(accept=accept, wait_for_route=no_route),
        settlement=SimpleNamespace(receipt_for=receipt_for),
        ledger=ledger,
        address="0x" + "11" * 20,
        executor=SimpleNamespace(jobs={}),
        swarm=SimpleNamespace(own=no_daemon),
    )
    return TestClient(node_app(agent), raise_server_exceptions=False)  # type: ignore[arg-type]


headers = st.dictionaries(
    st.sampled_from(["x-shardnet-signature", "x-shardnet-from", "content-type"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=140),
    max_size=3,
)
node_paths = st.sampled_from(
    ["/v1/jobs/{}/receipt", "/v1/jobs/{}/tokens", "/health", "/v1/link", "/v1/jobs/{}/x/{}", "/v1/ipfs"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=node_paths, a=st.integers(-5, 10**20), b=st.integers(-5, 99), body=st.binary(max_size=400), hdrs=headers)
def test_node_endpoints_never_answer_5xx(path: str, a: int, b: int, body: bytes, hdrs: dict[str, str]):
    client = _node_client()
    response = client.post(path.format(a, b), content=body, headers=hdrs)
    assert response.status_code < 500, (path, response.status_code, response.text[:300])


def test_node_ipfs_addresses_say_why_when_its_daemon_is_down():
    answer = _node_client().get("/v1/ipfs")
    assert answer.status_code == 200
    assert answer.json()["addrs"] == [] and "does not answer" in answer.json()["error"]


@pytest.fixture(scope="module")
def gateway_client(tmp_path_factory) -> TestClient:
    from shardnet.gateway import ApiError, Gateway, KeyBook, ServedModel, create_app

    keys = tmp_path_factory.mktemp("gw") / "keys.json"
    keys.write_text(json.dumps({"keys": {"sk-fuzz": {"budget_wei": 10**18}}}))
    gateway = Gateway.__new__(Gateway)
    gateway.keys = KeyBook(keys)
    gateway.job_timeout_s = 1

    def resolve(name: object) -> Any:
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'model' is required", param="model")
        if name != "m":
            raise ApiError(404, f"model {name!r} is not registered", param="model")
        return ServedModel(1, "m", "0x" + "00" * 20, None)

    async def run_job(key: str, model: Any, job_input: Any, params: JobParams) -> int:
        try:
            params.validate()  # as the real one does, before anything is posted
        except JobInputError as exc:
            raise ApiError(400, str(exc)) from None
        raise ApiError(409, "fuzzing: nothing is posted")

    gateway.models = SimpleNamespace(resolve=resolve, listing=lambda: [])  # type: ignore[assignment]
    gateway.run_job = run_job  # type: ignore[method-assign]
    return TestClient(create_app(gateway), raise_server_exceptions=False)


gateway_paths = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"])
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system"]) | json_values, "content": st.text() | json_values}
    ),
    max_size=3,
)
requests = st.fixed_dictionaries(
    {"model": st.just("m") | json_values},
    optional={
        "messages": messages | json_values,
        "prompt": st.text(max_size=20) | st.lists(st.integers(), max_size=4) | json_values,
        "input": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3) | json_values,
        "stream": st.booleans() | json_values,
        "max_tokens": st.integers(-5, 10**6) | json_values,
        "temperature": st.floats(allow_nan=True) | json_values,
        "top_p": st.floats(allow_nan=True) | json_values,
        "seed": st.integers() | json_values,
        "encoding_format": st.sampled_from(["float", "base64"]) | json_values,
    },
)
bodies = requests.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=50)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=gateway_paths, body=bodies, key=st.sampled_from(["sk-fuzz", "sk-other", ""]))
def test_gateway_endpoints_never_answer_5xx_and_always_in_openai_form(gateway_client, path, body, key):
    response = gateway_client.post(path, content=body.encode(), headers={"authorization": f"Bearer {key}"})
    if path == "/v1/models" and response.status_code == 405:
        return  # a GET endpoint
    assert response.status_code < 500, (path, body, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["type"]


@pytest.fixture(scope="module")
def explorer_client(devnet, tmp_path_factory):
    from shardnet.chain import Chain
    from shardnet.explorer import create_app

    chain = Chain.from_deployment(devnet["deployment"])
    app = create_app(chain, tmp_path_factory.mktemp("explorer") / "index.sqlite", 0.5, probe_interval_s=0)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


segments = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"), max_size=45)
queries = st.dictionaries(
    st.sampled_from(["status", "model", "client", "node"]), segments | st.integers(-3, 10**30).map(str), max_size=3
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    page=st.sampled_from(["/jobs/{}", "/nodes/{}", "/models/{}", "/api/jobs/{}", "/jobs", "/"]),
    segment=segments | st.integers(-3, 10**30).map(str),
    query=queries,
)
def test_explorer_pages_never_answer_5xx(explorer_client, page: str, segment: str, query: dict[str, str]):
    response = explorer_client.get(page.format(segment), params=query)
    assert response.status_code < 500, (page, segment, query, response.text[:300])
