"""Wan's causal 3D VAE (diffusers `AutoencoderKLWan`), streamed chunk by chunk per session.

`AutoencoderKLWan.encode`/`decode` process a whole clip, and internally already walk it in
causal pieces (encoder: the first frame alone, then 4 frames at a time; decoder: one latent frame
at a time), carrying each causal convolution's last input frames in a "feature cache" list. They
clear that cache at the start and end of every call, so two calls make a seam. `StreamingVAE`
runs the same encoder/decoder walk but keeps the caches in a per-session `VAECache`, so that a
stream encoded or decoded in chunks gives the frames one call over the whole clip would give.

Temporal compression is 1 + 4k: a session's first chunk has 1 + 4k frames (k + 1 latent frames:
the first frame is encoded alone), every later chunk 4k frames (k latent frames). Latents are
normalised with the VAE config's per-channel `latents_mean`/`latents_std`, as WanPipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

TEMPORAL = 4
"""Pixel frames per latent frame after the first."""


@dataclass
class VAECache:
    """One session's causal state: the encoder's and the decoder's feature caches."""

    enc: list[Any] = field(default_factory=list)
    dec: list[Any] = field(default_factory=list)
    encoded_frames: int = 0
    """Pixel frames encoded so far (0: the next chunk starts with a lone first frame)."""
    decoded_latents: int = 0


def pixel_frames(latent_frames: int, first: bool) -> int:
    """Pixel frames that `latent_frames` latent frames decode to (or are encoded from)."""
    return 1 + TEMPORAL * (latent_frames - 1) if first else TEMPORAL * latent_frames


class StreamingVAE:
    """Encode/decode of `AutoencoderKLWan` with the causal caches kept across calls."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        config = vae.config
        self.z_dim = int(config.z_dim)
        self.spatial = int(getattr(config, "scale_factor_spatial", None) or 8)
        self.dtype = next(vae.parameters()).dtype
        self.device = next(vae.parameters()).device
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape)
        std = torch.tensor(config.latents_std, dtype=torch.float32).view(shape)
        self.mean, self.inv_std = mean.to(self.device), (1.0 / std).to(self.device)
        self._counts = {"enc": _count_convs(vae.encoder), "dec": _count_convs(vae.decoder)}

    def new_cache(self) -> VAECache:
        return VAECache(enc=[None] * self._counts["enc"], dec=[None] * self._counts["dec"])

    @torch.no_grad()
    def encode(self, video: torch.Tensor, cache: VAECache) -> torch.Tensor:
        """(B, 3, T, H, W) in -1..1 → normalised latents (B, z, f, H/8, W/8), the posterior mean.

        T must be 1 + 4k on the session's first call and 4k after it."""
        frames = video.shape[2]
        first = cache.encoded_frames == 0
        if (frames - 1 if first else frames) % TEMPORAL:
            need = "1 + 4k" if first else "a multiple of 4"
            raise ValueError(f"the VAE needs {need} frames in this chunk, got {frames}")
        x = video.to(self.device, self.dtype)
        pieces = [x[:, :, :1]] if first else []
        start = 1 if first else 0
        pieces += [x[:, :, i:i + TEMPORAL] for i in range(start, frames, TEMPORAL)]
        outs = []
        for piece in pieces:
            outs.append(self.vae.encoder(piece, feat_cache=cache.enc, feat_idx=[0]))
        moments = self.vae.quant_conv(torch.cat(outs, dim=2))
        mu = moments[:, : self.z_dim].float()
        cache.encoded_frames += frames
        return (mu - self.mean) * self.inv_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cache: VAECache) -> torch.Tensor:
        """Normalised latents (B, z, f, h, w) → (B, 3, T, H, W) in -1..1; T = 1 + 4(f−1) on the
        session's first call, 4f after it."""
        z = (latents.float() / self.inv_std + self.mean).to(self.dtype)
        x = self.vae.post_quant_conv(z)
        outs = []
        for i in range(x.shape[2]):
            first = cache.decoded_latents == 0
            outs.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=cache.dec, feat_idx=[0],
                                         first_chunk=first))
            cache.decoded_latents += 1
        return torch.cat(outs, dim=2).float().clamp(-1.0, 1.0)


def _count_convs(module: torch.nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())
