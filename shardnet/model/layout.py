"""Where a transformers model's blocks are, found from the model itself (no per-family table).

Block 0 is whatever the model's own forward runs before its first layer (embeddings, position
tables, projections), blocks 1..L its layers, block L+1 whatever runs after the last layer
(final norm, head, pooler). The layer list is the `ModuleList` of `num_hidden_layers` modules;
which modules come before and after it is learned by running the model once on the meta
device (no memory, no weights) and recording the order its modules are called in.

Parameters that are one tensor under two names (tied input and output embeddings) are stored
once, in the block of their first name; the other name is an alias (`Layout.tied`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from shardnet.errors import ModelError


@dataclass(frozen=True)
class Layout:
    model_type: str
    model_class: str  # the transformers class of the whole model
    kind: str  # "causal_lm" (logits), "encoder" (hidden states, pooled), "image_classifier" (logits)
    layers: str  # path of the ModuleList of transformer layers
    num_layers: int
    blocks: dict[str, int]  # every stored tensor (state-dict name) -> its block
    tied: dict[str, tuple[str, int]]  # alias name -> (the stored name holding its tensor, the alias's block)
    layer_returns_tuple: bool  # a layer returns (hidden, ...) rather than hidden
    before: frozenset[str]  # paths of the modules the forward calls before its first layer

    @property
    def num_blocks(self) -> int:
        return self.num_layers + 2

    @property
    def is_decoder(self) -> bool:
        return self.kind == "causal_lm"

    def names_in(self, block: int) -> list[str]:
        return [name for name, b in self.blocks.items() if b == block]

    def needs(self, block: int) -> set[int]:
        """Blocks whose tensors `block` uses: itself, and where its tied aliases are stored."""
        return {block} | {self.blocks[source] for source, at in self.tied.values() if at == block}


def num_layers(config: PretrainedConfig) -> int:
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise ModelError(
            f"config of model_type '{config.model_type}' has no num_hidden_layers; only models made of a "
            "stack of layers can be split"
        )
    return layers


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class of the whole model: the config's `architectures[0]` when transformers has it,
    else its causal-LM class, else its image-classification class, else its base model."""
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            found: type[PreTrainedModel] = cls
            return found
    from transformers.models.auto import modeling_auto as auto

    for mapping in (
        auto.MODEL_FOR_CAUSAL_LM_MAPPING,
        auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
        auto.MODEL_MAPPING,
    ):
        if type(config) in mapping:
            entry: Any = mapping[type(config)]
            chosen: type[PreTrainedModel] = entry[0] if isinstance(entry, tuple) else entry
            return chosen
    raise ModelError(f"transformers has no model class for model_type '{config.model_type}'")


def kind_of(cls: type[PreTrainedModel]) -> str:
    from transformers.models.auto import modeling_auto as auto

    def names(mapping: Any) -> set[str]:
        out: set[str] = set()
        for value in mapping.values():
            out.update(value if isinstance(value, tuple | list) else [value])
        return out

    if cls.__name__ in names(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        return "causal_lm"
    if cls.__name__ in names(auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES):
        return "image_classifier"
    if cls.__name__ in names(auto.MODEL_MAPPING_NAMES):
        return "encoder"
    raise ModelError(
        f"{cls.__name__} is neither a causal LM, an image classifier nor a base model; "
        "set the config's `architectures` to one of those"
    )


_BUILD = threading.Lock()


@contextmanager
def _params_on_meta() -> Iterator[None]:
    """Every parameter created inside lives on the meta device (no memory); buffers stay real,
    so what a module computes at construction (rotary frequencies, position ids) is kept."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=False)
        original(module, name, param)

    with _BUILD:
        nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]


def skeleton(config: PretrainedConfig) -> PreTrainedModel:
    """The whole model with its parameters on the meta device and its buffers on the CPU."""
    with _params_on_meta():
        model: PreTrainedModel = model_class(config)(config)
    model.float()  # type: ignore[no-untyped-call]
    model.eval()  # type: ignore[no-untyped-call]
    return model


def cache_argument(model: nn.Module) -> str:
    """The name the model's forward takes its cache under (`cache`, formerly `past_key_values`)."""
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def probe_inputs(config: PretrainedConfig, kind: str, batch: int, length: int, device: str) -> dict[str, Any]:
    """Placeholder model inputs of the right shape: token ids, or pixels for image models."""
    if kind == "image_classifier":
        size = config.image_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        return {"pixel_values": torch.zeros(batch, config.num_channels, *hw, device=device)}
    return {"input_ids": torch.zeros(batch, length, dtype=torch.long, device=device)}


def _find_layers(model: nn.Module, count: int) -> str:
    best: tuple[int, str] | None = None
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and count > 0:
            size = sum(p.numel() for p in module.parameters())
            if size and (best is None or size > best[0]):
                best = (size, path)
    if best is None:
        raise ModelError(f"found no list of {count} layers (num_hidden_layers) in {type(model).__name__}")
    return best[1]


def _tolerant(forward: Any, returns_tuple: list[bool]) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            out = forward(*args, **kwargs)
        except Exception:  # noqa: BLE001 - only the order of calls around the layers is wanted here
            return args[0] if args else kwargs["hidden_states"]
        returns_tuple[0] = isinstance(out, tuple)
        return out

    return run


@lru_cache(maxsize=32)
def _layout(config_json: str) -> Layout:
    config = transformers.AutoConfig.for_model(**json.loads(config_json))
    cls = model_class(config)
    kind = kind_of(cls)
    count = num_layers(config)
    with torch.device("meta"):
        model = cls(config)
    model.eval()  # type: ignore[no-untyped-call]
    layers_path = _find_layers(model, count)
    layer_list = model.get_submodule(layers_path)
    assert isinstance(layer_list, nn.ModuleList)
    first_layer = id(layer_list[0])
    order: list[str] = []
    seen_layer = [False]
    returns_tuple = [False]

    def pre(path: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if id(module) == first_layer:
                seen_layer[0] = True
            order.append(path if not seen_layer[0] else "")  # only what runs before the layers matters

        return hook

    handles = [
        module.register_forward_pre_hook(pre(path))
        for path, module in model.named_modules()
        if not path.startswith(layers_path + ".") and path != layers_path
    ]
    handles.append(layer_list[0].register_forward_pre_hook(pre(layers_path + ".0")))
    for layer in layer_list:  # a layer that cannot run on meta (data-dependent expert routing) passes through
        layer.forward = _tolerant(layer.forward, returns_tuple)
    try:
        with torch.no_grad():
            model(**probe_inputs(config, kind, 1, 4, "meta"))
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot be laid out
        raise ModelError(
            f"{cls.__name__} could not be traced on the meta device: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    if not seen_layer[0]:
        raise ModelError(f"{cls.__name__}'s forward never ran its layers ({layers_path})")
    before = {p for p in order if p}

    def block_of(name: str) -> int:
        prefix = layers_path + "."
        if name.startswith(prefix):
            return int(name[len(prefix) :].split(".")[0]) + 1
        owner = name.rpartition(".")[0]
        return 0 if owner in before else count + 1

    blocks: dict[str, int] = {}
    tied: dict[str, tuple[str, int]] = {}
    first_name: dict[int, str] = {}
    persistent = set(model.state_dict().keys())
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            tied[name] = (first_name[id(param)], block_of(name))
            continue
        first_name[id(param)] = name
        blocks[name] = block_of(name)
    for name, _ in model.named_buffers(remove_duplicate=False):
        if name in persistent and name not in blocks:
            blocks[name] = block_of(name)
    return Layout(
        model_type=config.model_type,
        model_class=cls.__name__,
        kind=kind,
        layers=layers_path,
        num_layers=count,
        blocks=blocks,
        tied=tied,
        layer_returns_tuple=returns_tuple[0],
        before=frozenset(before),
    )


def layout_for(config: PretrainedConfig) -> Layout:
    return _layout(json.dumps(config.to_dict(), sort_keys=True, default=str))


def block_state(model: nn.Module, config: PretrainedConfig, block: int) -> dict[str, torch.Tensor]:
    """Every tensor stored in `block`, keyed by its name in the whole model (tied aliases are
    stored once, under their first name)."""
    layout = layout_for(config)
    if not 0 <= block < layout.num_blocks:
        raise ModelError(f"block {block} out of range: the model has {layout.num_blocks} blocks")
    state = model.state_dict(keep_vars=True)
    return {name: state[name].detach().clone().contiguous() for name in layout.names_in(block)}
