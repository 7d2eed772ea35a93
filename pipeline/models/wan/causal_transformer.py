"""`CausalWanTransformer`: a loaded diffusers Wan transformer run block-causally, chunk by chunk.

Each call runs the model on one chunk of latent frames. The chunk starts at `cache.frames`:
its RoPE phases are those of its absolute frames, its self-attention sees the cached frames the
window allows (`window.py`) plus itself, its cross-attention reuses the cached text keys/values.
A call with `commit=True` (the clean pass at timestep 0, after denoising a chunk) also appends
the chunk's keys/values to the cache and advances `cache.frames`; denoising calls leave the cache
as it was, so any number of them can run on the same chunk.

The model's modules and weights are used as loaded (attention processors swapped in, see
`causal_attention.py`); nothing is copied or converted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan_vace import WanVACETransformer3DModel

from .causal_attention import (
    CausalCrossAttnProcessor,
    CausalSelfAttnProcessor,
    CrossAttentionCall,
    SelfAttentionCall,
    kv_bias_logit,
    text_key_value,
)
from .kv_cache import CausalCache
from .rope import chunk_rotary, shift_frames
from .vace import reference_context, vace_hints
from .window import FrameWindow


class CausalWanTransformer:
    """Block-causal streaming wrapper of a `WanTransformer3DModel` or `WanVACETransformer3DModel`
    (Wan2.1 text-to-video layout; the image-conditioned I2V variant is not supported).

    `local_attn_size` is the number of latent frames a chunk attends to, sinks and the chunk
    itself included (-1 = all); `sink_size` the number of first frames always kept.
    `sink_positions`: "absolute" keeps every frame's true RoPE position (a full-sequence pass);
    "adjacent" moves the sinks, at attention time, to just before the window's oldest frame, so
    no query is ever more than local_attn_size frames from a key (StreamingLLM's positions within
    the cache; keeps a model trained on short clips in range on an endless stream)."""

    def __init__(
        self,
        transformer: WanTransformer3DModel | WanVACETransformer3DModel,
        *,
        local_attn_size: int = -1,
        sink_size: int = 0,
        sink_positions: Literal["absolute", "adjacent"] = "absolute",
    ) -> None:
        if sink_positions not in ("absolute", "adjacent"):
            raise ValueError(f"sink_positions must be absolute or adjacent, got {sink_positions}")
        if not isinstance(transformer, WanTransformer3DModel | WanVACETransformer3DModel):
            raise TypeError(
                "expected a diffusers WanTransformer3DModel or WanVACETransformer3DModel, got "
                f"{type(transformer).__name__}"
            )
        config = transformer.config
        if config.image_dim is not None or config.added_kv_proj_dim is not None:
            raise ValueError("image-conditioned (I2V) Wan transformers are not supported")
        if config.patch_size[0] != 1:
            raise ValueError(f"temporal patch size must be 1, got {tuple(config.patch_size)}")
        self.model = transformer
        self.window = FrameWindow(local_attn_size, sink_size)
        self.sink_positions = sink_positions
        self._move_sinks = None
        if sink_positions == "adjacent":
            self._move_sinks = partial(shift_frames, transformer.rope)
        self.is_vace = isinstance(transformer, WanVACETransformer3DModel)
        groups = ("blocks", "vace_blocks") if self.is_vace else ("blocks",)
        self.layers: dict[str, torch.nn.Module] = {
            f"{group}.{i}": block
            for group in groups
            for i, block in enumerate(getattr(transformer, group))
        }
        self_attn, cross_attn = CausalSelfAttnProcessor(), CausalCrossAttnProcessor()
        for block in self.layers.values():
            block.attn1.set_processor(self_attn)
            block.attn2.set_processor(cross_attn)

    @property
    def device(self) -> torch.device:
        return self.model.proj_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.proj_out.weight.dtype

    def new_cache(self, batch_size: int = 1) -> CausalCache:
        """Empty KV + cross-attention caches for one stream of `batch_size` videos."""
        return CausalCache(batch_size, self.device, self.dtype, self.window)

    @torch.no_grad()
    def __call__(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        cache: CausalCache | Sequence[CausalCache],
        *,
        commit: bool = False,
        kv_bias: float = 1.0,
        vace_context: torch.Tensor | None = None,
        vace_scale: float = 1.0,
    ) -> torch.Tensor:
        """The flow prediction for `latents` [B, C, F, h, w] (same shape and dtype).

        timestep: [B] or [B, F] (per frame), 0–1000 scale. text_embeds: [B or 1, L, text_dim].
        cache: the stream's cache, or several streams' caches (batch = the sum of their batch
        sizes, in order) to run independent streams, at any frame, as one batch.
        commit: append this chunk's keys/values and advance `cache.frames` (the clean t=0 pass).
        kv_bias: kv_cache_attention_bias, 0.01–1 (1 = off). vace_context: the chunk's control
        context [B, vace_in_channels, F, h, w] (VACE models only); vace_scale multiplies its
        hints."""
        model = self.model
        streams = [cache] if isinstance(cache, CausalCache) else list(cache)
        batch, _, frames, height, width = self._check(latents, streams, text_embeds,
                                                      vace_context)
        _, p_h, p_w = model.config.patch_size
        rows, cols = height // p_h, width // p_w
        tokens_per_frame = rows * cols
        for stream in streams:
            if stream.tokens_per_frame not in (None, tokens_per_frame):
                raise ValueError(
                    "the latent size changed within a stream; reset the cache first "
                    f"({stream.tokens_per_frame} → {tokens_per_frame} tokens per frame)"
                )
        self.window.check_chunk(frames)
        bias_logit = kv_bias_logit(kv_bias)

        temb, timestep_proj = self._time_embedding(timestep, batch, frames, tokens_per_frame)
        cos, sin = self._rotary(streams, frames, rows, cols)
        running = [n for n in self.layers if vace_context is not None or n.startswith("blocks.")]
        self_calls = {
            name: self._self_attention(name, streams, frames, tokens_per_frame, cos, sin,
                                       bias_logit)
            for name in running
        }
        cross_calls = self._cross_attention(text_embeds, streams)

        weight = model.patch_embedding.weight
        hidden = model.patch_embedding(latents.to(weight.dtype)).flatten(2).transpose(1, 2)
        hidden = hidden.contiguous()
        hints: dict[int, torch.Tensor] = {}
        if vace_context is not None:
            vace = [f"vace_blocks.{i}" for i in range(len(model.vace_blocks))]
            produced = vace_hints(
                model, hidden, vace_context, [cross_calls[n] for n in vace], timestep_proj,
                [self_calls[n] for n in vace],
            )
            hints = dict(zip(model.config.vace_layers, produced, strict=True))
        for i, block in enumerate(model.blocks):
            name = f"blocks.{i}"
            hidden = block(hidden, cross_calls[name], timestep_proj, self_calls[name])
            if i in hints:
                hidden = hidden + hints[i] * vace_scale

        if commit:
            sizes = [stream.batch_size for stream in streams]
            for name, call in self_calls.items():
                if call.key is None or call.value is None:  # set by every attn1
                    continue
                parts = zip(streams, call.key.split(sizes), call.value.split(sizes), strict=True)
                for stream, key, value in parts:
                    stream.layer(name).append(key, value, stream.frames, self.window,
                                              tokens_per_frame)
            for stream in streams:
                stream.frames += frames
                stream.tokens_per_frame = tokens_per_frame
        return self._unpatchify(hidden, temb, latents, rows, cols).to(latents.dtype)

    def _rotary(
        self, streams: list[CausalCache], frames: int, rows: int, cols: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of the chunk: [1, tokens, 1, d/2] when every stream is at the same frame,
        else one row per batch entry."""
        rope = self.model.rope
        starts = {stream.frames for stream in streams}
        if len(starts) == 1:
            return chunk_rotary(rope, starts.pop(), frames, rows, cols, self.device)
        tables = [
            tuple(t.expand(s.batch_size, -1, -1, -1)
                  for t in chunk_rotary(rope, s.frames, frames, rows, cols, self.device))
            for s in streams
        ]
        return torch.cat([c for c, _ in tables]), torch.cat([s for _, s in tables])

    def _self_attention(
        self,
        name: str,
        streams: list[CausalCache],
        frames: int,
        tokens_per_frame: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bias_logit: float | None,
    ) -> SelfAttentionCall:
        """One layer's attention inputs: every stream's visible past, padded to one length
        (padding masked out) when several streams of different lengths share the batch."""
        pasts = []
        for stream in streams:
            layer = stream.self_attn.get(name)
            end = stream.frames + frames
            pasts.append(
                layer.visible(end, self.window, tokens_per_frame, self._move_sinks)
                if layer is not None else None
            )
        present = [p for p in pasts if p is not None]
        if not present:
            return SelfAttentionCall(cos, sin)
        lengths = [p[0].shape[2] if p is not None else 0 for p in pasts]
        longest = max(lengths)
        if len(streams) == 1:
            key, value = present[0]
        else:
            like = present[0][0]
            padded = []
            for stream, past, length in zip(streams, pasts, lengths, strict=True):
                shape = (stream.batch_size, like.shape[1], longest - length, like.shape[3])
                pad = like.new_zeros(shape)
                padded.append(pad if past is None else
                              (torch.cat([past[0], pad], dim=2), torch.cat([past[1], pad], dim=2)))
            key = torch.cat([p if isinstance(p, torch.Tensor) else p[0] for p in padded])
            value = torch.cat([p if isinstance(p, torch.Tensor) else p[1] for p in padded])
        past_bias = None
        if bias_logit is not None or len(set(lengths)) > 1:
            rows = []
            for stream, length in zip(streams, lengths, strict=True):
                row = torch.full((stream.batch_size, 1, 1, longest), -math.inf,
                                 device=self.device)
                row[..., :length] = bias_logit or 0.0
                rows.append(row)
            past_bias = torch.cat(rows)
        return SelfAttentionCall(cos, sin, key, value, past_bias=past_bias)

    def _cross_attention(
        self, text_embeds: torch.Tensor, streams: list[CausalCache]
    ) -> dict[str, CrossAttentionCall]:
        """Every layer's text keys/values for the batch, from each stream's cache."""
        if len(streams) == 1:
            return {n: CrossAttentionCall(*kv) for n, kv in self._text_cache(text_embeds,
                                                                              streams[0])}
        sizes = [stream.batch_size for stream in streams]
        texts = text_embeds.split(sizes) if text_embeds.shape[0] > 1 else [text_embeds] * len(
            streams
        )
        per_stream = [dict(self._text_cache(t, s)) for t, s in zip(texts, streams, strict=True)]
        calls = {}
        for name in self.layers:
            parts = [(kv[name], size) for kv, size in zip(per_stream, sizes, strict=True)]
            key = torch.cat([k.expand(size, -1, -1, -1) for (k, _), size in parts])
            value = torch.cat([v.expand(size, -1, -1, -1) for (_, v), size in parts])
            calls[name] = CrossAttentionCall(key, value)
        return calls

    def add_reference_frames(
        self,
        ref_latents: torch.Tensor,
        text_embeds: torch.Tensor,
        cache: CausalCache,
        *,
        kv_bias: float = 1.0,
        vace_scale: float = 1.0,
    ) -> None:
        """Prepend VACE reference images to the stream: a committed clean pass (timestep 0) over
        their latents [B, C, R, h, w] with their VACE context, before any chunk is generated."""
        if not self.is_vace:
            raise ValueError("reference images need a VACE transformer")
        if cache.frames:
            raise ValueError("reference frames must come before the stream's first chunk")
        context = reference_context(ref_latents, self.model.config.vace_in_channels)
        timestep = torch.zeros(ref_latents.shape[0], device=ref_latents.device)
        self(ref_latents, timestep, text_embeds, cache, commit=True, kv_bias=kv_bias,
             vace_context=context, vace_scale=vace_scale)

    def _text_cache(
        self, text_embeds: torch.Tensor, cache: CausalCache
    ) -> list[tuple[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Every layer's text keys/values, from the cache or (new text) computed now."""
        if not cache.use_text(text_embeds) or len(cache.cross_attn) < len(self.layers):
            embedder = self.model.condition_embedder.text_embedder
            weight = next(embedder.parameters())
            projected = embedder(text_embeds.to(weight.device, weight.dtype))
            for name, block in self.layers.items():
                if name not in cache.cross_attn:
                    cache.cross_attn[name] = text_key_value(block.attn2, projected)
        return [(name, cache.cross_attn[name]) for name in self.layers]

    def _check(
        self,
        latents: torch.Tensor,
        streams: list[CausalCache],
        text_embeds: torch.Tensor,
        vace_context: torch.Tensor | None,
    ) -> tuple[int, int, int, int, int]:
        config = self.model.config
        if latents.ndim != 5 or latents.shape[1] != config.in_channels:
            raise ValueError(
                f"latents must be [B, {config.in_channels}, F, h, w], got {tuple(latents.shape)}"
            )
        batch, channels, frames, height, width = latents.shape
        _, p_h, p_w = config.patch_size
        if height % p_h or width % p_w:
            raise ValueError(f"latent size {height}×{width} is not a multiple of the patch size")
        if not streams:
            raise ValueError("no cache given")
        cached = sum(stream.batch_size for stream in streams)
        if batch != cached:
            raise ValueError(f"latents batch {batch} ≠ the caches' batch {cached}")
        if text_embeds.ndim != 3 or text_embeds.shape[0] not in (1, batch):
            raise ValueError(
                f"text_embeds must be [B or 1, L, {config.text_dim}], "
                f"got {tuple(text_embeds.shape)}"
            )
        if vace_context is not None:
            if not self.is_vace:
                raise ValueError("vace_context needs a WanVACETransformer3DModel")
            expected = (batch, config.vace_in_channels, frames, height, width)
            if tuple(vace_context.shape) != expected:
                raise ValueError(
                    f"vace_context must be {list(expected)}, got {list(vace_context.shape)}"
                )
        return batch, channels, frames, height, width

    def _time_embedding(
        self, timestep: torch.Tensor, batch: int, frames: int, tokens_per_frame: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(temb, timestep_proj) as the blocks take them: [B, dim] and [B, 6, dim] for one
        timestep per video, [B, tokens, dim] and [B, tokens, 6, dim] for per-frame timesteps."""
        timestep = torch.as_tensor(timestep, device=self.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if timestep.ndim == 2:
            if tuple(timestep.shape) != (batch, frames):
                raise ValueError(f"a 2-D timestep must be [B, F] = [{batch}, {frames}]")
            if bool((timestep == timestep[:, :1]).all()):
                timestep = timestep[:, 0]
        elif tuple(timestep.shape) != (batch,):
            raise ValueError(f"timestep must be [B] or [B, F], got {tuple(timestep.shape)}")

        embedder = self.model.condition_embedder
        steps = embedder.timesteps_proj(timestep.flatten())
        time_dtype = next(embedder.time_embedder.parameters()).dtype
        if steps.dtype != time_dtype and time_dtype != torch.int8:
            steps = steps.to(time_dtype)
        temb = embedder.time_embedder(steps).to(self.dtype)
        proj = embedder.time_proj(embedder.act_fn(temb))
        if timestep.ndim == 1:
            return temb, proj.unflatten(1, (6, -1))
        # per frame → per token (frame-major tokens), the layout diffusers' blocks accept
        temb = temb.view(batch, frames, 1, -1).expand(-1, -1, tokens_per_frame, -1)
        proj = proj.view(batch, frames, 1, 6, -1).expand(-1, -1, tokens_per_frame, -1, -1)
        return temb.flatten(1, 2), proj.flatten(1, 2)

    def _unpatchify(
        self, hidden: torch.Tensor, temb: torch.Tensor, latents: torch.Tensor, rows: int, cols: int
    ) -> torch.Tensor:
        """diffusers' output stage: modulated norm, projection, patches back to [B, C, F, h, w]."""
        model = self.model
        table = model.scale_shift_table.to(temb.device)
        if temb.ndim == 3:
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (model.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = model.proj_out(hidden)
        batch, _, frames = latents.shape[:3]
        p_t, p_h, p_w = model.config.patch_size
        hidden = hidden.reshape(batch, frames, rows, cols, p_t, p_h, p_w, -1)
        hidden = hidden.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)
