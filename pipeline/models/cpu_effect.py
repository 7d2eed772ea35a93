"""`cpu-effect`: a cheap, visibly prompt-driven CPU effect. Not diffusion.

It exists so that prompt changes, weights, transitions, `noise_scale`, denoising strength and
receive-only (text) sessions can be seen and tested without a GPU. Each prompt maps to a small
"style vector" (a highlight colour, a shadow colour, pattern frequencies): colour words in the
prompt pick the colours ("red", "ocean", "forest", ...), other words a colour from a hash. Prompt
lists and transitions blend these vectors with the same code the diffusion pipelines use.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from pipeline.base import FrameRequest, Pipeline
from pipeline.params import Mode, ParameterUpdate, WeightedPrompt

from .blending import conditioning

# highlight colour for a word (RGB 0..1); the shadow colour is a deep shade of the same hue
_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.1), "fire": (1.0, 0.45, 0.05), "orange": (1.0, 0.55, 0.1),
    "yellow": (1.0, 0.9, 0.15), "gold": (0.95, 0.75, 0.2), "sun": (1.0, 0.8, 0.3),
    "green": (0.2, 0.85, 0.25), "forest": (0.15, 0.6, 0.2), "cyan": (0.1, 0.9, 0.9),
    "blue": (0.15, 0.3, 0.95), "ocean": (0.05, 0.45, 0.85), "ice": (0.7, 0.9, 1.0),
    "purple": (0.6, 0.2, 0.85), "violet": (0.55, 0.25, 0.95), "pink": (1.0, 0.45, 0.75),
    "white": (0.97, 0.97, 0.97), "black": (0.15, 0.15, 0.15), "night": (0.2, 0.25, 0.55),
    "sepia": (0.85, 0.7, 0.45), "neon": (0.2, 1.0, 0.6),
}
_DIM = 8  # highlight rgb, shadow rgb, two pattern frequencies


@functools.lru_cache(maxsize=1024)
def style_vector(text: str) -> np.ndarray:
    """The style vector of one prompt (cached per distinct text, like text embeddings)."""
    digest = hashlib.sha256(text.strip().lower().encode()).digest()
    rnd = np.frombuffer(digest, dtype=np.uint8).astype(np.float32) / 255.0
    words = [w.strip(".,;:!?\"'()") for w in text.lower().split()]
    named = [_COLOURS[w] for w in words if w in _COLOURS]
    high = np.mean(named, axis=0) if named else 0.35 + 0.65 * rnd[:3]
    # Same hue, so that the whole picture reads as the prompt's colour; a little variety per text.
    shadow = np.asarray(high) * (0.08 + 0.1 * rnd[3:6])
    freqs = 2.0 + 10.0 * rnd[6:8]
    vec = np.concatenate([high, shadow, freqs]).astype(np.float32)
    vec.setflags(write=False)
    return vec


class CpuEffectPipeline(Pipeline):
    id = "cpu-effect"
    name = "CPU prompt effect (not diffusion)"
    description = ("A cheap CPU colour effect driven by the prompt (colour words pick the "
                   "palette), noise_scale and denoising strength. For demos and tests without "
                   "a GPU; it is not a diffusion model. Text mode renders a moving pattern in "
                   "the prompt's colours.")
    modes: ClassVar[tuple[Mode, ...]] = ("video", "text")
    max_batch_size = 16
    max_sessions = 16

    @classmethod
    def mode_defaults(cls) -> dict[Mode, ParameterUpdate]:
        prompts = [WeightedPrompt(text="a neon city at night")]
        return {
            "video": ParameterUpdate(prompts=prompts, denoising_step_list=[700, 500],
                                     noise_scale=0.2),
            "text": ParameterUpdate(prompts=prompts, denoising_step_list=[1000, 750, 500, 250],
                                    noise_scale=0.1),
        }

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        return [self._one(request) for request in batch]

    def _one(self, request: FrameRequest) -> np.ndarray:
        style = conditioning(request.params, style_vector)
        high, shadow, freqs = style[0:3], style[3:6], style[6:8]
        if request.frame is None:
            value = _plasma(request.size, freqs, request.index)
            strength = 1.0
        else:
            # HSV value (the brightest channel): a saturated picture keeps its brightness.
            value = request.frame.max(axis=2).astype(np.float32) / 255.0
            # The first (largest) timestep is the img2img strength: 700 → 70 % restyled.
            strength = request.params.denoising_step_list[0] / 1000.0
        value = value[..., None]
        toned = shadow + (high - shadow) * value
        if request.frame is not None:
            toned = toned * strength + (request.frame.astype(np.float32) / 255.0) * (1.0 - strength)
        if request.params.noise_scale > 0.0:
            rng = np.random.default_rng((request.params.seed, request.index))
            grain = rng.standard_normal(value.shape[:2], dtype=np.float32)[..., None]
            toned = toned + grain * (0.25 * request.params.noise_scale)
        return (np.clip(toned, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _plasma(size: tuple[int, int], freqs: np.ndarray, index: int) -> np.ndarray:
    """A slowly moving interference pattern in 0..1 (continuous from frame to frame)."""
    h, w = size
    t = index * 0.08
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    v = (np.sin(x * freqs[0] + t) + np.sin(y * freqs[1] - 1.3 * t)
         + np.sin((x + y) * (freqs[0] + freqs[1]) * 0.5 + 0.7 * t))
    return (v + 3.0) / 6.0
