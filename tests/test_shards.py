"""Shards on the real IPFS daemon: publish, fetch a span with verification, refuse bad bytes;
the real all-MiniLM-L6-v2 weights run sharded from IPFS."""

import json

import pytest
import torch

from shardnet.errors import ShardVerificationError
from shardnet.model.architectures import PRESETS, build_model, num_blocks
from shardnet.model.loading import load_model, load_tokenizer
from shardnet.model.manifest import Manifest, fetch_manifest
from shardnet.model.shards import decode_block, fetch_span, publish, verify_block
from shardnet.model.span import SpanModel, mean_pool, split_even
from shardnet.protocol import Span


class CatSpy:
    def __init__(self, ipfs):
        self.ipfs, self.cids = ipfs, []

    def cat(self, cid, timeout=None):
        self.cids.append(cid)
        return self.ipfs.cat(cid, timeout=timeout)


def test_publish_and_fetch_only_the_span(ipfs):
    model = build_model(PRESETS["tiny-gpt2"](), seed=4)
    manifest = publish(model, ipfs, "tiny-gpt2", quant="none")
    fetched = fetch_manifest(ipfs, manifest.cid)
    assert fetched.data == json.loads(json.dumps(manifest.data))
    spy = CatSpy(ipfs)
    blocks = fetch_span(spy, fetched, Span(2, 4))
    assert spy.cids == [manifest.blocks[2]["cid"], manifest.blocks[3]["cid"]]
    assert set(blocks) == {2, 3}
    x = torch.randn(1, 5, 64)
    span = SpanModel(fetched.config, Span(2, 4), blocks)
    assert span(x).shape == (1, 5, 64)


def test_flipped_byte_is_refused_naming_the_block(ipfs):
    model = build_model(PRESETS["tiny-llama"](), seed=4)
    manifest = publish(model, ipfs, "tiny-llama", quant="int8")
    entry = manifest.blocks[3]
    data = bytearray(ipfs.cat(entry["cid"]))
    data[len(data) // 2] ^= 0x01
    with pytest.raises(ShardVerificationError, match="block 3"):
        verify_block(entry, bytes(data))
    # a block whose CID points at other bytes (a tampered manifest) is refused at fetch
    forged = json.loads(json.dumps(manifest.data))
    forged["blocks"][1]["cid"] = ipfs.add(bytes(data))

    with pytest.raises(ShardVerificationError, match="block 1"):
        fetch_span(ipfs, Manifest(forged), Span(1, 2))


def test_manifest_cid_mismatch_is_refused(ipfs):
    not_a_manifest = ipfs.add(b'{"hello": "world"}')
    with pytest.raises(ShardVerificationError, match="not a shardnet-manifest"):
        fetch_manifest(ipfs, not_a_manifest)


def test_real_minilm_sharded_from_ipfs(ipfs):
    model, tok_dir = load_model("minilm")
    tokenizer = load_tokenizer(tok_dir)
    manifest = publish(model, ipfs, "all-MiniLM-L6-v2", quant="int8", tokenizer_dir=tok_dir)
    assert "tokenizer.json" in manifest.data["tokenizer"]
    fetched = fetch_manifest(ipfs, manifest.cid)
    config = fetched.config
    spans = [SpanModel(config, s, fetch_span(ipfs, fetched, s)) for s in split_even(num_blocks(config), 3)]
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
    h = enc["input_ids"]
    for span in spans:
        h = span(h, attention_mask=enc["attention_mask"])
    cosine = torch.nn.functional.cosine_similarity(h, ref)
    assert cosine.min().item() >= 0.99
    # the int8 model still knows the first two sentences are the similar pair
    sims = h @ h.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]


def test_decode_block_roundtrip_int8_mixed():
    from shardnet.model.shards import encode_block

    w = torch.randn(32, 64)
    w[:, 3] *= 100
    back = decode_block(encode_block({"l.weight": w, "l.bias": torch.randn(32)}, "int8-mixed", 64, 6.0))
    assert set(back) == {"l.weight", "l.bias"} and torch.allclose(back["l.weight"][:, 3], w[:, 3], rtol=1e-3)
