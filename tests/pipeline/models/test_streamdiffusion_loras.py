"""LoRAs on the `streamdiffusion` pipeline: files made here (diffusers/PEFT and kohya formats) on
the tiny random SD model, loaded through diffusers' own loaders (no downloads)."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline import (
    LocalPathPolicy,
    LoraError,
    LoraFolder,
    LoraScaleError,
    PipelineError,
    PipelineService,
)
from pipeline.models.streamdiffusion import StreamDiffusionParams, StreamDiffusionPipeline
from pipeline.params import ParameterState, ParameterUpdate
from pipeline.resources.loras import (
    LoraParams,
    check_lora_file,
    loaded_adapters,
    parse_scales,
    scale_overrides,
)
from tests.looks import away_from, differs, settled
from tests.pipeline.models.test_streamdiffusion import SIZE, frame_params, picture, request
from tests.tiny_loras import write_kohya_lora, write_peft_lora
from tests.tiny_models import build_tiny_sd, build_tiny_taesd


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-models")
    sd = build_tiny_sd(root / "sd")
    loras = root / "loras"
    return {"sd": sd, "taesd": build_tiny_taesd(root / "taesd"), "loras": loras,
            "peft": write_peft_lora(sd, loras / "peft_style.safetensors"),
            "kohya": write_kohya_lora(sd, loras / "kohya_style.safetensors"),
            "unet_only": write_peft_lora(sd, loras / "sub" / "unet_only.safetensors", seed=5,
                                         text_encoder=False)}


def load(models: dict[str, Path], loras: list[dict[str, Any]] | None = None,
         mode: str = "permanent", **params: Any) -> StreamDiffusionPipeline:
    values = {"model_id": str(models["sd"]), "vae_id": str(models["taesd"]), "height": SIZE,
              "width": SIZE, "loras": loras or [], "lora_merge_mode": mode, **params}
    folder = LoraFolder(models["loras"])
    resolved = folder.resolve_params(StreamDiffusionParams.model_validate(values))
    pipeline = StreamDiffusionPipeline(resolved)
    pipeline.load(lambda fraction, stage: None)
    return pipeline


@pytest.fixture(scope="module")
def plain(models: dict[str, Path]) -> StreamDiffusionPipeline:
    return load(models)


@pytest.fixture(scope="module")
def runtime(models: dict[str, Path]) -> StreamDiffusionPipeline:
    return load(models, [{"path": "peft_style", "scale": 1.0},
                         {"path": "kohya_style.safetensors", "scale": 0.5}], "runtime_peft")


def render(pipeline: StreamDiffusionPipeline, text: bool = False, **update: Any) -> np.ndarray:
    """One frame (video mode, or text mode) with fresh session state (same seed: same noise)."""
    return pipeline.process([request(pipeline, None if text else picture(3), **update)])[0]


def scales(**by_path: float) -> list[dict[str, Any]]:
    return [{"path": path, "scale": scale} for path, scale in by_path.items()]


@pytest.mark.parametrize("kind", ["peft", "kohya", "unet_only"])
def test_each_format_loads_and_changes_the_output(models: dict[str, Path],
                                                  plain: StreamDiffusionPipeline,
                                                  kind: str) -> None:
    pipeline = load(models, [{"path": str(models[kind]), "scale": 1.0}])
    assert differs(render(pipeline), render(plain)) > 0.3
    assert differs(render(pipeline, True), render(plain, True)) > 0.3  # text mode too


def test_a_pytorch_format_copy_loads_like_the_safetensors_file(
        models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    copy = models["loras"] / "peft_copy.pt"
    torch.save(load_file(str(models["peft"])), copy)  # read back with weights_only=True
    try:
        assert check_lora_file(copy) > 0
        assert differs(render(load(models, [{"path": "peft_copy.pt"}])),
                       render(load(models, [{"path": "peft_style"}]))) == 0.0
    finally:
        copy.unlink()


def test_scale_zero_is_the_output_without_the_lora(runtime: StreamDiffusionPipeline,
                                                   plain: StreamDiffusionPipeline) -> None:
    off = scales(peft_style=0.0, kohya_style=0.0)
    assert differs(render(runtime, lora_scales=off), render(plain)) < 0.05
    assert differs(render(runtime, True, lora_scales=off), render(plain, True)) < 0.05


def test_a_scale_change_mid_stream_changes_the_output_without_a_reload(
        runtime: StreamDiffusionPipeline) -> None:
    unet = runtime.unet
    state = ParameterState()
    session = runtime.new_state()
    defaults = StreamDiffusionPipeline.mode_defaults()["video"]
    frames = []
    for update in [{}, {}, {"lora_scales": scales(peft_style=0.0)},
                   {"lora_scales": scales(peft_style=1.0)}]:
        if update:
            state.apply(ParameterUpdate.model_validate(update))
        params = state.snapshot(defaults)
        frames.append(runtime.process([request(runtime, picture(3), index=0, params=params,
                                               state=session)])[0])
    assert runtime.unet is unet  # same model object: nothing was reloaded
    assert differs(frames[0], frames[1]) < 0.05  # steady input, steady output
    assert differs(frames[1], frames[2]) > 0.3  # the LoRA went off
    assert differs(frames[1], frames[3]) < 0.05  # and back on


def test_permanent_at_s_equals_runtime_at_s(models: dict[str, Path]) -> None:
    loras = [{"path": "peft_style", "scale": 0.6}]
    fused = load(models, loras, "permanent")
    live = load(models, loras, "runtime_peft")
    assert differs(render(fused), render(live)) < 0.1
    assert differs(render(fused, True), render(live, True)) < 0.1
    assert not any("lora" in name for name, _ in fused.unet.named_modules())  # plain layers


def test_two_loras_stack(models: dict[str, Path], runtime: StreamDiffusionPipeline) -> None:
    both = render(runtime)
    first = render(runtime, lora_scales=scales(kohya_style=0.0))
    second = render(runtime, lora_scales=scales(peft_style=0.0))
    assert differs(both, first) > 0.3 and differs(both, second) > 0.3
    # a per-LoRA merge_mode: one fused, one live, stacks the same way
    mixed = load(models, [{"path": "peft_style", "scale": 1.0, "merge_mode": "permanent_merge"},
                          {"path": "kohya_style", "scale": 0.5}], "runtime_peft")
    assert differs(render(mixed), both) < 0.1


def test_sessions_with_different_scales_are_rendered_apart(
        runtime: StreamDiffusionPipeline) -> None:
    a = request(runtime, picture(3), lora_scales=scales(peft_style=0.0))
    b = request(runtime, picture(3))
    assert runtime.batch_key(a) != runtime.batch_key(b)
    together = runtime.process([a, b])
    assert differs(together[0], render(runtime, lora_scales=scales(peft_style=0.0))) < 0.05
    assert differs(together[1], render(runtime)) < 0.05


def test_status_lists_the_adapters_and_schema_says_lora() -> None:
    params = StreamDiffusionParams.model_validate(
        {"loras": [{"path": "/l/a.safetensors", "scale": 0.5, "merge_mode": "runtime_peft"},
                   {"path": "/l/b.safetensors"}], "lora_merge_mode": "permanent_merge"})
    assert loaded_adapters(params) == [
        {"path": "/l/a.safetensors", "scale": 0.5, "merge_mode": "runtime_peft"},
        {"path": "/l/b.safetensors", "scale": 1.0, "merge_mode": "permanent"}]
    assert StreamDiffusionPipeline.supports_lora


@pytest.mark.parametrize("bad", [
    {"loras": [{"path": "a", "scale": 11}]},
    {"loras": [{"path": "a", "scale": float("nan")}]},
    {"loras": [{"path": ""}]},
    {"loras": [{"path": "a"}, {"path": "a"}]},
    {"loras": [{"path": f"l{i}"} for i in range(9)]},
    {"lora_merge_mode": "sometimes"},
    {"loras": "a.safetensors"},
])
def test_bad_lora_load_params_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        StreamDiffusionParams.model_validate(bad)


def test_the_load_body_scopes_app_sends() -> None:
    """Scope's app (StreamPage buildLoRAParams) always sends `lora_merge_mode: permanent_merge`
    with each entry's own merge_mode, and after a stream in which a scale moved it also sends
    the last `lora_scales` it sent among the load params: that key changes nothing, so a second
    Start with the same LoRAs is the same load."""
    loras = [{"path": "/l/live.safetensors", "scale": 1, "merge_mode": "runtime_peft"},
             {"path": "/l/fused.safetensors", "scale": 0.8, "merge_mode": "permanent_merge"}]
    body = {"height": 128, "width": 128, "loras": loras, "lora_merge_mode": "permanent_merge"}
    params = StreamDiffusionParams.model_validate(body)
    assert params.lora_merge_mode == "permanent"
    assert [(s.merge_mode, s.scale) for s in params.lora_specs()] == [
        ("runtime_peft", 1.0), ("permanent", 0.8)]
    again = StreamDiffusionParams.model_validate(
        {**body, "lora_scales": [{"path": "/l/live.safetensors", "scale": 0}]})
    assert again == params


def test_a_lora_row_without_a_file_says_so() -> None:
    """Scope's app sends a row added with + but never given a file as `{path: ""}`; its toast
    shows the 422's message as is."""
    body = {"loras": [{"path": "/l/a.safetensors", "scale": 1, "merge_mode": "runtime_peft"},
                      {"path": "", "scale": 1, "merge_mode": "permanent_merge"}],
            "lora_merge_mode": "permanent_merge"}
    with pytest.raises(ValidationError) as info:
        StreamDiffusionParams.model_validate(body)
    (error,) = info.value.errors()
    assert error["loc"] == ("loras", 1, "path")
    assert "no LoRA file chosen: pick one in the list or remove this entry" in error["msg"]


def test_lora_scales_are_checked_against_what_is_loaded() -> None:
    params = LoraParams.model_validate({"loras": [
        {"path": "/l/live.safetensors", "scale": 1.0, "merge_mode": "runtime_peft"},
        {"path": "/l/fused.safetensors", "scale": 0.8}]})
    assert scale_overrides(params, scales(live=0.3)) == {"/l/live.safetensors": 0.3}
    assert scale_overrides(params, {"/l/live.safetensors": 2}) == {"/l/live.safetensors": 2.0}
    assert scale_overrides(params, scales(fused=0.8)) == {}  # unchanged: fine
    with pytest.raises(LoraError, match="fused into the weights"):
        scale_overrides(params, scales(fused=0.5))
    with pytest.raises(LoraError, match="not loaded"):
        scale_overrides(params, scales(other=0.5))
    with pytest.raises(LoraError, match="No LoRAs are loaded"):
        scale_overrides(LoraParams(), scales(live=0.5))
    for bad in ([{"path": "live"}], [{"path": "live", "scale": "1"}], "x", [1],
                [{"path": "live", "scale": 99}]):
        with pytest.raises(LoraError):
            parse_scales(bad)


def test_lora_scales_messages_merge_by_path() -> None:
    state = ParameterState()
    state.apply(ParameterUpdate.model_validate({"lora_scales": scales(a=0.1, b=0.2)}))
    state.apply(ParameterUpdate.model_validate({"lora_scales": {"b": 0.5}}))
    extras = state.snapshot(ParameterUpdate()).extras
    assert extras["lora_scales"] == scales(a=0.1, b=0.5)


# --- bad files: actionable errors, and the previous pipeline keeps serving ---------------------

def test_file_checks(models: dict[str, Path], tmp_path: Path) -> None:
    assert check_lora_file(models["peft"]) > 0
    data = models["peft"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) - 100])
    with pytest.raises(LoraError, match="truncated"):
        check_lora_file(cut)
    cut.write_bytes(data[:20])
    with pytest.raises(LoraError, match="not a complete safetensors"):
        check_lora_file(cut)
    cut.write_bytes(b"<html>Not found</html>")
    with pytest.raises(LoraError, match="safetensors"):
        check_lora_file(cut)
    model = models["sd"] / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(LoraError, match="not a LoRA"):
        check_lora_file(model)


def test_the_folder_resolves_names_and_confines_paths(models: dict[str, Path],
                                                      tmp_path: Path) -> None:
    folder = LoraFolder(models["loras"], LocalPathPolicy(allow_any=False))
    assert folder.resolve("peft_style") == models["peft"].resolve()
    assert folder.resolve("unet_only") == models["unet_only"].resolve()  # in a sub-folder
    assert folder.resolve("sub/unet_only.safetensors") == models["unet_only"].resolve()
    assert folder.resolve(str(models["kohya"])) == models["kohya"].resolve()
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(models["peft"].read_bytes())
    for ref in (str(outside), "../" * 8 + str(outside)[1:]):
        with pytest.raises(PermissionError):
            folder.resolve(ref)
    with pytest.raises(LoraError, match="not found"):
        folder.resolve("missing")
    with pytest.raises(LoraError, match="NUL"):
        folder.resolve("a\x00b")
    checkpoint = models["loras"] / "full.ckpt"
    checkpoint.write_bytes(b"x")
    with pytest.raises(LoraError, match=r"\.ckpt is a full checkpoint"):
        folder.resolve("full.ckpt")
    checkpoint.unlink()
    pickle = models["loras"] / "old.pt"  # a legacy (pre-zip) pickle, or a cut-off download
    pickle.write_bytes(b"\x80\x02}q\x00.")
    assert folder.resolve("old.pt") == pickle.resolve()
    with pytest.raises(LoraError, match="not a complete PyTorch zip"):
        check_lora_file(pickle)
    pickle.unlink()
    names = [f.name for f in folder.list()]
    assert names == ["kohya_style", "peft_style", "unet_only"]


@pytest.fixture
def lora_service(models: dict[str, Path]) -> PipelineService:
    svc = PipelineService(text_fps=50, lora_folder=LoraFolder(models["loras"]))
    svc.start()
    yield svc
    svc.stop()


def base_params(models: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {"model_id": str(models["sd"]), "vae_id": str(models["taesd"]), "height": SIZE,
            "width": SIZE, **extra}


def test_a_bad_file_is_refused_before_the_loaded_pipeline_is_touched(
        models: dict[str, Path], lora_service: PipelineService, tmp_path: Path) -> None:
    status = lora_service.load_blocking("streamdiffusion", base_params(models), timeout=300)
    assert status.status == "loaded"
    data = models["peft"].read_bytes()
    (models["loras"] / "cut.safetensors").write_bytes(data[:len(data) // 2])
    try:
        for ref, match in (("cut", "truncated|complete"), ("missing", "not found")):
            with pytest.raises(LoraError, match=match):
                lora_service.load("streamdiffusion",
                                  base_params(models, loras=[{"path": ref}]))
            status = lora_service.status()
            assert status.status == "loaded" and status.load_params["loras"] == []
    finally:
        (models["loras"] / "cut.safetensors").unlink()


def test_a_lora_for_another_model_is_an_actionable_load_error(models: dict[str, Path],
                                                              tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(models["peft"])
    wider = tmp_path / "wider.safetensors"  # a LoRA for a model with wider layers
    save_file({k: torch.zeros(v.shape[0], v.shape[1] + 16) if k.startswith("unet.") and "down" in k
               else v for k, v in weights.items()}, str(wider))
    with pytest.raises(PipelineError, match=r"wider\.safetensors does not fit this model"):
        load(models, [{"path": str(wider)}])
    renamed = tmp_path / "renamed.safetensors"  # keys of another architecture
    save_file({k.replace("unet.", "unet.nothing_like_this.").replace(
        "text_encoder.", "text_encoder.nothing."): v for k, v in weights.items()}, str(renamed))
    with pytest.raises(PipelineError, match=r"LoRA renamed\.safetensors"):
        load(models, [{"path": str(renamed)}])


def test_stream_refuses_scales_for_fused_or_unknown_loras(
        models: dict[str, Path], lora_service: PipelineService) -> None:
    loras = [{"path": "peft_style", "scale": 0.7},
             {"path": "kohya_style", "merge_mode": "runtime_peft"}]
    status = lora_service.load_blocking("streamdiffusion", base_params(models, loras=loras),
                                        timeout=300)
    assert status.status == "loaded", status.error
    adapters = status.loaded_lora_adapters
    assert [Path(a["path"]).name for a in adapters] == ["peft_style.safetensors",
                                                         "kohya_style.safetensors"]
    assert [a["merge_mode"] for a in adapters] == ["permanent", "runtime_peft"]

    from tests.pipelines import RecordingSink
    stream = lora_service.open_stream(RecordingSink(), offers_video=True)
    try:
        stream.update(ParameterUpdate.model_validate({"lora_scales": scales(kohya_style=0.2)}))
        with pytest.raises(LoraScaleError, match="fused"):
            stream.update(ParameterUpdate.model_validate(
                {"lora_scales": scales(peft_style=0.2)}))
        with pytest.raises(LoraScaleError, match="not loaded"):
            stream.update(ParameterUpdate.model_validate({"lora_scales": scales(nope=0.2)}))
        effective = stream.effective_parameters()
        assert effective["lora_scales"] == scales(kohya_style=0.2)
    finally:
        stream.close()


def test_render_with_runtime_scale_uses_frame_params(runtime: StreamDiffusionPipeline) -> None:
    params = frame_params("video", lora_scales=scales(peft_style=0.0, kohya_style=0.0))
    assert params.extras["lora_scales"][0]["scale"] == 0.0


def write_wider(source: Path, out: Path) -> Path:
    """A LoRA whose UNet layers are wider than the tiny model's (one for another model)."""
    from safetensors.torch import load_file, save_file

    save_file({k: torch.zeros(v.shape[0], v.shape[1] + 16)
               if k.startswith("unet.") and "down" in k else v
               for k, v in load_file(source).items()}, str(out))
    return out


def test_a_failed_lora_change_keeps_the_pipeline_serving(models: dict[str, Path],
                                                         lora_service: PipelineService) -> None:
    from pipeline import InputFrame
    from tests.pipelines import RecordingSink

    wider = write_wider(models["peft"], models["loras"] / "wider.safetensors")
    try:
        live = [{"path": "peft_style"}]
        status = lora_service.load_blocking(
            "streamdiffusion", base_params(models, loras=live, lora_merge_mode="runtime_peft"),
            timeout=300)
        assert status.status == "loaded", status.error
        engine = lora_service.workers[0].engine
        pipeline = engine.pipeline
        sink = RecordingSink()
        stream = lora_service.open_stream(sink, offers_video=True)

        pushed = [0]

        def frames_after(count: int) -> None:
            """Push frames one by one until `count` more come out."""
            want = len(sink.frames) + count
            while len(sink.frames) < want:
                image = picture(pushed[0] % 3, (SIZE, SIZE))
                stream.push(InputFrame(decode=lambda image=image: image, pts=pushed[0] * 4500,
                                       time_base=Fraction(1, 90_000),
                                       arrived=time.monotonic()))
                pushed[0] += 1
                sink.wait(min(want, len(sink.frames) + 1), timeout=60)
                assert not sink.stopped, sink.stopped

        frames_after(2)
        status = lora_service.load_blocking(
            "streamdiffusion", base_params(models, loras=[{"path": "wider"}],
                                           lora_merge_mode="runtime_peft"), timeout=300)
        assert status.status == "loaded"
        assert "still serving the previous LoRAs" in status.error
        assert "wider.safetensors does not fit this model" in status.error
        assert [Path(a["path"]).name for a in status.loaded_lora_adapters] == [
            "peft_style.safetensors"]
        assert engine.pipeline is pipeline and not sink.stopped
        frames_after(2)  # the session carries on
        # a good change is made in place: same model, new LoRA, no error
        status = lora_service.load_blocking(
            "streamdiffusion", base_params(models, loras=[{"path": "kohya_style"}],
                                           lora_merge_mode="runtime_peft"), timeout=300)
        assert status.status == "loaded" and status.error is None
        assert engine.pipeline is pipeline and pipeline.unet is not None
        assert [Path(a["path"]).name for a in status.loaded_lora_adapters] == [
            "kohya_style.safetensors"]
        frames_after(2)
        stream.close()
    finally:
        wider.unlink()


def test_trying_a_lora_leaves_the_live_ones_as_they_were(models: dict[str, Path]) -> None:
    pipeline = load(models, [{"path": "peft_style", "scale": 1.0},
                             {"path": "kohya_style", "scale": 0.5}], "runtime_peft")
    before = render(pipeline), render(pipeline, lora_scales=scales(kohya_style=0.0))
    from pipeline.resources.loras import LoraSpec
    pipeline._adapters.try_load([LoraSpec(str(models["unet_only"]), 1.0, "runtime_peft")])
    assert differs(render(pipeline), before[0]) < 0.05
    assert differs(render(pipeline, lora_scales=scales(kohya_style=0.0)), before[1]) < 0.05


def test_trying_a_lora_on_a_pipeline_without_loras_leaves_plain_models(
        models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """Scope's app's first Start with a LoRA after a load without any (a LoRA-only change):
    the tried adapter was the text encoder's only one, and removing it must not fail."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from pipeline.models.diffusion.lora import SDAdapters
    from pipeline.resources.loras import LoraSpec
    pipeline = load(models)
    before = render(pipeline), render(pipeline, True)
    adapters = SDAdapters(pipeline.unet, pipeline.text_encoder)  # as change_loras tries them
    with caplog.at_level("ERROR", logger="pipeline.models.diffusion.lora"):
        adapters.try_load([LoraSpec(str(models["peft"]), 1.0, "runtime_peft")])
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    for model in (pipeline.unet, pipeline.text_encoder):
        assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
        assert not getattr(model, "peft_config", None)
    assert differs(render(pipeline), before[0]) < 0.05
    assert differs(render(pipeline, True), before[1]) < 0.05


async def test_a_webrtc_sessions_look_follows_its_lora_scales(models: dict[str, Path]) -> None:
    """The whole path: the app loads the tiny model with a runtime LoRA from its LoRA folder,
    an aiortc client sends a still picture; `lora_scales` on the data channel turns the LoRA
    off and on, and the frames coming back change and come back (a full VAE: random TAESD
    weights hide most of a latent change from the pixels)."""
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    from signaling.client import LiveV2VClient
    from tests.conftest import serve_in_thread

    class Still(VideoStreamTrack):
        async def recv(self) -> VideoFrame:
            pts, time_base = await self.next_timestamp()
            frame = VideoFrame.from_ndarray(np.ascontiguousarray(picture(3, (SIZE, SIZE))),
                                            format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    load_params = {"model_id": str(models["sd"]), "vae_id": "full", "height": SIZE,
                   "width": SIZE, "loras": [{"path": "peft_style", "scale": 1.0}],
                   "lora_merge_mode": "runtime_peft"}
    with serve_in_thread(pipeline="streamdiffusion", load_params=load_params,
                         lora_dir=models["loras"]) as server:
        status = (await asyncio.to_thread(httpx.get,
                                          f"{server.url}/api/v1/pipeline/status")).json()
        assert status["status"] == "loaded", status
        path = status["loaded_lora_adapters"][0]["path"]  # what Scope's app sends back
        async with LiveV2VClient(server.url) as client:
            await client.connect(Still(), {"noise_scale": 0.0, "denoising_step_list": [700]})

            async def switch(scale: float, look: np.ndarray) -> np.ndarray:
                await client.send({"lora_scales": [{"path": path, "scale": scale}]})
                applied = await client.message("parameters_applied")
                while applied["parameters"].get("lora_scales", [{}])[0].get("scale") != scale:
                    applied = await client.message("parameters_applied")
                return await away_from(client, look)

            on = await settled(client)
            off = await switch(0.0, on)
            back = await switch(1.0, off)
            assert differs(back, on) < differs(off, on) / 3
            # a fused or unknown LoRA gets an error on the channel, not silence
            await client.send({"lora_scales": [{"path": "nope", "scale": 0.5}]})
            assert "not loaded" in (await client.message("error"))["error_message"]
            # HTTP session parameters reach the same place
            r = await asyncio.to_thread(httpx.post, f"{server.url}/api/v1/session/parameters",
                                        json={"lora_scales": [{"path": path, "scale": 0.0}]})
            assert r.status_code == 200 and r.json()["sessions"] == 1, r.text
            assert differs(await away_from(client, back), off) < differs(off, on) / 3


def test_loras_for_a_pipeline_without_lora_support_are_refused(
        lora_service: PipelineService) -> None:
    with pytest.raises(LoraError, match="does not load LoRAs"):
        lora_service.load("cpu-effect", {"loras": [{"path": "peft_style"}]})
    assert lora_service.status().status == "not_loaded"
    lora_service.load_blocking("cpu-effect", {"loras": []}, timeout=60)  # empty is fine
    assert lora_service.status().status == "loaded"
