#!/usr/bin/python3
"""Send video to LiveV2V over WHIP, or play a session's output over WHEP, with GStreamer's
webrtcbin, from Debian's (or Ubuntu's) own packages: no Rust plugins, no build.

    sudo apt-get install python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-gstreamer-1.0 \
        gstreamer1.0-nice gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
        gstreamer1.0-plugins-ugly
    /usr/bin/python3 examples/gst_whip.py send http://127.0.0.1:7860/api/v1/whip?prompt=ink
    /usr/bin/python3 examples/gst_whip.py play http://127.0.0.1:7860/api/v1/whep

Run it with the system python (`/usr/bin/python3`): GStreamer's Python bindings (python3-gi)
are Debian packages, not in the project's venv. `send` takes a camera with `--source v4l2` or
a test pattern (default); `play` shows the output in a window, or with `--report N` prints the
mean RGB of N frames as JSON lines (what the tests read). Both end with DELETE on Ctrl+C or
after `--seconds`.

Debian 12's own `simple-whip-client` (`whip-client`) cannot be used instead: it aborts at start
("libsoup2 symbols detected. Using libsoup2 and libsoup3 in the same process is not
supported"): it links libsoup 2.4 while the nice/webrtc plugins pull libsoup 3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO = {
    "vp8": "vp8enc deadline=1 cpu-used=8 target-bitrate=1500000 keyframe-max-dist=60 ! "
           "rtpvp8pay pt=96 ! application/x-rtp,media=video,encoding-name=VP8,payload=96",
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bitrate=1500 ! "
            "video/x-h264,profile=constrained-baseline ! "
            "rtph264pay pt=102 config-interval=-1 aggregate-mode=zero-latency ! "
            "application/x-rtp,media=video,encoding-name=H264,payload=102",
}
AUDIO = ("audiotestsrc is-live=true wave=sine volume=0.1 ! audioconvert ! audioresample ! "
         "opusenc ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,"
         "payload=111 ! webrtc.")


class WhipWhep:
    """One webrtcbin peer: offer (all candidates gathered) → POST → answer; DELETE at the end."""

    def __init__(self, url: str, pipeline: str, token: str | None, seconds: float) -> None:
        self.url, self.token = url, token
        self.location: str | None = None
        self.loop = GLib.MainLoop()
        self.pipe = Gst.parse_launch(pipeline)
        if not isinstance(self.pipe, Gst.Pipeline):  # one element alone: wrap it
            element, self.pipe = self.pipe, Gst.Pipeline.new()
            self.pipe.add(element)
        self.webrtc = self.pipe.get_by_name("webrtc")
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::connection-state", self._on_connection)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)
        bus.connect("message::eos", lambda *_: self.loop.quit())
        self.offered = False
        self.failed: str | None = None
        if seconds > 0:
            GLib.timeout_add(int(seconds * 1000), self._timeout)

    def run(self) -> int:
        self.pipe.set_state(Gst.State.PLAYING)
        with contextlib.suppress(KeyboardInterrupt):
            self.loop.run()
        self.delete()
        self.pipe.set_state(Gst.State.NULL)
        if self.failed:
            print(f"error: {self.failed}", file=sys.stderr, flush=True)
            return 1
        return 0

    def _timeout(self) -> bool:
        self.loop.quit()
        return False

    def _fail(self, why: str) -> None:
        self.failed = why
        self.loop.quit()

    def _on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        self._fail(f"{error.message} ({debug})")

    def _on_negotiation_needed(self, element: Gst.Element) -> None:
        self.set_directions()
        promise = Gst.Promise.new_with_change_func(self._on_offer, element, None)
        element.emit("create-offer", None, promise)

    def set_directions(self) -> None:
        pass

    def _on_offer(self, promise: Gst.Promise, element: Gst.Element, _: object) -> None:
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            error = reply.get_value("error") if reply is not None else None
            GLib.idle_add(self._fail, f"webrtcbin made no offer: {error}")
            return
        element.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, element: Gst.Element, _: object) -> None:
        # Non-trickle: POST once every candidate is in the offer (one round trip, no PATCH).
        if (element.get_property("ice-gathering-state")
                == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.offered):
            self.offered = True
            GLib.idle_add(self._post)

    def _post(self) -> bool:
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        request = urllib.request.Request(self.url, data=sdp.encode(), method="POST",
                                         headers={"Content-Type": "application/sdp",
                                                  **self._auth()})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = response.read().decode()
                self.location = urllib.parse.urljoin(self.url, response.headers["Location"])
        except urllib.error.HTTPError as exc:
            self._fail(f"HTTP {exc.code}: {exc.read().decode(errors='replace')}")
            return False
        print(json.dumps({"event": "answered", "location": self.location}), flush=True)
        _, message = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER,
                                                             message)
        self.webrtc.emit("set-remote-description", description, Gst.Promise.new())
        return False

    def _on_connection(self, element: Gst.Element, _: object) -> None:
        state = element.get_property("connection-state")
        print(json.dumps({"event": "connection", "state": state.value_nick}), flush=True)
        if state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            GLib.idle_add(self._fail, "connection failed")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def delete(self) -> None:
        if self.location is None:
            return
        request = urllib.request.Request(self.location, method="DELETE", headers=self._auth())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code  # 404: the server had ended it already
        except OSError:
            status = None
        print(json.dumps({"event": "deleted", "status": status}), flush=True)
        self.location = None


class Sender(WhipWhep):
    def set_directions(self) -> None:
        for index in range(4):
            transceiver = self.webrtc.emit("get-transceiver", index)
            if transceiver is None:
                break
            transceiver.set_property("direction",
                                     GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)


class Player(WhipWhep):
    """Receives one VP8 video stream; shows it, or reports the mean RGB of `report` frames."""

    def __init__(self, url: str, token: str | None, seconds: float, report: int) -> None:
        super().__init__(url, "webrtcbin name=webrtc bundle-policy=max-bundle", token, seconds)
        self.report, self.frames = report, 0
        caps = Gst.Caps.from_string("application/x-rtp,media=video,encoding-name=VP8,"
                                    "payload=96,clock-rate=90000")
        self.webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                         caps)
        self.webrtc.connect("pad-added", self._on_pad)

    def _on_pad(self, _element: Gst.Element, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        sink = ("videoconvert ! video/x-raw,format=RGB ! appsink name=out emit-signals=true "
                "sync=false max-buffers=2 drop=true" if self.report else
                "videoconvert ! autovideosink sync=false")
        bin_ = Gst.parse_bin_from_description(f"queue ! rtpvp8depay ! vp8dec ! {sink}", True)
        self.pipe.add(bin_)
        bin_.sync_state_with_parent()
        pad.link(bin_.get_static_pad("sink"))
        out = bin_.get_by_name("out")
        if out is not None:
            out.connect("new-sample", self._on_sample)

    def _on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        caps = sample.get_caps().get_structure(0)
        width, height = caps.get_value("width"), caps.get_value("height")
        ok, info = sample.get_buffer().map(Gst.MapFlags.READ)
        if ok and self.frames < self.report:
            data = info.data
            stride = (width * 3 + 3) & ~3  # GStreamer pads RGB rows to 4 bytes
            sums, count = [0, 0, 0], 0
            for y in range(0, height, 8):  # a coarse grid is enough for a mean colour
                row = data[y * stride: y * stride + width * 3]
                for x in range(0, width * 3, 24):
                    sums[0] += row[x]
                    sums[1] += row[x + 1]
                    sums[2] += row[x + 2]
                    count += 1
            sample.get_buffer().unmap(info)
            self.frames += 1
            print(json.dumps({"event": "frame", "n": self.frames, "size": [width, height],
                              "rgb": [round(s / count, 1) for s in sums]}), flush=True)
            if self.frames >= self.report:
                GLib.idle_add(self.loop.quit)
        return Gst.FlowReturn.OK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="WHIP: send a test pattern or a camera")
    send.add_argument("url", help="the WHIP endpoint, e.g. http://HOST:PORT/api/v1/whip")
    send.add_argument("--codec", choices=sorted(VIDEO), default="vp8")
    send.add_argument("--source", choices=["test", "v4l2"], default="test")
    send.add_argument("--size", type=int, default=512)
    send.add_argument("--fps", type=int, default=20)
    send.add_argument("--audio", action="store_true", help="also send a sine tone (ignored "
                      "by LiveV2V: it shows that audio does not fail the offer)")
    play = sub.add_parser("play", help="WHEP: play a session's output")
    play.add_argument("url", help="e.g. http://HOST:PORT/api/v1/whep[/SESSION_ID]")
    play.add_argument("--report", type=int, default=0, metavar="N",
                      help="print the mean RGB of N frames as JSON lines and stop (no window)")
    for p in (send, play):
        p.add_argument("--token", help="the server's API key (Authorization: Bearer)")
        p.add_argument("--seconds", type=float, default=0, help="stop after this long")
    args = parser.parse_args()
    Gst.init(None)
    if args.command == "play":
        return Player(args.url, args.token, args.seconds, args.report).run()
    source = ("v4l2src ! videoconvert ! videoscale" if args.source == "v4l2" else
              "videotestsrc is-live=true pattern=ball background-color=0xffdcdcdc")
    pipeline = (f"webrtcbin name=webrtc bundle-policy=max-bundle {source} ! "
                f"video/x-raw,width={args.size},height={args.size},framerate={args.fps}/1 ! "
                f"videoconvert ! queue ! {VIDEO[args.codec]} ! webrtc. ")
    if args.audio:
        pipeline += AUDIO
    return Sender(args.url, pipeline, args.token, args.seconds).run()


if __name__ == "__main__":
    sys.exit(main())
