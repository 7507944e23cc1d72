"""Seeded model presets, for tests, demos and benchmarks (nothing is downloaded).

Where a model's blocks are is discovered from the model itself (shardnet.model.layout); this
module only names small configs and builds whole models from them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from transformers import PretrainedConfig

from shardnet.model.layout import block_state, layout_for, model_class, num_layers

__all__ = ["PRESETS", "block_state", "build_model", "num_blocks", "num_layers"]


def num_blocks(config: PretrainedConfig) -> int:
    """Embeddings + layers + final."""
    return num_layers(config) + 2


# Small seeded configs, for tests, demos and benchmarks (nothing is downloaded).
PRESETS: dict[str, Callable[[], PretrainedConfig]] = {
    "tiny-llama": lambda: transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
    "tiny-qwen2": lambda: transformers.Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
    "tiny-mistral": lambda: transformers.MistralConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=None,
    ),
    "tiny-gpt2": lambda: transformers.GPT2Config(
        vocab_size=512, n_positions=256, n_embd=64, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0
    ),
    "gpt2-small": lambda: transformers.GPT2Config(),  # 124M parameters, GPT-2 small's shape
    # the Petals comparison's model: a Llama of 8 layers, hidden 512 (bench/pipeline.py)
    "llama-512": lambda: transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    ),
    # a small GPT-2 over the BERT WordPiece vocabulary, so the MiniLM tokenizer can serve it
    "demo-gpt2": lambda: transformers.GPT2Config(
        vocab_size=30522, n_positions=256, n_embd=128, n_layer=6, n_head=4, bos_token_id=101, eos_token_id=102
    ),
    "tiny-bert": lambda: transformers.BertConfig(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        architectures=["BertModel"],  # an encoder: sentence embeddings, not a masked LM
    ),
    "tiny-vit": lambda: transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,  # type: ignore[call-arg]  # a PretrainedConfig argument
        architectures=["ViTForImageClassification"],
    ),
}


def build_model(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    """The whole model from a config, weights drawn from a seeded generator, eval mode, fp32."""
    layout_for(config)  # refuses a model that cannot be split before building it
    torch.manual_seed(seed)
    model: torch.nn.Module = model_class(config)(config)
    return model.float().eval()
