"""The `streamdiffusion` pipeline on tiny random-weight models (CPU, no downloads).

The models are built from configs by `tests.tiny_models`, saved like a hub repo and loaded
through the same `from_pretrained` code as a hub id. Random weights make pictures meaningless,
but determinism, batching, timesteps, conditioning and noise behave as with a real model.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler
from pydantic import ValidationError

from pipeline import FrameRequest, InputFrame, PipelineError, PipelineService
from pipeline.models.diffusion.noise import SessionNoise
from pipeline.models.streamdiffusion import (
    StreamDiffusionParams,
    StreamDiffusionPipeline,
    cap_strength,
    crop_to_aspect,
    predicted_x0,
    to_timesteps,
)
from pipeline.params import FrameParams, Mode, ParameterState, ParameterUpdate
from tests.pipelines import RecordingSink
from tests.tiny_models import SCHEDULER_CONFIG, build_tiny_sd, build_tiny_taesd

SIZE = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sd": build_tiny_sd(root / "sd"), "taesd": build_tiny_taesd(root / "taesd")}


def load(models: dict[str, Path], **params: Any) -> StreamDiffusionPipeline:
    values = {"model_id": str(models["sd"]), "vae_id": str(models["taesd"]), "height": SIZE,
              "width": SIZE, **params}
    pipeline = StreamDiffusionPipeline(StreamDiffusionParams.model_validate(values))
    pipeline.load(lambda fraction, stage: None)
    return pipeline


@pytest.fixture(scope="module")
def sd(models: dict[str, Path]) -> StreamDiffusionPipeline:
    return load(models)


def frame_params(mode: Mode = "video", **update: Any) -> FrameParams:
    defaults = StreamDiffusionPipeline.mode_defaults()[mode]
    return ParameterState(ParameterUpdate.model_validate(update)).snapshot(defaults)


def request(pipeline: StreamDiffusionPipeline, frame: np.ndarray | None, index: int = 0,
            params: FrameParams | None = None, state: Any = None,
            **update: Any) -> FrameRequest:
    mode: Mode = "text" if frame is None else "video"
    return FrameRequest.of_frame(frame, size=(SIZE, SIZE), index=index,
                                 params=params or frame_params(mode, **update),
                                 state=state if state is not None else pipeline.new_state())


def picture(seed: int = 0, shape: tuple[int, int] = (48, 80)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def prompts(text: str) -> list[dict[str, Any]]:
    return [{"text": text, "weight": 1.0}]


class UNetSpy:
    """Records the timesteps and text conditioning of every UNet call (a real forward hook)."""

    def __init__(self, pipeline: StreamDiffusionPipeline) -> None:
        self.timesteps: list[list[int]] = []
        self.conditioning: list[torch.Tensor] = []
        self._handle = pipeline.unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.timesteps.append([int(t) for t in args[1]])
        self.conditioning.append(kwargs["encoder_hidden_states"].clone())

    def __enter__(self) -> UNetSpy:
        return self

    def __exit__(self, *_: object) -> None:
        self._handle.remove()


# --- output, determinism, parameters -----------------------------------------------------------

def test_outputs_are_rgb_at_the_load_size(sd: StreamDiffusionPipeline) -> None:
    out = sd.process([request(sd, picture(shape=(48, 80))), request(sd, picture(shape=(130, 90))),
                      request(sd, None)])
    assert len(out) == 3
    for image in out:
        assert image.shape == (SIZE, SIZE, 3)
        assert image.dtype == np.uint8


def test_fixed_seed_is_deterministic_and_the_seed_matters(sd: StreamDiffusionPipeline) -> None:
    frame = picture()
    first = sd.process([request(sd, frame, seed=7, noise_scale=0.5)])[0]
    again = sd.process([request(sd, frame, seed=7, noise_scale=0.5)])[0]
    other = sd.process([request(sd, frame, seed=8, noise_scale=0.5)])[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_the_load_seed_picks_the_noise_too(sd: StreamDiffusionPipeline) -> None:
    assert sd.new_state().noise.base_seed == sd.params.seed
    noises = [SessionNoise((4, 8, 8), torch.device("cpu"), 48, base_seed=base_seed)
              for base_seed in (1, 1, 2)]
    video = [n.video(seed=7, index=3, steps=2, fresh_share=0.5) for n in noises]
    text = [n.text(seed=7, index=3, steps=2) for n in noises]
    for same, again, other in (video, text):
        torch.testing.assert_close(same, again)
        assert not torch.allclose(same, other)


@pytest.mark.parametrize("mode", ["video", "text"])
def test_a_prompt_change_changes_the_output(sd: StreamDiffusionPipeline, mode: Mode) -> None:
    frame = picture() if mode == "video" else None
    cat = sd.process([request(sd, frame, prompts=prompts("a cat"))])[0]
    dog = sd.process([request(sd, frame, prompts=prompts("a dog"))])[0]
    assert not np.array_equal(cat, dog)


def test_a_transition_passes_through_intermediate_embeddings(
        sd: StreamDiffusionPipeline) -> None:
    state = ParameterState(ParameterUpdate.model_validate({"prompts": prompts("a cat")}))
    state.apply(ParameterUpdate.model_validate(
        {"transition": {"target_prompts": prompts("a dog"), "num_steps": 2}}))
    defaults = sd.mode_defaults()["video"]
    halfway, arrived = state.snapshot(defaults), state.snapshot(defaults)
    assert halfway.transition is not None and halfway.transition.alpha == 0.5
    with UNetSpy(sd) as spy:
        for params in (halfway, arrived):
            sd.process([request(sd, picture(), params=params)])
    cat, dog = sd._embed("a cat"), sd._embed("a dog")
    torch.testing.assert_close(spy.conditioning[0][0], ((cat + dog) / 2)[0])  # first step
    torch.testing.assert_close(spy.conditioning[-1][0], dog[0])
    assert not torch.allclose(cat, dog)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_step_list_maps_to_the_schedulers_trailing_timesteps(
        sd: StreamDiffusionPipeline) -> None:
    scheduler = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(4)
    assert to_timesteps([1000, 750, 500, 250]) == [int(t) for t in scheduler.timesteps]
    assert to_timesteps([700, 500]) == [699, 499]
    assert to_timesteps([1, 1000], num_train_timesteps=500) == [0, 499]
    with UNetSpy(sd) as spy:
        sd.process([request(sd, picture(), denoising_step_list=[700, 500]),
                    request(sd, None, denoising_step_list=[1000, 250])])
    assert spy.timesteps == [[699, 999], [499, 249]]  # one batched call per step


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_prediction_and_renoising_match_diffusers(sd: StreamDiffusionPipeline,
                                                     prediction_type: str) -> None:
    scheduler = DDPMScheduler(**{**SCHEDULER_CONFIG, "prediction_type": prediction_type},
                              clip_sample=False)
    scheduler.set_timesteps(1000)
    schedule = sd._schedule((700, 500))
    torch.testing.assert_close(schedule.alpha_prod_t_sqrt,
                               scheduler.alphas_cumprod[[699, 499]].sqrt())
    torch.testing.assert_close(schedule.beta_prod_t_sqrt,
                               (1 - scheduler.alphas_cumprod[[699, 499]]).sqrt())
    generator = torch.Generator().manual_seed(0)
    x0, noise, out = (torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3))
    alpha, beta = schedule.alpha_prod_t_sqrt[0], schedule.beta_prod_t_sqrt[0]
    sample = alpha * x0 + beta * noise  # how the loop noises (re-noises) a latent
    torch.testing.assert_close(sample, scheduler.add_noise(x0, noise, torch.tensor([699])))
    expected = scheduler.step(out, 699, sample).pred_original_sample
    torch.testing.assert_close(predicted_x0(out, sample, alpha, beta, prediction_type), expected)


def test_the_number_of_steps_changes_live(sd: StreamDiffusionPipeline) -> None:
    with UNetSpy(sd) as spy:
        sd.process([request(sd, picture(), denoising_step_list=[600])])
        sd.process([request(sd, picture(), denoising_step_list=[700, 450, 200])])
    assert spy.timesteps == [[599], [699], [449], [199]]


def test_vace_enabled_caps_the_strength_of_video_frames(models: dict[str, Path],
                                                        sd: StreamDiffusionPipeline) -> None:
    assert cap_strength((1000, 500)) == (750, 375)
    assert cap_strength((700, 500)) == (700, 500)
    free = load(models, vace_enabled=False)
    steps = {"denoising_step_list": [1000, 500]}
    with UNetSpy(sd) as capped, UNetSpy(free) as uncapped:
        sd.process([request(sd, picture(), **steps), request(sd, None, **steps)])
        free.process([request(free, picture(), **steps)])
        # The per-session key overrides the load parameter.
        free.process([request(free, picture(), vace_enabled=True, **steps)])
    assert capped.timesteps == [[749, 999], [374, 499]]  # text mode is never capped
    assert uncapped.timesteps == [[999], [499], [749], [374]]


def test_batched_sessions_equal_unbatched_ones(sd: StreamDiffusionPipeline) -> None:
    requests = [
        request(sd, picture(1), index=3, seed=1, prompts=prompts("a cat"), noise_scale=0.5),
        request(sd, picture(2, (100, 60)), index=9, seed=2, prompts=prompts("a dog"),
                denoising_step_list=[600, 300]),
        request(sd, None, index=5, seed=3, prompts=prompts("the sea")),
    ]
    batched = sd.process(requests)
    alone = [sd.process([r])[0] for r in requests]
    for b, a in zip(batched, alone, strict=True):
        assert np.abs(b.astype(int) - a.astype(int)).max() <= 1
    assert not np.array_equal(batched[0], batched[1])


def test_text_mode_is_continuous(sd: StreamDiffusionPipeline) -> None:
    state = sd.new_state()
    frames = {i: sd.process([request(sd, None, index=i, state=state)])[0].astype(float)
              for i in (0, 1, 2, 24, 48)}
    step = np.abs(frames[1] - frames[0]).mean()
    far = np.abs(frames[48] - frames[0]).mean()
    assert 0 < step < far / 10
    assert np.abs(frames[2] - frames[1]).mean() < far / 10
    assert np.abs(frames[24] - frames[0]).mean() > step


def test_noise_scale_sets_how_much_noise_is_fresh_each_frame(
        sd: StreamDiffusionPipeline) -> None:
    frame = picture()

    def two_frames(noise_scale: float) -> list[np.ndarray]:
        return [sd.process([request(sd, frame, index=i, noise_scale=noise_scale)])[0]
                for i in (0, 1)]

    still = two_frames(0.0)
    np.testing.assert_array_equal(still[0], still[1])
    fresh = two_frames(1.0)
    assert not np.array_equal(fresh[0], fresh[1])


def test_batch_key_groups_by_number_of_steps_only(sd: StreamDiffusionPipeline) -> None:
    small = request(sd, picture(shape=(32, 32)), denoising_step_list=[700, 500])
    large = request(sd, picture(shape=(200, 100)), denoising_step_list=[900, 100])
    text = request(sd, None, denoising_step_list=[1000, 500])
    three = request(sd, picture(), denoising_step_list=[900, 600, 300])
    assert sd.batch_key(small) == sd.batch_key(large) == sd.batch_key(text)
    assert sd.batch_key(three) != sd.batch_key(small)
    out = sd.process([small, three, text])  # mixed step counts are still handled
    assert [o.shape for o in out] == [(SIZE, SIZE, 3)] * 3


# --- model variants and speed options ----------------------------------------------------------

def test_full_vae_cfg_and_v_prediction(models: dict[str, Path], tmp_path: Path) -> None:
    base = load(models, vae_id="full")
    assert not base.tiny_vae and base.latent_scale == pytest.approx(0.18215)
    guided = load(models, vae_id="full", cfg_scale=3.0)
    with UNetSpy(guided) as spy:
        out = guided.process([request(guided, picture())])[0]
    assert len(spy.conditioning[0]) == 2  # unconditional + text in one call
    assert not np.array_equal(out, base.process([request(base, picture())])[0])
    v_model = build_tiny_sd(tmp_path / "v", prediction_type="v_prediction")
    v = load({**models, "sd": v_model})
    assert v.prediction_type == "v_prediction"
    assert v.process([request(v, picture())])[0].shape == (SIZE, SIZE, 3)


def test_channels_last_gives_the_same_frames(models: dict[str, Path],
                                             sd: StreamDiffusionPipeline) -> None:
    fast = load(models, channels_last=True)
    a = fast.process([request(fast, picture())])[0]
    b = sd.process([request(sd, picture())])[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_similarity_filter_reuses_the_last_output(models: dict[str, Path]) -> None:
    sim = load(models, similarity_filter=True, similarity_threshold=0.99, similarity_max_skip=2)
    state, frame = sim.new_state(), picture()
    with UNetSpy(sim) as spy:
        first = sim.process([request(sim, frame, state=state)])[0]
        calls = len(spy.timesteps)
        again = sim.process([request(sim, frame, index=1, state=state)])[0]
        assert again is first and len(spy.timesteps) == calls  # skipped: no UNet call
        sim.process([request(sim, frame, index=2, state=state, prompts=prompts("a dog"))])
        assert len(spy.timesteps) == 2 * calls  # new parameters: rendered
        other = picture(5)
        sim.process([request(sim, other, index=3, state=state, prompts=prompts("a dog"))])
        assert len(spy.timesteps) == 3 * calls  # new picture: rendered


def test_load_reports_progress(models: dict[str, Path]) -> None:
    stages: list[tuple[float, str]] = []
    pipeline = StreamDiffusionPipeline(StreamDiffusionParams(
        model_id=str(models["sd"]), vae_id=str(models["taesd"]), height=SIZE, width=SIZE))
    pipeline.load(lambda fraction, stage: stages.append((fraction, stage)))
    names = [stage for _, stage in stages]
    for expected in ("loading text encoder", "loading UNet", "warming up"):
        assert any(name.startswith(expected) for name in names), names
    fractions = [fraction for fraction, _ in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


# --- validation and load errors ----------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    {"cfg_scale": 0.5}, {"device": "tpu"}, {"dtype": "int8"}, {"similarity_threshold": 1.5},
    {"height": 65}, {"model_id": ""}, {"vae_id": ""}, {"compile": "sometimes"},
    {"similarity_max_skip": 0}, {"cfg_scale": float("nan")},
])
def test_bad_load_params_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        StreamDiffusionParams.model_validate(bad)


def test_defaults_are_sd_turbo_with_taesd() -> None:
    params = StreamDiffusionParams.model_validate({"base_seed": 3})
    assert (params.model_id, params.vae_id, params.cfg_scale) == ("stabilityai/sd-turbo", None, 1.0)
    assert params.seed == 3 and not params.compile and not params.similarity_filter


def test_a_missing_model_folder_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    pipeline = StreamDiffusionPipeline(StreamDiffusionParams(model_id=str(missing)))
    with pytest.raises(PipelineError, match="does not exist") as info:
        pipeline.load(lambda fraction, stage: None)
    assert str(missing) in str(info.value) and "unet/" in str(info.value)


def test_an_incomplete_model_folder_names_the_missing_part(models: dict[str, Path]) -> None:
    pipeline = StreamDiffusionPipeline(StreamDiffusionParams(model_id=str(models["taesd"]),
                                                             vae_id=str(models["taesd"])))
    with pytest.raises(PipelineError, match="Could not load the tokenizer from") as info:
        pipeline.load(lambda fraction, stage: None)
    assert "tokenizer/" in str(info.value)


def test_an_uncached_hub_model_offline_says_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = StreamDiffusionPipeline(StreamDiffusionParams(
        model_id="livev2v-tests/not-a-cached-model"))
    started = time.monotonic()
    with pytest.raises(PipelineError, match="huggingface-cli download") as info:
        pipeline.load(lambda fraction, stage: None)
    assert "HF_HUB_OFFLINE" in str(info.value) and "local folder" in str(info.value)
    assert time.monotonic() - started < 10  # no network retries


def test_an_unreachable_hub_fails_fast_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # refused
    pipeline = StreamDiffusionPipeline(StreamDiffusionParams(
        model_id="livev2v-tests/not-a-cached-model"))
    started = time.monotonic()
    with pytest.raises(PipelineError, match="Cannot reach the Hugging Face Hub") as info:
        pipeline.load(lambda fraction, stage: None)
    assert "huggingface-cli download livev2v-tests/not-a-cached-model" in str(info.value)
    assert "HF_HUB_OFFLINE=1" in str(info.value)
    assert time.monotonic() - started < 10  # one probe, not minutes of per-file retries


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(PipelineError, match="CUDA is not available"):
        StreamDiffusionPipeline(StreamDiffusionParams(device="cuda"))


# --- through the service -----------------------------------------------------------------------

def test_service_load_error_is_the_status(service: PipelineService, tmp_path: Path) -> None:
    status = service.load_blocking("streamdiffusion", {"model_id": str(tmp_path / "missing")},
                                   timeout=30)
    assert status.status == "error"
    assert status.error is not None and "does not exist" in status.error


def test_service_streams_video_and_text_sessions(service: PipelineService,
                                                 models: dict[str, Path]) -> None:
    status = service.load_blocking("streamdiffusion", {
        "model_id": str(models["sd"]), "vae_id": str(models["taesd"]), "height": SIZE,
        "width": SIZE}, timeout=60)
    assert status.status == "loaded", status.error
    video_sink, text_sink = RecordingSink(), RecordingSink()
    video = service.open_stream(video_sink, offers_video=True)
    service.open_stream(text_sink, offers_video=False)
    image = picture(shape=(90, 120))
    for i in range(3):
        video.push(InputFrame(decode=lambda: image, pts=i * 3000, time_base=Fraction(1, 90_000),
                              arrived=time.monotonic()))
        video_sink.wait(i + 1)
    text_sink.wait(3)
    assert not video_sink.stopped and not text_sink.stopped
    assert len(video_sink.frames) >= 1 and len(text_sink.frames) >= 3
    for out in (video_sink.frames[-1], text_sink.frames[-1]):
        assert out.image.shape == (SIZE, SIZE, 3) and out.image.dtype == np.uint8


async def test_a_webrtc_session_through_the_app_returns_transformed_frames(
        models: dict[str, Path]) -> None:
    """The whole product path: `python app.py`-style server loading the tiny model from a folder
    (the hub-id code path), an aiortc client sending frames and steering the prompt."""
    from signaling.client import LiveV2VClient, NumberedFrames
    from tests.conftest import serve_in_thread

    load_params = {"model_id": str(models["sd"]), "vae_id": str(models["taesd"]),
                   "height": SIZE, "width": SIZE}
    with serve_in_thread(pipeline="streamdiffusion", load_params=load_params) as server:
        async with LiveV2VClient(server.url) as client:
            await client.connect(NumberedFrames(size=128, fps=10, tint=(200, 60, 60)),
                                 {"prompts": prompts("a red fox"), "denoising_step_list": [700]})
            first = await client.recv(timeout_s=30)
            image = first.to_ndarray(format="rgb24")
            assert image.shape == (SIZE, SIZE, 3)  # the pipeline's fixed size, not the input's
            sent = np.full((SIZE, SIZE, 3), (200, 60, 60), np.uint8)
            assert np.abs(image.astype(int) - sent).mean() > 10  # restyled, not passed through
            await client.send({"prompts": prompts("a blue whale")})
            assert (await client.message("parameters_applied"))["parameters"]["prompts"][0][
                "text"] == "a red fox"  # the initial parameters, delivered when the channel opened
            update = await client.message("parameters_applied")
            assert update["parameters"]["prompts"][0]["text"] == "a blue whale"
            # Frames keep coming on the new prompt (a random-weight model barely shows prompts in
            # pixels; test_a_prompt_change_changes_the_output checks that at the pipeline).
            for _ in range(3):
                assert (await client.recv(timeout_s=30)).width == SIZE


def test_inputs_of_another_shape_are_centre_cropped_not_stretched() -> None:
    wide = np.zeros((48, 128, 3), np.uint8)
    wide[:, 40:88] = 255  # a centred 48×48 white square in a black 48×128 frame
    crop = crop_to_aspect(wide, 64, 64)
    assert crop.shape == (48, 48, 3) and crop.min() == 255
    tall = np.zeros((100, 50, 3), np.uint8)
    assert crop_to_aspect(tall, 64, 128).shape == (25, 50, 3)
    assert crop_to_aspect(tall, 64, 32).shape == (100, 50, 3)
