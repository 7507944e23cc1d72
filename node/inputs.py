"""Stage 0 reads the job input (JSON on IPFS) and checks it for the job's kind; the last stage
samples the next token. Bad input raises `JobInputError` naming the field and the fix."""

from __future__ import annotations

import json
from typing import Any

import torch

from shardnet.errors import JobInputError
from shardnet.jobs import MAX_IMAGE_BYTES, MAX_IMAGES, MAX_INPUT_TOKENS, MAX_TEXTS, JobParams


def parse_input(params: JobParams, raw: bytes) -> dict[str, Any]:
    """Validate the job input JSON for its kind. Returns the parsed object."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise JobInputError('the input on IPFS is not JSON; upload e.g. {"prompt": "..."}') from None
    if not isinstance(data, dict):
        raise JobInputError("the input must be a JSON object")
    if params.kind == "generate":
        if not (isinstance(data.get("prompt"), str) and data["prompt"]) and not _ids_ok(data.get("input_ids"), 1):
            raise JobInputError("generate input needs a non-empty 'prompt' string or 'input_ids' (list of ints)")
    elif params.kind == "embed":
        _check_embed(data)
    elif params.kind == "classify":
        data["images"] = _images(data.get("images"))
    else:
        if not (isinstance(data.get("text"), str) and data["text"]) and not _ids_ok(data.get("input_ids"), 1):
            raise JobInputError("forward input needs 'text' or 'input_ids' (list of ints)")
        pair = data.get("text_pair")
        if pair is not None and not (isinstance(pair, str) and pair and isinstance(data.get("text"), str)):
            raise JobInputError("'text_pair' must be a non-empty string and comes with 'text'")
        types = data.get("token_type_ids")
        if types is not None and not (
            isinstance(data.get("input_ids"), list)
            and isinstance(types, list)
            and len(types) == len(data["input_ids"])
            and all(t in (0, 1) for t in types)
        ):
            raise JobInputError("'token_type_ids' must be a list of 0/1, one per entry of 'input_ids'")
    return data


def _check_embed(data: dict[str, Any]) -> None:
    texts, pairs = data.get("texts"), data.get("pairs")
    if pairs is not None:
        if texts is not None:
            raise JobInputError("embed input has both 'texts' and 'pairs'; send one of them")
        if not (
            isinstance(pairs, list)
            and pairs
            and all(isinstance(p, list) and len(p) == 2 and all(isinstance(t, str) and t for t in p) for p in pairs)
        ):
            raise JobInputError("'pairs' must be a non-empty list of [text, text] pairs of non-empty strings")
        count = len(pairs)
    else:
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) and t for t in texts)):
            raise JobInputError("embed input needs 'texts' (a non-empty list of non-empty strings) or 'pairs'")
        count = len(texts)
    if count > MAX_TEXTS:
        raise JobInputError(f"embed input has {count} texts; at most {MAX_TEXTS} per job")


def _images(images: Any) -> list[bytes]:
    """classify: 'images' is a list of base64-encoded image files (PNG, JPEG, ...)."""
    import base64
    import binascii

    if not (isinstance(images, list) and images and all(isinstance(i, str) and i for i in images)):
        raise JobInputError("classify input needs 'images': a non-empty list of base64-encoded image files")
    if len(images) > MAX_IMAGES:
        raise JobInputError(f"classify input has {len(images)} images; at most {MAX_IMAGES} per job")
    out = []
    for index, text in enumerate(images):
        if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise JobInputError(f"images[{index}] is larger than {MAX_IMAGE_BYTES} bytes; send a smaller image")
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise JobInputError(f"images[{index}] is not base64; encode the image file's bytes") from None
    return out


def decode_images(images: list[bytes], processor: Any) -> torch.Tensor:
    """Image files -> pixel values [b, c, h, w], preprocessed by the model's own image processor."""
    import io
    import warnings

    from PIL import Image

    pictures = []
    for index, data in enumerate(images):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                picture = Image.open(io.BytesIO(data))
                picture.load()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's input
            raise JobInputError(f"images[{index}] is not an image Pillow can read: {exc}") from None
        pictures.append(picture.convert("RGB"))
    pixels: torch.Tensor = processor(images=pictures, return_tensors="pt")["pixel_values"]
    return pixels


def _ids_ok(ids: Any, minimum: int) -> bool:
    return (
        isinstance(ids, list)
        and minimum <= len(ids) <= MAX_INPUT_TOKENS
        and all(isinstance(i, int) and i >= 0 for i in ids)
    )


def sample_next(step_logits: torch.Tensor, params: JobParams, generator: torch.Generator | None) -> int:
    """Next token from a step's logits [1, positions, vocab] (its last position's): greedy, or
    temperature/top-k/top-p."""
    if params.temperature == 0 and step_logits.dtype == torch.float32:
        # numpy's argmax (and indexing), not torch's: the same index (the first of the largest;
        # NaN counts as largest in both), and over a vocabulary of 32,000 about 5 us where torch's
        # takes 30, on every generated token's path
        return int(step_logits.detach().numpy()[0, -1].argmax())
    logits = step_logits[0, -1]
    if params.temperature == 0:
        return int(logits.argmax())
    probs_logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(probs_logits, min(params.top_k, probs_logits.numel())).values[-1]
        probs_logits = probs_logits.masked_fill(probs_logits < kth, float("-inf"))
    probs = torch.softmax(probs_logits, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < params.top_p
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = probs[order[keep]]
        probs = filtered / filtered.sum()
    return int(torch.multinomial(probs, 1, generator=generator))
