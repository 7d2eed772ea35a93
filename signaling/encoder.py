"""VP8 encoder settings for live, already-clean video.

aiortc's VP8 encoder is tuned for camera input: a temporal denoiser (`noise-sensitivity` 4)
and speed 6 with automatic speed adjustment. What this server sends is a pipeline's output —
decoded, generated or passed through — so denoising it again only costs CPU, and a fixed
faster speed keeps the per-frame cost predictable. Measured on 512² frames
(benchmarks/transport.py): 1.5 ms → 0.7 ms per frame for the same bitrate cap. Everything else
(CBR rate control, bitrate from REMB, keyframes on request, packetization) stays aiortc's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import aiortc.rtcrtpsender
import av
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame
from av.video.codeccontext import VideoCodecContext

from .priority import lower_this_thread

CPU_USED = "8"
"""libvpx speed in realtime mode: 8 is fast with no automatic adjustment (negative values let
libvpx change the speed by itself)."""


class LiveVp8Encoder(Vp8Encoder):
    """aiortc's encoder with the codec opened here, with live-video options."""

    opened = 0
    """Codecs this encoder opened (a new size or bitrate opens one)."""

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        codec = self.codec
        if (codec is None or codec.width != frame.width or codec.height != frame.height
                or abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > 0.1):
            self.codec = self._open(frame.width, frame.height)
        # The codec now matches what aiortc checks for, so it encodes with ours.
        return super().encode(frame, force_keyframe)

    def _open(self, width: int, height: int) -> VideoCodecContext:
        self.opened += 1
        return open_live_vp8(width, height, self.target_bitrate)


def open_live_vp8(width: int, height: int, bitrate: int) -> VideoCodecContext:
    """A libvpx encoder with the live-video options (also the WHEP viewers' shared encode)."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.gop_size = 3000  # keyframes only when a receiver asks (PLI/FIR)
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        "bufsize": str(bitrate),  # a 1 s rate-control buffer, as aiortc
        "cpu-used": CPU_USED,
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "noise-sensitivity": "0",  # the input is clean: no temporal denoiser
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
    }
    codec.thread_count = number_of_threads(width * height, multiprocessing.cpu_count())
    return codec


def _live_encoder(codec: RTCRtpCodecParameters) -> Encoder:
    if codec.mimeType.lower() == "video/vp8":
        return LiveVp8Encoder()
    return get_encoder(codec)


def use_live_encoder() -> None:
    """Make every RTCRtpSender created from now on encode VP8 with `LiveVp8Encoder`."""
    aiortc.rtcrtpsender.get_encoder = _live_encoder  # type: ignore[assignment]


def encode_at_low_priority(loop: asyncio.AbstractEventLoop) -> None:
    """aiortc encodes on the loop's default executor: give it threads that yield the CPU to the
    event loop and the decoders when it runs short (`signaling.priority`). Encoding is
    latest-wins work: a slow encoder sends fewer frames instead of making every frame late."""
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="sheddable",
                                                 initializer=lower_this_thread))
