"""Wan2.1 video diffusion, block-causal and streaming (the `longlive` / `streamdiffusionv2` core).

Transformer half (this package's `causal_*`, `kv_cache`, `window`, `rope`, `vace` modules):

```python
class CausalWanTransformer:   # wraps a loaded WanTransformer3DModel or WanVACETransformer3DModel
    def __init__(self, transformer, *, local_attn_size: int = -1, sink_size: int = 0,
                 sink_positions: Literal["absolute", "adjacent"] = "absolute") -> None
    def new_cache(self, batch_size: int = 1) -> CausalCache  # on the model's device/dtype
    def __call__(self, latents: Tensor,           # [B, C, F, h, w] the chunk's latent frames
                 timestep: Tensor,                # [B] or [B, F], 0..1000 scale
                 text_embeds: Tensor,             # [B or 1, L, D] (UMT5 output)
                 cache: CausalCache | Sequence[CausalCache], *,  # several: streams batched
                 commit: bool = False,            # the clean t=0 pass: append the chunk's K/V
                 kv_bias: float = 1.0,            # kv_cache_attention_bias, 0.01–1
                 vace_context: Tensor | None = None,  # [B, vace_in_channels, F, h, w]
                 vace_scale: float = 1.0) -> Tensor   # flow prediction, shape/dtype of latents
    def add_reference_frames(self, ref_latents, text_embeds, cache, *, kv_bias=1.0,
                             vace_scale=1.0) -> None   # VACE reference images, before chunk 0
    model, window, is_vace, layers, device, dtype   # attributes (layers: name → block)

class CausalCache:
    frames: int            # latent frames committed: the next chunk's start frame
    def reset(self) -> None  # new stream (the text cache stays valid: it is keyed by the text)
    nbytes: int            # memory held

attention_mask(chunks, tokens_per_frame, FrameWindow(local_attn_size, sink_size), kv_bias=...)
    # the equivalent full-sequence mask (what the caches compute, written as one mask)
```

`local_attn_size` counts all frames a chunk attends to: sinks, recent frames and the chunk itself.
See docs/video-models.md for the algorithm.
"""

from .causal_transformer import CausalWanTransformer
from .kv_cache import CausalCache
from .window import FrameWindow, attention_mask

__all__ = ["CausalCache", "CausalWanTransformer", "FrameWindow", "attention_mask"]
