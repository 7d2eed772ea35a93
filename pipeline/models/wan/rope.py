"""Wan's 3-D rotary position embedding for a chunk that starts at latent frame `start_frame`.

diffusers' `WanRotaryPosEmbed` always numbers frames from 0. A chunk must instead get the phases
it would have in a full-sequence pass (frame 9 rotates like frame 9), so that cached keys of
earlier chunks and the chunk's queries differ by their true relative offsets. The angles are
computed here, in float64 like diffusers' tables, for any frame number (no 1024-frame table
limit: a live stream runs for ever), then applied in float32.
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0
"""`WanTransformer3DModel` builds its `WanRotaryPosEmbed` with the default theta."""


def _angles(dim: int, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """[len(positions), dim // 2]: position × frequency, Wan's per-axis frequencies."""
    exponents = torch.arange(0, dim, 2, dtype=positions.dtype, device=positions.device)[: dim // 2]
    return torch.outer(positions, 1.0 / theta ** (exponents / dim))


def chunk_rotary(
    rope: torch.nn.Module,
    start_frame: int,
    num_frames: int,
    height: int,
    width: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [1, num_frames·height·width, 1, head_dim // 2] float32, for the patch
    tokens (frame-major, then row, then column) of frames start_frame … start_frame+num_frames−1.

    `rope` is the model's `WanRotaryPosEmbed` (for its t/h/w split of the head dimension)."""
    wide = torch.float32 if device.type == "mps" else torch.float64
    theta = float(getattr(rope, "theta", ROPE_THETA))
    t = _angles(rope.t_dim, torch.arange(start_frame, start_frame + num_frames, dtype=wide,
                                          device=device), theta)
    h = _angles(rope.h_dim, torch.arange(height, dtype=wide, device=device), theta)
    w = _angles(rope.w_dim, torch.arange(width, dtype=wide, device=device), theta)
    shape = (num_frames, height, width)
    angles = torch.cat(
        [
            t[:, None, None].expand(*shape, -1),
            h[None, :, None].expand(*shape, -1),
            w[None, None, :].expand(*shape, -1),
        ],
        dim=-1,
    ).reshape(1, num_frames * height * width, 1, -1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the (even, odd) channel pairs of x [B, tokens, heads, head_dim], as diffusers'
    Wan attention does."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def shift_frames(
    rope: torch.nn.Module, key: torch.Tensor, frames: int
) -> torch.Tensor:
    """Rotate already-rotated keys (any layout ending in head_dim) `frames` frames later in
    time: RoPE rotations compose, so this equals rotating them at their frame + `frames`."""
    wide = torch.float32 if key.device.type == "mps" else torch.float64
    theta = float(getattr(rope, "theta", ROPE_THETA))
    position = torch.full((1,), float(frames), dtype=wide, device=key.device)  # no host copy
    angles = _angles(rope.t_dim, position, theta)[0]
    angles = torch.cat([angles, angles.new_zeros((rope.h_dim + rope.w_dim) // 2)])
    return apply_rotary(key, angles.cos().float(), angles.sin().float())
