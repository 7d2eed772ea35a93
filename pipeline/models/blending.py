"""Blending of prompt conditionings: weighted prompt lists and transitions.

Written against the few operations numpy arrays and torch tensors share (`*`, `+`, `.sum()`), so
that the CPU effect and the diffusion pipelines blend with the same code. Scalars are computed as
Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from pipeline.params import FrameParams, InterpolationMethod, WeightedPrompt


class _Array(Protocol):
    def __mul__(self, other: float) -> _Array: ...
    def __rmul__(self, other: float) -> _Array: ...
    def __add__(self, other: _Array) -> _Array: ...
    def sum(self) -> object: ...


A = TypeVar("A", bound=_Array)

_PARALLEL = 0.9995  # above this cosine, slerp and lerp agree to float precision


def lerp(a: A, b: A, t: float) -> A:
    return a * (1.0 - t) + b * t  # type: ignore[return-value]


def slerp(a: A, b: A, t: float) -> A:
    """Spherical interpolation on the flattened vectors; falls back to lerp when parallel."""
    norm_a = math.sqrt(float((a * a).sum()))  # type: ignore[arg-type, operator]
    norm_b = math.sqrt(float((b * b).sum()))  # type: ignore[arg-type, operator]
    if norm_a == 0.0 or norm_b == 0.0:
        return lerp(a, b, t)
    cos = float((a * b).sum()) / (norm_a * norm_b)  # type: ignore[arg-type, operator]
    if abs(cos) > _PARALLEL:
        return lerp(a, b, t)
    theta = math.acos(max(-1.0, min(1.0, cos)))
    sin = math.sin(theta)
    return a * (math.sin((1.0 - t) * theta) / sin) + b * (math.sin(t * theta) / sin)  # type: ignore[return-value]


def interpolate(a: A, b: A, t: float, method: InterpolationMethod) -> A:
    return slerp(a, b, t) if method == "slerp" else lerp(a, b, t)


def blend(embeddings: Sequence[A], weights: Sequence[float], method: InterpolationMethod) -> A:
    """Blend weighted embeddings. Linear: the normalised weighted sum. Slerp: fold the list
    pairwise, each step moving towards the next prompt by its share of the weight so far."""
    total = float(sum(weights))
    if not embeddings or total <= 0.0:
        raise ValueError("blend needs at least one prompt with a positive weight")
    if method == "linear":
        out = embeddings[0] * (weights[0] / total)
        for emb, w in zip(embeddings[1:], weights[1:], strict=True):
            out = out + emb * (w / total)
        return out  # type: ignore[return-value]
    out, acc = embeddings[0], float(weights[0])
    for emb, w in zip(embeddings[1:], weights[1:], strict=True):
        if w <= 0.0:
            continue
        out = emb if acc <= 0.0 else slerp(out, emb, w / (acc + w))
        acc += w
    return out


def conditioning(params: FrameParams, embed: Callable[[str], A]) -> A:
    """The conditioning for one frame: the blended prompt list, moved `alpha` of the way towards
    a running transition's target. `embed` should cache per distinct text."""

    def blended(prompts: tuple[WeightedPrompt, ...]) -> A:
        return blend([embed(p.text) for p in prompts], [p.weight for p in prompts],
                     params.prompt_interpolation_method)

    current = blended(params.prompts)
    if params.transition is None:
        return current
    target = blended(params.transition.target)
    return interpolate(current, target, params.transition.alpha, params.transition.method)
