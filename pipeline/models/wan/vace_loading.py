"""VACE for the Wan pipelines: its weights (`vace_id`) and the control context of a video chunk.

Weights: a file (local or hub `owner/name/path`) holding VACE's module weights, in original
(`vace_blocks.0.self_attn.q`, `before_proj`, ...) or diffusers naming, e.g. Kijai's
Wan2_1-VACE_module_1_3B_bf16.safetensors: the VACE keys of Wan2.1-VACE-1.3B, unprefixed, in
original naming (`vace_patch_embedding.weight` (1536, 96, 1, 2, 2), `vace_blocks.0..14`, block
0 with `before_proj`, all with `after_proj`); a full VACE checkpoint works too (other keys are
ignored). They are joined to the loaded generator as a diffusers `WanVACETransformer3DModel`,
which the causal transformer runs: the n VACE blocks are spread evenly over the main ones, block
i after main block i·(layers / n), as Wan2.1-VACE's configs and Kijai's loader place them (1.3B:
15 blocks after layers 0, 2, …, 28; 14B: 8 after 0, 5, …, 35); the input channels are read from
`vace_patch_embedding`.

Control context of a chunk (VACE's video-to-video conditioning with a full mask, as Wan's
`vace_encode_frames`/`vace_encode_masks` build it): the inactive part `frames·(1 − mask)` (all
zeros in −1..1 pixels: mid-grey) and the reactive part `frames·mask` (the input video), both
VAE-encoded and normalised, plus the mask packed 8×8 into 64 channels (all ones):
[inactive z, reactive z, mask] → (1, 2z + 64, f, h, w) (96 channels for Wan2.1: 16 + 16 + 64).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pipeline.base import PipelineError

from .vae import StreamingVAE
from .weights import check_fit, empty_model, fetch_file, fill, read_checkpoint, to_diffusers_keys

_BLOCK = re.compile(r"^vace_blocks\.(\d+)\.")
MASK_CHANNELS = 64


def load_vace_transformer(transformer: Any, vace_ref: str, device: torch.device,
                          dtype: torch.dtype) -> Any:
    """The generator `transformer` plus VACE blocks from `vace_ref`, as a
    `WanVACETransformer3DModel` on `device`."""
    from diffusers import WanVACETransformer3DModel

    path = fetch_file(vace_ref, "VACE module", device)
    state = {k: v for k, v in read_checkpoint(path, "VACE module").items()
             if k.startswith(("vace_blocks.", "vace_patch_embedding."))}
    if "vace_patch_embedding.weight" not in state:
        raise PipelineError(f"{vace_ref} holds no VACE module weights (vace_blocks.*, "
                            "vace_patch_embedding.*).")
    state = to_diffusers_keys(state)
    blocks = sorted({int(m[1]) for k in state if (m := _BLOCK.match(k))})
    config = dict(transformer.config)
    num_layers = int(config["num_layers"])
    if not blocks or blocks != list(range(len(blocks))) or num_layers % len(blocks):
        raise PipelineError(f"The VACE module {vace_ref} has {len(blocks)} blocks; it does not "
                            f"fit a transformer of {num_layers} layers (VACE spreads its blocks "
                            "evenly over the main ones).")
    layers = [i * (num_layers // len(blocks)) for i in blocks]
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(vace_layers=layers,
                  vace_in_channels=int(state["vace_patch_embedding.weight"].shape[1]))
    model = empty_model(WanVACETransformer3DModel, config)
    full = {**transformer.state_dict(), **state}
    check_fit(model, full, f"VACE module {vace_ref}", "the generator")
    full = {k: v.to(device) for k, v in full.items()}
    return fill(model, full, dtype).to(device).eval().requires_grad_(False)


def vace_control(latents: torch.Tensor, vae: StreamingVAE, state: Any,
                 video: torch.Tensor) -> torch.Tensor:
    """The chunk's control context (module doc); `latents` is the encoded `video`."""
    if state.vace_zero is None:
        state.vace_zero = vae.new_cache()
    inactive = vae.encode(torch.zeros_like(video), state.vace_zero)
    mask = latents.new_ones(latents.shape[0], MASK_CHANNELS, *latents.shape[2:])
    return torch.cat([inactive, latents, mask], dim=1)
