"""Seeded noise for streams: every tensor depends only on its key (seed, step, frame index),
never on the other sessions in a batch, so a batched session renders exactly as it would alone.

Mixing two independent standard-normal tensors as `a·cos θ + b·sin θ` keeps them standard normal;
both the video-mode "fresh noise" share and the text-mode drift use that.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_FIXED, _FRESH, _DRIFT = 1, 2, 3
"""Stream tags, so fixed, fresh and drifting noise never share a seed."""
_CACHE_SIZE = 32


def seeded_normal(shape: tuple[int, ...], *key: int) -> torch.Tensor:
    """Standard normal noise (CPU, float32) determined by `key` (non-negative ints) alone."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state) & (2**63 - 1))
    return torch.randn(shape, generator=generator)


def mix(a: torch.Tensor, b: torch.Tensor, share: float) -> torch.Tensor:
    """Variance-preserving blend of independent noises: `share` of the variance comes from b."""
    return a * math.sqrt(1.0 - share) + b * math.sqrt(share)


class SessionNoise:
    """One session's noise tensors of shape (steps, *latent_shape), cached on the device.

    - video: a fixed tensor per (seed, step), reused every frame as StreamDiffusion does (a still
      input gives a still output), mixed with `fresh_share` of per-frame noise;
    - text: per step, a path through seeded keyframes (one every `period` frames), slerped so the
      generated picture drifts instead of flickering.
    """

    def __init__(self, latent_shape: tuple[int, ...], device: torch.device, period: int,
                 base_seed: int = 0) -> None:
        self.latent_shape = latent_shape
        self.device = device
        self.period = period
        self.base_seed = base_seed  # the load params' seed; the per-frame seed varies within it
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    def video(self, seed: int, index: int, steps: int, fresh_share: float) -> torch.Tensor:
        fixed = self._cached(_FIXED, seed, steps)
        if fresh_share <= 0.0:
            return fixed
        fresh = seeded_normal((steps, *self.latent_shape), _FRESH, self.base_seed, seed, index)
        fresh = fresh.to(self.device)
        return mix(fixed, fresh, fresh_share)

    def text(self, seed: int, index: int, steps: int) -> torch.Tensor:
        key, offset = divmod(index, self.period)
        # Smoothstep: no jump in speed where one keyframe segment hands over to the next.
        t = offset / self.period
        t = t * t * (3.0 - 2.0 * t)
        theta = t * math.pi / 2.0  # independent Gaussians are orthogonal: slerp = cos/sin blend
        start = self._cached(_DRIFT, seed, steps, key)
        end = self._cached(_DRIFT, seed, steps, key + 1)
        return start * math.cos(theta) + end * math.sin(theta)

    def _cached(self, tag: int, seed: int, steps: int, *key: int) -> torch.Tensor:
        cache_key = (tag, seed, steps, *key)
        tensor = self._cache.get(cache_key)
        if tensor is None:
            # One seed per step: changing the number of steps keeps the earlier steps' noise.
            tensor = torch.stack([
                seeded_normal(self.latent_shape, tag, self.base_seed, seed, step, *key)
                for step in range(steps)]).to(self.device)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[cache_key] = tensor
        return tensor
