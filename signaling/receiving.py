"""Decoded frames go from aiortc's decoder thread straight to their consumer.

aiortc's receiver decodes on a thread of its own and hands every frame to the event loop
(`run_coroutine_threadsafe` into the track's unbounded queue), where a task reads them one by
one. When the CPU runs short, that hand-over is where seconds of backlog built up: the loop
falls behind and the queue grows by every frame received, each waiting its turn although only
the newest one will be processed. Here the decoder thread gives each frame to a callback
instead (the session's window of latest frames, which is thread-safe), so received video never
waits for the event loop; the track's queue carries only the end of the stream.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

import aiortc.rtcrtpreceiver
import av
from aiortc import MediaStreamTrack
from aiortc.codecs import get_decoder
from aiortc.rtcrtpreceiver import RemoteStreamTrack

log = logging.getLogger(__name__)

FrameConsumer = Callable[[av.VideoFrame], None]
"""Called on the decoder thread for every decoded frame: must be quick and thread-safe."""

_consumers: weakref.WeakKeyDictionary[asyncio.Queue[Any], FrameConsumer] = (
    weakref.WeakKeyDictionary())


def deliver_directly(track: MediaStreamTrack, consumer: FrameConsumer) -> bool:
    """Send `track`'s decoded frames to `consumer` on the decoder thread; `track.recv()` then
    only raises MediaStreamError when the stream ends. Call it when the track appears (the
    `track` event, before the receiver starts decoding). False when `track` is not a received
    aiortc track: read it with `recv()` as usual. The registration lasts as long as the track
    (`consumer` should not hold on to what holds the track: see `weak_consumer`)."""
    if not isinstance(track, RemoteStreamTrack):
        return False
    aiortc.rtcrtpreceiver.decoder_worker = _decoder_worker  # type: ignore[assignment]
    _consumers[track._queue] = consumer
    return True


def weak_consumer(method: Callable[[av.VideoFrame], None]) -> FrameConsumer:
    """A consumer calling a bound method without keeping its object alive."""
    ref = weakref.WeakMethod(method)

    def consume(frame: av.VideoFrame) -> None:
        target = ref()
        if target is not None:
            target(frame)

    return consume


def discard(frame: av.VideoFrame) -> None:
    """A consumer for tracks nobody watches (they are still decoded: nothing else frees them)."""


def _decoder_worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue[Any],
                    output_q: asyncio.Queue[Any], decode_error: threading.Event) -> None:
    """aiortc's `decoder_worker`, except where the frames go."""
    codec_name = None
    decoder = None
    while True:
        task = input_q.get()
        if task is None:  # the receiver stopped: end the track
            _consumers.pop(output_q, None)
            asyncio.run_coroutine_threadsafe(output_q.put(None), loop)
            break
        codec, encoded_frame = task
        if codec.name != codec_name:
            decoder = get_decoder(codec)
            codec_name = codec.name
        assert decoder is not None
        try:
            frames = decoder.decode(encoded_frame)
        except av.FFmpegError as exc:
            # Keep the decoder: resetting it would fail every frame until the next keyframe.
            log.debug("failed to decode a %s frame: %s", codec.name, exc)
            decode_error.set()  # the receiver asks the sender for a keyframe (PLI)
            continue
        consumer = _consumers.get(output_q)
        for frame in frames:
            if consumer is None:
                asyncio.run_coroutine_threadsafe(output_q.put(frame), loop)
            else:
                try:
                    consumer(frame)
                except Exception:  # a consumer's bug must not stop the decoding
                    log.exception("frame consumer failed")
