"""Declarative block maps for transformers architectures.

Block 0 holds the embeddings, blocks 1..L the transformer layers, block L+1 the final norm
and head (or the pooling). A new architecture is one `Arch` entry: where its modules live
and which of the three runner families it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from shardnet.errors import ModelError


@dataclass(frozen=True)
class Arch:
    model_type: str  # config.model_type
    model_class: str  # transformers class that holds the whole model
    family: str  # "rope_decoder" | "gpt2" | "bert" | "vit"
    embed: tuple[str, ...]  # module paths in block 0
    layers: str  # path of the ModuleList of transformer layers
    final: tuple[str, ...]  # module paths in the last block
    shared: tuple[str, ...] = ()  # weight-free modules every span rebuilds (rotary embeddings)

    @property
    def is_decoder(self) -> bool:
        return self.family in ("rope_decoder", "gpt2")


_ROPE: dict[str, Any] = dict(
    family="rope_decoder",
    embed=("model.embed_tokens",),
    layers="model.layers",
    final=("model.norm", "lm_head"),
    shared=("model.rotary_emb",),
)

ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", "LlamaForCausalLM", **_ROPE),
    "mistral": Arch("mistral", "MistralForCausalLM", **_ROPE),
    "qwen2": Arch("qwen2", "Qwen2ForCausalLM", **_ROPE),
    "gpt2": Arch(
        "gpt2",
        "GPT2LMHeadModel",
        "gpt2",
        embed=("transformer.wte", "transformer.wpe"),
        layers="transformer.h",
        final=("transformer.ln_f", "lm_head"),
    ),
    "bert": Arch("bert", "BertModel", "bert", embed=("embeddings",), layers="encoder.layer", final=()),
    "vit": Arch(
        "vit",
        "ViTForImageClassification",
        "vit",
        embed=("vit.embeddings",),
        layers="vit.layers",
        final=("vit.layernorm", "classifier"),
    ),
}


def arch_for(config: PretrainedConfig) -> Arch:
    try:
        return ARCHS[config.model_type]
    except KeyError:
        raise ModelError(
            f"model_type '{config.model_type}' has no block map; supported: {sorted(ARCHS)}. "
            "Add an Arch entry in shardnet/model/architectures.py"
        ) from None


def model_class(arch: Arch) -> type[PreTrainedModel]:
    cls: type[PreTrainedModel] = getattr(transformers, arch.model_class)
    return cls


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def num_layers(config: PretrainedConfig) -> int:
    return int(config.num_hidden_layers)


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
        add_pooling_layer=False,  # type: ignore[call-arg]  # kept on the config as an extra attribute
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
    ),
}


def build_model(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    """The whole model from a config, weights drawn from a seeded generator, eval mode, fp32."""
    torch.manual_seed(seed)
    model: torch.nn.Module = model_class(arch_for(config))(config)
    return model.float().eval()


def block_paths(arch: Arch, config: PretrainedConfig, block: int) -> tuple[str, ...]:
    """Module paths (in the whole model) that make up `block`."""
    layers = num_layers(config)
    if block == 0:
        return arch.embed
    if 1 <= block <= layers:
        return (f"{arch.layers}.{block - 1}",)
    if block == layers + 1:
        return arch.final
    raise ModelError(f"block {block} out of range: the model has {layers + 2} blocks")


def block_state(model: torch.nn.Module, config: PretrainedConfig, block: int) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `block`, keyed by its name in the whole model."""
    arch = arch_for(config)
    out: dict[str, torch.Tensor] = {}
    for path in block_paths(arch, config, block):
        module = get_module(model, path)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            out[f"{path}.{name}"] = tensor.detach().clone().contiguous()
    return out
