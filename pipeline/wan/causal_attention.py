"""Attention processors that run diffusers' Wan attention modules chunk-causally.

`CausalWanTransformer` installs one `CausalSelfAttnProcessor` on every `attn1` and one
`CausalCrossAttnProcessor` on every `attn2` of the model (main and VACE blocks), then calls the
blocks unchanged. The blocks pass their `rotary_emb` argument to `attn1` and their
`encoder_hidden_states` to `attn2` untouched, so those two arguments carry the per-call state
(`SelfAttentionCall`, `CrossAttentionCall`) into the processors: nothing is stored on the model
between calls, and several streams (caches) can share one model. Called with ordinary arguments
(the model's own `forward`), the processors behave exactly like diffusers' `WanAttnProcessor`.

Self-attention of a chunk: queries are the chunk's tokens; keys/values are the visible cached
frames (see `window.py`) followed by the chunk's own. A committing pass (the clean pass at t=0)
then appends the chunk's keys/values to the cache; denoising passes only read it.

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

from .kv_cache import CausalCache
from .rope import apply_rotary
from .window import FrameWindow

KV_BIAS_RANGE = (0.01, 1.0)


def kv_bias_logit(kv_bias: float) -> float | None:
    """The logit offset of cached keys for a `kv_cache_attention_bias`; None when it is 1."""
    low, high = KV_BIAS_RANGE
    if not low <= kv_bias <= high:
        raise ValueError(f"kv_bias must be within {low}–{high}, got {kv_bias}")
    return None if kv_bias == 1.0 else math.log(kv_bias)


@dataclass
class SelfAttentionCall:
    """Per-call state for `attn1` (passed where the block passes `rotary_emb`)."""

    cos: torch.Tensor
    sin: torch.Tensor
    cache: CausalCache
    window: FrameWindow
    start: int
    num_frames: int
    tokens_per_frame: int
    commit: bool
    bias_logit: float | None

    @property
    def end(self) -> int:
        return self.start + self.num_frames


@dataclass
class CrossAttentionCall:
    """Per-call state for `attn2` (passed where the block passes `encoder_hidden_states`):
    the raw text embedding and the model's text projection, applied only on a cache miss."""

    cache: CausalCache
    text_embeds: torch.Tensor
    text_embedder: torch.nn.Module
    _projected: torch.Tensor | None = field(default=None, repr=False)

    def projected(self) -> torch.Tensor:
        if self._projected is None:
            weight = next(self.text_embedder.parameters())
            self._projected = self.text_embedder(self.text_embeds.to(weight.dtype))
        return self._projected


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, tokens, heads·d] → [B, tokens, heads, d]."""
    return x.unflatten(2, (heads, -1))


def _output(attn: torch.nn.Module, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, heads, tokens, d] → the block's [B, tokens, dim] through attn.to_out."""
    out = out.transpose(1, 2).flatten(2).type_as(like)
    return attn.to_out[1](attn.to_out[0](out))


class CausalSelfAttnProcessor:
    """`attn1` of one layer, reading and (on commit) writing that layer's `LayerKV`."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
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
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(
                hidden_states
            )
        query = apply_rotary(_heads(attn.norm_q(query), attn.heads), call.cos, call.sin)
        key = apply_rotary(_heads(attn.norm_k(key), attn.heads), call.cos, call.sin)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = _heads(value, attn.heads).transpose(1, 2)

        layer = call.cache.layer(self.layer)
        past = layer.visible(call.end, call.window, call.tokens_per_frame)
        mask = None
        if past is None:
            keys, values = key, value
        else:
            keys = torch.cat([past[0], key], dim=2)
            values = torch.cat([past[1], value], dim=2)
            if call.bias_logit is not None:
                # one row, broadcast over batch, heads and queries
                mask = query.new_zeros(1, 1, 1, keys.shape[2])
                mask[..., : past[0].shape[2]] = call.bias_logit
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        if call.commit:
            layer.append(key, value, call.start, call.window, call.tokens_per_frame)
        return _output(attn, out, hidden_states)


class CausalCrossAttnProcessor:
    """`attn2` of one layer, with its text keys/values cached per text embedding."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
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
        cached = call.cache.cross_attn.get(self.layer)
        if cached is None:
            text = call.projected()
            if getattr(attn, "fused_projections", False):
                key, value = attn.to_kv(text).chunk(2, dim=-1)
            else:
                key, value = attn.to_k(text), attn.to_v(text)
            key = _heads(attn.norm_k(key), attn.heads).transpose(1, 2)
            value = _heads(value, attn.heads).transpose(1, 2)
            cached = call.cache.cross_attn[self.layer] = (key, value)
        query = _heads(attn.norm_q(attn.to_q(hidden_states)), attn.heads).transpose(1, 2)
        key, value = cached
        if key.shape[0] != query.shape[0]:  # one prompt for the whole batch
            key, value = (t.expand(query.shape[0], -1, -1, -1) for t in cached)
        out = F.scaled_dot_product_attention(query, key, value)
        return _output(attn, out, hidden_states)
