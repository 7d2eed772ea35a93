"""Runtime parameters: the data-channel message model and each session's parameter state.

The same `ParameterUpdate` model validates `initialParameters` of an offer and every message on
the `parameters` data channel. `ParameterState` merges updates at once (latest value wins, no
queue) and hands the worker one immutable `FrameParams` snapshot per produced frame.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Mode = Literal["video", "text"]
InterpolationMethod = Literal["linear", "slerp"]

MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 2000
MAX_STEPS = 50

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class WeightedPrompt(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    text: str = Field(max_length=MAX_PROMPT_CHARS)
    weight: FiniteFloat = Field(default=1.0, ge=0.0, le=1000.0)


PromptList = Annotated[list[WeightedPrompt], Field(min_length=1, max_length=MAX_PROMPTS)]


def _check_weights(prompts: list[WeightedPrompt] | None) -> list[WeightedPrompt] | None:
    if prompts is not None and sum(p.weight for p in prompts) <= 0.0:
        raise ValueError("prompt weights must not all be zero")
    return prompts


class TransitionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    target_prompts: PromptList
    num_steps: int = Field(default=0, ge=0, le=10_000)
    temporal_interpolation_method: InterpolationMethod = "linear"

    _weights = field_validator("target_prompts")(_check_weights)


class ParameterUpdate(BaseModel):
    """One `parameters` message (or `initialParameters`). Every key is optional; unknown keys are
    ignored so that clients written for Scope keep working."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompts: PromptList | None = None
    prompt_interpolation_method: InterpolationMethod | None = None
    transition: TransitionSpec | None = None
    denoising_step_list: Annotated[list[int], Field(min_length=1, max_length=MAX_STEPS)] | None = (
        None)
    noise_scale: FiniteFloat | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    paused: bool | None = None
    reset_cache: bool | None = None
    input_mode: Mode | None = None
    # Scope keys: accepted and passed on; pipelines that do not support them ignore them.
    manage_cache: bool | None = None
    vace_enabled: bool | None = None
    vace_context_scale: FiniteFloat | None = Field(default=None, ge=0.0, le=10.0)
    lora_scales: list[Any] | dict[str, Any] | None = None
    kv_cache_attention_bias: FiniteFloat | None = Field(default=None, ge=0.01, le=1.0)
    noise_controller: bool | None = None
    node_id: str | None = Field(default=None, max_length=200)
    recording: bool | None = Field(default=None, description=(
        "Start (true) or stop (false) server-side recording of this session's output; "
        "not a pipeline parameter."))

    _weights = field_validator("prompts")(_check_weights)

    @field_validator("denoising_step_list")
    @classmethod
    def _descending(cls, steps: list[int] | None) -> list[int] | None:
        if steps is None:
            return None
        # 1000 (pure noise) is outside api.md's 1..999 but Scope's own text-mode client sends
        # [1000, 750, 500, 250]; a stock client must work, so it is accepted.
        if any(not 1 <= s <= 1000 for s in steps):
            raise ValueError("denoising steps must lie in 1..1000")
        if any(a <= b for a, b in itertools.pairwise(steps)):
            raise ValueError("denoising_step_list must be strictly descending")
        return steps

    def given(self) -> dict[str, Any]:
        """The keys the client actually sent (None means 'not sent')."""
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True)
class PromptTransition:
    """Where a running transition stands for one frame: blend `alpha` of the way to `target`."""

    target: tuple[WeightedPrompt, ...]
    alpha: float
    method: InterpolationMethod


@dataclass(frozen=True)
class FrameParams:
    """Immutable parameters for one frame, fully resolved against the pipeline's defaults."""

    prompts: tuple[WeightedPrompt, ...]
    prompt_interpolation_method: InterpolationMethod
    transition: PromptTransition | None
    denoising_step_list: tuple[int, ...]
    noise_scale: float
    seed: int
    paused: bool
    reset_cache: bool
    input_mode: Mode | None
    extras: dict[str, Any] = field(default_factory=dict)


DEFAULT_PROMPT = (WeightedPrompt(text="a watercolor painting", weight=1.0),)


@dataclass
class _Transition:
    source: tuple[WeightedPrompt, ...]
    target: tuple[WeightedPrompt, ...]
    num_steps: int
    method: InterpolationMethod
    done: int = 0


class ParameterState:
    """One session's parameters. Written by the event loop (data channel), read by the worker.

    Sticky values are kept as the client sent them; `snapshot()` resolves them against the
    current pipeline's defaults, so a session survives a pipeline reload with its own settings.
    """

    _EXTRA_KEYS = ("manage_cache", "vace_enabled", "vace_context_scale", "lora_scales",
                   "kv_cache_attention_bias", "noise_controller", "node_id")

    def __init__(self, initial: ParameterUpdate | None = None) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._prompts: tuple[WeightedPrompt, ...] | None = None
        self._transition: _Transition | None = None
        self._reset_pending = False
        if initial is not None:
            self.apply(initial)

    def apply(self, update: ParameterUpdate) -> None:
        """Merge one validated update; it takes effect from the next frame."""
        with self._lock:
            if update.prompts is not None:
                self._prompts = tuple(update.prompts)
                self._transition = None  # a new prompt list cancels a running transition
            if update.transition is not None:
                self._start_transition(update.transition)
            if update.reset_cache:
                self._reset_pending = True
            for key, value in update.given().items():
                if key == "lora_scales":
                    self._values[key] = _merge_scales(self._values.get(key), value)
                elif key not in ("prompts", "transition", "reset_cache", "recording"):
                    self._values[key] = value

    def _start_transition(self, spec: TransitionSpec) -> None:
        target = tuple(spec.target_prompts)
        if self._transition is not None:
            # A transition replacing a running one starts from where the old one was heading.
            self._prompts = self._transition.target
        if spec.num_steps == 0 or self._prompts is None:
            self._prompts, self._transition = target, None
        else:
            self._transition = _Transition(self._prompts, target, spec.num_steps,
                                           spec.temporal_interpolation_method)

    @property
    def input_mode(self) -> Mode | None:
        return self._values.get("input_mode")

    @property
    def reset_pending(self) -> bool:
        """A `reset_cache` is waiting for the next frame."""
        return self._reset_pending

    @property
    def paused(self) -> bool:
        return bool(self._values.get("paused", False))

    def effective(self, defaults: ParameterUpdate) -> dict[str, Any]:
        """The values in force now (for `parameters_updated`), without advancing anything."""
        with self._lock:
            merged = {**defaults.given(), **self._values}
            merged["prompts"] = [p.model_dump() for p in self._current_prompts(defaults)]
            if self._transition is not None:
                t = self._transition
                merged["transition"] = {
                    "target_prompts": [p.model_dump() for p in t.target],
                    "num_steps": t.num_steps,
                    "temporal_interpolation_method": t.method,
                    "completed_steps": t.done,
                }
            return merged

    def _current_prompts(self, defaults: ParameterUpdate) -> tuple[WeightedPrompt, ...]:
        if self._prompts is not None:
            return self._prompts
        return tuple(defaults.prompts) if defaults.prompts else DEFAULT_PROMPT

    def snapshot(self, defaults: ParameterUpdate, *, advance: bool = True) -> FrameParams:
        """Parameters for the next produced frame; advances a running transition by one step
        and consumes a pending one-shot `reset_cache` when `advance` is true."""
        with self._lock:
            prompts = self._current_prompts(defaults)
            transition: PromptTransition | None = None
            if self._transition is not None:
                t = self._transition
                step = t.done + 1 if advance else t.done
                if advance:
                    t.done = step
                if step >= t.num_steps:
                    prompts = t.target
                    if advance:
                        self._prompts, self._transition = t.target, None
                else:
                    prompts = t.source
                    transition = PromptTransition(t.target, step / t.num_steps, t.method)
            reset = self._reset_pending
            if advance:
                self._reset_pending = False

            def get(key: str, fallback: Any) -> Any:
                value = self._values.get(key, getattr(defaults, key))
                return fallback if value is None else value

            return FrameParams(
                prompts=prompts,
                prompt_interpolation_method=get("prompt_interpolation_method", "linear"),
                transition=transition,
                denoising_step_list=tuple(get("denoising_step_list", [700, 500])),
                noise_scale=float(get("noise_scale", 0.7)),
                seed=int(get("seed", 42)),
                paused=bool(get("paused", False)),
                reset_cache=reset,
                input_mode=self._values.get("input_mode"),
                extras={k: self._values[k] for k in self._EXTRA_KEYS if k in self._values},
            )


def _merge_scales(old: Any, new: Any) -> Any:
    """`lora_scales` sets the scales it names; earlier ones for other LoRAs stay (Scope's list
    shape; the `{path: scale}` shape is turned into it)."""
    if isinstance(new, dict):
        new = [{"path": path, "scale": scale} for path, scale in new.items()]
    if not isinstance(old, list) or not isinstance(new, list):
        return new
    named = {item.get("path"): item for item in old if isinstance(item, dict)}
    for item in new:
        if isinstance(item, dict):
            named[item.get("path")] = item
    return list(named.values())
