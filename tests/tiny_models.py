"""Tiny random-weight Stable-Diffusion-style models, saved like a hub repo (no downloads).

`build_tiny_sd(path)` writes tokenizer/, text_encoder/, unet/, scheduler/ and vae/ (a tiny
AutoencoderKL, for `vae_id="full"`) under `path`; `build_tiny_taesd(path)` writes a tiny
AutoencoderTiny folder (a stand-in for `madebyollin/taesd`). Both load through diffusers' and
transformers' `from_pretrained` exactly as hub checkpoints do. Weights are random: outputs are
noise-like, but deterministic, batched and prompt-dependent like a real model's.

Sizes follow environment.md: UNet channels (32, 64) with cross-attention only at the low-res
level, so a 64×64 frame (8×8 latent) takes a few milliseconds per UNet call on a 2-core CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TEXT_DIM = 32
SCHEDULER_CONFIG: dict[str, Any] = {
    # sd-turbo's scheduler: SD's scaled-linear betas with trailing timestep spacing.
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}
_MERGES = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("in", "g</w>"), ("a", "t</w>")]


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for bytes (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def write_tiny_clip_tokenizer(path: Path) -> int:
    """A valid CLIP BPE tokenizer with a ~520-token vocabulary; returns the vocabulary size."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES)
    (path / "merges.txt").write_text(merges, encoding="utf-8")
    # Round-trip through transformers so the folder carries its own tokenizer config.
    tokenizer = CLIPTokenizer.from_pretrained(path, model_max_length=77)
    tokenizer.save_pretrained(path)
    return len(vocab)


def build_tiny_sd(path: Path | str, *, prediction_type: str = "epsilon",
                  seed: int = 0) -> Path:
    """Write a tiny SD-1.x/2.x-layout model folder at `path` and return it."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(path)
    torch.manual_seed(seed)
    vocab_size = write_tiny_clip_tokenizer(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_DIM,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM,
        attention_head_dim=(4, 8), use_linear_projection=True, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.18215,
    ).save_pretrained(root / "vae")
    EulerDiscreteScheduler(**{**SCHEDULER_CONFIG, "prediction_type": prediction_type}
                           ).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
    }), encoding="utf-8")
    return root


def build_tiny_taesd(path: Path | str, *, seed: int = 0) -> Path:
    """Write a tiny AutoencoderTiny (TAESD layout: 4 levels, 8× down-sampling) at `path`."""
    from diffusers import AutoencoderTiny

    root = Path(path)
    torch.manual_seed(seed)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    ).save_pretrained(root)
    return root
