"""The models: one module or package per pipeline family. Importing this package registers the
built-in pipelines (`pipeline/__init__.py` does, so `import pipeline` always has them).

Add a pipeline: a module here with a `pipeline.base.Pipeline` subclass, registered below. Models
import the interface (`pipeline.base`, `params`, `hints`, `errors`) and `pipeline.resources`,
never `pipeline.serving`, aiortc or FastAPI.
"""

from ..registry import register
from .cpu_effect import CpuEffectPipeline
from .passthrough import PassthroughPipeline
from .streamdiffusion import StreamDiffusionPipeline
from .wan.longlive import LongLivePipeline
from .wan.streamdiffusionv2 import StreamDiffusionV2Pipeline

BUILT_IN = (PassthroughPipeline, CpuEffectPipeline, StreamDiffusionPipeline, LongLivePipeline,
            StreamDiffusionV2Pipeline)
for _cls in BUILT_IN:
    register(_cls)

__all__ = ["BUILT_IN"]
