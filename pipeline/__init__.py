"""Frame pipelines and the serving runtime that feeds them. Never imports aiortc or FastAPI.

Rooms: the interface at this level (`base`, `params`, `hints`, `schema`, `errors`, `registry`),
`models/` (the pipelines), `serving/` (service, workers, streams, Ray), `resources/` (hub
downloads, assets, paths, hardware). docs/architecture.md draws the arrows between them.
"""

from . import models  # noqa: F401 - registers the built-in pipelines
from .base import FrameRequest, LoadParams, Pipeline, PipelineError, ProgressCallback
from .errors import (
    LoadingError,
    LoadInProgressError,
    LoraScaleError,
    NotLoadedError,
    ParameterRejectedError,
    UnsupportedModeError,
)
from .params import FrameParams, Mode, ParameterUpdate, WeightedPrompt
from .registry import UnknownPipelineError
from .resources.loras import LoraError, LoraFolder
from .resources.paths import ForbiddenPathError, LocalPathPolicy
from .serving.frames import InputFrame, OutputFrame
from .serving.service import PipelineService, PipelineStatus
from .serving.stream import Stream, StreamSink
from .serving.worker import Worker, WorkerStatus

__all__ = [
    "ForbiddenPathError",
    "FrameParams",
    "FrameRequest",
    "InputFrame",
    "LoadInProgressError",
    "LoadParams",
    "LoadingError",
    "LocalPathPolicy",
    "LoraError",
    "LoraFolder",
    "LoraScaleError",
    "Mode",
    "NotLoadedError",
    "OutputFrame",
    "ParameterRejectedError",
    "ParameterUpdate",
    "Pipeline",
    "PipelineError",
    "PipelineService",
    "PipelineStatus",
    "ProgressCallback",
    "Stream",
    "StreamSink",
    "UnknownPipelineError",
    "UnsupportedModeError",
    "WeightedPrompt",
    "Worker",
    "WorkerStatus",
]
