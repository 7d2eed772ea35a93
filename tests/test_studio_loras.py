"""The studio's LoRA card in headless Chromium against a real server: the tiny random SD model
(`tests.tiny_models`) with tiny LoRA files (`tests.tiny_loras`) in `--lora-dir`, and a stand-in
CivitAI to install one from a link.

The card lists the folder, installs from a link (progress while the download is held half-way,
the server's reason when it is refused), adds LoRAs to the Load request with a scale and a mode,
and after the load shows one strength slider per loaded LoRA: dragging the live one changes the
picture of the running webcam session; the fused one is disabled. Screenshots:
test-output/studio-lora-*.png.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, OUTPUT, Server, serve_in_thread
from tests.test_lora_routes import StandInCivitai
from tests.test_ui import OUT, SET_RANGE_JS, Studio
from tests.tiny_loras import write_kohya_lora, write_peft_lora
from tests.tiny_models import build_tiny_sd

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

SIZE = 64
VERSION = "321"  # the stand-in CivitAI's model version: style_321.safetensors
LIMIT_MS = 120_000  # for a state that never comes (a tiny model still loads slowly on 2 busy cores)

# The output frame averaged to 8×8 RGB (the look, not the codec's grain), as a flat list (null
# before the first frame).
FRAME_JS = """(sel) => {
  const v = document.querySelector(sel);
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas'); c.width = 8; c.height = 8;
  const g = c.getContext('2d'); g.imageSmoothingQuality = 'high'; g.drawImage(v, 0, 0, 8, 8);
  const d = g.getImageData(0, 0, 8, 8).data; const out = [];
  for (let i = 0; i < d.length; i += 4) out.push(d[i], d[i + 1], d[i + 2]);
  return out;
}"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("studio-lora")
    sd = build_tiny_sd(root / "sd")
    folder = root / "loras"
    write_peft_lora(sd, folder / "style.safetensors", std=10.0)  # a strong look: easy to see
    write_kohya_lora(sd, folder / "kohya_style.safetensors", seed=3)
    kohya = write_kohya_lora(sd, root / "kohya.safetensors")
    return {"sd": sd, "loras": folder, "kohya": kohya}


def write_still_camera(path: Path, size: int = SIZE) -> Path:
    """A Y4M clip of one still picture (soft gradients and a few blocks), for Chromium's fake
    webcam: the output then changes only when the LoRA does, not with the default test pattern's
    motion (which moves a tiny model's 8×8 latents a lot)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([200 * x + 30, 160 * y + 50, 220 - 150 * x * y], axis=-1)
    rgb[size // 8:size // 3, size // 8:size // 2] = (230, 60, 40)
    rgb[size // 2:size - size // 8, size // 2:size - size // 6] = (40, 70, 210)
    frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24").reformat(
        format="yuv420p")
    planes = b"".join(bytes(p) for p in frame.planes)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{size} H{size} F20:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(20):
            out.write(b"FRAME\n" + planes)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian Chromium whose fake webcam shows a still picture."""
    from playwright.sync_api import sync_playwright

    still = write_still_camera(tmp_path_factory.mktemp("camera") / "still.y4m")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={still}"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def civitai(files: dict[str, Path]) -> Iterator[StandInCivitai]:
    data = files["kohya"].read_bytes()
    stand_in = StandInCivitai({VERSION: data})
    stand_in.pause_at = len(data) // 2  # held half-way until `resume` is set
    with stand_in.running():
        yield stand_in


@pytest.fixture(scope="module")
def server(files: dict[str, Path], civitai: StandInCivitai) -> Iterator[Server]:
    patch = pytest.MonkeyPatch()
    patch.setenv("CIVITAI_ENDPOINT", civitai.url)
    try:
        with serve_in_thread(pipeline=None, lora_dir=files["loras"]) as srv:
            yield srv
    finally:
        patch.undo()


@pytest.fixture
def studio(browser: Any, server: Server) -> Iterator[Studio]:
    context = browser.new_context(viewport={"width": 1440, "height": 1400})
    page = context.new_page()
    try:
        yield Studio(page, server.url)
    finally:
        context.close()


def wait(studio: Studio, predicate: str, arg: Any = None) -> None:
    studio.page.wait_for_function(predicate, arg=arg, timeout=LIMIT_MS)


CARD = '[data-role="lora-card"]'


def file_row(name: str) -> str:
    return f'[data-role="lora-files"] .lv-lora-file[data-name="{name}"]'


def shot(studio: Studio, name: str, selector: str | None = None) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    if selector:
        studio.page.locator(selector).screenshot(path=str(path))
    else:
        studio.page.screenshot(path=str(path), full_page=True)
    return path


FRAMES_OUT_JS = "() => (window.liveV2V.client.serverStats || {}).frames_out || 0"


def frames(studio: Studio, count: int) -> np.ndarray:
    """The mean of `count` output frames, each taken once the server has made another one
    (the pipeline is far slower than the 20 fps the stream repeats frames at)."""
    seen = []
    for _ in range(count):
        made = studio.js(FRAMES_OUT_JS)
        wait(studio, f"() => ({FRAMES_OUT_JS[6:]}) > {made}")
        seen.append(np.asarray(studio.js(FRAME_JS, OUT), dtype=float))
    return np.mean(seen, axis=0)


def drag(studio: Studio, selector: str, fraction: float) -> None:
    """Drag a range input's thumb with the mouse to `fraction` of its width."""
    box = studio.page.locator(selector).bounding_box()
    assert box is not None
    value = studio.js(f"() => {{ const r = document.querySelector('{selector}');"
                      " return (r.value - r.min) / (r.max - r.min); }")
    y = box["y"] + box["height"] / 2
    mouse = studio.page.mouse
    mouse.move(box["x"] + 8 + value * (box["width"] - 16), y)
    mouse.down()
    for step in range(1, 11):
        start = value + (fraction - value) * step / 10
        mouse.move(box["x"] + 8 + start * (box["width"] - 16), y)
    mouse.up()


def settled(studio: Studio) -> np.ndarray:
    """The picture once it is steady: two frames in a row alike (the stream's bitrate ramps up
    after the start, and frames made before a change may still be on their way)."""
    last = frames(studio, 1)
    for _ in range(60):
        frame = frames(studio, 1)
        if np.abs(frame - last).mean() < 0.75:
            return (frame + last) / 2
        last = frame
    raise AssertionError("the picture never settled")


def away_from(studio: Studio, look: np.ndarray, limit: float) -> np.ndarray:
    """The settled picture once frames stop looking like `look`."""
    wait(studio, "([sel, ref, limit]) => { const f = (" + FRAME_JS + ")(sel); if (!f) return false;"
         " let d = 0; for (let i = 0; i < f.length; i++) d += Math.abs(f[i] - ref[i]);"
         " return d / f.length > limit; }", [OUT, look.round().tolist(), limit])
    return settled(studio)


def test_card_follows_the_pipeline_and_installs_from_a_link(studio: Studio,
                                                            files: dict[str, Path],
                                                            civitai: StandInCivitai) -> None:
    page = studio.page
    studio.open()
    # A pipeline without LoRAs: no card. streamdiffusion: the card, listing the folder.
    page.select_option('[data-role="pipeline"]', "passthrough")
    assert page.locator(CARD).is_hidden()
    page.select_option('[data-role="pipeline"]', "streamdiffusion")
    page.locator(file_row("style")).wait_for(timeout=LIMIT_MS)
    assert page.locator(CARD).is_visible()
    assert re.fullmatch(r"\d+ KB", page.locator(file_row("kohya_style") + " small").inner_text())
    assert page.locator('[data-action="load"]').inner_text() == "Load pipeline"
    assert page.locator('[data-role="load-form"] [data-key="loras"]').count() == 0

    # A link to a host that is not allowed: the server's reason, under the field.
    page.locator('[data-role="lora-install"] summary').click()
    page.fill('[data-role="lora-url"]', "https://example.com/files/style.safetensors")
    page.click('[data-action="lora-install"]')
    error = page.locator('[data-role="lora-install-error"]')
    wait(studio, "() => document.querySelector('[data-role=\"lora-install-error\"]')"
         ".textContent.length > 0")
    assert "Not installed: Downloads are allowed from" in error.inner_text()
    assert "not example.com" in error.inner_text()
    shot(studio, "studio-lora-install-refused.png", CARD)
    # A CivitAI link: progress while the download is held half-way, then the file is listed
    # and picked for the next load.
    page.fill('[data-role="lora-url"]', f"{civitai.url}/api/download/models/{VERSION}")
    page.click('[data-action="lora-install"]')
    wait(studio, "() => /^style_321.safetensors · .* · 50%$/.test(document.querySelector("
         "'[data-role=\"lora-progress-text\"]').textContent)")
    assert error.inner_text() == ""
    assert page.locator('[data-role="lora-install-label"]').inner_text() == "Installing…"
    assert page.locator('[data-action="lora-install"]').is_disabled()
    shot(studio, "studio-lora-installing.png", CARD)
    civitai.resume.set()
    page.locator(file_row("style_321") + "[data-picked]").wait_for(timeout=LIMIT_MS)
    assert page.locator('[data-role="lora-progress"]').is_hidden()
    assert page.locator('[data-role="lora-url"]').input_value() == ""
    assert (files["loras"] / "style_321.safetensors").read_bytes() == files["kohya"].read_bytes()
    assert page.locator('[data-action="load"]').inner_text() == "Load pipeline + 1 LoRA"
    assert studio.notice()["title"] == "LoRA installed"
    # Only the refused install's answer is in the console.
    assert studio.errors == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"]


def test_live_lora_slider_steers_the_stream_and_a_fused_one_is_fixed(
        studio: Studio, server: Server, files: dict[str, Path]) -> None:
    page = studio.page
    loads: list[dict[str, Any]] = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/pipeline/load")
            and loads.append(json.loads(r.post_data or "{}")))
    studio.open()
    page.select_option('[data-role="pipeline"]', "streamdiffusion")
    page.locator(file_row("kohya_style")).wait_for(timeout=LIMIT_MS)

    # Picks: style live at 1.0, kohya_style fused at 0.5.
    page.check(file_row("style") + ' [data-role="lora-pick"]')
    page.click(file_row("style") + ' [data-role="lora-mode"] button[data-value="runtime_peft"]')
    page.check(file_row("kohya_style") + ' [data-role="lora-pick"]')
    page.evaluate(SET_RANGE_JS, [file_row("kohya_style") + ' [data-role="lora-pick-scale"]',
                                 "0.5"])
    assert page.locator(file_row("kohya_style") + " output").inner_text() == "0.50"
    assert page.locator('[data-action="load"]').inner_text() == "Load pipeline + 2 LoRAs"
    shot(studio, "studio-lora-picked.png", CARD)

    # The model's own load parameters in the generic form; Load.
    page.locator('[data-role="load-details"] summary').click()
    for key, value in {"model_id": str(files["sd"]), "vae_id": "full", "height": str(SIZE),
                       "width": str(SIZE)}.items():
        page.fill(f'[data-role="load-form"] [data-key="{key}"]', value)
    page.click('[data-action="load"]')
    wait(studio, "() => { const s = window.liveV2V.status; return s && s.status === 'loaded'"
         " && s.loaded_lora_adapters.length === 2; }")
    folder = files["loras"].resolve()
    style, kohya = str(folder / "style.safetensors"), str(folder / "kohya_style.safetensors")
    body = loads[-1]["load_params"]
    assert body["loras"] == [{"path": style, "scale": 1.0, "merge_mode": "runtime_peft"},
                             {"path": kohya, "scale": 0.5, "merge_mode": "permanent"}]
    assert body["lora_merge_mode"] == "runtime_peft"

    # One slider per loaded LoRA: the live one enabled, the fused one fixed at its scale.
    live = '.lv-lora-live[data-mode="live"] [data-role="lora-scale"]'
    fused = '.lv-lora-live[data-mode="fused"]'
    assert page.locator(live).is_enabled() and page.locator(live).input_value() == "1"
    assert page.locator(f"{fused} [data-role='lora-scale']").is_disabled()
    assert page.locator(f"{fused} [data-role='lora-scale']").input_value() == "0.5"
    assert page.locator(f"{fused} .lv-lora-hint").inner_text() == "fused: reload to change"

    # Stream the (still) fake webcam: one step, no added noise, so only the LoRA moves it.
    page.click('[data-role="steps"] button[data-value="1"]')
    page.evaluate(SET_RANGE_JS, ['[data-role="noise"]', "0"])
    studio.start()
    on = settled(studio)
    steady = np.abs(settled(studio) - on).mean()
    limit = 3 * max(steady, 0.5)  # a change, not the stream's own flicker
    drag(studio, live, 0.0)  # with the mouse, as a user drags it
    wait(studio, "(path) => ((window.liveV2V.lastParameters || {}).lora_scales || [])"
         ".some((s) => s.path === path && s.scale === 0)", style)
    assert page.locator('.lv-lora-live[data-mode="live"] output').inner_text() == "0.00"
    off = away_from(studio, on, limit)
    shot(studio, "studio-lora-off.png")
    drag(studio, live, 0.5)  # back to 1.0: the slider runs 0..2
    wait(studio, "(path) => (window.liveV2V.lastParameters.lora_scales || [])"
         ".some((s) => s.path === path && s.scale === 1)", style)
    back = away_from(studio, off, limit)
    shot(studio, "studio-lora-on.png")
    d_off, d_back = np.abs(off - on).mean(), np.abs(back - on).mean()
    print(f"LoRA off vs on {d_off:.2f}, back on vs on {d_back:.2f}, steady {steady:.2f} "
          "(mean |Δ| of 8×8 RGB, 0..255)")
    assert d_off > 2 * limit and d_back < d_off / 4

    # A new scale for the fused LoRA over the channel: the server's error, in the notice.
    studio.js("(path) => window.liveV2V.client.send({lora_scales: [{path, scale: 0.1}]})", kohya)
    wait(studio, "() => document.querySelector('[data-role=\"notice\"]').dataset.code"
         " === 'lora_rejected'")
    notice = studio.notice()
    assert notice["title"] == "The LoRA strength was not changed"
    assert "fused into the weights" in notice["text"]
    shot(studio, "studio-lora-rejected.png")

    # A strength set from elsewhere (Scope's HTTP route): the live slider follows it.
    r = httpx.post(f"{server.url}/api/v1/session/parameters",
                   json={"lora_scales": [{"path": style, "scale": 0.25}]}, timeout=30)
    assert r.status_code == 200 and r.json()["sessions"] == 1, r.text
    wait(studio, "(sel) => document.querySelector(sel).value === '0.25'", live)
    assert page.locator('.lv-lora-live[data-mode="live"] output').inner_text() == "0.25"
    assert studio.errors == []
