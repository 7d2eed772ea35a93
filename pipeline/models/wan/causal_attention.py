"""Attention processors that run diffusers' Wan attention modules chunk-causally.

`CausalWanTransformer` installs a `CausalSelfAttnProcessor` on every `attn1` and a
`CausalCrossAttnProcessor` on every `attn2` of the model (main and VACE blocks), then calls the
blocks unchanged. The blocks pass their `rotary_emb` argument to `attn1` and their
`encoder_hidden_states` to `attn2` untouched, so those two arguments carry one layer's per-call
state (`SelfAttentionCall`, `CrossAttentionCall`) into the processors: nothing is stored on the
model between calls, several streams (caches) can share one model, and the processors hold no
per-layer constants (so torch.compile'd blocks share their graphs). Called with ordinary
arguments (the model's own `forward`), the processors behave exactly like diffusers'
`WanAttnProcessor`.

Self-attention of a chunk: queries are the chunk's tokens; keys/values are the visible cached
frames (see `window.py`) followed by the chunk's own. The processor hands the chunk's keys/values
back in its `SelfAttentionCall`; after a committing pass (the clean pass at t=0) the caller
appends them to the cache, after a denoising pass it drops them.

`kv_bias` (`kv_cache_attention_bias`, 0.01–1, 1 = off) down-weights attention to cached frames:
log(kv_bias) is added to the logits of every cached key, so each past key's unnormalised weight
exp(q·k/√d) is multiplied by kv_bias before the softmax renormalises. Chosen over scaling the
logits (q·k·bias) because it is a plain additive mask for scaled_dot_product_attention, leaves
the current chunk's attention pattern untouched, is exactly a no-op at 1, and its effect does
not depend on the magnitude of the logits (a multiplicative logit scale would sharpen or flatten
each query's past attention differently). Without a bias no mask is passed, so SDPA may pick its
flash/efficient kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .rope import apply_rotary

KV_BIAS_RANGE = (0.01, 1.0)


def kv_bias_logit(kv_bias: float) -> float | None:
    """The logit offset of cached keys for a `kv_cache_attention_bias`; None when it is 1."""
    low, high = KV_BIAS_RANGE
    if not low <= kv_bias <= high:
        raise ValueError(f"kv_bias must be within {low}–{high}, got {kv_bias}")
    return None if kv_bias == 1.0 else math.log(kv_bias)


@dataclass
class SelfAttentionCall:
    """One layer's per-call state for `attn1` (passed where the block passes `rotary_emb`).

    In: the chunk's rotary phases, the layer's visible cached keys/values (None: none yet) and
    an additive row over them, [B or 1, 1, 1, past] (log kv_bias on cached keys, -inf on the
    padding of batched streams; None when neither applies). Out: the chunk's own keys/values,
    which the caller commits to the cache after a clean pass. All bookkeeping happens outside
    the blocks, so the processor is plain tensor code (torch.compile traces it without guards
    on the cache)."""

    cos: torch.Tensor
    sin: torch.Tensor
    past_key: torch.Tensor | None = None
    past_value: torch.Tensor | None = None
    past_bias: torch.Tensor | None = None
    key: torch.Tensor | None = field(default=None, repr=False)
    value: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class CrossAttentionCall:
    """One layer's text keys/values for `attn2` (passed where the block passes
    `encoder_hidden_states`), taken from the cross-attention cache."""

    key: torch.Tensor
    value: torch.Tensor


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, tokens, heads·d] → [B, heads, tokens, d] (scaled_dot_product_attention's layout)."""
    return x.unflatten(2, (heads, -1)).transpose(1, 2)


def _output(attn: torch.nn.Module, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, heads, tokens, d] → the block's [B, tokens, dim] through attn.to_out."""
    out = out.transpose(1, 2).flatten(2).type_as(like)
    return attn.to_out[1](attn.to_out[0](out))


def text_key_value(attn: torch.nn.Module, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A cross-attention layer's keys/values [B, heads, L, d] for the projected text."""
    if getattr(attn, "fused_projections", False):
        key, value = attn.to_kv(text).chunk(2, dim=-1)
    else:
        key, value = attn.to_k(text), attn.to_v(text)
    return _heads(attn.norm_k(key), attn.heads), _heads(value, attn.heads)


class CausalSelfAttnProcessor:
    """`attn1`: the chunk's queries against the visible cached keys followed by its own."""

    def __init__(self) -> None:
        self._plain = WanAttnProcessor()

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: object = None,
    ) -> torch.Tensor:
        if not isinstance(rotary_emb, SelfAttentionCall):
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask,
                               rotary_emb)
        call = rotary_emb
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
        rotate = (call.cos, call.sin)
        query = apply_rotary(attn.norm_q(query).unflatten(2, (attn.heads, -1)), *rotate)
        key = apply_rotary(attn.norm_k(key).unflatten(2, (attn.heads, -1)), *rotate)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), _heads(value, attn.heads)
        call.key, call.value = key, value

        keys, values, mask = key, value, None
        if call.past_key is not None and call.past_value is not None:
            keys = torch.cat([call.past_key, key], dim=2)
            values = torch.cat([call.past_value, value], dim=2)
            if call.past_bias is not None:
                # one row per batch entry, broadcast over heads and queries
                past = call.past_bias.to(query.dtype)
                own = past.new_zeros(*past.shape[:-1], key.shape[2])
                mask = torch.cat([past, own], dim=-1)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        return _output(attn, out, hidden_states)


class CausalCrossAttnProcessor:
    """`attn2`: the chunk's queries against the cached text keys/values."""

    def __init__(self) -> None:
        self._plain = WanAttnProcessor()

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: object = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, CrossAttentionCall):
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask,
                               rotary_emb)
        call = encoder_hidden_states
        query = _heads(attn.norm_q(attn.to_q(hidden_states)), attn.heads)
        key, value = call.key, call.value
        if key.shape[0] != query.shape[0]:  # one prompt for the whole batch
            key = key.expand(query.shape[0], -1, -1, -1)
            value = value.expand(query.shape[0], -1, -1, -1)
        out = F.scaled_dot_product_attention(query, key, value)
        return _output(attn, out, hidden_states)
