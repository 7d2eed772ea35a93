"""The three browser clients of api.md ("Clients this must serve" 1–3) in headless Chromium.

Each client is a static page under tests/pages/, written the way api.md describes it, served by
a plain http.server on another port than the API, so every call is cross-origin (CORS is part
of what is tested). The API is `python app.py` started exactly as a user would (serve_process).
Pages report their state on `window.v2v`; pixels are read back by drawing the <video> elements
onto a canvas. Screenshots and page logs go to test-output/.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from conftest import OUTPUT, Server, serve_process

pytestmark = pytest.mark.browser

PAGES = Path(__file__).resolve().parent / "pages"
CONNECT_TIMEOUT_MS = 10_000

# Draw a <video> scaled to n×n on a canvas and return the RGB bytes (row-major, n*n*3).
THUMBNAIL_JS = """([id, n]) => {
  const video = document.getElementById(id);
  const canvas = document.createElement("canvas");
  canvas.width = n; canvas.height = n;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0, n, n);
  const rgba = ctx.getImageData(0, 0, n, n).data;
  const rgb = [];
  for (let i = 0; i < rgba.length; i += 4) rgb.push(rgba[i], rgba[i + 1], rgba[i + 2]);
  return rgb;
}"""
DECODED_FRAMES_JS = "(id) => document.getElementById(id).getVideoPlaybackQuality().totalVideoFrames"
VIDEO_SIZE_JS = "(id) => (v => [v.videoWidth, v.videoHeight])(document.getElementById(id))"
PLAYING_JS = """(id) => { const v = document.getElementById(id);
  return v.videoWidth > 0 && v.videoHeight > 0 && !v.paused
    && v.getVideoPlaybackQuality().totalVideoFrames > 0; }"""


# --- the page server and the page's log ------------------------------------------------------

class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def pages_url() -> Iterator[str]:
    """tests/pages on its own localhost port: another origin than the API."""
    handler = functools.partial(_QuietHandler, directory=str(PAGES))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@dataclass
class PageLog:
    """What a page did: console output, uncaught errors, and its calls to the API."""

    name: str
    lines: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    api_calls: list[dict[str, Any]] = field(default_factory=list)  # in request order

    def calls(self, method: str, path_part: str) -> list[dict[str, Any]]:
        return [c for c in self.api_calls if c["method"] == method and path_part in c["url"]]

    def assert_clean(self) -> None:
        assert not self.page_errors, f"uncaught errors on the page: {self.page_errors}"
        assert not self.console_errors, f"console errors on the page: {self.console_errors}"


@pytest.fixture
def open_client(browser: Any) -> Iterator[Callable[[str, str], tuple[Any, PageLog]]]:
    """open_client(name, url) → (page, log): a fresh browser context (own camera grant) per page,
    with every console line, uncaught error and API request/response recorded."""
    contexts: list[tuple[Any, PageLog]] = []

    def open_(name: str, url: str) -> tuple[Any, PageLog]:
        context = browser.new_context(viewport={"width": 640, "height": 480})
        page = context.new_page()
        log = PageLog(name)
        api_origin = parse_qs(urlsplit(url).query)["api"][0]

        def on_console(msg: Any) -> None:
            log.lines.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error":
                log.console_errors.append(msg.text)

        def on_page_error(err: Any) -> None:
            log.lines.append(f"pageerror: {err}")
            log.page_errors.append(str(err))

        def on_request(request: Any) -> None:
            if request.url.startswith(api_origin):
                log.api_calls.append({"method": request.method, "url": request.url,
                                      "body": request.post_data, "request": request})

        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        page.on("request", on_request)
        contexts.append((context, log))
        page.goto(url)
        return page, log

    yield open_
    OUTPUT.mkdir(exist_ok=True)
    for context, log in contexts:
        lines = [*log.lines, *(f"{c['method']} {c['url']} {c['body'] or ''}"
                               for c in log.api_calls)]
        (OUTPUT / f"browser-{log.name}.log").write_text("\n".join(lines) + "\n")
        with contextlib.suppress(Exception):
            context.close()


def server_log(server: Server, name: str) -> str:
    """What `python app.py` has logged so far (serve_process writes it under OUTPUT)."""
    return (OUTPUT / f"server-{name}-{urlsplit(server.url).port}.log").read_text()


@contextlib.contextmanager
def api_server(pipeline: str, name: str) -> Iterator[Server]:
    """`python app.py --pipeline ...`; afterwards its log must hold no traceback."""
    with serve_process("--pipeline", pipeline, log_name=f"server-{name}") as server:
        yield server
    text = server_log(server, name)
    assert "Traceback" not in text, f"server log of {name} has a traceback:\n{text[-3000:]}"


# --- helpers ----------------------------------------------------------------------------------

def v2v(page: Any, expr: str = "") -> Any:
    """A JSON-safe read of `window.v2v` (or `window.v2v.<expr>`)."""
    return page.evaluate(f"JSON.parse(JSON.stringify(window.v2v{expr}, "
                         "(k, v) => (k === 'pc' || k === 'channel') ? undefined : v))")


def wait_connected(page: Any, log: PageLog, timeout_ms: int = CONNECT_TIMEOUT_MS) -> float:
    """Wait for the page's RTCPeerConnection to be connected; returns the seconds it took."""
    t0 = time.monotonic()
    page.wait_for_function("['connected', 'error', 'stopped'].includes(window.v2v.state)",
                           timeout=timeout_ms)
    state = v2v(page)
    assert state["state"] == "connected", f"client did not connect: {state} {log.lines}"
    assert page.evaluate("window.v2v.pc.connectionState") == "connected"
    return time.monotonic() - t0


def wait_playing(page: Any, video_id: str = "output", timeout_ms: int = 10_000) -> None:
    page.wait_for_function(PLAYING_JS, arg=video_id, timeout=timeout_ms)


def decoded_frames_grow(page: Any, video_id: str = "output", seconds: float = 2.0) -> int:
    """Frames decoded by the <video> during `seconds`."""
    before = page.evaluate(DECODED_FRAMES_JS, video_id)
    page.wait_for_timeout(seconds * 1000)
    return page.evaluate(DECODED_FRAMES_JS, video_id) - before


def thumbnail(page: Any, video_id: str, n: int = 16) -> np.ndarray:
    """The current picture of a <video>, scaled to n×n, as float RGB 0..255 (n, n, 3)."""
    return np.asarray(page.evaluate(THUMBNAIL_JS, [video_id, n]), dtype=np.float32).reshape(n, n, 3)


def picture_distance(page: Any) -> float:
    """Mean absolute difference between the webcam preview and the returned video (0..255).

    Chrome's fake camera is a green field with a spinning light-green "pacman" and a frame
    counter; the returned picture lags a frame or two, so compare 16×16 thumbnails."""
    return float(np.abs(thumbnail(page, "local") - thumbnail(page, "output")).mean())


def highlight_colour(page: Any, video_id: str = "output") -> np.ndarray:
    """Mean RGB of the output's light parts: each pixel weighted by how much brighter than the
    median pixel it is. The cpu-effect pipeline paints the input's light parts in the prompt's
    colour and its dark parts in a darker complement."""
    pixels = thumbnail(page, video_id, 48).reshape(-1, 3)
    brightness = pixels.sum(axis=1)
    weight = np.maximum(0.0, brightness - np.median(brightness)) + 1e-6
    return (pixels * weight[:, None]).sum(axis=0) / weight.sum()


def highlight_redness(page: Any, samples: int = 7) -> float:
    """R − B of the highlights, the median over a few frames ~0.1 s apart (the fake camera's
    light "pacman" spins, so a single frame can show little of it)."""
    values = []
    for _ in range(samples):
        r, _, b = highlight_colour(page)
        values.append(float(r - b))
        page.wait_for_timeout(100)
    return float(np.median(values))


def poll(check: Callable[[], Any], ok: Callable[[Any], bool], timeout_s: float,
         interval_s: float = 0.2) -> Any:
    """Call check() until ok(result) or the time is up; returns the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval_s)


def wait_message(page: Any, predicate_js: str, timeout_ms: int = 5_000) -> dict[str, Any]:
    """Wait for a server → client data-channel message matching `m => ...`; return it."""
    handle = page.wait_for_function(f"window.v2v.messages.find({predicate_js})",
                                    timeout=timeout_ms)
    return handle.json_value()


def assert_cors(log: PageLog, page_url: str, api_url: str) -> None:
    """The page is cross-origin to the API, and the API's answers allowed that origin."""
    page_origin = "{0.scheme}://{0.netloc}".format(urlsplit(page_url))
    assert page_origin != api_url
    assert log.api_calls
    for call in log.api_calls:
        response = call["request"].response()
        assert response is not None, f"{call['method']} {call['url']} got no response"
        allowed = response.headers.get("access-control-allow-origin")
        assert allowed == page_origin, f"{call['method']} {call['url']}: allow-origin {allowed!r}"


def sent_candidates(call: dict[str, Any]) -> list[dict[str, Any]]:
    body = json.loads(call["body"])
    assert set(body) == {"candidates"}
    for c in body["candidates"]:
        assert c["candidate"].startswith("candidate:") and "sdpMid" in c and "sdpMLineIndex" in c
    return body["candidates"]


def statuses(calls: list[dict[str, Any]]) -> list[int]:
    return [c["request"].response().status for c in calls]


# --- 1. the V2V guide's bidirectional client ------------------------------------------------

def test_bidirectional_client(open_client: Any, pages_url: str) -> None:
    with api_server("passthrough", "bidirectional") as server:
        page, log = open_client("bidirectional",
                                f"{pages_url}/bidirectional.html?api={server.url}")
        connect_s = wait_connected(page, log)
        print(f"bidirectional: connected in {connect_s:.2f} s")

        # Both videos play; the returned one keeps decoding new frames at the input size.
        wait_playing(page, "local")
        wait_playing(page, "output")
        grown = decoded_frames_grow(page, "output", 2.0)
        assert grown >= 15, f"only {grown} frames decoded in 2 s (webcam sends 20 fps)"
        size = page.evaluate(VIDEO_SIZE_JS, "output")
        assert size == [512, 512]

        # Passthrough: the returned picture is the webcam's.
        distance = poll(lambda: picture_distance(page), lambda d: d < 20, 3)
        print(f"bidirectional: passthrough picture distance {distance:.1f}/255")
        assert distance < 20, f"output differs from the webcam preview by {distance:.1f}/255"
        page.screenshot(path=OUTPUT / "browser-bidirectional.png")

        # Candidates: all trickled, each in its own PATCH, all after the answer, all accepted.
        page.wait_for_function("v2v.patchStatuses.length === v2v.candidates", timeout=5_000)
        state = v2v(page)
        patches = log.calls("PATCH", f"/api/v1/webrtc/offer/{state['sessionId']}")
        assert len(patches) == state["candidates"] >= 1
        assert all(len(sent_candidates(c)) == 1 for c in patches)
        assert statuses(patches) == [204] * len(patches)
        [post] = log.calls("POST", "/api/v1/webrtc/offer")
        offer = json.loads(post["body"])
        assert "pipeline_ids" not in offer["initialParameters"]
        assert log.api_calls.index(post) < log.api_calls.index(patches[0])
        assert state["events"].index("answer-applied") < state["events"].index("connected")
        assert_cors(log, pages_url, server.url)

        # Switch the live session to the cpu-effect pipeline (POST /pipeline/load while it
        # streams): the picture is no longer the webcam's.
        assert httpx.post(f"{server.url}/api/v1/pipeline/load",
                          json={"pipeline_ids": ["cpu-effect"]}).status_code == 200
        status = poll(lambda: httpx.get(f"{server.url}/api/v1/pipeline/status").json(),
                      lambda s: s["status"] != "loading", 10)
        assert (status["status"], status["pipeline_id"]) == ("loaded", "cpu-effect")
        distance = poll(lambda: picture_distance(page), lambda d: d > 30, 5)
        print(f"bidirectional: cpu-effect picture distance {distance:.1f}/255")
        assert distance > 30, f"cpu-effect output still looks like the webcam ({distance:.1f})"

        # A prompt sent on the data channel reaches the pipeline: "red" then "blue" recolour
        # the highlights; then a transition back to "red" over 8 frames.
        def send_and_wait(message: dict[str, Any], text: str) -> None:
            page.evaluate("(m) => v2v.send(m)", message)
            update = wait_message(page, "m => m.type === 'parameters_applied' && "
                                        f"JSON.stringify(m.parameters).includes('\"{text}\"')")
            assert update["parameters"]

        def redness() -> float:
            return highlight_redness(page)  # median R − B of the highlights

        send_and_wait({"prompts": [{"text": "red", "weight": 1}]}, "red")
        red = poll(redness, lambda d: d > 25, 5)
        print(f"bidirectional: highlights R−B after 'red' {red:.0f}")
        page.screenshot(path=OUTPUT / "browser-bidirectional-red.png")
        assert red > 25, f"'red' did not make the highlights red: R−B = {red:.0f}"

        page.evaluate("v2v.messages.length = 0")
        send_and_wait({"prompts": [{"text": "blue", "weight": 1}]}, "blue")
        blue = poll(redness, lambda d: d < -8, 5)
        print(f"bidirectional: highlights R−B after 'blue' {blue:.0f}")
        page.screenshot(path=OUTPUT / "browser-bidirectional-blue.png")
        assert blue < -8, f"'blue' did not make the highlights blue: R−B = {blue:.0f}"

        page.evaluate("v2v.messages.length = 0")
        send_and_wait({"transition": {"target_prompts": [{"text": "red", "weight": 1}],
                                      "num_steps": 8}}, "red")
        back = poll(redness, lambda d: d > 25, 5)
        print(f"bidirectional: highlights R−B after the transition to 'red' {back:.0f}")
        assert back > 25, f"the transition to 'red' did not arrive: R−B = {back:.0f}"

        # DELETE from outside: the page is told (stream_stopped), shows it and closes.
        session_id = state["sessionId"]
        response = httpx.delete(f"{server.url}/api/v1/webrtc/offer/{session_id}")
        assert response.status_code == 204
        page.wait_for_function("v2v.state === 'stopped'", timeout=5_000)
        assert v2v(page, ".stopped") == {"error_message": None}
        assert page.evaluate("v2v.pc.connectionState") == "closed"
        assert "Stream stopped" in page.inner_text("#message")
        page.screenshot(path=OUTPUT / "browser-bidirectional-stopped.png")
        log.assert_clean()


# --- 2. Scope's quick-start receive-only client ---------------------------------------------

def test_receive_only_client(open_client: Any, pages_url: str) -> None:
    # The server starts with passthrough (no text mode): video only comes back if the page's
    # own POST /pipeline/load of cpu-effect worked.
    with api_server("passthrough", "receive-only") as server:
        page, log = open_client(
            "receive-only", f"{pages_url}/receive_only.html?api={server.url}&pipeline=cpu-effect")
        connect_s = wait_connected(page, log, CONNECT_TIMEOUT_MS + 3_000)  # + status polling
        print(f"receive-only: loaded and connected in {connect_s:.2f} s")
        state = v2v(page)
        assert state["pipelineStatus"]["pipeline_id"] == "cpu-effect"
        assert state["pipelineStatus"]["status"] == "loaded"

        wait_playing(page, "output")
        grown = decoded_frames_grow(page, "output", 2.0)
        assert grown >= 15, f"only {grown} generated frames decoded in 2 s"
        width, height = page.evaluate(VIDEO_SIZE_JS, "output")
        assert width > 0 and height > 0

        # Generated, moving, and in the prompt's colours ("a red fire"): not black, not frozen.
        first = thumbnail(page, "output")
        page.wait_for_timeout(500)
        second = thumbnail(page, "output")
        assert first.mean() > 20, "the generated video is black"
        assert np.abs(first - second).mean() > 1, "the generated video does not move"
        r, g, b = highlight_colour(page)
        print(f"receive-only: highlights RGB {r:.0f} {g:.0f} {b:.0f}, mean {first.mean():.0f}")
        assert r - b > 30, f"'a red fire' highlights are not red: {(r, g, b)}"
        page.screenshot(path=OUTPUT / "browser-receive-only.png")

        # The quick start's calls: one load, ≥ 1 status poll, the offer as described, and one
        # PATCH carrying every candidate queued before the answer.
        assert len(log.calls("POST", "/api/v1/pipeline/load")) == 1
        assert log.calls("GET", "/api/v1/pipeline/status")
        [post] = log.calls("POST", "/api/v1/webrtc/offer")
        initial = json.loads(post["body"])["initialParameters"]
        assert initial["denoising_step_list"] == [1000, 750, 500, 250]
        assert "input_mode" not in initial and "pipeline_ids" not in initial
        page.wait_for_function("v2v.patchStatuses.length === v2v.patches", timeout=5_000)
        state = v2v(page)
        patches = log.calls("PATCH", f"/api/v1/webrtc/offer/{state['sessionId']}")
        assert patches, "no PATCH sent"
        # How many candidates Chromium gathers before the answer is its timing (0 on a loaded
        # machine, seen in a run at load 14): those queued go in one PATCH, later ones alone.
        queued = state["queuedAtAnswer"]
        if queued:
            assert len(sent_candidates(patches[0])) == queued
        assert len(patches) == (1 if queued else 0) + state["candidates"] - queued
        assert all(len(sent_candidates(p)) == 1 for p in patches[1 if queued else 0:])
        assert statuses(patches) == [204] * len(patches)
        assert_cors(log, pages_url, server.url)
        log.assert_clean()


# --- 3. Scope's own UI ------------------------------------------------------------------------

# aiortc 1.16 hands a padding-only "frame" (empty payload) to its VP8 decoder; libavcodec takes
# the empty packet as end-of-stream and every later frame fails with "End of file". Chrome sends
# such padding on the media SSRC when no RTX is negotiated, which is what VP8-only
# setCodecPreferences (Scope's UI) gives. Reported to the lead; see test_scope_ui_client.
VP8_EOF_BUG = ("server bug: aiortc's VP8 decoder is fed an empty (padding-only) frame and stays "
               "at end-of-stream ('failed to decode VP8 frame: End of file'), so the server "
               "receives one frame only when the offer has VP8 without RTX (Scope UI's "
               "setCodecPreferences)")


def test_scope_ui_client(open_client: Any, pages_url: str) -> None:
    with api_server("passthrough", "scope-ui") as server:
        page, log = open_client("scope-ui", f"{pages_url}/scope_ui.html?api={server.url}")
        connect_s = wait_connected(page, log)
        print(f"scope-ui: connected in {connect_s:.2f} s")
        wait_playing(page, "output")

        # VP8 was forced in the offer (no other video codec, not even RTX) and is what flows
        # both ways.
        state = v2v(page)
        assert state["vp8Codecs"] >= 1
        [post] = log.calls("POST", "/api/v1/webrtc/offer")
        offer_sdp = json.loads(post["body"])["sdp"]
        for sdp in (offer_sdp, state["answerSdp"]):
            video = sdp.split("m=video", 1)[1].split("\nm=", 1)[0]
            codecs = {line.split()[1].split("/")[0].upper()
                      for line in video.splitlines() if line.startswith("a=rtpmap:")}
            assert codecs == {"VP8"}, f"video codecs in the SDP: {codecs}"
        codecs = page.evaluate("""async () => {
          const found = {};
          const stats = await v2v.pc.getStats();
          stats.forEach((s) => {
            if ((s.type === "inbound-rtp" || s.type === "outbound-rtp") && s.kind === "video"
                && s.codecId) found[s.type] = stats.get(s.codecId).mimeType;
          });
          return found;
        }""")
        assert codecs == {"inbound-rtp": "video/VP8", "outbound-rtp": "video/VP8"}

        # The recvonly audio m-line was answered (no audio is produced).
        assert "m=audio" in state["answerSdp"]
        audio = page.evaluate("v2v.pc.getTransceivers().filter((t) => t.receiver.track.kind"
                              " === 'audio').map((t) => t.currentDirection)")
        assert audio in (["inactive"], ["recvonly"], ["stopped"]), audio

        # Candidates were PATCHed after the POST but BEFORE the answer was applied.
        page.wait_for_function("v2v.patchStatuses.length === v2v.candidates", timeout=5_000)
        state = v2v(page)
        assert state["queuedAtAnswer"] >= 1
        assert state["events"].index("patch") < state["events"].index("answer-applied")
        patches = log.calls("PATCH", f"/api/v1/webrtc/offer/{state['sessionId']}")
        assert len(patches) == state["candidates"]
        assert statuses(patches) == [204] * len(patches)
        assert log.api_calls.index(post) < log.api_calls.index(patches[0])
        assert_cors(log, pages_url, server.url)
        log.assert_clean()

        # Video flows both ways: frames keep coming back, and they are the webcam's.
        grown = decoded_frames_grow(page, "output", 2.0)
        page.screenshot(path=OUTPUT / "browser-scope-ui.png")
        if grown < 15 and "failed to decode VP8 frame" in server_log(server, "scope-ui"):
            pytest.xfail(VP8_EOF_BUG)
        assert grown >= 15, f"only {grown} frames decoded in 2 s"
        distance = poll(lambda: picture_distance(page), lambda d: d < 20, 3)
        assert distance < 20, f"output differs from the webcam preview by {distance:.1f}/255"
        page.screenshot(path=OUTPUT / "browser-scope-ui.png")
        log.assert_clean()
