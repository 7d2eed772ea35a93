"""OSC control end to end: python-osc's own UDP client (the library TouchDesigner scripts and
Scope's examples use) sends to the app over loopback; real aiortc sessions show the effect."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import VideoStreamTrack
from av import VideoFrame
from prometheus_client.parser import text_string_to_metric_families
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder, build_msg
from pythonosc.udp_client import SimpleUDPClient

from app import parse_args
from pipeline.resources.loras import LoraParams
from signaling.client import LiveV2VClient, NumberedFrames
from signaling.osc import osc_bind
from signaling.osc_addresses import OscValueError, build_catalogue, lora_update
from tests.conftest import ROOT, Server, free_port, serve_in_thread
from tests.looks import away_from, differs, settled

LIGHT = (220, 220, 220)  # the effect maps brightness to the palette: bright shows it best
BLUE = {"prompts": [{"text": "blue", "weight": 1.0}], "noise_scale": 0.0,
        "denoising_step_list": [999]}
FRAMES = 100  # bound on frames to wait for a colour (5 s at 20 fps)


def mean_rgb(frame: Any) -> np.ndarray:
    return frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)


def is_red(c: np.ndarray) -> bool:
    return c[0] > c[2] + 60


def is_blue(c: np.ndarray) -> bool:
    return c[2] > c[0] + 60


async def colour_until(client: LiveV2VClient, predicate: Callable[[np.ndarray], bool],
                       limit: int = FRAMES) -> np.ndarray:
    for _ in range(limit):
        colour = mean_rgb(await client.recv())
        if predicate(colour):
            return colour
    raise AssertionError(f"no frame matched in {limit} frames (last {colour.round()})")


async def osc_target(url: str) -> tuple[str, int]:
    """Where the server listens for OSC, as it says itself."""
    async with httpx.AsyncClient(base_url=url) as http:
        status = (await http.get("/api/v1/osc/status")).json()
    assert status["listening"], status
    return status["host"], status["port"]


async def osc_client(url: str) -> SimpleUDPClient:
    return SimpleUDPClient(*await osc_target(url))


async def osc_counts(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    return {s.labels["outcome"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "livev2v_osc_messages_total"}


async def counts_when(url: str, check: Callable[[dict[str, float]], bool],
                      timeout_s: float = 20.0) -> dict[str, float]:
    """The OSC counters once `check` holds (UDP is handled when the loop gets to it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = await osc_counts(url)
        if check(counts):
            return counts
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.05)


async def test_scope_prompt_turns_the_output_red(effect_server: Server) -> None:
    osc = await osc_client(effect_server.url)
    async with LiveV2VClient(effect_server.url) as client:
        await client.connect(NumberedFrames(size=128, fps=20, tint=LIGHT), BLUE)
        await colour_until(client, is_blue)
        sent = time.monotonic()
        osc.send_message("/scope/prompt", "red")
        red = await colour_until(client, is_red)
        print(f"/scope/prompt red → red output after {time.monotonic() - sent:.3f} s "
              f"(colour {red.round()})")
        # Seen by the session's client as a change from elsewhere (Scope's app moves its
        # prompt box), and by the HTTP API.
        update = await client.message("parameters_updated")
        assert update["parameters"] == {"prompts": [{"text": "red", "weight": 1.0}]}
        async with httpx.AsyncClient(base_url=effect_server.url) as http:
            current = (await http.get("/api/v1/session/parameters",
                                      params={"session_id": client.session_id})).json()
        assert current["parameters"]["prompts"] == [{"text": "red", "weight": 1.0}]
        assert current["parameters"]["noise_scale"] == 0.0  # the rest stays
    counts = await osc_counts(effect_server.url)
    assert counts["applied"] == 1 and counts["bad_value"] == 0


async def test_bad_values_unknown_addresses_and_garbage_are_survived_and_counted(
        effect_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="signaling.osc")  # as `python app.py` logs
    osc = await osc_client(effect_server.url)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    async with LiveV2VClient(effect_server.url) as client:
        await client.connect(NumberedFrames(size=128, fps=20, tint=LIGHT), BLUE)
        await colour_until(client, is_blue)
        bad = [("/scope/noise_scale", 5.0), ("/scope/noise_scale", float("nan")),
               ("/scope/prompt", 3), ("/scope/paused", "yes"),
               ("/scope/denoising_step_list", [500, 700]), ("/scope/transition_steps", 2.5),
               ("/scope/input_mode", "audio")]
        for address, value in bad:
            osc.send_message(address, value)
        for address in ("/scope/no_such_param", "/other/prompt", "/scope/", "/livev2v//prompt",
                        "/livev2v/nope/prompt"):
            osc.send_message(address, "red")
        garbage = [b"", b"\x00" * 7, b"not osc at all", b"#bundle\x00" + b"\x01" * 30,
                   b"/scope/prompt\x00\x00\x00,s\x00\x00", b"/scope/prompt\x00\x00\x00,c\x00\x00",
                   bytes(range(256)) * 200]
        target = await osc_target(effect_server.url)
        for datagram in garbage + [b"junk"] * 30:
            raw.sendto(datagram, target)
        counts = await counts_when(effect_server.url, lambda c: c["malformed"] >= 35
                                   and c["bad_value"] == len(bad) and c["unknown_address"] == 4
                                   and c["unknown_session"] == 1)
        assert counts["applied"] == 0
        # Scope's switch: every message is logged (else problems only, rate-limited).
        async with httpx.AsyncClient(base_url=effect_server.url) as http:
            r = await http.put("/api/v1/osc/settings", json={"log_all_messages": True})
            assert r.status_code == 200 and r.json()["log_all_messages"] is True
            assert (await http.put("/api/v1/osc/settings", json={})).status_code == 422
            logged = (await http.get("/api/v1/logs/tail", params={"lines": 2000})).json()
        # 35 or more garbage datagrams, at most 5 lines (then a count) per 10 s.
        noted = [line for line in logged["lines"] if "ignored a datagram" in line]
        assert 1 <= len(noted) <= 5, noted
        assert any("/scope/noise_scale [5.0]" in line for line in logged["lines"])
        # Nothing changed, the session streams on, and the listener still works.
        for _ in range(5):
            assert is_blue(mean_rgb(await client.recv()))
        osc.send_message("/scope/prompt", "red")
        await colour_until(client, is_red)
        async with httpx.AsyncClient(base_url=effect_server.url) as http:
            await counts_when(effect_server.url, lambda c: c["applied"] == 1)
            lines = (await http.get("/api/v1/logs/tail", params={"lines": 2000})).json()["lines"]
        assert any("/scope/prompt ['red'] → applied" in line for line in lines)
    raw.close()
    print(f"OSC outcomes: {counts}")


async def test_a_session_address_reaches_that_session_only(effect_server: Server) -> None:
    osc = await osc_client(effect_server.url)
    async with LiveV2VClient(effect_server.url) as a, LiveV2VClient(effect_server.url) as b:
        await a.connect(NumberedFrames(size=128, fps=15, tint=LIGHT), BLUE)
        await b.connect(NumberedFrames(size=128, fps=15, tint=LIGHT), BLUE)
        await colour_until(a, is_blue)
        await colour_until(b, is_blue)
        osc.send_message(f"/livev2v/{b.session_id}/prompt", "red")
        await colour_until(b, is_red)
        for _ in range(10):
            assert is_blue(mean_rgb(await a.recv()))
        assert (await b.message("parameters_updated"))["parameters"]["prompts"][0]["text"] == "red"
        # A bare address reaches both.
        osc.send_message("/scope/prompt", "red")
        await colour_until(a, is_red)
        assert is_red(mean_rgb(await b.recv()))


async def test_transition_steps_make_the_next_prompt_a_transition(effect_server: Server) -> None:
    osc = await osc_client(effect_server.url)
    async with LiveV2VClient(effect_server.url) as client:
        await client.connect(NumberedFrames(size=64, fps=20, tint=LIGHT), BLUE)
        await client.wait_open()
        await client.applied()  # the initial parameters
        osc.send_message("/scope/transition_steps", 1000.0)  # a float, as TouchDesigner sends
        osc.send_message("/scope/temporal_interpolation_method", "slerp")
        osc.send_message("/scope/prompt", "red")
        transition = (await client.applied())["transition"]
        assert transition["num_steps"] == 1000
        assert transition["temporal_interpolation_method"] == "slerp"
        assert transition["target_prompts"] == [{"text": "red", "weight": 1.0}]
        # Back to 0: the next prompt applies at once and replaces the running transition.
        osc.send_message("/scope/transition_steps", 0)
        osc.send_message("/scope/prompt", "red")
        applied = await client.applied()
        assert "transition" not in applied
        assert applied["prompts"] == [{"text": "red", "weight": 1.0}]
        await colour_until(client, is_red)


async def test_touchdesigner_style_values_and_bundles(effect_server: Server) -> None:
    """OSC Out CHOP sends float32 for every channel: a toggle as 0.0/1.0, steps as floats."""
    osc = await osc_client(effect_server.url)
    async with LiveV2VClient(effect_server.url) as client:
        await client.connect(NumberedFrames(size=64, fps=20, tint=LIGHT), BLUE)
        await client.wait_open()
        await client.applied()
        bundle = OscBundleBuilder(IMMEDIATELY)
        bundle.add_content(build_msg("/scope/noise_scale", 0.25))
        bundle.add_content(build_msg("/scope/paused", 1.0))
        bundle.add_content(build_msg("/scope/denoising_step_list", [900.0, 600.0]))
        array = OscMessageBuilder("/scope/denoising_step_list")  # as an OSC array [ii]
        array.add_arg([800, 400])
        bundle.add_content(array.build())
        osc.send(bundle.build())
        want = {"noise_scale": 0.25, "paused": True, "denoising_step_list": [800, 400]}
        deadline = time.monotonic() + 20
        while True:
            applied = await client.applied()
            if all(applied.get(k) == v for k, v in want.items()):
                break
            assert time.monotonic() < deadline, applied
        # A TouchDesigner channel named "/scope/paused" is sent as "//scope/paused".
        osc.send_message("//scope/paused", 0.0)
        assert (await client.applied())["paused"] is False


async def test_a_burst_is_merged_and_the_last_value_wins(effect_server: Server) -> None:
    """A controller sending every channel on every frame: each message is applied (counted),
    the session gets the changes merged (far fewer notifications) and ends on the last value."""
    osc = await osc_client(effect_server.url)
    async with LiveV2VClient(effect_server.url) as client:
        await client.connect(NumberedFrames(size=64, fps=20, tint=LIGHT), BLUE)
        await client.wait_open()
        await client.applied()
        burst = [round(i / 200, 3) for i in range(1, 200)] + [0.421]
        for value in burst:
            osc.send_message("/scope/noise_scale", value)
        counts = await counts_when(effect_server.url, lambda c: c["applied"] >= len(burst))
        assert counts["applied"] == len(burst)
        notifications = 0
        while True:
            applied = await client.applied()
            notifications += 1
            if applied["noise_scale"] == 0.421:  # a float32 on the wire, shown as sent
                break
        print(f"{len(burst)} OSC messages → {notifications} parameters_applied")
        assert notifications < len(burst) // 4
        # A change after the burst applies on its own.
        osc.send_message("/scope/prompt", "red")
        assert (await client.applied())["prompts"] == [{"text": "red", "weight": 1.0}]


async def test_every_documented_example_is_a_valid_value() -> None:
    """`/osc/paths` lists every address with type, range, default and example; each example,
    sent as it is listed, passes validation (no live session: counted as no_session)."""
    with serve_in_thread(pipeline="cpu-effect") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            paths = (await http.get("/api/v1/osc/paths")).json()
            page = await http.get("/api/v1/osc/docs")
        assert page.headers["content-type"].startswith("text/html")
        assert paths["active_pipeline_ids"] == ["cpu-effect"]
        assert paths["listening"] and paths["port"] == int(server.url.rsplit(":", 1)[1])
        assert paths["session_address"] == "/livev2v/{session_id}/{key}"
        assert "sessions" not in paths  # an id lets its holder stop the session: never listed
        entries = [e for group in paths["active"].values() for e in group]
        keys = {e["key"] for e in entries}
        assert {"prompt", "noise_scale", "paused", "reset_cache", "manage_cache",
                "transition_steps", "interpolation_method", "denoising_step_list"} <= keys
        for entry in entries:
            assert entry["osc_address"] == f"/scope/{entry['key']}"
            assert entry["type"] in ("string", "float", "integer", "bool", "integer_list")
            assert entry["example"] is not None
            assert f"<code>{entry['osc_address']}</code>" in page.text
        by_key = {e["key"]: e for e in entries}
        assert by_key["noise_scale"]["min"] == 0 and by_key["noise_scale"]["max"] == 1
        assert by_key["noise_scale"]["default"] == 0.2  # cpu-effect's own default
        assert by_key["input_mode"]["enum"] == ["video", "text"]
        assert by_key["prompt"]["default"] == "a neon city at night"
        osc = SimpleUDPClient("127.0.0.1", paths["port"])
        for entry in entries:
            osc.send_message(entry["osc_address"], entry["example"])
        settings = sum(e["key"] in ("transition_steps", "temporal_interpolation_method")
                       for e in entries)
        counts = await counts_when(server.url, lambda c: sum(c.values()) >= len(entries))
        assert counts["bad_value"] == 0
        assert counts["no_session"] == len(entries) - settings, counts


async def test_the_python_examples_of_docs_osc_md_run() -> None:
    text = (ROOT / "docs" / "osc.md").read_text()
    section = text[text.index("## python-osc"):text.index("## TouchDesigner")]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    assert "SimpleUDPClient" in code and "OscBundleBuilder" in code
    with serve_in_thread(pipeline="cpu-effect") as server:
        port = int(server.url.rsplit(":", 1)[1])
        exec(compile(code.replace("8000", str(port)), "docs/osc.md", "exec"), {})
        counts = await counts_when(server.url, lambda c: sum(c.values()) >= 8)
    assert counts["bad_value"] == counts["malformed"] == counts["unknown_address"] == 0, counts
    assert counts["unknown_session"] == 1  # the example's elided session id


async def test_osc_routes_are_behind_the_api_key() -> None:
    with serve_in_thread(pipeline=None, api_key="sesame") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for path in ("/api/v1/osc/docs", "/api/v1/osc/paths", "/api/v1/osc/status"):
                assert (await http.get(path)).status_code == 401
                r = await http.get(path, headers={"Authorization": "Bearer sesame"})
                assert r.status_code == 200
            # Nothing loaded: Scope's runtime addresses, every pipeline's under `available`.
            paths = (await http.get("/api/v1/osc/paths",
                                    headers={"Authorization": "Bearer sesame"})).json()
        assert paths["active_pipeline_ids"] == [] and "cpu-effect" in paths["available"]


def test_when_osc_listens() -> None:
    # Default: on for loopback binds, at the HTTP port number; off for public binds.
    assert osc_bind("127.0.0.1", 8000, None, None) == ("127.0.0.1", 8000)
    assert osc_bind("localhost", 8000, None, None) == ("127.0.0.1", 8000)
    assert osc_bind("::1", 8000, None, None) == ("::1", 8000)
    assert osc_bind("0.0.0.0", 8000, None, None) is None
    assert osc_bind("192.168.1.5", 8000, None, None) is None
    # 0 turns it off anywhere; a port turns it on anywhere; --osc-host moves it.
    assert osc_bind("127.0.0.1", 8000, None, 0) is None
    assert osc_bind("0.0.0.0", 8000, None, 9000) == ("0.0.0.0", 9000)
    assert osc_bind("0.0.0.0", 8000, "127.0.0.1", 9000) == ("127.0.0.1", 9000)
    assert osc_bind("127.0.0.1", 8000, "0.0.0.0", None) == ("0.0.0.0", 8000)


@pytest.mark.parametrize(("argv", "port"), [
    ([], None), (["--osc-port", "off"], 0), (["--osc-port", "OFF"], 0),
    (["--osc-port", "0"], 0), (["--osc-port", "9000"], 9000),
])
def test_osc_port_option(argv: list[str], port: int | None) -> None:
    assert parse_args(argv).osc_port == port


@pytest.mark.parametrize("value", ["nope", "-1", "65536", ""])
def test_osc_port_option_refuses_nonsense(value: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--osc-port", value])


def test_osc_off_on_public_binds_and_osc_port_taken() -> None:
    off = {"enabled": False, "listening": False, "port": None, "host": None,
           "log_all_messages": False}
    with serve_in_thread(pipeline=None, osc_port=0) as server:
        assert httpx.get(f"{server.url}/api/v1/osc/status").json() == off
    with serve_in_thread(pipeline=None, host="0.0.0.0") as server:  # public: off unless asked
        url = server.url.replace("0.0.0.0", "127.0.0.1")
        assert httpx.get(f"{url}/api/v1/osc/status").json() == off
    port = free_port()
    with serve_in_thread(pipeline=None, host="0.0.0.0", osc_port=port,
                         osc_host="127.0.0.1") as server:  # asked for, on loopback only
        url = server.url.replace("0.0.0.0", "127.0.0.1")
        status = httpx.get(f"{url}/api/v1/osc/status").json()
        assert status == {**off, "enabled": True, "listening": True, "port": port,
                          "host": "127.0.0.1"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with serve_in_thread(pipeline=None, osc_port=port) as server:
            # The server runs; OSC says it is not listening (the log says why).
            status = httpx.get(f"{server.url}/api/v1/osc/status").json()
            assert status["enabled"] is True and status["listening"] is False
            assert httpx.get(f"{server.url}/health").status_code == 200


# --- LoRA scales -------------------------------------------------------------------------------

LORA_SIZE = 64


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny streamdiffusion with three LoRAs: two live (runtime_peft), one fused."""
    from tests.tiny_loras import write_kohya_lora, write_peft_lora
    from tests.tiny_models import build_tiny_sd

    root = tmp_path_factory.mktemp("osc-loras")
    sd = build_tiny_sd(root / "sd")
    loras = root / "loras"
    write_peft_lora(sd, loras / "peft_style.safetensors")
    write_peft_lora(sd, loras / "sub" / "unet_only.safetensors", seed=5, text_encoder=False)
    write_kohya_lora(sd, loras / "kohya_style.safetensors")
    load_params = {
        # the full VAE: random TAESD weights hide most of a latent change from the pixels
        "model_id": str(sd), "vae_id": "full", "height": LORA_SIZE, "width": LORA_SIZE,
        "lora_merge_mode": "runtime_peft",
        "loras": [{"path": "peft_style"}, {"path": "unet_only", "scale": 0.8},
                  {"path": "kohya_style", "scale": 0.5, "merge_mode": "permanent"}]}
    with serve_in_thread(pipeline="streamdiffusion", load_params=load_params,
                         lora_dir=loras) as server:
        yield server


class Still(VideoStreamTrack):
    """The same picture on every frame: the output's look changes only with the parameters."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.random.default_rng(3).integers(0, 256, (LORA_SIZE, LORA_SIZE, 3), np.uint8)
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def scales_now(client: LiveV2VClient, want: dict[str, float]) -> dict[str, float]:
    """The session's LoRA scales (by file name) once `want` is among them."""
    deadline = time.monotonic() + 20
    while True:
        applied = await client.applied()
        scales = {Path(s["path"]).name: s["scale"] for s in applied.get("lora_scales", [])}
        if want.items() <= scales.items():
            return scales
        assert time.monotonic() < deadline, scales


async def test_lora_scales_are_faders_per_lora(lora_server: Server,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """`/scope/lora/<n>/scale` (Scope's shape) and `/scope/lora/<name>/scale` move one LoRA's
    scale; the session's look follows. The reference lists them with the loaded LoRAs; a bad
    value, an unknown LoRA and a new scale for a fused LoRA are counted and logged, and change
    nothing."""
    caplog.set_level(logging.INFO, logger="signaling.osc")
    url = lora_server.url
    async with httpx.AsyncClient(base_url=url) as http:
        status = (await http.get("/api/v1/pipeline/status")).json()
        paths = (await http.get("/api/v1/osc/paths")).json()
        page = (await http.get("/api/v1/osc/docs")).text
    assert status["status"] == "loaded", status
    loaded = [a["path"] for a in status["loaded_lora_adapters"]]
    entries = paths["active"]["LoRAs"]
    assert [(e["osc_address"], e["lora_path"], e["default"]) for e in entries] == [
        ("/scope/lora/0/scale", loaded[0], 1.0), ("/scope/lora/peft_style/scale", loaded[0], 1.0),
        ("/scope/lora/1/scale", loaded[1], 0.8), ("/scope/lora/unet_only/scale", loaded[1], 0.8),
        ("/scope/lora/2/scale", loaded[2], 0.5),
        ("/scope/lora/kohya_style/scale", loaded[2], 0.5)]
    assert all(e["type"] == "float" and e["min"] == -10 and e["max"] == 10 for e in entries)
    assert "fused" in entries[4]["description"] and "live" in entries[0]["description"]
    assert all(f"<code>{e['osc_address']}</code>" in page for e in entries)

    osc = await osc_client(url)
    for entry in entries:  # each example is valid as listed (no session yet: no_session)
        osc.send_message(entry["osc_address"], entry["example"])
    await counts_when(url, lambda c: c["no_session"] == len(entries))
    async with LiveV2VClient(url) as client:
        await client.connect(Still(), {"noise_scale": 0.0, "denoising_step_list": [700]})
        await client.applied()
        on = await settled(client)
        sent = time.monotonic()
        osc.send_message("/scope/lora/0/scale", 0.0)  # Scope's shape: by position
        update = await client.message("parameters_updated")
        assert update["parameters"] == {"lora_scales": [{"path": loaded[0], "scale": 0.0}]}
        off = await away_from(client, on)
        print(f"/scope/lora/0/scale 0 → a new look after {time.monotonic() - sent:.2f} s "
              f"(mean difference {differs(off, on):.1f})")
        osc.send_message("/scope/lora/peft_style/scale", 1.0)  # by name, as GET /loras shows
        back = await away_from(client, off)
        assert differs(back, on) < differs(off, on) / 3
        # A file name matches too; one session's address reaches that session.
        osc.send_message(f"/livev2v/{client.session_id}/lora/peft_style.safetensors/scale", 0.25)
        assert (await scales_now(client, {"peft_style.safetensors": 0.25}))
        # Two faders moved together (one bundle, inside the merge window): both count.
        bundle = OscBundleBuilder(IMMEDIATELY)
        for address, value in (("/scope/lora/0/scale", 0.3), ("/scope/lora/1/scale", 0.7),
                               ("/scope/lora/0/scale", 0.2)):
            bundle.add_content(build_msg(address, value))
        osc.send(bundle.build())
        await scales_now(client, {"peft_style.safetensors": 0.2, "unet_only.safetensors": 0.7})
        async with httpx.AsyncClient(base_url=url) as http:
            current = (await http.get("/api/v1/session/parameters",
                                      params={"session_id": client.session_id})).json()
        assert {Path(s["path"]).name: s["scale"]
                for s in current["parameters"]["lora_scales"]} == {
            "peft_style.safetensors": 0.2, "unet_only.safetensors": 0.7}
        # The fused LoRA at its own scale is fine (a fader resting where it was loaded).
        osc.send_message("/scope/lora/2/scale", 0.5)
        before = await counts_when(url, lambda c: c["applied"] >= 7)
        bad = [("/scope/lora/0/scale", 11.0), ("/scope/lora/0/scale", float("nan")),
               ("/scope/lora/0/scale", "loud"), ("/scope/lora/kohya_style/scale", 0.2)]
        for address, value in bad:
            osc.send_message(address, value)
        osc.send_message("/scope/lora/0/scale", [0.1, 0.2])
        for address in ("/scope/lora/3/scale", "/scope/lora/nope/scale", "/scope/lora//scale",
                        "/scope/lora/0/strength"):
            osc.send_message(address, 0.5)
        counts = await counts_when(url, lambda c: c["bad_value"] >= len(bad) + 1
                                   and c["unknown_address"] >= 4)
        assert counts["applied"] == before["applied"] == 7
        assert counts["bad_value"] == len(bad) + 1 and counts["unknown_address"] == 4
        assert counts["no_session"] == len(entries)
        logged = "\n".join(caplog.messages)
        assert "fused into the weights" in logged and "runtime_peft" in logged
        assert ("no such LoRA is loaded (loaded: 0: peft_style, 1: unet_only, 2: kohya_style)"
                in logged)
        assert "less than or equal to 10" in logged
        # Nothing changed, and the session streams on.
        await client.send({"seed": 42})  # a change of its own, to read the scales in force
        assert await scales_now(client, {"peft_style.safetensors": 0.2,
                                         "unet_only.safetensors": 0.7,
                                         "kohya_style.safetensors": 0.5})
        await client.recv(timeout_s=30)
    print(f"OSC outcomes: {counts}")


def test_lora_addresses_by_position_and_by_name() -> None:
    """A name is listed only when it can be an OSC address part, is no position and is not
    shared; every LoRA is still reachable by position, and by any name `same_lora` accepts."""
    params = LoraParams.model_validate({"lora_merge_mode": "runtime_peft", "loras": [
        {"path": "/l/a/style.safetensors"}, {"path": "/l/b/style.safetensors"},
        {"path": "/l/7.safetensors"}, {"path": "/l/my style.safetensors"},
        {"path": "/l/ink.safetensors", "scale": 0.4, "merge_mode": "permanent"}]})
    catalogue = build_catalogue(None, params)
    assert [e.osc_address for e in catalogue.active["LoRAs"]] == [
        "/scope/lora/0/scale", "/scope/lora/1/scale", "/scope/lora/2/scale",
        "/scope/lora/3/scale", "/scope/lora/4/scale", "/scope/lora/ink/scale"]

    def found(key: str) -> str | None:
        entry = catalogue.find(key)
        return None if entry is None else entry.lora_path

    assert found("lora/1/scale") == "/l/b/style.safetensors"
    assert found("lora/style/scale") == "/l/a/style.safetensors"  # shared: the first
    assert found("lora/b/style.safetensors/scale") == "/l/b/style.safetensors"
    assert found("lora/b/style/scale") == "/l/b/style.safetensors"
    assert found("lora/my style/scale") == "/l/my style.safetensors"
    assert found("lora/7.safetensors/scale") == "/l/7.safetensors"
    assert found("lora/5/scale") is None and found("lora/ink/strength") is None
    with pytest.raises(OscValueError, match="fused into the weights"):
        lora_update(catalogue.find("lora/ink/scale"), 0.5, catalogue)  # type: ignore[arg-type]
    assert lora_update(catalogue.find("lora/ink/scale"), 0.4,  # type: ignore[arg-type]
                       catalogue).lora_scales == [{"path": "/l/ink.safetensors", "scale": 0.4}]
    with pytest.raises(OscValueError, match="less than or equal to 10"):
        lora_update(catalogue.find("lora/0/scale"), 12.0, catalogue)  # type: ignore[arg-type]
    assert "LoRAs" not in build_catalogue(None, LoraParams()).active
