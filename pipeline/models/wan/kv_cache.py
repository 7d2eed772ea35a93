"""Per-stream caches of the causal Wan transformer: self-attention K/V and cross-attention K/V.

`CausalCache` holds, per attention layer (keyed by module name, e.g. "blocks.3",
"vace_blocks.0"):

- the self-attention keys (already rotated by RoPE at their absolute frame positions) and values
  of the frames committed so far, trimmed to what the window can still reach: the sink frames
  plus the newest `local_attn_size − sink_size − 1` frames (the next chunk adds at least one);
- the cross-attention keys/values of the current text embedding, recomputed only when the
  embedding changes (they depend on nothing else).

Tensors are [batch, heads, tokens, head_dim] (scaled_dot_product_attention's layout), so a
chunk's attention is one `torch.cat` of the visible cache with its own keys, with no mask.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .window import FrameWindow


@dataclass
class LayerKV:
    """One self-attention layer's committed keys/values: `frames[i]` is the absolute latent frame
    of tokens [i·tokens_per_frame, (i+1)·tokens_per_frame)."""

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    frames: list[int] = field(default_factory=list)

    def visible(
        self,
        end: int,
        window: FrameWindow,
        tokens_per_frame: int,
        move_sinks: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached keys/values a chunk ending (exclusive) at `end` attends to, or None.

        With `move_sinks` (adjacent sink positions), the sink keys are rotated forward by
        `move_sinks(keys, frames)` so they sit just before the window's oldest frame."""
        if self.key is None or self.value is None:
            return None
        sinks = sum(1 for f in self.frames if f < window.sink_size)
        oldest = window.oldest_rolling(end)
        first = next(
            (i for i in range(sinks, len(self.frames)) if self.frames[i] >= oldest),
            len(self.frames),
        )
        shift = oldest - window.sink_size if move_sinks is not None and sinks else 0
        if shift <= 0 and first == sinks:  # contiguous and in place: the cache itself
            return self.key, self.value
        if sinks == 0 and first == len(self.frames):
            return None
        split, rest = sinks * tokens_per_frame, first * tokens_per_frame
        sink_key = self.key[:, :, :split]
        if shift > 0 and move_sinks is not None:
            sink_key = move_sinks(sink_key, shift)
        key = torch.cat([sink_key, self.key[:, :, rest:]], dim=2)
        value = torch.cat([self.value[:, :, :split], self.value[:, :, rest:]], dim=2)
        return key, value

    def append(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        start: int,
        window: FrameWindow,
        tokens_per_frame: int,
    ) -> None:
        """Commit a chunk's keys/values (frames start, start+1, …) and evict the frames no later
        chunk can see (every later chunk ends after this one's last frame)."""
        frames = self.frames + list(range(start, start + key.shape[2] // tokens_per_frame))
        if self.key is not None and self.value is not None:
            key = torch.cat([self.key, key], dim=2)
            value = torch.cat([self.value, value], dim=2)
        # frames[-1] + 2 ends the shortest possible next chunk; what it cannot see, no later
        # chunk can. Kept frames are the sinks (a prefix) and the newest ones (a suffix): slices,
        # not an index tensor, so committing never copies host data to the device (no sync).
        end = frames[-1] + 2
        sinks = sum(1 for f in frames if f < window.sink_size)
        first = next((i for i in range(sinks, len(frames)) if window.visible(frames[i], end)),
                     len(frames))
        if first > sinks:
            split, rest = sinks * tokens_per_frame, first * tokens_per_frame
            key = torch.cat([key[:, :, :split], key[:, :, rest:]], dim=2)
            value = torch.cat([value[:, :, :split], value[:, :, rest:]], dim=2)
        self.key, self.value = key.contiguous(), value.contiguous()
        self.frames = frames[:sinks] + frames[first:]

    @property
    def nbytes(self) -> int:
        if self.key is None or self.value is None:
            return 0
        return self.key.numel() * self.key.element_size() * 2


class CausalCache:
    """One stream's caches (see the module docstring). `frames` is the number of latent frames
    committed so far, the start frame of the next chunk; `reset()` starts a new stream."""

    def __init__(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, window: FrameWindow
    ) -> None:
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.window = window
        self.frames = 0
        self.tokens_per_frame: int | None = None
        self.self_attn: dict[str, LayerKV] = {}
        self.cross_attn: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._text: tuple[torch.Tensor, weakref.ref[torch.Tensor], int] | None = None

    def reset(self) -> None:
        """Forget every committed frame. The cross-attention cache stays: it only depends on
        the text embedding, and is rebuilt when that changes."""
        self.frames = 0
        self.tokens_per_frame = None
        self.self_attn.clear()

    def layer(self, name: str) -> LayerKV:
        return self.self_attn.setdefault(name, LayerKV())

    def use_text(self, text_embeds: torch.Tensor) -> bool:
        """Make the cross-attention cache belong to `text_embeds`; True when it already did
        (the same tensor, unmodified, or an equal one)."""
        if self._text is not None:
            copy, ref, version = self._text
            if ref() is text_embeds and version == text_embeds._version:
                return True
            if (
                copy.shape == text_embeds.shape
                and copy.device == text_embeds.device
                and copy.dtype == text_embeds.dtype
                and torch.equal(copy, text_embeds)
            ):
                self._text = (copy, weakref.ref(text_embeds), text_embeds._version)
                return True
        self.cross_attn.clear()
        self._text = (text_embeds.detach().clone(), weakref.ref(text_embeds), text_embeds._version)
        return False

    @property
    def nbytes(self) -> int:
        """Bytes held by the self- and cross-attention caches."""
        cross = sum(k.numel() * k.element_size() * 2 for k, _ in self.cross_attn.values())
        return cross + sum(layer.nbytes for layer in self.self_attn.values())
