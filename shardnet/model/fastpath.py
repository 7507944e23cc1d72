"""One-token decode steps of the GPT-2 and Llama families without the model's Python machinery.

A span normally runs the model's own forward (shardnet.model.span): right for every
architecture, but a small span's decode step of one token then spends a good part of its time
in Python (module calls, keyword plumbing, mask and cache bookkeeping) rather than in the
matrix-vector products it computes, and more when its caches are cold, as they are on a node
whose turn comes once per token. For these two families, a step of one token by one job calls the same weights and the
same functions the model's layers call (layer norms, rotary embedding, the model's attention
function, activation modules), in the same order, so its results are bitwise those of the
model's forward: a middle GPT-2-small span's step takes ~11% less time (10.1 -> 9.0 ms back to
back, 11.0 -> 9.6 ms after an idle gap), and a generation's tokens are unchanged. A decode
batch (shardnet.model.span's forward_batch: left-padded caches, a mask over the padding, each
row at its own position) runs the same way, with that mask. Anything else (a prefill, other
families, other attention implementations) takes the model's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from shardnet.model.cache import GrowingLayer, Session, layer_of

# (x [b, 1] ids or [b, 1, d] states, the cache, positions [b, 1], the attention mask [b, 1, 1, kv]
# over the cache and this token (None: attend to all of it), first layer, end layer, embed?,
# final?) -> hidden states [b, 1, d], or logits [b, 1, vocab] at the model's end
Step = Callable[[torch.Tensor, Any, torch.Tensor, torch.Tensor | None, int, int, bool, bool], torch.Tensor]


def fast_step(model: nn.Module) -> Step | None:
    """The lean step for `model` (the span's whole-model skeleton, read through the config it
    was built with: the attention implementation is the one transformers chose), or None."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    model_type = getattr(config, "model_type", "")
    if model_type == "gpt2" and type(model).__name__ == "GPT2LMHeadModel":
        if getattr(config, "add_cross_attention", False) or getattr(config, "reorder_and_upcast_attn", False):
            return None
        return _gpt2(model)
    if model_type == "llama" and type(model).__name__ == "LlamaForCausalLM":
        return _llama(model)
    return None


def eligible(x: torch.Tensor, session: Session | None, start: int) -> bool:
    """A step of one token by one job whose cache already holds its prompt in growing layers."""
    if session is None or session.cache is None or session.seen == 0:
        return False
    if x.shape[0] != 1 or x.shape[1] != 1 or x.dim() != (2 if start == 0 else 3):
        return False
    cache = session.cache
    return all(type(cache.layers[j]) is GrowingLayer for j in cache.active)


def batch_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """A batch's [b, kv] 1/0 mask as the attention takes it, [b, 1, 1, kv] of booleans (True:
    attend); None when nothing is padded. A token of one step attends to all of the cache before
    it, so the padding is all there is to mask."""
    if bool(mask.all()):
        return None
    return mask.bool()[:, None, None, :]


def _gpt2(model: Any) -> Step:
    body = model.transformer
    layers, lm_head = body.h, model.lm_head

    def step(
        x: torch.Tensor,
        cache: Any,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        first: int,
        last: int,
        embed: bool,
        final: bool,
    ) -> torch.Tensor:
        b = x.shape[0]
        if embed:
            x = F.embedding(x, body.wte.weight) + F.embedding(positions, body.wpe.weight)
        for j in range(first, last):
            block = layers[j]
            attn, mlp = block.attn, block.mlp
            h = block.ln_1(x)
            qkv = torch.addmm(attn.c_attn.bias, h.view(b, -1), attn.c_attn.weight).view(b, 1, -1)
            q, k, v = torch.split(qkv, attn.split_size, dim=2)
            q = q.view(b, 1, -1, attn.head_dim).transpose(1, 2)
            k = k.view(b, 1, -1, attn.head_dim).transpose(1, 2)
            v = v.view(b, 1, -1, attn.head_dim).transpose(1, 2)
            k, v = layer_of(cache, j).update(k, v)
            o, _ = sdpa_attention_forward(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
            o = o.reshape(b, 1, -1).contiguous()
            x = torch.addmm(attn.c_proj.bias, o.view(b, -1), attn.c_proj.weight).view(b, 1, -1) + x
            h = block.ln_2(x)
            h = mlp.act(torch.addmm(mlp.c_fc.bias, h.view(b, -1), mlp.c_fc.weight).view(b, 1, -1))
            x = x + torch.addmm(mlp.c_proj.bias, h.view(b, -1), mlp.c_proj.weight).view(b, 1, -1)
        if final:
            return lm_head(body.ln_f(x))  # type: ignore[no-any-return]
        return x

    return step


def _llama(model: Any) -> Step:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    body = model.model
    layers, lm_head = body.layers, model.lm_head

    def step(
        x: torch.Tensor,
        cache: Any,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        first: int,
        last: int,
        embed: bool,
        final: bool,
    ) -> torch.Tensor:
        b = x.shape[0]
        if embed:
            x = body.embed_tokens(x)
        cos, sin = body.rotary_emb(x, position_ids=positions)
        for j in range(first, last):
            layer = layers[j]
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias).view(b, 1, -1, attn.head_dim).transpose(1, 2)
            k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias).view(b, 1, -1, attn.head_dim).transpose(1, 2)
            v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias).view(b, 1, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = layer_of(cache, j).update(k, v)
            o, _ = sdpa_attention_forward(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
            o = o.reshape(b, 1, -1).contiguous()
            x = x + F.linear(o, attn.o_proj.weight, attn.o_proj.bias)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if final:
            return lm_head(body.norm(x))  # type: ignore[no-any-return]
        return x

    return step
