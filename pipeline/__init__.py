"""Frame pipelines and the shared pipeline service. Never imports aiortc or FastAPI."""

from .base import FrameRequest, LoadParams, Pipeline, PipelineError, ProgressCallback
from .errors import LoadingError, LoadInProgressError, NotLoadedError, UnsupportedModeError
from .frames import InputFrame, OutputFrame
from .params import FrameParams, Mode, ParameterUpdate, WeightedPrompt
from .paths import ForbiddenPathError, LocalPathPolicy
from .registry import UnknownPipelineError
from .service import PipelineService, PipelineStatus
from .stream import Stream, StreamSink
from .worker import Worker, WorkerStatus

__all__ = [
    "ForbiddenPathError",
    "FrameParams",
    "FrameRequest",
    "InputFrame",
    "LoadInProgressError",
    "LoadParams",
    "LoadingError",
    "LocalPathPolicy",
    "Mode",
    "NotLoadedError",
    "OutputFrame",
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
