"""Which past latent frames a chunk attends to: the rolling window with attention sinks.

One definition, used by the KV cache (what it keeps and hands to attention) and by
`attention_mask` (the same rule written as a full-sequence mask, for tests and docs).

A chunk covering latent frames [start, end) attends to key frame k < end when

    local_attn_size == -1                      (unbounded), or
    k < sink_size                              (a sink: the stream's first frames), or
    k >= end - (local_attn_size - sink_size)   (the rolling window, the chunk included).

So `local_attn_size` counts every frame a chunk may see, sinks and the chunk itself included, as
in Self-Forcing's and LongLive's configs (LongLive: 12 frames, 3 of them sinks). Within a chunk
attention is bidirectional; across chunks it is causal (block-causal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FrameWindow:
    """The attention window, in latent frames (see the module docstring)."""

    local_attn_size: int = -1
    sink_size: int = 0

    def __post_init__(self) -> None:
        if self.sink_size < 0:
            raise ValueError(f"sink_size must be >= 0, got {self.sink_size}")
        if self.local_attn_size != -1 and self.local_attn_size <= self.sink_size:
            raise ValueError(
                f"local_attn_size ({self.local_attn_size}) must be -1 (unbounded) or larger than "
                f"sink_size ({self.sink_size})"
            )

    @property
    def bounded(self) -> bool:
        return self.local_attn_size != -1

    @property
    def rolling(self) -> int:
        """Frames of the rolling part (the chunk included); unbounded: a very large number."""
        return self.local_attn_size - self.sink_size if self.bounded else 1 << 62

    def oldest_rolling(self, end: int) -> int:
        """First non-sink frame a chunk ending (exclusive) at `end` still sees."""
        return end - self.rolling

    def visible(self, key_frame: int, end: int) -> bool:
        """Whether a chunk ending (exclusive) at `end` attends to `key_frame`."""
        return key_frame < end and (
            key_frame < self.sink_size or key_frame >= self.oldest_rolling(end)
        )

    def check_chunk(self, num_frames: int) -> None:
        if num_frames > self.rolling:
            raise ValueError(
                f"a chunk of {num_frames} latent frames does not fit the attention window "
                f"(local_attn_size {self.local_attn_size} − sink_size {self.sink_size}); "
                "use shorter chunks or a larger local_attn_size"
            )


def attention_mask(
    chunks: list[int],
    tokens_per_frame: int,
    window: FrameWindow,
    *,
    kv_bias: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The full-sequence additive mask equivalent to running `chunks` (frame counts, in order)
    one after another with the KV cache: [tokens, tokens], 0 where attended, -inf where not,
    log(kv_bias) on keys of earlier chunks (see `kv_bias_logit`)."""
    frames = sum(chunks)
    mask = torch.full((frames, frames), -math.inf, dtype=torch.float64)
    start = 0
    for size in chunks:
        end = start + size
        for key in range(end):
            if window.visible(key, end):
                mask[start:end, key] = 0.0 if key >= start else math.log(kv_bias)
        start = end
    return mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1).to(
        dtype
    )
