"""The Gradio studio page in headless Chromium against `python app.py --pipeline cpu-effect`.

One server for the module (started as a user starts it); a fresh browser context per test.
Screenshots land in test-output/ (ui-idle.png, ui-streaming.png, ui-error.png,
ui-timeout.png, and ui-api-key.png / ui-api-key-wrong.png from a second server started with
`--api-key`). The error test uses a real pipeline failure (loading `streamdiffusion` from a
missing folder) when that pipeline is registered, else a server-side DELETE of the session.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from pythonosc.udp_client import SimpleUDPClient

from tests.conftest import OUTPUT, Server, serve_process
from tests.gst_clients import gst_play, require_gstreamer

# The module's first test also waits for `python app.py` and Chromium to start: minutes on a
# busy machine.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CONNECT_LIMIT_S = 60.0
MIN_WAIT_S = 30.0

MEAN_RGB_JS = """(sel) => {
  const v = document.querySelector(sel);
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas'); c.width = 64; c.height = 64;
  const g = c.getContext('2d'); g.drawImage(v, 0, 0, 64, 64);
  const d = g.getImageData(0, 0, 64, 64).data; const s = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { s[0] += d[i]; s[1] += d[i + 1]; s[2] += d[i + 2]; }
  return s.map((x) => x / (d.length / 4));
}"""

SET_RANGE_JS = """([sel, value]) => {
  const el = document.querySelector(sel);
  el.value = value; el.dispatchEvent(new Event('input', {bubbles: true}));
}"""

OUT = '[data-role="output-video"]'
IN = '[data-role="input-video"]'


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve_process("--pipeline", "cpu-effect", log_name="ui-server") as server:
        yield server


class Studio:
    """The page plus what it logged."""

    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def open(self) -> Studio:
        self.page.goto(self.url + "/")
        self.page.wait_for_function("() => window.liveV2V && window.liveV2V.status", timeout=20000)
        return self

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def state(self) -> str:
        return self.js("() => window.liveV2V.client.state")

    def wait(self, predicate: str, timeout_s: float = 10.0, arg: Any = None) -> None:
        """Wait for a state of the page. The limit is only for a state that never comes: at
        least MIN_WAIT_S, as a busy machine is slower, not wrong."""
        self.page.wait_for_function(predicate, arg=arg,
                                    timeout=max(timeout_s, MIN_WAIT_S) * 1000)

    def start(self) -> float:
        """Press Start; the seconds until the connection is up."""
        started = time.monotonic()
        self.page.click('[data-action="start"]')
        self.wait("() => window.liveV2V.client.state === 'connected'", CONNECT_LIMIT_S)
        return time.monotonic() - started

    def decoded(self, selector: str = OUT) -> int:
        return self.js(f"() => document.querySelector('{selector}')"
                       ".getVideoPlaybackQuality().totalVideoFrames")

    def assert_frames_grow(self, selector: str = OUT, at_least: int = 8,
                           timeout_s: float = 20.0) -> None:
        """New frames keep being decoded (waits for them: a busy machine is slower, not wrong)."""
        first = self.decoded(selector)
        try:
            self.wait("([sel, want]) => document.querySelector(sel)"
                      ".getVideoPlaybackQuality().totalVideoFrames >= want",
                      timeout_s, arg=[selector, first + at_least])
        except Exception as exc:  # playwright's timeout: say what was missing
            raise AssertionError(f"{selector}: {first} → {self.decoded(selector)} frames, "
                                 f"wanted {at_least} more within {timeout_s} s") from exc
        playing = self.js(f"() => {{ const v = document.querySelector('{selector}');"
                          " return !v.paused && v.readyState >= 2 && v.videoWidth > 0; }")
        assert playing, f"{selector} is not playing"

    def mean_rgb(self) -> np.ndarray:
        value = self.js(MEAN_RGB_JS, OUT)
        assert value is not None, "the output video has no frame"
        return np.asarray(value)

    def set_prompt(self, text: str, index: int = 0) -> None:
        self.page.locator('[data-role="prompt-text"]').nth(index).fill(text)

    def applied(self) -> dict[str, Any]:
        return self.js("() => window.liveV2V.lastParameters") or {}

    def notice(self) -> dict[str, Any]:
        return self.js("""() => { const n = document.querySelector('[data-role="notice"]');
          return {shown: !n.hidden, code: n.dataset.code, tone: n.dataset.tone,
                  title: n.querySelector('[data-role="notice-title"]').textContent,
                  text: n.querySelector('[data-role="notice-text"]').textContent,
                  hint: n.querySelector('[data-role="notice-hint"]').textContent,
                  actions: [...n.querySelectorAll('[data-role="notice-actions"] button')]
                    .map((b) => b.textContent)}; }""")

    def pill(self) -> str:
        return self.page.locator('[data-role="pill-text"]').inner_text()

    def screenshot(self, name: str) -> Path:
        OUTPUT.mkdir(exist_ok=True)
        path = OUTPUT / name
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture
def studio(browser: Any, server: Server) -> Iterator[Studio]:
    context = browser.new_context(viewport={"width": 1440, "height": 960}, accept_downloads=True)
    page = context.new_page()
    try:
        yield Studio(page, server.url)
    finally:
        context.close()


def eventually(check: Callable[[], Any], timeout_s: float = 8.0, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None if isinstance(result, np.ndarray) else result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def dominant(rgb: np.ndarray, channel: int, margin: float = 20.0) -> np.ndarray | None:
    """`rgb` when `channel` exceeds both other channels by `margin` (0..255), else None."""
    others = [rgb[c] for c in range(3) if c != channel]
    return rgb if rgb[channel] > max(others) + margin else None


def make_webm(path: Path, size: int = 160, frames: int = 30, fps: int = 15) -> Path:
    """A small VP8 WebM: a light frame with a dark bar moving across it."""
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 215, np.uint8)
            x = (i * 7) % (size - 20)
            image[:, x:x + 20] = 40
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --- tests ------------------------------------------------------------------------------------


def test_page_loads_idle_without_console_errors(studio: Studio) -> None:
    studio.open()
    page = studio.page
    assert studio.pill() == "Idle"
    assert studio.state() == "idle"
    assert page.locator('[data-action="start"]').is_enabled()
    assert page.locator('[data-role="start-label"]').inner_text() == "Start"
    # pipeline list and status come from /pipelines/schemas and /pipeline/status
    options = page.locator('[data-role="pipeline"] option')
    assert {options.nth(i).get_attribute("value") for i in range(options.count())} >= {
        "cpu-effect", "passthrough"}
    assert page.locator('[data-role="pipeline"]').input_value() == "cpu-effect"
    assert page.locator('[data-role="pipeline-badge"]').inner_text() == "cpu-effect"
    assert page.locator('[data-role="pipeline-status"]').inner_text() == "Loaded"
    assert "colour effect" in page.locator('[data-role="pipeline-desc"]').inner_text()
    # load parameters are a form built from the pipeline's load schema, filled from its status
    assert page.locator('[data-role="load-form"] [data-key="width"]').input_value() == "512"
    # the loaded pipeline has a text mode: "Text only" is offered; the input matches its size
    assert page.locator('button[data-source="text"]').is_enabled()
    assert page.locator('[data-role="input-size"]').inner_text() == "512×512"
    # prompt and defaults come from the pipeline's mode defaults
    assert page.locator('[data-role="prompt-text"]').input_value() == "a neon city at night"
    assert page.locator('[data-role="steps-list"]').inner_text() == "[700, 500]"
    assert page.locator('[data-role="notice"]').is_hidden()
    studio.screenshot("ui-idle.png")
    assert studio.errors == []


def test_webcam_stream_steer_snapshot_record_stop(studio: Studio, server: Server) -> None:
    studio.open()
    page = studio.page
    studio.start()  # how fast is for benchmarks/, not for a test on a shared machine
    assert studio.pill() == "Live"
    session_id = studio.js("() => window.liveV2V.client.sessionId")
    assert re.fullmatch(r"[0-9a-f-]{36}", session_id)
    studio.assert_frames_grow(OUT)
    studio.assert_frames_grow(IN)
    # the camera picker lists the (fake) camera once permission is granted
    assert page.locator('[data-role="camera"] option').count() >= 2

    # Full strength, no grain: the output is the prompt's palette over the input's brightness.
    page.evaluate(SET_RANGE_JS, ['[data-role="strength"]', "1"])
    page.evaluate(SET_RANGE_JS, ['[data-role="noise"]', "0"])
    studio.set_prompt("red")
    eventually(lambda: studio.applied().get("prompts") == [{"text": "red", "weight": 1.0}]
               and studio.applied().get("noise_scale") == 0.0
               and studio.applied().get("denoising_step_list") == [1000, 500])
    # The output is the palette's hue over the camera's brightness, which drifts: wait for the
    # hue (the dominant channel), never for a brightness change or a fixed time.
    red = eventually(lambda: dominant(studio.mean_rgb(), 0), timeout_s=30)
    studio.set_prompt("blue")
    eventually(lambda: studio.applied().get("prompts") == [{"text": "blue", "weight": 1.0}])
    blue = eventually(lambda: dominant(studio.mean_rgb(), 2), timeout_s=30)
    assert blue[2] > red[2] + 6, (red, blue)

    # Two weighted prompts, then a transition (transition steps > 0 sends `transition`).
    page.click('[data-action="add-prompt"]')
    studio.set_prompt("green forest", index=1)
    page.locator('[data-role="prompt-weight"]').nth(1).evaluate(
        "(el) => { el.value = '0.5'; el.dispatchEvent(new Event('input', {bubbles: true})); }")
    eventually(lambda: studio.applied().get("prompts") == [
        {"text": "blue", "weight": 1.0}, {"text": "green forest", "weight": 0.5}])
    page.locator('[data-role="blend"] [data-value="slerp"]').click()
    eventually(lambda: studio.applied().get("prompt_interpolation_method") == "slerp")
    page.locator('.lv-remove').nth(1).click()
    page.evaluate(SET_RANGE_JS, ['[data-role="transition"]', "40"])
    studio.set_prompt("red")
    transition = eventually(lambda: studio.applied().get("transition"))
    assert transition["target_prompts"] == [{"text": "red", "weight": 1.0}]
    assert transition["num_steps"] == 40

    # Pause and resume go over the channel at once.
    page.click('[data-action="pause"]')
    eventually(lambda: studio.applied().get("paused") is True)
    page.click('[data-action="pause"]')
    eventually(lambda: studio.applied().get("paused") is False)

    # A change made elsewhere (over HTTP) shows in the controls; the studio's own edits were
    # never answered with parameters_updated.
    own = studio.js("() => window.liveV2V.messages.filter(m => m.type === 'parameters_updated')")
    assert own == []
    r = httpx.post(f"{server.url}/api/v1/session/parameters", params={"session_id": session_id},
                   json={"prompts": [{"text": "ocean", "weight": 1.0}], "noise_scale": 0.3},
                   timeout=5)
    assert r.json()["sessions"] == 1
    studio.wait("() => document.querySelector('[data-role=\"prompt-text\"]').value === 'ocean'")
    assert page.locator('[data-role="noise"]').input_value() == "0.3"
    eventually(lambda: studio.applied().get("noise_scale") == 0.3)

    # Stats overlay: browser and server figures.
    # Any figure: how many frames per second a busy machine manages is for benchmarks/.
    studio.wait("() => Number(document.querySelector('[data-stat=\"fps\"]').textContent) > 0", 5)
    assert page.locator('[data-stat="connection"]').inner_text() == "connected"
    assert re.fullmatch(r"~\d+ ms", page.locator('[data-stat="latency"]').inner_text())
    assert re.search(r"\d+ (kb|Mb)/s", page.locator('[data-stat="bitrate"]').inner_text())
    assert "→" in page.locator('[data-stat="server-fps"]').inner_text()
    page.wait_for_timeout(1200)  # the 40-step transition to red has finished
    studio.screenshot("ui-streaming.png")

    # Snapshot → PNG of the output size.
    with page.expect_download() as download:
        page.click('[data-action="snapshot"]')
    png = Path(download.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (512, 512)
    assert download.value.suggested_filename.endswith(".png")

    # Record → WebM.
    page.click('[data-action="record"]')
    assert page.locator('[data-role="rec-chip"]').is_visible()
    page.wait_for_timeout(1500)
    with page.expect_download() as download:
        page.click('[data-action="record"]')
    webm = Path(download.value.path()).read_bytes()
    assert webm[:4] == b"\x1a\x45\xdf\xa3" and len(webm) > 2000
    assert download.value.suggested_filename.endswith(".webm")

    # Stop: the session is gone on the server.
    page.click('[data-action="start"]')
    studio.wait("() => window.liveV2V.client.state === 'idle'", 5)
    assert studio.pill() == "Idle"
    response = httpx.patch(f"{server.url}/api/v1/webrtc/offer/{session_id}",
                           json={"candidates": []}, timeout=5)
    assert response.status_code == 404
    assert studio.js(f"() => document.querySelector('{OUT}').srcObject") is None
    assert studio.errors == []


def test_whep_and_whip_links_of_the_running_session(studio: Studio, server: Server) -> None:
    """The studio shows the session's WHEP URL (copyable) and the WHIP URL for OBS; the WHEP
    URL plays the session's output in a third-party player (GStreamer)."""
    # Granted before the stream starts: a grant replaces the context's permissions (camera too).
    studio.page.context.grant_permissions(["camera", "microphone", "clipboard-read",
                                           "clipboard-write"])
    studio.open()
    page = studio.page
    assert page.locator('[data-role="whip-url"]').inner_text() == f"{server.url}/api/v1/whip"
    assert page.locator('[data-copy="whep-url"]').is_disabled()  # no session yet
    studio.start()
    studio.assert_frames_grow(OUT)
    session_id = studio.js("() => window.liveV2V.client.sessionId")
    whep = page.locator('[data-role="whep-url"]').inner_text()
    assert whep == f"{server.url}/api/v1/whep/{session_id}"
    page.locator('[data-copy="whep-url"]').click()
    assert page.evaluate("navigator.clipboard.readText()") == whep
    studio.screenshot("ui-links.png")
    require_gstreamer()
    player = gst_play(whep, "--report", "3")
    try:
        frames = [player.wait_event(lambda e: e.get("event") == "frame", 30) for _ in range(3)]
    finally:
        player.stop()
    assert frames[-1]["size"] == [512, 512]
    page.click('[data-action="start"]')  # Stop
    studio.wait("() => window.liveV2V.client.state === 'idle'")
    assert page.locator('[data-copy="whep-url"]').is_disabled()
    assert studio.errors == []


def test_video_file_input(studio: Studio, tmp_path: Path) -> None:
    clip = make_webm(tmp_path / "clip.webm")
    studio.open()
    page = studio.page
    page.click('button[data-source="file"]')
    page.set_input_files('[data-role="file"]', str(clip))
    assert page.locator('[data-role="file-name"]').inner_text() == "clip.webm"
    studio.start()
    studio.assert_frames_grow(IN)
    studio.assert_frames_grow(OUT)
    # the server receives the file's frames (at the pipeline's 512×512) and runs in video mode
    studio.wait("() => { const s = window.liveV2V.client.serverStats;"
                " return s && s.frames_in > 10 && s.input_mode === 'video'; }", 5)
    size = studio.js(f"() => [document.querySelector('{OUT}').videoWidth,"
                     f" document.querySelector('{OUT}').videoHeight]")
    assert size == [512, 512]
    page.click('[data-action="start"]')
    studio.wait("() => window.liveV2V.client.state === 'idle'", 5)
    assert studio.errors == []


def test_screen_capture_input(studio: Studio) -> None:
    studio.open()
    page = studio.page
    page.click('button[data-source="screen"]')
    studio.start()
    studio.assert_frames_grow(IN)
    studio.assert_frames_grow(OUT)
    # the screen is fitted into the pipeline's size before it is sent
    assert studio.js(f"() => document.querySelector('{IN}').videoWidth") == 512
    studio.wait("() => (window.liveV2V.client.serverStats || {}).frames_in > 10", 5)
    page.click('[data-action="start"]')
    studio.wait("() => window.liveV2V.client.state === 'idle'", 5)
    assert studio.errors == []


def test_text_only_mode(studio: Studio) -> None:
    studio.open()
    page = studio.page
    studio.js("""() => { window.__gum = 0; const real = navigator.mediaDevices.getUserMedia
      .bind(navigator.mediaDevices); navigator.mediaDevices.getUserMedia = (c) => {
      window.__gum++; return real(c); }; }""")
    page.click('button[data-source="text"]')  # no camera is asked for (counted above)
    # text mode defaults of the pipeline replace the untouched controls
    assert page.locator('[data-role="steps-list"]').inner_text() == "[1000, 750, 500, 250]"
    studio.start()
    studio.assert_frames_grow(OUT)
    assert studio.js("() => window.__gum") == 0
    assert studio.js("() => window.liveV2V.client.pc.getTransceivers()"
                     ".map((t) => t.direction)") == ["recvonly"]
    studio.wait("() => { const s = window.liveV2V.client.serverStats;"
                " return s && s.input_mode === 'text' && s.frames_out > 5; }", 5)
    # the prompt steers generated frames too
    page.evaluate(SET_RANGE_JS, ['[data-role="noise"]', "0"])
    studio.set_prompt("red")
    eventually(lambda: (lambda c: c[0] > c[2] + 60)(studio.mean_rgb()))
    studio.set_prompt("blue")
    eventually(lambda: (lambda c: c[2] > c[0] + 60)(studio.mean_rgb()))
    assert studio.errors == []


def test_osc_moves_the_studio_controls_and_the_picture(studio: Studio, server: Server) -> None:
    """`python app.py` on loopback listens for OSC at its HTTP port (as Scope); a TouchDesigner
    style message reaches the studio's session as a change from elsewhere."""
    studio.open()
    studio.page.click('button[data-source="text"]')
    studio.start()
    studio.assert_frames_grow(OUT)
    osc = SimpleUDPClient("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    osc.send_message("/scope/noise_scale", 0)  # an int where a float is due: accepted
    osc.send_message("/scope/prompt", "red")
    studio.wait("() => document.querySelector('[data-role=\"prompt-text\"]').value === 'red'")
    assert studio.page.locator('[data-role="noise"]').input_value() == "0"
    eventually(lambda: (lambda c: c[0] > c[2] + 60)(studio.mean_rgb()), timeout_s=20)
    studio.screenshot("ui-osc.png")
    assert studio.errors == []


def test_stream_stopped_by_the_server_shows_why_and_reconnects(studio: Studio,
                                                                server: Server) -> None:
    studio.open()
    page = studio.page
    page.click('button[data-source="text"]')
    studio.start()
    first = studio.js("() => window.liveV2V.client.sessionId")
    schemas = httpx.get(f"{server.url}/api/v1/pipelines/schemas", timeout=5).json()["pipelines"]
    if "streamdiffusion" in schemas:
        # A real pipeline failure: the stream stops with the loader's reason.
        r = httpx.post(f"{server.url}/api/v1/pipeline/load", timeout=10, json={
            "pipeline_ids": ["streamdiffusion"], "load_params": {"model_id": "/nonexistent"}})
        assert r.status_code == 200, r.text
        expected_title, expected_text = "The stream stopped", "failed to load"
    else:
        # No pipeline that can fail to load is registered yet: the server ends the session
        # (DELETE, as an operator or a time limit would); stream_stopped carries no reason.
        r = httpx.delete(f"{server.url}/api/v1/webrtc/offer/{first}", timeout=5)
        assert r.status_code == 204
        expected_title, expected_text = "The server ended the stream", "closed on the server"
    try:
        # Wait for the stop notice itself (a load-failure notice may show first, from the poll).
        studio.wait("(title) => { const n = document.querySelector('[data-role=\"notice\"]');"
                    " return !n.hidden && n.querySelector('[data-role=\"notice-title\"]')"
                    ".textContent === title; }", 20, arg=expected_title)
        notice = studio.notice()
        assert notice["title"] == expected_title
        assert expected_text in notice["text"]
        assert "Reconnecting" in notice["hint"]
        assert notice["actions"] == ["Reconnect now", "Stop"]
        assert studio.pill().startswith("Reconnecting")
        page.wait_for_timeout(300)  # let the controls' transitions settle for the picture
        studio.screenshot("ui-error.png")
    finally:
        if "streamdiffusion" in schemas:
            eventually(lambda: httpx.get(f"{server.url}/api/v1/pipeline/status").json()["status"]
                       != "loading", timeout_s=60)
            r = httpx.post(f"{server.url}/api/v1/pipeline/load", timeout=10,
                           json={"pipeline_ids": ["cpu-effect"]})
            assert r.status_code == 200
    # automatic reconnect (2 s back-off first) with a new session
    studio.wait("() => window.liveV2V.client.state === 'connected'", 30)
    second = studio.js("() => window.liveV2V.client.sessionId")
    assert second and second != first
    # The page says so, whatever it showed while reconnecting (the notice text stays after
    # its auto-hide, so this is a state and not a race with the timer).
    studio.wait("() => document.querySelector('[data-role=\"notice-title\"]').textContent"
                " === 'Reconnected'", 10)
    studio.assert_frames_grow(OUT)
    assert studio.notice()["title"] == "Reconnected"
    page.click('[data-action="start"]')
    studio.wait("() => window.liveV2V.client.state === 'idle'", 15)


def test_actionable_errors(studio: Studio) -> None:
    """Camera permission denied, no pipeline loaded (offer 400), connection timeout."""
    page = studio.page
    page.add_init_script("""navigator.mediaDevices.getUserMedia = () =>
      Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));""")
    studio.open()

    page.click('[data-action="start"]')
    studio.wait("() => !document.querySelector('[data-role=\"notice\"]').hidden", 5)
    notice = studio.notice()
    assert notice["code"] == "permission"
    assert notice["title"] == "Camera access is blocked"
    assert "Allow camera access" in notice["hint"]
    assert "Use a video file" in notice["actions"]
    assert studio.state() == "idle"
    page.get_by_role("button", name="Use text only").click()
    assert page.locator('button[data-source="text"]').get_attribute("aria-checked") == "true"

    page.route("**/api/v1/webrtc/offer", lambda route: route.fulfill(
        status=400, json={"detail": "Pipeline not loaded. Please load pipeline first."}))
    page.click('[data-action="start"]')
    studio.wait("() => document.querySelector('[data-role=\"notice\"]').dataset.code"
                " === 'not_loaded'", 5)
    notice = studio.notice()
    assert notice["title"] == "No pipeline is loaded"
    assert notice["text"] == "Pipeline not loaded. Please load pipeline first."
    assert notice["actions"] == ["Load pipeline"]
    assert studio.pill() == "Error"
    page.unroute("**/api/v1/webrtc/offer")

    # Connection that never completes: candidates are kept from both sides.
    def strip_candidates(sdp: str) -> str:
        return "".join(line for line in sdp.splitlines(keepends=True)
                       if not line.startswith("a=candidate"))

    def offer(route: Any) -> None:
        body = route.request.post_data_json
        body["sdp"] = strip_candidates(body["sdp"])
        response = route.fetch(post_data=body)
        answer = response.json()
        answer["sdp"] = strip_candidates(answer["sdp"])
        route.fulfill(response=response, json=answer)

    page.route("**/api/v1/webrtc/offer", offer)
    page.route("**/api/v1/webrtc/offer/*", lambda route: route.fulfill(status=204)
               if route.request.method == "PATCH" else route.fallback())
    studio.js("() => { window.liveV2V.client.options.connectTimeoutMs = 1500; }")
    started = time.monotonic()
    page.click('[data-action="start"]')
    studio.wait("() => document.querySelector('[data-role=\"notice\"]').dataset.code"
                " === 'timeout'", 6)
    assert time.monotonic() - started < 5
    notice = studio.notice()
    assert notice["title"] == "Could not connect"
    assert "did not complete within 1.5 s" in notice["text"]
    assert "TURN" in notice["hint"] and "VPN" in notice["hint"]
    assert notice["actions"] == ["Try again"]
    assert studio.state() == "failed"
    studio.screenshot("ui-timeout.png")


def test_load_pipeline_from_the_page(studio: Studio, server: Server) -> None:
    """Load another pipeline while streaming (the stream goes on), progress from the status
    poll, a rejected load parameter, and back to cpu-effect."""
    studio.open()
    page = studio.page
    studio.start()
    select = page.locator('[data-role="pipeline"]')
    try:
        select.select_option("passthrough")
        assert "unchanged" in page.locator('[data-role="pipeline-desc"]').inner_text()
        assert page.locator('[data-role="pipeline-status"]').inner_text() == ""  # not loaded yet
        page.click('[data-action="load"]')
        studio.wait("() => document.querySelector('[data-role=\"pipeline-badge\"]').textContent"
                    " === 'passthrough'", 10)
        assert page.locator('[data-role="pipeline-status"]').inner_text() == "Loaded"
        assert page.locator('[data-role="prompt-note"]').is_visible()  # prompts do nothing now
        assert studio.state() == "connected"
        studio.assert_frames_grow(OUT)
        # passthrough: the output is the (green) camera picture again
        eventually(lambda: (lambda c: c[1] > c[0] + 50 and c[1] > c[2] + 50)(studio.mean_rgb()))
        page.click('[data-action="start"]')
        studio.wait("() => window.liveV2V.client.state === 'idle'", 5)
        assert page.locator('button[data-source="text"]').is_disabled()  # passthrough: no text

        # An invalid load parameter: the 422 detail, readable.
        select.select_option("cpu-effect")
        page.locator('[data-role="load-details"] summary').click()
        page.locator('[data-role="load-form"] [data-key="width"]').fill("100")
        page.click('[data-action="load"]')
        studio.wait("() => !document.querySelector('[data-role=\"notice\"]').hidden", 5)
        notice = studio.notice()
        assert notice["title"] == "Could not load “cpu-effect”"
        assert notice["text"].startswith("width:") and "multiple of 8" in notice["text"]

        # Progress while loading (the status poll is answered by the test for a moment).
        page.route("**/api/v1/pipeline/status", lambda route: route.fulfill(json={
            "status": "loading", "pipeline_id": "cpu-effect", "load_params": None,
            "error": None, "loading_stage": "loading weights", "progress": 0.4,
            "produces_video": True, "produces_audio": False}))
        page.locator('[data-role="load-form"] [data-key="width"]').fill("512")
        page.click('[data-action="load"]')
        studio.wait("() => !document.querySelector('[data-role=\"progress\"]').hidden", 5)
        assert page.locator('[data-role="progress-text"]').inner_text() == "loading weights · 40%"
        assert page.locator('[data-action="load"]').is_disabled()
        page.unroute("**/api/v1/pipeline/status")
        studio.wait("() => document.querySelector('[data-role=\"progress\"]').hidden", 5)
        assert page.locator('[data-role="pipeline-badge"]').inner_text() == "cpu-effect"
        assert page.locator('button[data-source="text"]').is_enabled()
    finally:
        status = httpx.get(f"{server.url}/api/v1/pipeline/status", timeout=5).json()
        if status["pipeline_id"] != "cpu-effect" or status["status"] != "loaded":
            httpx.post(f"{server.url}/api/v1/pipeline/load", timeout=10,
                       json={"pipeline_ids": ["cpu-effect"]})
            eventually(lambda: httpx.get(f"{server.url}/api/v1/pipeline/status").json()
                       ["status"] == "loaded")


# --- API key (server started with --api-key) -------------------------------------------------

API_KEY = "s3cret"
AUTH_CARD = '[data-role="auth"]'
AUTH_INPUT = '[data-role="auth-key"]'
AUTH_ERROR = '[data-role="auth-error"]'
# What Chromium logs for every fetch answered 401: expected while no (or a wrong) key is set.
UNAUTHORIZED_LOG = ("Failed to load resource: the server responded with a status of 401"
                    " (Unauthorized)")


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Server]:
    with serve_process("--pipeline", "cpu-effect", "--api-key", API_KEY,
                       log_name="ui-key-server") as server:
        yield server


class KeyedStudio(Studio):
    """The studio on a server that wants a key: also records every /api/v1 response (method,
    path, status, Authorization header) and where each console error came from."""

    def __init__(self, page: Any, url: str) -> None:
        super().__init__(page, url)
        self.console: list[tuple[str, str]] = []
        self.api: list[tuple[str, str, int, str | None]] = []
        page.on("console", lambda m: m.type == "error" and self.console.append(
            (m.text, m.location.get("url", ""))))
        page.on("response", lambda r: "/api/v1/" in r.url and self.api.append(
            (r.request.method, r.url.split("/api/v1/", 1)[1], r.status,
             r.request.headers.get("authorization"))))

    def open(self, fragment: str = "") -> KeyedStudio:
        self.page.goto(self.url + "/" + fragment)
        self.page.wait_for_function("() => window.liveV2V", timeout=20000)
        return self

    def unexpected_errors(self) -> list[str]:
        """Console errors other than the 401s of /api/v1 requests (and any page error)."""
        return [e for e in self.errors if e.startswith("pageerror")] + [
            f"{text} ({url})" for text, url in self.console
            if not (text == UNAUTHORIZED_LOG and "/api/v1/" in url)]

    def unauthorized(self) -> list[tuple[str, str, int, str | None]]:
        return [r for r in self.api if r[2] == 401]

    def wait_locked(self, timeout_s: float = 10.0) -> None:
        self.wait("() => window.liveV2V && window.liveV2V.locked"
                  f" && !document.querySelector('{AUTH_CARD}').hidden", timeout_s)

    def enter_key(self, key: str) -> None:
        self.page.locator(AUTH_INPUT).fill(key)
        self.page.locator('[data-role="auth-submit"]').click()

    def stored_key(self) -> Any:
        return self.js("() => [sessionStorage.getItem('livev2v.apiKey'),"
                       " Object.keys(localStorage).filter((k) => /key/i.test(k))]")


@pytest.fixture
def keyed_studio(browser: Any, keyed_server: Server) -> Iterator[KeyedStudio]:
    context = browser.new_context(viewport={"width": 1440, "height": 960})
    page = context.new_page()
    try:
        yield KeyedStudio(page, keyed_server.url)
    finally:
        context.close()


def test_api_key_prompt_wrong_key_then_unlock_and_stream(keyed_studio: KeyedStudio,
                                                         keyed_server: Server) -> None:
    studio = keyed_studio.open()
    page = studio.page
    studio.wait_locked()
    # The prompt, not a generic error: schemas and status were answered 401.
    assert page.locator('[data-role="auth-title"]').inner_text() == "This server needs an API key"
    assert page.locator('[data-role="auth-submit"]').inner_text() == "Unlock"
    assert page.locator(AUTH_INPUT).get_attribute("type") == "password"
    assert studio.js("() => document.activeElement.dataset.role") == "auth-key"
    assert page.locator('[data-role="notice"]').is_hidden()
    assert page.locator(AUTH_ERROR).inner_text() == ""
    assert studio.pill() == "Locked"
    assert {path for _, path, _, _ in studio.unauthorized()} >= {"pipeline/status",
                                                                 "pipelines/schemas"}
    assert all(auth is None for *_, auth in studio.api)
    page.wait_for_timeout(400)  # let the card settle for the picture
    studio.screenshot("ui-api-key.png")
    # no status polling while locked: it would only collect 401s
    seen = len(studio.api)
    page.wait_for_timeout(5600)
    assert len(studio.api) == seen

    # A wrong key: the prompt stays, says so, and nothing is remembered.
    studio.enter_key("nope")
    studio.wait(f"() => document.querySelector('{AUTH_ERROR}').textContent !== ''", 5)
    assert page.locator(AUTH_ERROR).inner_text() == (
        "That key was not accepted. Check it and try again.")
    assert page.locator(AUTH_INPUT).get_attribute("aria-invalid") == "true"
    assert page.locator(AUTH_CARD).is_visible()
    assert studio.js("() => window.liveV2V.locked") is True
    assert studio.stored_key() == [None, []]
    assert studio.unauthorized()[-1][3] == "Bearer nope"
    page.wait_for_timeout(400)
    studio.screenshot("ui-api-key-wrong.png")

    # The right key: unlocked, the pipeline list and status load, the key is kept for the tab.
    studio.enter_key(API_KEY)
    studio.wait(f"() => document.querySelector('{AUTH_CARD}').hidden"
                " && window.liveV2V.status && !window.liveV2V.locked", 5)
    assert studio.pill() == "Idle"
    assert page.locator('[data-role="pipeline-badge"]').inner_text() == "cpu-effect"
    assert page.locator('[data-role="pipeline"]').input_value() == "cpu-effect"
    assert studio.notice()["title"] == "Unlocked"
    assert studio.stored_key() == [API_KEY, []]  # sessionStorage, never localStorage

    # Start (webcam) works with the key: every request carries it.
    first = len(studio.api)
    studio.start()
    studio.assert_frames_grow(OUT)
    session_id = studio.js("() => window.liveV2V.client.sessionId")
    after = studio.api[first:]
    assert {path for _, path, _, _ in after} >= {"webrtc/ice-servers", "webrtc/offer"}
    assert all(status < 400 and auth == f"Bearer {API_KEY}" for _, _, status, auth in after), after
    page.click('[data-action="start"]')
    studio.wait("() => window.liveV2V.client.state === 'idle'", 5)
    r = httpx.patch(f"{keyed_server.url}/api/v1/webrtc/offer/{session_id}", json={"candidates": []},
                    headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
    assert r.status_code == 404  # the DELETE (with the key) removed the session

    # A reload in the same tab keeps the key: no prompt.
    page.reload()
    page.wait_for_function("() => window.liveV2V && window.liveV2V.status", timeout=20000)
    assert page.locator(AUTH_CARD).is_hidden()
    assert studio.unexpected_errors() == []


def test_api_key_from_the_link(keyed_studio: KeyedStudio) -> None:
    """`#key=...` unlocks without the prompt and leaves the address bar."""
    studio = keyed_studio.open(f"#key={API_KEY}")
    page = studio.page
    studio.wait("() => window.liveV2V.status", 20)
    assert page.locator(AUTH_CARD).is_hidden()
    assert studio.js("() => window.liveV2V.locked") is False
    assert studio.js("() => location.hash") == ""
    assert "key" not in page.url and "s3cret" not in page.url
    assert studio.stored_key() == [API_KEY, []]
    assert studio.unauthorized() == []
    studio.start()
    studio.assert_frames_grow(OUT)
    assert all(auth == f"Bearer {API_KEY}" for *_, auth in studio.api)
    page.click('[data-action="start"]')
    studio.wait("() => window.liveV2V.client.state === 'idle'", 5)
    assert studio.errors == []


def test_api_key_wrong_link_start_waits_and_no_reconnect_loop(keyed_studio: KeyedStudio,
                                                              keyed_server: Server) -> None:
    """A wrong key in the link shows the prompt; Start pressed while locked starts once the key
    is entered; a 401 during an automatic reconnect stops it (no retry loop) and asks again."""
    studio = keyed_studio.open("#key=wrong")
    page = studio.page
    studio.wait_locked()
    studio.wait(f"() => document.querySelector('{AUTH_ERROR}').textContent !== ''", 5)
    assert "The key in the link was not accepted" in page.locator(AUTH_ERROR).inner_text()
    assert studio.js("() => location.hash") == ""
    assert studio.stored_key() == [None, []]

    studio.js("""() => { window.__gum = 0; const real = navigator.mediaDevices.getUserMedia
      .bind(navigator.mediaDevices); navigator.mediaDevices.getUserMedia = (c) => {
      window.__gum++; return real(c); }; }""")
    page.click('[data-action="start"]')
    page.wait_for_timeout(300)
    assert studio.state() == "idle" and studio.js("() => window.__gum") == 0  # no camera yet
    assert studio.js("() => document.activeElement.dataset.role") == "auth-key"
    studio.enter_key(API_KEY)
    studio.wait("() => window.liveV2V.client.state === 'connected'", CONNECT_LIMIT_S)
    studio.assert_frames_grow(OUT)
    assert studio.js("() => window.__gum") == 1

    # The server's key changes (here: the page's key is made wrong) and the server ends the
    # session: one reconnect try gets a 401, and that is the end of it.
    studio.js("() => window.liveV2V.client.setApiKey('rotated')")
    session_id = studio.js("() => window.liveV2V.client.sessionId")
    r = httpx.delete(f"{keyed_server.url}/api/v1/webrtc/offer/{session_id}",
                     headers={"X-API-Key": API_KEY}, timeout=5)
    assert r.status_code == 204
    studio.wait_locked()
    studio.wait("() => window.liveV2V.client.state === 'failed'", 10)
    assert studio.js("() => window.liveV2V.client._reconnectTimer") is None
    tries = len([r for r in studio.api if r[1] == "webrtc/ice-servers"])
    page.wait_for_timeout(4500)  # past the next back-off step (4 s)
    assert len([r for r in studio.api if r[1] == "webrtc/ice-servers"]) == tries
    assert studio.js("() => window.liveV2V.client.state") == "failed"
    assert studio.pill() == "Locked"
    assert page.locator('[data-role="notice"]').is_hidden()  # no stale "Reconnecting…"
    # entering the key again starts the stream again
    studio.enter_key(API_KEY)
    studio.wait("() => window.liveV2V.client.state === 'connected'", CONNECT_LIMIT_S)
    studio.assert_frames_grow(OUT)
    page.click('[data-action="start"]')
    studio.wait("() => window.liveV2V.client.state === 'idle'", 5)
    assert studio.unexpected_errors() == []
