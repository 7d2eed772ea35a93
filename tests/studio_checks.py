"""Drive the studio in a page or in a frame of one (a notebook's iframe): start streaming from
Chromium's fake webcam and check that the prompt steers the cpu-effect's colour. Waits on
state only; the limits are for a state that never comes."""

from __future__ import annotations

from typing import Any

from tests.test_ui import MEAN_RGB_JS, OUT, SET_RANGE_JS

WAIT_MS = 60_000

# The output's mean colour has `channel` above both others by 20 (of 255).
DOMINANT_JS = ("([sel, channel]) => { const mean = (" + MEAN_RGB_JS + ")(sel);"
               " return !!mean && mean[channel] > "
               "Math.max(...mean.filter((_, i) => i !== channel)) + 20; }")


def wait_studio(frame: Any) -> None:
    frame.wait_for_function("() => window.liveV2V && window.liveV2V.status", timeout=WAIT_MS)


def stream_and_steer(frame: Any) -> dict[str, list[float]]:
    """Start, see frames arrive, prompt "red" then "blue": the output's mean RGB for each."""
    wait_studio(frame)
    frame.click('[data-action="start"]')
    frame.wait_for_function("() => window.liveV2V.client.state === 'connected'",
                            timeout=WAIT_MS)
    frame.wait_for_function(f"() => document.querySelector('{OUT}')"
                            ".getVideoPlaybackQuality().totalVideoFrames >= 8", timeout=WAIT_MS)
    frame.evaluate(SET_RANGE_JS, ['[data-role="strength"]', "1"])
    frame.evaluate(SET_RANGE_JS, ['[data-role="noise"]', "0"])
    colours = {}
    for text, channel in (("red", 0), ("blue", 2)):
        frame.locator('[data-role="prompt-text"]').first.fill(text)
        # wait for the hue, not a brightness or a time: the fake camera's brightness drifts
        frame.wait_for_function(DOMINANT_JS, arg=[OUT, channel], timeout=WAIT_MS)
        colours[text] = frame.evaluate(MEAN_RGB_JS, OUT)
    return colours


def stop(frame: Any) -> None:
    frame.click('[data-action="start"]')
    frame.wait_for_function("() => window.liveV2V.client.state === 'idle'", timeout=WAIT_MS)
