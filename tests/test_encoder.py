"""The server's VP8 encoder: aiortc's, opened with live-video options; its output decodes."""

from __future__ import annotations

import fractions

import aiortc.rtcrtpsender
from aiortc.codecs import get_encoder
from aiortc.codecs.vpx import Vp8Decoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import VideoFrame

from signaling.client import draw_number, read_frame_number
from signaling.encoder import LiveVp8Encoder, use_live_encoder

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


def frame(number: int, size: int = 128, fmt: str = "rgb24") -> VideoFrame:
    video = VideoFrame.from_ndarray(draw_number(number, size), format="rgb24")
    if fmt != "rgb24":
        video = video.reformat(format=fmt)
    video.pts, video.time_base = number * 4500, fractions.Fraction(1, 90000)
    return video


def decode(decoder: Vp8Decoder, payloads: list[bytes], timestamp: int) -> list[VideoFrame]:
    data = b"".join(vp8_depayload(p) for p in payloads)
    return decoder.decode(JitterFrame(data=data, timestamp=timestamp))


def test_frames_round_trip_through_the_live_encoder() -> None:
    encoder, decoder = LiveVp8Encoder(), Vp8Decoder()
    numbers = []
    for n in range(12):
        payloads, timestamp = encoder.encode(frame(n, fmt="yuv420p" if n % 2 else "rgb24"))
        assert timestamp == n * 4500
        numbers += [read_frame_number(f) for f in decode(decoder, payloads, timestamp)]
    assert numbers == list(range(12))
    assert encoder.opened == 1  # ours, kept: aiortc's own checks never replaced it


def test_a_requested_keyframe_starts_a_new_decoder_and_a_new_size_reopens() -> None:
    encoder = LiveVp8Encoder()
    for n in range(5):
        encoder.encode(frame(n))
    payloads, timestamp = encoder.encode(frame(5), force_keyframe=True)
    assert [read_frame_number(f) for f in decode(Vp8Decoder(), payloads, timestamp)] == [5]
    payloads, timestamp = encoder.encode(frame(6, size=64))
    assert (encoder.codec.width, encoder.codec.height) == (64, 64)
    assert [read_frame_number(f) for f in decode(Vp8Decoder(), payloads, timestamp)] == [6]


def test_a_bitrate_change_from_remb_reopens_at_the_new_rate() -> None:
    encoder = LiveVp8Encoder()
    encoder.encode(frame(0))
    first = encoder.codec
    encoder.target_bitrate = 1_200_000
    encoder.encode(frame(1))
    assert encoder.codec is not first and encoder.codec.bit_rate == 1_200_000
    assert encoder.opened == 2


def test_senders_get_it_for_vp8_only() -> None:
    original = aiortc.rtcrtpsender.get_encoder
    try:
        use_live_encoder()
        assert isinstance(aiortc.rtcrtpsender.get_encoder(VP8), LiveVp8Encoder)
        h264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
        assert type(aiortc.rtcrtpsender.get_encoder(h264)) is type(get_encoder(h264))
    finally:
        aiortc.rtcrtpsender.get_encoder = original
