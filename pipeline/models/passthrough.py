"""`passthrough`: returns the input frame unchanged (video mode only, as in Scope)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from pipeline.base import FrameRequest, Pipeline
from pipeline.params import Mode


class PassthroughPipeline(Pipeline):
    id = "passthrough"
    name = "Passthrough"
    description = "Returns the input video unchanged; for testing transport and latency."
    modes: ClassVar[tuple[Mode, ...]] = ("video",)
    supports_prompts = False
    passes_input_through = True  # the service skips `process` and any RGB conversion
    max_batch_size = 64
    max_sessions = 32

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        out = []
        for request in batch:
            if request.frame is None:
                raise ValueError("passthrough needs an input frame")
            out.append(request.frame)
        return out
