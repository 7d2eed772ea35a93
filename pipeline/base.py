"""The frame-pipeline interface: what every pipeline (passthrough, CPU effect, diffusion) is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .hints import ui
from .params import FrameParams, Mode, ParameterUpdate
from .resources.hub import HubModel

ProgressCallback = Callable[[float, str], None]
"""`progress(fraction in 0..1, stage text)`; called from the loader thread."""


class PipelineError(RuntimeError):
    """A failure whose message is meant for the user (shown in status / stream_stopped)."""


class LoadParams(BaseModel):
    """`load_params` every pipeline accepts. Subclasses add their own fields. Unknown keys are
    ignored (Scope clients send keys of their own pipelines)."""

    model_config = ConfigDict(extra="ignore", strict=False)

    height: int = Field(default=512, ge=64, le=2048, multiple_of=8,
                        json_schema_extra=ui(1, "Height", component="resolution"))
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8,
                       json_schema_extra=ui(1, "Width", component="resolution"))
    seed: int = Field(default=42, ge=0, le=2**63 - 1, json_schema_extra=ui(2, "Seed"))
    vace_enabled: bool = True

    def local_refs(self) -> list[str]:
        """Values that may name a local folder (checked against the server's path policy)."""
        return []

    @model_validator(mode="before")
    @classmethod
    def _base_seed_alias(cls, data: Any) -> Any:
        # Scope calls it `base_seed`; `seed` wins when both are given.
        if isinstance(data, dict) and "base_seed" in data and "seed" not in data:
            data = {**data, "seed": data["base_seed"]}
        return data


@dataclass
class FrameRequest:
    """One session's work in a batch handed to `Pipeline.process`: a chunk of input frames (an
    image pipeline's chunk is one frame) or, in text mode, none."""

    frames: np.ndarray | None
    """Input video, T×H×W×3 uint8 RGB, oldest first (T = `frames_per_call`); None in text mode
    (generate from the prompt alone)."""
    size: tuple[int, int]
    """(height, width) the output should have when the pipeline has no fixed size."""
    params: FrameParams
    state: Any
    """What `new_state()` returned for this session (noise, caches, embeddings...)."""
    index: int
    """Frames produced so far for this session (drives motion in text mode)."""

    @classmethod
    def of_frame(cls, frame: np.ndarray | None, *, size: tuple[int, int], params: FrameParams,
                 state: Any, index: int = 0) -> FrameRequest:
        """A one-frame request (None: text mode), as image pipelines see them."""
        return cls(frames=None if frame is None else frame[None], size=size, params=params,
                   state=state, index=index)

    @property
    def frame(self) -> np.ndarray | None:
        """The newest input frame (H×W×3): all an image pipeline needs."""
        return None if self.frames is None else self.frames[-1]

    @property
    def mode(self) -> Mode:
        return "text" if self.frames is None else "video"


class Pipeline(ABC):
    """A frame pipeline. One instance is shared by all sessions; the service calls every method
    from its own threads, never from the event loop, and never `process` concurrently.

    Chunk-aware: a video model consumes `frames_per_call` input frames per call and returns as
    many output frames; an image pipeline is the case of one frame per call."""

    id: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str]
    modes: ClassVar[tuple[Mode, ...]] = ("video",)
    supports_prompts: ClassVar[bool] = True
    supports_vace: ClassVar[bool] = False
    # Scope's schema metadata (GET /pipelines/schemas): set what is true for the pipeline.
    supports_lora: ClassVar[bool] = False
    supports_cache_management: ClassVar[bool] = False
    supports_kv_cache_bias: ClassVar[bool] = False
    supports_quantization: ClassVar[bool] = False
    estimated_vram_gb: ClassVar[float | None] = None
    min_dimension: ClassVar[int] = 64
    requires_models: ClassVar[bool] = False
    """True when `load` fetches weights from a hub (Scope's app then checks /models/status)."""
    usage: ClassVar[tuple[str, ...]] = ()
    """Scope's roles, e.g. ("preprocessor",); empty for a main pipeline."""
    docs_url: ClassVar[str | None] = None
    version: ClassVar[str] = "1.0.0"
    inputs: ClassVar[tuple[str, ...]] = ("video",)
    outputs: ClassVar[tuple[str, ...]] = ("video",)
    """Graph ports (Scope's workflow editor)."""
    Params: ClassVar[type[LoadParams]] = LoadParams
    passes_input_through: ClassVar[bool] = False
    """True for a pipeline whose output is its input, frame for frame (passthrough): the
    service then sends the transport's decoded frames back as they are, without calling
    `process` and without converting them to RGB and back."""
    max_batch_size: ClassVar[int] = 8
    max_sessions: ClassVar[int] = 8
    """Sessions one server can serve at interactive rates; --max-sessions overrides it."""

    def __init__(self, params: LoadParams) -> None:
        self.params = params
        self.assigned_device: str | None = None

    def use_device(self, device: str) -> None:
        """Called before `load` with the device of the worker this copy runs on (`--devices
        cuda:1,...`; a Ray worker's `cuda` or `cpu`). Pipelines that place tensors use it
        wherever their load parameters leave the device to them ('auto')."""
        self.assigned_device = device

    @classmethod
    def default_mode(cls) -> Mode:
        return cls.modes[0]

    @classmethod
    def mode_defaults(cls) -> dict[Mode, ParameterUpdate]:
        """Defaults for the runtime parameters a session did not set, per mode."""
        return {mode: ParameterUpdate() for mode in cls.modes}

    @classmethod
    def hub_models(cls, params: LoadParams | None = None) -> list[HubModel]:
        """Hugging Face Hub files this pipeline loads with `params` (its defaults when None),
        for `/api/v1/models/status|download`. None for pipelines without weights."""
        return []

    def fetch_weights(self, progress: ProgressCallback) -> None:
        """Download the hub files `hub_models(self.params)` names that are not cached yet (the
        dtype's variant where the repo has it), reporting bytes as the load's progress; a no-op
        without network when all are cached. Raises PipelineError (disk too small, hub
        unreachable) before anything is written."""
        from .resources.hub import DownloadProgress, HubUnreachableError, ModelDownloadError, fetch

        def report(p: DownloadProgress) -> None:
            stage = f"downloading weights: {p.text}" if p.text else "planning the download"
            progress(min(p.percentage / 100.0, 1.0), stage)

        try:
            fetch(self.hub_models(self.params), self.id, report)
        except HubUnreachableError:
            pass  # loading says what to do (or finds the weights in the cache after all)
        except ModelDownloadError as exc:
            raise PipelineError(str(exc)) from exc

    def load(self, progress: ProgressCallback) -> None:  # noqa: B027 - optional hook
        """Heavy setup (weights, warm-up). Raise `PipelineError` with an actionable message."""

    def change_loras(self, params: LoadParams, progress: ProgressCallback) -> bool:
        """A load of this pipeline whose parameters differ from the loaded ones only in their
        LoRAs (`loras`, `lora_merge_mode`): apply it in place, without reloading the model, and
        return True; False when this pipeline cannot (then it is reloaded). On failure raise
        `PipelineError` with the pipeline exactly as it was: it keeps serving."""
        return False

    def new_state(self) -> Any:
        """Per-session state, created on first use and on `reset_cache`."""
        return None

    def frames_per_call(self, state: Any) -> int:
        """Input frames the next video-mode call for a session consumes. `state` is the
        session's state, or None before its first call (and right after `reset_cache`), so a
        video model can ask for one more frame on a stream's first chunk."""
        return 1

    def batch_key(self, request: FrameRequest) -> Hashable:
        """Requests with equal keys may share one `process` call."""
        shape = request.size if request.frames is None else request.frames.shape
        return (request.mode, tuple(shape), len(request.params.denoising_step_list))

    @abstractmethod
    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        """Per request, in order: an H×W×3 uint8 RGB image (one frame) or a T×H×W×3 chunk
        (T ≥ 1, display order). In video mode a chunk normally has as many frames as it consumed:
        each output frame then keeps its input frame's timestamp. Text mode returns any T; the
        service paces it at its text frame rate."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free memory (GPU) before another pipeline is loaded."""
