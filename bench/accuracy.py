"""Accuracy and bytes of compression, on the real all-MiniLM-L6-v2 weights.

Sentences: >= 500 distinct English sentences from the Python documentation that ships with
every CPython (pydoc_data.topics), so the bench runs offline anywhere. Each compressed setup
runs the model as 3 spans, weights decoded from their shard bytes and activations passed
between spans through the wire encoding, and is compared with the fp32 whole model.
Prints `name: value` lines.
"""

from __future__ import annotations

import re

import torch

from shardnet.model.architectures import block_state, num_blocks
from shardnet.model.loading import load_model, load_tokenizer
from shardnet.model.quant import decode_activation, encode_activation
from shardnet.model.shards import decode_block, encode_block
from shardnet.model.span import SpanModel, mean_pool, split_even

N_SENTENCES = 600
BATCH = 32


def sentences(n: int) -> list[str]:
    from pydoc_data.topics import topics

    seen, out = set(), []
    for text in topics.values():
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 40 <= len(sentence) <= 200 and sentence[0].isupper() and sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
    if len(out) < n:
        raise SystemExit(f"only {len(out)} sentences available, need {n}")
    return out[:n]


def embed_whole(model, tokenizer, texts) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), BATCH):
            enc = tokenizer(texts[i : i + BATCH], padding=True, truncation=True, max_length=128, return_tensors="pt")
            out.append(mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]))
    return torch.cat(out)


def embed_sharded(model, tokenizer, texts, quant: str, wire: str, block_size: int = 64):
    """Returns (embeddings, shard bytes, wire bytes)."""
    config = model.config
    encoded = {
        b: encode_block(block_state(model, config, b), quant, block_size, 6.0) for b in range(num_blocks(config))
    }
    blocks = {b: decode_block(data) for b, data in encoded.items()}
    spans = [SpanModel(config, s, blocks) for s in split_even(num_blocks(config), 3)]
    out, wire_bytes = [], 0
    for i in range(0, len(texts), BATCH):
        enc = tokenizer(texts[i : i + BATCH], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = enc["input_ids"]
        for k, span in enumerate(spans):
            h = span(h, attention_mask=enc["attention_mask"])
            if k < len(spans) - 1:
                data = encode_activation(h, wire, block_size)
                wire_bytes += len(data)
                h = decode_activation(data)
        out.append(h)
    return torch.cat(out), sum(map(len, encoded.values())), wire_bytes


def ranks(x: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    return r


def compare(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(ref, got)
    sim_ref, sim_got = ref @ ref.T, got @ got.T
    eye = torch.eye(len(ref), dtype=torch.bool)
    nn_ref = sim_ref.masked_fill(eye, -2).argmax(1)
    nn_got = sim_got.masked_fill(eye, -2).argmax(1)
    upper = torch.triu(torch.ones_like(eye), diagonal=1)
    a, b = ranks(sim_ref[upper].double()), ranks(sim_got[upper].double())
    spearman = torch.corrcoef(torch.stack([a, b]))[0, 1]
    return {
        "cosine_mean": cos.mean().item(),
        "cosine_min": cos.min().item(),
        "nn1_agreement": (nn_ref == nn_got).double().mean().item(),
        "spearman_pairwise": spearman.item(),
    }


def main() -> None:
    torch.manual_seed(0)
    model, tok_dir = load_model("minilm")
    tokenizer = load_tokenizer(tok_dir)
    texts = sentences(N_SENTENCES)
    ref = embed_whole(model, tokenizer, texts)
    _, fp32_shards, fp32_wire = embed_sharded(model, tokenizer, texts, "none", "fp32")
    _, fp16_shards, fp16_wire = embed_sharded(model, tokenizer, texts, "fp16", "fp16")
    print(f"sentences: {len(texts)}")
    # memory a middle-span process holds (parameters + buffers) against the whole model
    config = model.config
    middle = split_even(num_blocks(config), 3)[1]
    span = SpanModel(config, middle, {b: block_state(model, config, b) for b in range(middle.start, middle.end)})
    held = span.memory_bytes()
    whole = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    print(f"span_memory_bytes_middle_of_3: {held}")
    print(f"whole_model_memory_bytes: {whole}")
    print(f"span_memory_ratio_middle_of_3: {held / whole:.4f}")
    for quant in ("int8", "int8-mixed"):
        got, shard_bytes, wire_bytes = embed_sharded(model, tokenizer, texts, quant, "int8")
        suffix = quant.replace("-", "_")
        for name, value in compare(ref, got).items():
            print(f"{name}_{suffix}: {value:.5f}")
        if quant == "int8":
            print(f"shard_bytes_ratio_int8_vs_fp32: {shard_bytes / fp32_shards:.4f}")
            print(f"wire_bytes_ratio_int8_vs_fp32: {wire_bytes / fp32_wire:.4f}")
            print(f"shard_bytes_ratio_int8_vs_fp16: {shard_bytes / fp16_shards:.4f}")
            print(f"wire_bytes_ratio_int8_vs_fp16: {wire_bytes / fp16_wire:.4f}")


if __name__ == "__main__":
    main()
