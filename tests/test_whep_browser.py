"""A browser WHIP sender and WHEP player built on a published library (npm whip-whep 1.2.0,
vendored in tests/pages/vendor/whip-whep/) against `python app.py`: the fake camera goes in
with ?prompt=red, and the viewer's picture is the effect's red, not the camera's picture; when
the sender stops, the viewer's stream ends."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from conftest import OUTPUT, serve_process

from tests.test_browser_clients import THUMBNAIL_JS, pages_url  # noqa: F401 - a fixture

pytestmark = pytest.mark.browser


def redness(page: Any, video: str) -> float:
    """Mean R − B of the <video> scaled to 32×32."""
    rgb = np.asarray(page.evaluate(THUMBNAIL_JS, [video, 32]), np.float32).reshape(-1, 3)
    return float(rgb[:, 0].mean() - rgb[:, 2].mean())


def poll(read, accept, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    value = read()
    while not accept(value):
        assert time.monotonic() < deadline, f"last value {value!r}"
        time.sleep(0.2)
        value = read()
    return value


def test_whip_whep_library_in_chromium(browser: Any, pages_url: str) -> None:  # noqa: F811
    with serve_process("--pipeline", "cpu-effect", log_name="whep-browser") as server:
        context = browser.new_context(viewport={"width": 640, "height": 400})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        try:
            page.goto(f"{pages_url}/whip_whep.html?api={server.url}&prompt=red")
            state = poll(lambda: page.evaluate("v2v.state"), lambda s: s in ("playing", "error"))
            assert state == "playing", page.evaluate("v2v.errors")
            red = poll(lambda: redness(page, "output"), lambda d: d > 60)
            camera = redness(page, "input")
            print(f"\nwhip-whep in Chromium: output R−B {red:.0f}, camera R−B {camera:.0f}")
            assert camera < 30  # the fake camera is not red: the red comes from the pipeline
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=OUTPUT / "whep-browser-red.png")

            # The sender stops (WHIP DELETE): the viewer's stream ends, no frozen frame.
            page.evaluate("v2v.whip.stop()")
            ended = poll(lambda: page.evaluate("v2v.peer()"),
                         lambda p: p["dtls"] == "closed" or p["connection"] in
                         ("closed", "failed", "disconnected"))
            print(f"after the sender stopped, the viewer: {ended}")
            assert not errors, errors
        finally:
            context.close()
