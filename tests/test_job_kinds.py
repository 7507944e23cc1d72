"""Job kinds beyond text on the real stack: a ViT classifies an image and MiniLM embeds sentence
pairs (token types), each routed through three node processes, and both equal the whole
transformers model built from the same shards. Bad inputs are aborted with a reason."""

import base64
import io

import pytest
import torch
from PIL import Image

from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.layout import layout_for, model_class
from shardnet.model.loading import load_tokenizer, minilm_dir
from shardnet.model.manifest import fetch_manifest, fetch_processor
from shardnet.model.shards import fetch_span
from shardnet.model.span import mean_pool
from shardnet.protocol import JobStatus, Span

pytestmark = pytest.mark.stack

MAX_FEE = 10**15


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = Network(tmp_path_factory.mktemp("kinds")).start()
    network.models = {source: network.publish(source) for source in ("tiny-vit", "minilm", "tiny-llama")}
    for model_id, _ in network.models.values():
        network.wait_confirmed(model_id, 3)
    network.client = Client.from_deployment(dev_account(12), network.deployment)
    yield network
    network.stop()


def _whole(net, source):
    """The whole transformers model, its weights read back from the published shards."""
    manifest = fetch_manifest(net.ipfs, net.models[source][1])
    config = manifest.new_config()
    blocks = fetch_span(net.ipfs, manifest, Span(0, len(manifest.blocks)))
    model = model_class(config)(config).float().eval()
    missing, unexpected = model.load_state_dict({k: v for b in blocks.values() for k, v in b.items()}, strict=False)
    assert not unexpected and set(missing) <= set(layout_for(config).tied)
    model.tie_weights()
    return manifest, model


def _run(net, source, job_input, params):
    model_id, _ = net.models[source]
    job_id = net.client.submit(model_id, job_input, params, MAX_FEE)
    result = net.client.wait(job_id, timeout_s=120)
    return result


def _png(seed):
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(40, 48, 3, generator=gen) * 255).to(torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_vit_classifies_images_through_three_nodes(net):
    images = [_png(1), _png(2)]
    result = _run(
        net,
        "tiny-vit",
        {"images": [base64.b64encode(i).decode() for i in images]},
        JobParams(kind="classify", wire="fp32"),
    )
    assert result.status == JobStatus.COMPLETED, result.record.abort_reason
    assert len(result.record.route) == 3
    manifest, model = _whole(net, "tiny-vit")
    processor = fetch_processor(net.ipfs, manifest)
    pixels = processor(images=[Image.open(io.BytesIO(i)).convert("RGB") for i in images], return_tensors="pt")
    with torch.no_grad():
        ref = model(pixel_values=pixels["pixel_values"]).logits
    got = torch.tensor(result.output["output"])
    assert got.shape == ref.shape == (2, 10)
    assert (got - ref).abs().max() <= 1e-4
    assert result.output["labels"] == [model.config.id2label[int(i)] for i in ref.argmax(-1)]


def test_sentence_pairs_use_token_types_through_three_nodes(net):
    pairs = [["what is a shard?", "a consecutive span of a model's blocks"], ["who pays?", "the client's escrow"]]
    result = _run(net, "minilm", {"pairs": pairs}, JobParams(kind="embed", wire="fp32"))
    assert result.status == JobStatus.COMPLETED, result.record.abort_reason
    assert len(result.record.route) == 3
    _, model = _whole(net, "minilm")
    tok = load_tokenizer(minilm_dir())
    enc = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, return_tensors="pt")
    assert int(enc["token_type_ids"].sum()) > 0
    with torch.no_grad():
        ref = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
        flat = mean_pool(
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state,
            enc["attention_mask"],
        )
    got = torch.tensor(result.output["embeddings"])
    assert (got - ref).abs().max() <= 1e-4
    assert (ref - flat).abs().max() > 1e-4  # token types changed the embedding: they were used


@pytest.mark.parametrize(
    "source, job_input, params, reason",
    [
        ("tiny-vit", {"images": ["bm90IGFuIGltYWdl"]}, JobParams(kind="classify"), "images[0] is not an image"),
        ("tiny-vit", {"images": ["%%%"]}, JobParams(kind="classify"), "images[0] is not base64"),
        ("tiny-vit", {"text": "hello"}, JobParams(kind="forward"), "classifies images: use kind 'classify'"),
        ("tiny-llama", {"images": [base64.b64encode(b"x").decode()]}, JobParams(kind="classify"), "does not classify"),
        ("minilm", {"pairs": [["only one"]]}, JobParams(kind="embed"), "'pairs' must be"),
    ],
)
def test_bad_inputs_are_aborted_with_the_reason(net, source, job_input, params, reason):
    result = _run(net, source, job_input, params)
    assert result.status in (JobStatus.ABORTED, JobStatus.ABORTING), result.status
    assert reason in result.record.abort_reason


def test_the_explorer_summarises_pairs_images_and_labels():
    from shardnet.explorer.live import summarise

    class Ipfs:
        def __init__(self, data):
            self.data = data

        def cat(self, cid, timeout=None):
            return self.data[cid]

    png = base64.b64encode(_png(3)).decode()
    store = Ipfs(
        {
            "in": f'{{"images": ["{png}"]}}'.encode(),
            "pairs": b'{"pairs": [["a question", "a passage"], ["broken"]]}',
            "out": b'{"kind": "classify", "shape": [1, 10], "output": [[0.1]], "labels": ["LABEL_3"]}',
        }
    )
    assert summarise(store, "in") == {"images": {"count": 1, "bytes": len(png) * 3 // 4}}
    assert summarise(store, "pairs") == {"pairs": [["a question", "a passage"]]}
    assert summarise(store, "out") == {"labels": ["LABEL_3"], "shape": [1, 10]}
