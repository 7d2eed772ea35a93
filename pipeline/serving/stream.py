"""A session's handle on the pipeline service: its window of latest frames, parameters, state."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from pipeline.base import Pipeline
from pipeline.errors import LoraScaleError, UnsupportedModeError
from pipeline.params import Mode, ParameterState, ParameterUpdate
from pipeline.resources.loras import LoraError, scale_overrides

from .frames import CLOCK_RATE, CLOCK_TIME_BASE, FrameWindow, InputFrame, OutputFrame
from .stats import StreamStats

AUTO_TEXT_GRACE_S = 1.5
"""With no `input_mode`, a client that offered video but has sent no frame for this long gets
generated (text-mode) frames, if the pipeline can make them."""


class StreamSink(Protocol):
    """Where a stream's results go. Called on the worker thread: implementations hand over to
    their own event loop (e.g. `loop.call_soon_threadsafe`) and never block."""

    def on_frames(self, frames: Sequence[OutputFrame]) -> None:
        """One call's output, in display order: a chunk to be paced at its timestamps (one
        frame for an image pipeline)."""
        ...

    def on_stopped(self, message: str) -> None: ...


class StreamHost(Protocol):
    """What a stream asks of the worker it is pinned to (`pipeline.serving.worker.Worker`)."""

    engine: Any
    text_fps: float

    @property
    def pipeline_class(self) -> type[Pipeline] | None: ...
    @property
    def first_chunk_frames(self) -> int: ...
    def defaults_for(self, mode: Mode) -> ParameterUpdate: ...
    def wake(self) -> None: ...
    def detach(self, stream: Stream) -> None: ...


class Stream:
    """Created by `PipelineService.open_stream`; one per session, pinned to one worker."""

    def __init__(self, worker: StreamHost, sink: StreamSink, *, offers_video: bool,
                 initial: ParameterUpdate | None = None, held: bool = False) -> None:
        self.id = uuid.uuid4().hex
        self.worker = worker
        self.sink = sink
        self.offers_video = offers_video
        self.params = ParameterState(initial)
        self.window: FrameWindow[InputFrame] = FrameWindow()
        self.stats = StreamStats()
        self.opened = time.monotonic()
        self.held = held  # no work until release(): the session's peer has not connected
        self.closed = False
        self.stopped: str | None = None
        """Why the worker stopped this stream (set once, by `stop`); nothing is delivered after."""
        self._delivery = threading.Lock()  # makes "deliver" and "stop" exclusive
        # Below: touched by the worker thread only.
        self.generation = -1  # the worker's load it last ran on (its state is per load)
        self.next_frames = 1  # what its next video call consumes, as the engine said
        self.produced = 0
        self.last_output: OutputFrame | None = None
        self.next_due = 0.0
        self._last_pts = -1
        self._seen_input = False

    @property
    def state(self) -> Any:
        """This session's pipeline state when its worker runs the pipeline in this process
        (`new_state()`'s value; None before the first call, or on a Ray worker)."""
        state_of = getattr(self.worker.engine, "state_of", None)
        return None if state_of is None else state_of(self.id)

    # --- called from the transport (event loop) ---------------------------------------------

    def push(self, frame: InputFrame) -> None:
        """Hand over a received frame; it pushes out the oldest unprocessed one when the window
        is full (counted as a drop). Thread-safe: the transport calls it from its decoder
        threads."""
        self._seen_input = True
        self.stats.received(dropped=self.window.put(frame))
        self.worker.wake()

    def update(self, update: ParameterUpdate) -> None:
        """Merge a validated parameter update; it applies from the next frame. Raises
        UnsupportedModeError (changing nothing) for an input_mode the pipeline lacks, and
        LoraScaleError for `lora_scales` that do not fit the loaded LoRAs."""
        cls = self.worker.pipeline_class
        if update.input_mode is not None and cls is not None and update.input_mode not in cls.modes:
            raise UnsupportedModeError(f"Pipeline {cls.id!r} has no {update.input_mode!r} mode "
                                       f"(supported: {', '.join(cls.modes)}).")
        if update.lora_scales is not None:
            try:
                scale_overrides(self.worker.load_params, update.lora_scales)
            except LoraError as exc:
                raise LoraScaleError(str(exc)) from None
        if update.reset_cache:  # the next call is a first call again: make room for its chunk
            self.stats.dropped(self.window.set_capacity(self.worker.first_chunk_frames))
        self.params.apply(update)
        self.worker.wake()

    def effective_parameters(self) -> dict[str, Any]:
        return self.params.effective(self.worker.defaults_for(self.mode_hint()))

    def release(self) -> None:
        """Start producing (the peer connected); the text-mode grace starts now."""
        self.opened = time.monotonic()
        self.held = False
        self.worker.wake()

    def close(self) -> None:
        self.closed = True
        self.worker.detach(self)

    # --- used by the worker -------------------------------------------------------------------

    def deliver(self, frames: Sequence[OutputFrame]) -> bool:
        """Hand output to the sink, unless the stream was stopped or closed. Atomic with `stop`:
        a frame is either handed over before the stop notice or not at all."""
        with self._delivery:
            if self.stopped is not None or self.closed:
                return False
            self.sink.on_frames(frames)
            return True

    def stop(self, message: str) -> bool:
        """Tell the sink why this stream ended: once (a later call does nothing and returns
        False), and after every frame already handed over."""
        with self._delivery:
            if self.stopped is not None:
                return False
            self.stopped = message
        self.sink.on_stopped(message)
        return True

    def mode_hint(self) -> Mode:
        return self.params.input_mode or ("video" if self.offers_video else "text")

    def resolve_mode(self, modes: tuple[Mode, ...], now: float) -> Mode | None:
        """The mode this stream runs in now, or None when it has nothing to do yet."""
        wanted = self.params.input_mode
        if wanted is not None and wanted in modes:
            return wanted
        if self.offers_video and "video" in modes:
            if self._seen_input or "text" not in modes or now - self.opened < AUTO_TEXT_GRACE_S:
                return "video"
            return "text"
        return "text" if "text" in modes else None

    def stamp(self, images: Sequence[Any], sources: Sequence[InputFrame] | None,
              now: float) -> list[OutputFrame]:
        """Timestamp one call's output frames. A chunk that answers its inputs frame for frame
        keeps their timestamps (so the output is paced like the input); other output (text mode,
        or a chunk of another length) gets the stream's steady clock at `text_fps`."""
        if sources and len(sources) == len(images) and all(
                s.pts is not None and s.time_base is not None for s in sources):
            return [OutputFrame(image=image, pts=int(s.pts), time_base=s.time_base,  # type: ignore[arg-type]
                                source_arrived=s.arrived)
                    for image, s in zip(images, sources, strict=True)]
        step = max(1, round(CLOCK_RATE / self.worker.text_fps))
        first = max(int((now - self.opened) * CLOCK_RATE), self._last_pts + step)
        arrived = sources[-1].arrived if sources else None
        frames = [OutputFrame(image=image, pts=first + i * step, time_base=CLOCK_TIME_BASE,
                              source_arrived=arrived) for i, image in enumerate(images)]
        self._last_pts = frames[-1].pts
        return frames
