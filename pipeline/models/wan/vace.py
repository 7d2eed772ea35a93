"""VACE for the causal Wan transformer: the control branch of `WanVACETransformer3DModel`.

Layout (diffusers'): `vace_patch_embedding` patchifies the control context (96 channels for
Wan2.1 VACE: 16 inactive + 16 reactive latent channels and a 64-channel 8×8-packed mask);
`vace_blocks[0]` adds `proj_in(control)` to the patch-embedded input; each VACE block is a Wan
block whose `proj_out` gives one hint, added (× scale) to the main stream after main block
`vace_layers[i]`. Here the VACE blocks run chunk-causally like the main blocks: their
self-attention reads and commits their own KV cache ("vace_blocks.i"), their cross-attention
uses the shared text cache.

Reference images (`vace_ref_images`) are prepended frames, as in VACE: their latents go in front
of the video with the control context [latent, zeros, zero mask]. Streaming, that means the
stream starts with a committed clean pass over them (`CausalWanTransformer.add_reference_frames`),
so every later chunk sees them at the start of its cache (and keeps them when they are sinks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock


def vace_hints(
    model: torch.nn.Module,
    hidden_states: torch.Tensor,
    control: torch.Tensor,
    encoder_hidden_states: Sequence[object],
    timestep_proj: torch.Tensor,
    rotary_emb: Sequence[object],
) -> list[torch.Tensor]:
    """One hint [B, tokens, dim] per entry of `model.config.vace_layers`.

    `hidden_states` is the patch-embedded chunk; `control` the chunk's control context
    [B, vace_in_channels, F, h, w] (same frames and size as the latents);
    `encoder_hidden_states` and `rotary_emb` what each VACE block passes to its attn2 / attn1."""
    weight = model.vace_patch_embedding.weight
    state = model.vace_patch_embedding(control.to(weight.dtype)).flatten(2).transpose(1, 2)
    hints = []
    for block, text, attention in zip(
        model.vace_blocks, encoder_hidden_states, rotary_emb, strict=True
    ):
        if block.proj_in is not None:
            state = block.proj_in(state) + hidden_states
        # A VACE block is a Wan block plus proj_in/proj_out; `WanTransformerBlock.forward`
        # (which, unlike the VACE block's, takes per-token timesteps) runs its modules.
        state = WanTransformerBlock.forward(block, state, text, timestep_proj, attention)
        hints.append(block.proj_out(state))
    return hints


def reference_context(ref_latents: torch.Tensor, vace_in_channels: int) -> torch.Tensor:
    """VACE control context of reference-image latents [B, C, R, h, w]: the latents as the
    inactive part, zeros for the reactive part and the mask → [B, vace_in_channels, R, h, w]."""
    pad = vace_in_channels - ref_latents.shape[1]
    if pad < 0:
        raise ValueError(
            f"reference latents have {ref_latents.shape[1]} channels, more than the model's "
            f"vace_in_channels ({vace_in_channels})"
        )
    zeros = ref_latents.new_zeros(ref_latents.shape[0], pad, *ref_latents.shape[2:])
    return torch.cat([ref_latents, zeros], dim=1)
