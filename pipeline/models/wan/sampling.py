"""Few-step flow-matching sampling for the causal Wan generators (Self-Forcing / CausVid style).

Flow matching: a latent at noise level σ ∈ [0, 1] is x_σ = (1 − σ)·x₀ + σ·ε, the transformer
predicts the flow v = ε − x₀ at timestep t = 1000·σ, so the clean latent it implies is
x̂₀ = x_σ − σ·v. A chunk is denoised in a few steps σ₀ > σ₁ > … : at each step x̂₀ is predicted,
then re-noised with fresh noise to the next level, x = (1 − σₖ₊₁)·x̂₀ + σₖ₊₁·εₖ₊₁ (the
distilled generators were trained on exactly this loop); the last x̂₀ is the output.

`denoising_step_list` (1000-step scale) → σ: with the timestep shift s of the model's training,
σ = s·u / (1 + (s − 1)·u), u = v/1000 (Self-Forcing's `warp_denoising_step` with shift 5:
[1000, 750, 500, 250] → σ = [1, 0.9375, 0.833, 0.625]); a shift of 1 takes the list as given
(StreamDiffusionV2 uses its list unwarped).

Start of a chunk: text mode starts from pure noise at σ₀. Video mode starts from
x = n·ε + (1 − n)·z (z: the encoded input, n: the effective noise scale), which is the flow
latent at σ = n, so the step list is rescaled to start there: σₖ·n/σ₀ (same number of steps,
same proportions).

The motion-aware noise controller (`noise_controller`): input that moves a lot cannot be
followed by a lightly-noised chunk without smearing, a still input needs little noise to stay
steady. Motion m is the largest RMS difference between consecutive input frames in the chunk
(pixels in −1..1, the previous chunk's last frame included) divided by MOTION_FULL_SCALE and
clipped to 0..1. The target noise is n + (1 − n)·MOTION_GAIN·m (n: the session's
`noise_scale`), and the effective value follows it with an exponential moving average
(CONTROLLER_SMOOTHING per chunk), so noise never jumps between two chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MOTION_FULL_SCALE = 0.2
"""RMS frame difference (−1..1 pixels) counted as full motion."""
MOTION_GAIN = 0.5
"""At full motion the noise goes half way from `noise_scale` to 1."""
CONTROLLER_SMOOTHING = 0.5
"""Share of the previous effective noise kept at each chunk."""


def shifted_sigmas(steps: Sequence[int], shift: float) -> list[float]:
    """`denoising_step_list` values (1000-step scale) → noise levels σ (see module doc)."""
    out = []
    for v in steps:
        u = min(max(v / 1000.0, 0.0), 1.0)
        out.append(shift * u / (1.0 + (shift - 1.0) * u))
    return out


def start_sigmas(sigmas: Sequence[float], noise: float | None) -> list[float]:
    """The levels one chunk is denoised at: as given from pure noise (text mode, noise=None);
    rescaled to start at σ = noise for a noised input (video mode)."""
    if noise is None:
        return list(sigmas)
    scale = noise / sigmas[0] if sigmas[0] > 0 else 0.0
    return [s * scale for s in sigmas]


def motion(frames: torch.Tensor, previous: torch.Tensor | None) -> float:
    """0..1 motion of (T, 3, H, W) frames in −1..1 (see module doc)."""
    seq = frames if previous is None else torch.cat([previous[None], frames])
    if seq.shape[0] < 2:
        return 0.0
    rms = (seq[1:] - seq[:-1]).float().pow(2).mean(dim=(1, 2, 3)).sqrt()
    return float((rms.max() / MOTION_FULL_SCALE).clamp(0.0, 1.0))


def controlled_noise(noise_scale: float, amount: float, previous: float | None) -> float:
    """The effective noise for a chunk with motion `amount`, smoothed against `previous`."""
    target = noise_scale + (1.0 - noise_scale) * MOTION_GAIN * amount
    if previous is None:
        return target
    return CONTROLLER_SMOOTHING * previous + (1.0 - CONTROLLER_SMOOTHING) * target


FlowModel = Callable[[torch.Tensor, float], torch.Tensor]
"""`model(x, timestep on the 0..1000 scale) → flow prediction`, for one chunk."""


@dataclass(frozen=True)
class ChunkSample:
    x0: torch.Tensor
    """The denoised chunk (clean latents)."""
    calls: int


def denoise(model: FlowModel, start: torch.Tensor, sigmas: Sequence[float],
            noises: Sequence[torch.Tensor]) -> ChunkSample:
    """Denoise `start` (already at level sigmas[0]) over `sigmas`; `noises[k]` re-noises to
    sigmas[k] for k ≥ 1."""
    x, x0 = start, start
    for k, sigma in enumerate(sigmas):
        flow = model(x, 1000.0 * sigma)
        x0 = x - sigma * flow
        if k + 1 < len(sigmas):
            nxt = sigmas[k + 1]
            x = (1.0 - nxt) * x0 + nxt * noises[k + 1]
    return ChunkSample(x0=x0, calls=len(sigmas))
