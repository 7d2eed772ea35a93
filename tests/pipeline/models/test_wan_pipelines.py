"""The Wan video pipelines (`longlive`, `streamdiffusionv2`) on a tiny random-weight Wan2.1.

Everything loads through `model_id` from a diffusers-layout folder written by
`tests.tiny_wan` (plus generator, LoRA and VACE files written here in the original Wan key
names), with the same code a hub id takes. The causal transformer itself is tested in
test_wan_transformer.py beside this file; here: the streaming VAE, weight conversion, load
errors, the sampler and the chunk loop.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from pipeline import FrameRequest, PipelineError
from pipeline.models.wan import keys, sampling, weights
from pipeline.models.wan.longlive import LongLivePipeline
from pipeline.models.wan.loras import Fused, fuse
from pipeline.models.wan.streamdiffusionv2 import StreamDiffusionV2Pipeline
from pipeline.models.wan.vae import StreamingVAE
from pipeline.models.wan.video import WanVideoPipeline
from pipeline.params import FrameParams, Mode, ParameterState, ParameterUpdate
from tests.tiny_wan import build_tiny_wan

SIZE = 16
pytestmark = pytest.mark.timeout(600)  # model building and video chunks on a shared 2-core CPU


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model folder, a generator checkpoint and LoRA in original Wan naming as
    training repos save them, a VACE module file, and a generator that does not fit."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    root = tmp_path_factory.mktemp("wan")
    model = build_tiny_wan(root / "model")
    config = dict(WanTransformer3DModel.load_config(model / "transformer"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(1)
    generator = WanTransformer3DModel.from_config(config).state_dict()
    original = keys.to_original_keys(generator)
    torch.save({"generator": {f"model.{k}": v for k, v in original.items()}},
               root / "generator.pt")
    torch.manual_seed(2)
    lora = {}
    for name in ("blocks.0.self_attn.q", "blocks.1.ffn.0"):
        out_f, in_f = original[f"{name}.weight"].shape
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, in_f)
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(out_f, 4)
    torch.save({"generator_lora": lora}, root / "lora.pt")
    vace = WanVACETransformer3DModel.from_config(
        {**config, "vace_layers": [0], "vace_in_channels": 4 + 4 + 64}).state_dict()
    save_file(keys.to_original_keys({k: v.contiguous() for k, v in vace.items()
                                        if k.startswith("vace_")}),
              str(root / "vace.safetensors"))
    torch.save({"generator": keys.to_original_keys(WanTransformer3DModel.from_config(
        {**config, "num_layers": 3}).state_dict())}, root / "other.pt")
    return {"model": model, "generator": root / "generator.pt", "lora": root / "lora.pt",
            "vace": root / "vace.safetensors", "other": root / "other.pt",
            "root": root}


def load(cls: type[WanVideoPipeline], files: dict[str, Path], **params: Any) -> WanVideoPipeline:
    values = {"model_id": str(files["model"]), "checkpoint": None, "lora": None,
              "vace_enabled": False, "height": SIZE, "width": SIZE, **params}
    pipeline = cls(cls.Params.model_validate(values))
    pipeline.load(lambda fraction, stage: None)
    return pipeline


@pytest.fixture(scope="module")
def sdv2(files: dict[str, Path]) -> WanVideoPipeline:
    return load(StreamDiffusionV2Pipeline, files)


@pytest.fixture(scope="module")
def longlive(files: dict[str, Path]) -> WanVideoPipeline:
    """LongLive as published: generator checkpoint + merged LoRA + VACE."""
    return load(LongLivePipeline, files, checkpoint=str(files["generator"]),
                lora=str(files["lora"]), vace_id=str(files["vace"]), vace_enabled=True)


def params(pipeline: WanVideoPipeline, mode: Mode, state: ParameterState | None = None,
           **update: Any) -> FrameParams:
    state = state or ParameterState()
    if update:
        state.apply(ParameterUpdate.model_validate(update))
    return state.snapshot(pipeline.mode_defaults()[mode])


def chunk(pipeline: WanVideoPipeline, state: Any, frames: np.ndarray | None,
          frame_params: FrameParams | None = None, **update: Any) -> np.ndarray:
    mode: Mode = "text" if frames is None else "video"
    p = frame_params or params(pipeline, mode, **update)
    request = FrameRequest(frames=frames, size=(SIZE, SIZE), params=p, state=state, index=0)
    (out,) = pipeline.process([request])
    return out


def video(count: int, seed: int = 0, moving: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    if not moving:
        return np.repeat(base[None], count, axis=0)
    return np.stack([np.roll(base, 6 * i, axis=1) for i in range(count)])


def prompts(text: str) -> list[dict[str, Any]]:
    return [{"text": text, "weight": 1.0}]


# --- streaming VAE ------------------------------------------------------------------------------

def test_streaming_vae_equals_one_call_over_the_clip(sdv2: WanVideoPipeline) -> None:
    vae: StreamingVAE = sdv2.vae
    clip = torch.rand(1, 3, 13, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        whole = vae.vae.encode(clip).latent_dist.mode()
    whole = (whole - vae.mean) * vae.inv_std
    cache = vae.new_cache()
    streamed = torch.cat([vae.encode(clip[:, :, a:b], cache) for a, b in ((0, 5), (5, 9),
                                                                         (9, 13))], dim=2)
    assert streamed.shape == whole.shape == (1, 4, 4, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        decoded = vae.vae.decode(whole / vae.inv_std + vae.mean).sample
    cache = vae.new_cache()
    pieces = [vae.decode(whole[:, :, a:b], cache) for a, b in ((0, 2), (2, 3), (3, 4))]
    assert [p.shape[2] for p in pieces] == [5, 4, 4]  # 1 + 4k, then 4 per latent frame
    torch.testing.assert_close(torch.cat(pieces, dim=2), decoded, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(clip[:, :, :4], vae.new_cache())


# --- weights ------------------------------------------------------------------------------------

def test_checkpoint_key_conversion_round_trips(files: dict[str, Path]) -> None:
    from diffusers import WanVACETransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from tests.tiny_wan import tiny_transformer_config

    torch.manual_seed(0)
    model = WanVACETransformer3DModel.from_config(
        {**tiny_transformer_config(), "vace_layers": [0], "vace_in_channels": 72})
    ours = model.state_dict()
    original = keys.to_original_keys(ours)
    assert keys.is_original_naming(original) and not keys.is_original_naming(ours)
    assert "head.head.weight" in original and "blocks.0.self_attn.q.weight" in original
    assert "blocks.0.norm3.weight" in original and "vace_blocks.0.before_proj.weight" in original
    back = convert_wan_transformer_to_diffusers(dict(original))  # diffusers' own converter
    assert back.keys() == ours.keys()
    assert all(back[k] is ours[k] for k in ours)
    wrapped = {"generator_ema": {f"module.model.{k}": v for k, v in original.items()}}
    assert keys.to_diffusers_keys(keys.unwrap(wrapped)).keys() == ours.keys()


def test_a_checkpoint_and_lora_load_through_model_id(files: dict[str, Path],
                                                     longlive: WanVideoPipeline) -> None:
    saved = torch.load(files["generator"], weights_only=True)["generator"]
    lora = torch.load(files["lora"], weights_only=True)["generator_lora"]
    loaded = longlive.transformer.model.state_dict()
    q = "blocks.0.attn1.to_q.weight"
    expected = saved["model.blocks.0.self_attn.q.weight"] + (
        lora["base_model.model.blocks.0.self_attn.q.lora_B.weight"]
        @ lora["base_model.model.blocks.0.self_attn.q.lora_A.weight"])
    torch.testing.assert_close(loaded[q], expected)  # alpha = rank: scale 1
    untouched = "blocks.1.attn1.to_k.weight"
    torch.testing.assert_close(loaded[untouched], saved["model.blocks.1.self_attn.k.weight"])
    assert longlive.vace_active and list(longlive.model_config.vace_layers) == [0]


def test_no_checkpoint_uses_the_folders_transformer(files: dict[str, Path],
                                                    sdv2: WanVideoPipeline) -> None:
    from diffusers import WanTransformer3DModel

    folder = WanTransformer3DModel.from_pretrained(files["model"], subfolder="transformer")
    for key, value in folder.state_dict().items():
        torch.testing.assert_close(sdv2.transformer.model.state_dict()[key], value)


def test_load_reports_progress(files: dict[str, Path]) -> None:
    stages: list[tuple[float, str]] = []
    pipeline = StreamDiffusionV2Pipeline(StreamDiffusionV2Pipeline.Params(
        model_id=str(files["model"]), checkpoint=str(files["generator"]), vace_enabled=False,
        height=SIZE, width=SIZE))
    pipeline.load(lambda fraction, stage: stages.append((fraction, stage)))
    names = [stage for _, stage in stages]
    for expected in ("loading text encoder", "loading VAE", "reading generator checkpoint",
                     "warming up", "ready"):
        assert any(name.startswith(expected) for name in names), names
    fractions = [fraction for fraction, _ in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


# --- the published checkpoints' layouts ---------------------------------------------------------
# Tiny random files laid out exactly as the published ones are saved (see docs/video-models.md,
# "Weight sources"): LongLive's longlive_base.pt and StreamDiffusionV2's model.pt are their
# trainers' torch.save of {"generator": <WanDiffusionWrapper state dict: "model." + original Wan
# names>, "critic": ..., (LongLive, past ema_start_step: "generator_ema", optimizer states,
# "step")}; LongLive's inference loads "generator" (use_ema: false). LongLive's lora.pt is
# {"generator_lora": get_peft_model_state_dict of the causal Wan (every Linear of every block,
# "base_model.model." prefix, no adapter name), "critic_lora": ..., "step": n} with rank = alpha;
# Kijai's VACE module is a bf16 safetensors of the unprefixed original VACE keys, one block per
# two main layers.

LORA_MODULES = [f"{attn}.{m}" for attn in ("self_attn", "cross_attn") for m in "qkvo"]
LORA_MODULES += ["ffn.0", "ffn.2"]
PUBLISHED_LAYERS = 4  # two VACE blocks, after layers 0 and 2


def original_state(config: dict[str, Any], seed: int, cls: Any = None) -> dict[str, torch.Tensor]:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = (cls or WanTransformer3DModel).from_config(config)
    return keys.to_original_keys({k: v.detach().clone() for k, v in model.state_dict().items()})


def peft_lora(original: dict[str, torch.Tensor], rank: int, seed: int,
              dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for block in range(PUBLISHED_LAYERS):
        for module in LORA_MODULES:
            out_f, in_f = original[f"blocks.{block}.{module}.weight"].shape
            name = f"base_model.model.blocks.{block}.{module}"
            lora[f"{name}.lora_A.weight"] = (torch.randn(rank, in_f, generator=generator)
                                             * 0.1).to(dtype)
            lora[f"{name}.lora_B.weight"] = (torch.randn(out_f, rank, generator=generator)
                                             * 0.1).to(dtype)
    return lora


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    root = tmp_path_factory.mktemp("published")
    model = build_tiny_wan(root / "model", layers=PUBLISHED_LAYERS)
    config = dict(WanTransformer3DModel.load_config(model / "transformer"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}

    def wrapped(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {f"model.{k}": v.to(dtype) for k, v in state.items()}  # WanDiffusionWrapper.model

    base = original_state(config, seed=11)
    optimizer = {"state": {"model.head.head.weight": {"step": torch.tensor(600.0),
                                                      "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-5, "betas": (0.0, 0.999), "weight_decay": 0.0,
                                   "params": ["model.head.head.weight"]}]}
    torch.save({"generator": wrapped(base, torch.bfloat16),
                "critic": wrapped(original_state(config, seed=12), torch.bfloat16),
                "generator_ema": wrapped(original_state(config, seed=16), torch.float32),
                "generator_optimizer": optimizer, "step": 600}, root / "longlive_base.pt")
    torch.save({"generator_lora": peft_lora(base, rank=4, seed=13, dtype=torch.bfloat16),
                "critic_lora": peft_lora(base, rank=4, seed=14, dtype=torch.bfloat16),
                "step": 3000}, root / "lora.pt")
    torch.save({"generator": wrapped(original_state(config, seed=15), torch.float32),
                "critic": wrapped(original_state(config, seed=18), torch.float32)},
               root / "model.pt")
    vace = original_state({**config, "vace_layers": [0, 2], "vace_in_channels": 4 + 4 + 64},
                          seed=17, cls=WanVACETransformer3DModel)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in vace.items()
               if k.startswith("vace_")}, str(root / "vace_module_bf16.safetensors"))
    return {"model": model, "root": root}


def test_longlive_loads_its_published_layout(published: dict[str, Path]) -> None:
    root = published["root"]
    pipeline = load(LongLivePipeline, {"model": published["model"]},
                    checkpoint=str(root / "longlive_base.pt"), lora=str(root / "lora.pt"),
                    vace_id=str(root / "vace_module_bf16.safetensors"), vace_enabled=True)
    base = torch.load(root / "longlive_base.pt", weights_only=True)["generator"]
    lora = torch.load(root / "lora.pt", weights_only=True)["generator_lora"]
    vace = load_file(str(root / "vace_module_bf16.safetensors"))
    loaded = keys.to_original_keys(pipeline.transformer.model.state_dict())
    for block in range(PUBLISHED_LAYERS):
        for module in LORA_MODULES:  # W + (256/256 scale, here 4/4)·B·A, in float32
            name = f"blocks.{block}.{module}"
            a = lora[f"base_model.model.{name}.lora_A.weight"].float()
            b = lora[f"base_model.model.{name}.lora_B.weight"].float()
            torch.testing.assert_close(loaded[f"{name}.weight"],
                                       base[f"model.{name}.weight"].float() + b @ a)
            torch.testing.assert_close(loaded[f"{name}.bias"], base[f"model.{name}.bias"].float())
    for key in ("head.head.weight", "blocks.3.modulation", "blocks.1.norm3.weight",
                "text_embedding.0.weight", "patch_embedding.weight"):
        torch.testing.assert_close(loaded[key], base[f"model.{key}"].float())
    assert list(pipeline.model_config.vace_layers) == [0, 2]
    assert pipeline.model_config.vace_in_channels == 72
    for key, value in vace.items():
        torch.testing.assert_close(loaded[key], value.float())
    out = chunk(pipeline, pipeline.new_state(), video(13))
    assert out.shape == (13, SIZE, SIZE, 3)


def test_streamdiffusionv2_loads_its_published_layout(published: dict[str, Path]) -> None:
    pipeline = load(StreamDiffusionV2Pipeline, {"model": published["model"]},
                    checkpoint=str(published["root"] / "model.pt"))
    saved = torch.load(published["root"] / "model.pt", weights_only=True)
    loaded = keys.to_original_keys(pipeline.transformer.model.state_dict())
    for key, value in saved["generator"].items():
        torch.testing.assert_close(loaded[key.removeprefix("model.")], value)
    assert not torch.equal(loaded["head.head.weight"], saved["critic"]["model.head.head.weight"])
    out = chunk(pipeline, pipeline.new_state(), video(5))
    assert out.shape == (5, SIZE, SIZE, 3)


def test_wrapper_names_inside_keys_and_adapter_names_are_understood(tmp_path: Path) -> None:
    weight = torch.randn(8, 8)
    ema = {"generator_ema": {  # an FSDP unit per block, as EMA_FSDP's named_parameters give
        "model.blocks.0._fsdp_wrapped_module.self_attn.q.weight": weight,
        "model._orig_mod.head.head.weight": weight,
        "model.blocks.0._checkpoint_wrapped_module.ffn.0.weight": weight}}
    assert set(keys.unwrap(ema)) == {"blocks.0.self_attn.q.weight", "head.head.weight",
                                        "blocks.0.ffn.0.weight"}
    state = {"blocks.0.attn2.to_k.weight": torch.zeros(8, 8, dtype=torch.bfloat16)}
    a, b = torch.randn(2, 8), torch.randn(8, 2)
    lora = {"base_model.model.blocks.0.cross_attn.k.lora_A.default.weight": a,
            "base_model.model.blocks.0.cross_attn.k.lora_B.default.weight": b}
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    fuse(state, [Fused(tmp_path / "lora.pt", alpha=4.0)], torch.float32)
    assert state["blocks.0.attn2.to_k.weight"].dtype == torch.float32
    torch.testing.assert_close(state["blocks.0.attn2.to_k.weight"], 2.0 * b @ a)


# --- load errors a person can act on ------------------------------------------------------------

def failed_load(files: dict[str, Path], **params: Any) -> str:
    with pytest.raises(PipelineError) as info:
        load(StreamDiffusionV2Pipeline, files, **params)
    return str(info.value)


def test_a_missing_model_folder_says_what_a_folder_holds(files: dict[str, Path]) -> None:
    message = failed_load(files, model_id=str(files["root"] / "nowhere"))
    assert "does not exist" in message and "transformer/" in message


def test_a_folder_without_model_index_is_not_a_model(files: dict[str, Path]) -> None:
    message = failed_load(files, model_id=str(files["root"]))
    assert "model_index.json" in message


def test_an_incomplete_folder_names_the_missing_part(files: dict[str, Path],
                                                     tmp_path: Path) -> None:
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(files["model"], partial)
    shutil.rmtree(partial / "vae")
    message = failed_load(files, model_id=str(partial))
    assert "Could not load the VAE" in message and "vae/" in message


def test_a_missing_checkpoint_file_says_so(files: dict[str, Path]) -> None:
    message = failed_load(files, checkpoint=str(files["root"] / "missing.pt"))
    assert "missing.pt does not exist" in message


def test_a_checkpoint_that_does_not_fit_names_the_keys(files: dict[str, Path]) -> None:
    message = failed_load(files, checkpoint=str(files["other"]))
    assert "does not fit the transformer" in message
    assert "unexpected" in message and "blocks.2." in message


def test_a_lora_that_does_not_fit_says_so(files: dict[str, Path], tmp_path: Path) -> None:
    bad = {"blocks.7.self_attn.q.lora_A.weight": torch.zeros(2, 16),
           "blocks.7.self_attn.q.lora_B.weight": torch.zeros(16, 2)}
    torch.save(bad, tmp_path / "bad_lora.pt")
    message = failed_load(files, checkpoint=str(files["generator"]),
                          lora=str(tmp_path / "bad_lora.pt"))
    assert "bad_lora.pt does not fit" in message and "blocks.7" in message


def test_not_enough_memory_is_said_before_loading(files: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "available_memory", lambda device: 1024)
    message = failed_load(files)
    assert "Not enough memory" in message and "GiB" in message and "height/width" in message


def test_vace_without_weights_is_a_clear_error(files: dict[str, Path]) -> None:
    message = failed_load(files, vace_enabled=True, vace_id=None)
    assert "vace_id" in message and "vace_enabled: false" in message


@pytest.mark.parametrize("bad", [
    {"height": 40}, {"width": 8}, {"timestep_shift": 0.5}, {"local_attn_size": -2},
    {"vace_context_scale": 3.0}, {"lora_alpha": 0}, {"dtype": "int8"}, {"model_id": ""},
])
def test_bad_load_params_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LongLivePipeline.Params.model_validate(bad)


def test_published_defaults() -> None:
    longlive = LongLivePipeline.Params.model_validate({"vace_enabled": False, "foo": 1})
    assert longlive.checkpoint == "Efficient-Large-Model/LongLive-1.3B/models/longlive_base.pt"
    assert longlive.lora == "Efficient-Large-Model/LongLive-1.3B/models/lora.pt"
    assert (longlive.height, longlive.width, longlive.timestep_shift) == (320, 576, 5.0)
    sdv2 = StreamDiffusionV2Pipeline.Params()
    assert sdv2.checkpoint == "jerryfeng/StreamDiffusionV2/wan_causal_dmd_v2v/model.pt"
    assert sdv2.model_id == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and sdv2.vace_enabled
    assert StreamDiffusionV2Pipeline.Params(checkpoint=None).checkpoint is None


# --- sampling -----------------------------------------------------------------------------------

def test_step_list_warping_and_video_start() -> None:
    warped = sampling.shifted_sigmas([1000, 750, 500, 250], 5.0)
    assert warped == pytest.approx([1.0, 0.9375, 2.5 / 3, 0.625])
    assert sampling.shifted_sigmas([750, 250], 1.0) == pytest.approx([0.75, 0.25])
    assert sampling.start_sigmas([0.75, 0.25], 0.6) == pytest.approx([0.6, 0.2])
    assert sampling.start_sigmas([1.0, 0.5], None) == [1.0, 0.5]


def test_denoise_recovers_the_clean_latent_with_a_perfect_model() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(1, 4, 2, 4, 4, generator=generator) for _ in range(2))
    noises = [torch.randn(1, 4, 2, 4, 4, generator=generator) for _ in range(3)]
    seen: list[float] = []

    def perfect(x: torch.Tensor, t: float) -> torch.Tensor:
        seen.append(t)
        sigma = t / 1000
        return (x - x0) / sigma  # the flow ε − x₀ implied by x = (1 − σ)x₀ + σε

    sigmas = [0.9, 0.5, 0.2]
    sample = sampling.denoise(perfect, (1 - 0.9) * x0 + 0.9 * eps, sigmas, noises)
    torch.testing.assert_close(sample.x0, x0)
    assert seen == pytest.approx([900.0, 500.0, 200.0]) and sample.calls == 3


def test_the_noise_controller_adds_noise_for_motion() -> None:
    still = torch.zeros(4, 3, 8, 8)
    moving = torch.stack([torch.full((3, 8, 8), 0.3 * i) for i in range(4)])
    assert sampling.motion(still, None) == 0.0
    assert sampling.motion(moving, None) == 1.0
    assert sampling.controlled_noise(0.6, 0.0, None) == pytest.approx(0.6)
    assert sampling.controlled_noise(0.6, 1.0, None) == pytest.approx(0.8)
    assert sampling.controlled_noise(0.6, 1.0, 0.6) == pytest.approx(0.7)  # smoothed


# --- the chunk loop -----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "first", "later", "first_text"),
                         [("sdv2", 5, 4, 1), ("longlive", 13, 12, 9)])
def test_chunks_follow_the_vaes_1_plus_4k(name: str, first: int, later: int, first_text: int,
                                          request: pytest.FixtureRequest) -> None:
    """Video chunks: as many frames out as in (1 + 4k first, 4k after). Text chunks: one block
    of k latent frames each, the first too (as the T2V models generate), so the first decodes to
    1 + 4(k − 1) frames."""
    pipeline: WanVideoPipeline = request.getfixturevalue(name)
    state = pipeline.new_state()
    assert pipeline.frames_per_call(state) == first
    out = chunk(pipeline, state, video(first))
    assert out.shape == (first, SIZE, SIZE, 3) and out.dtype == np.uint8
    assert pipeline.frames_per_call(state) == later
    assert chunk(pipeline, state, video(later, 1)).shape == (later, SIZE, SIZE, 3)
    text_state = pipeline.new_state()
    assert chunk(pipeline, text_state, None).shape == (first_text, SIZE, SIZE, 3)
    assert chunk(pipeline, text_state, None).shape == (later, SIZE, SIZE, 3)
    k = pipeline.latent_frames_per_chunk
    assert (state.cache.frames, text_state.cache.frames) == ((1 + k) + k, 2 * k)  # committed


def test_a_prompt_change_and_a_transition_change_the_output(sdv2: WanVideoPipeline) -> None:
    def run(**update: Any) -> np.ndarray:
        state = sdv2.new_state()
        return chunk(sdv2, state, None, params(sdv2, "text", **update))

    fox = run(prompts=prompts("a red fox"))
    np.testing.assert_array_equal(fox, run(prompts=prompts("a red fox")))  # deterministic
    assert not np.array_equal(fox, run(prompts=prompts("a blue whale")))
    halfway = ParameterState(ParameterUpdate.model_validate({"prompts": prompts("a red fox")}))
    halfway.apply(ParameterUpdate.model_validate(
        {"transition": {"target_prompts": prompts("a blue whale"), "num_steps": 2}}))
    mixed = chunk(sdv2, sdv2.new_state(), None, halfway.snapshot(sdv2.mode_defaults()["text"]))
    assert not np.array_equal(mixed, fox)


def test_manage_cache_restarts_the_kv_cache_on_a_new_prompt_only(
        sdv2: WanVideoPipeline) -> None:
    settings = ParameterState(ParameterUpdate.model_validate({"prompts": prompts("a cat")}))
    defaults = sdv2.mode_defaults()["text"]
    state = sdv2.new_state()
    for _ in range(2):
        chunk(sdv2, state, None, settings.snapshot(defaults))
    assert state.cache_resets == 0 and state.cache.frames == 2  # two 1-latent blocks
    settings.apply(ParameterUpdate.model_validate(
        {"transition": {"target_prompts": prompts("a dog"), "num_steps": 2}}))
    for _ in range(3):  # during and at the end of a transition: no restart
        chunk(sdv2, state, None, settings.snapshot(defaults))
    assert state.cache_resets == 0
    settings.apply(ParameterUpdate.model_validate({"prompts": prompts("the sea")}))
    chunk(sdv2, state, None, settings.snapshot(defaults))
    assert state.cache_resets == 1 and state.cache.frames == 1
    settings.apply(ParameterUpdate.model_validate({"denoising_step_list": [1000, 500]}))
    chunk(sdv2, state, None, settings.snapshot(defaults))
    assert state.cache_resets == 2
    settings.apply(ParameterUpdate.model_validate({"manage_cache": False,
                                                   "prompts": prompts("a city")}))
    chunk(sdv2, state, None, settings.snapshot(defaults))
    assert state.cache_resets == 2 and state.cache.frames == 2


def test_sessions_are_isolated_and_a_reset_starts_over(sdv2: WanVideoPipeline) -> None:
    a, b = sdv2.new_state(), sdv2.new_state()
    first = [chunk(sdv2, a, video(5)), chunk(sdv2, a, video(4, 1))]
    chunk(sdv2, b, video(5, 7), prompts=prompts("neon city"))  # another session in between
    again = sdv2.new_state()  # what reset_cache gives a session
    repeat = [chunk(sdv2, again, video(5))]
    chunk(sdv2, b, video(4, 8), prompts=prompts("neon city"))
    repeat.append(chunk(sdv2, again, video(4, 1)))
    for x, y in zip(first, repeat, strict=True):
        np.testing.assert_array_equal(x, y)


def test_video_motion_raises_the_noise(sdv2: WanVideoPipeline) -> None:
    still, moving = sdv2.new_state(), sdv2.new_state()
    for state, moves in ((still, False), (moving, True)):
        chunk(sdv2, state, video(5, moving=moves))
        chunk(sdv2, state, video(4, moving=moves))
    assert still.last_noise_used == pytest.approx(0.7)
    assert moving.last_noise_used > 0.75
    fixed = sdv2.new_state()
    chunk(sdv2, fixed, video(5, moving=True), noise_controller=False)
    assert fixed.last_noise_used == pytest.approx(0.7)


def test_vace_steers_the_output(longlive: WanVideoPipeline) -> None:
    clip = video(13)
    guided = chunk(longlive, longlive.new_state(), clip)
    plain = chunk(longlive, longlive.new_state(), clip, vace_enabled=False)
    assert not np.array_equal(guided, plain)


def test_kv_cache_attention_bias_weakens_the_past(sdv2: WanVideoPipeline) -> None:
    normal, biased = sdv2.new_state(), sdv2.new_state()
    for state in (normal, biased):
        chunk(sdv2, state, video(5))
    same = chunk(sdv2, normal, video(4, 3))
    weaker = chunk(sdv2, biased, video(4, 3), kv_cache_attention_bias=0.1)
    assert not np.array_equal(same, weaker)


# --- through the app: WebRTC sessions -----------------------------------------------------------

async def wait_until(condition: Any, timeout_s: float = 90.0) -> None:
    """Poll server-side state (the worker thread changes it) until `condition()` holds."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def receive(client: Any, count: int) -> list[tuple[Any, float]]:
    import time

    frames = []
    for _ in range(count):
        frame = await client.recv(timeout_s=90)
        frames.append((frame, time.monotonic()))
    return frames


def watch_pacing(track: Any) -> dict[str, list[Any]]:
    """Record, for every output the session's track is handed, when it came and when each of
    its frames left for the encoder (wrapping the real track's two entry points), and when the
    track shed a backlog (that moves the frames still queued forward)."""
    import asyncio

    loop = asyncio.get_running_loop()
    log: dict[str, list[Any]] = {"chunks": [], "sheds": []}
    waiting: dict[int, dict[str, Any]] = {}
    deliver, on_sent = track.deliver, track.on_sent

    def delivered(frames: Any) -> None:
        entry = {"at": loop.time(), "sent": [],
                 "stamps": [float(f.pts * f.time_base) for f in frames]}
        log["chunks"].append(entry)
        waiting.update({id(f): entry for f in frames})
        dropped = track.dropped
        deliver(frames)
        if track.dropped > dropped:
            log["sheds"].append(loop.time())

    def sent(frame: Any) -> None:
        entry = waiting.pop(id(frame), None)
        if entry is not None:
            entry["sent"].append(loop.time())
        if on_sent is not None:
            on_sent(frame)

    track.deliver, track.on_sent = delivered, sent
    return log


def assert_paced(log: dict[str, list[Any]], chunk_frames: int) -> None:
    """Each chunk's frames leave the track no sooner than their timestamps' spacing after the
    chunk arrived: paced, never a burst. A lower bound only (a busy machine makes frames late,
    never early); frames that left after the track shed a backlog are not judged."""
    judged = 0
    for entry in log["chunks"]:
        cutoff = min((t for t in log["sheds"] if t >= entry["at"]), default=float("inf"))
        stamps = entry["stamps"]
        assert all(b > a for a, b in itertools.pairwise(stamps)), stamps
        kept = [(stamp, left) for stamp, left in zip(stamps, entry["sent"], strict=False)
                if left < cutoff]
        for stamp, left in kept:
            assert left - entry["at"] >= stamp - stamps[0] - 0.002, (entry, stamp)
        judged = max(judged, len(kept))
    assert judged >= 2, log  # a second frame waited for its turn


@pytest.mark.parametrize("pipeline_id", ["streamdiffusionv2", "longlive"])
async def test_webrtc_video_and_text_sessions_through_the_app(pipeline_id: str,
                                                              files: dict[str, Path]) -> None:
    """`python app.py`-style server loading the tiny Wan through `model_id`; a video session
    (aiortc client sending frames) and a receive-only text session (Scope's text client
    parameters) side by side: chunked, paced output; a prompt change, a transition and
    reset_cache reach each session's pipeline state, and the sessions stay isolated."""
    import asyncio

    from signaling.client import LiveV2VClient, NumberedFrames
    from tests.conftest import serve_in_thread

    load_params = {"model_id": str(files["model"]), "checkpoint": None, "lora": None,
                   "vace_enabled": False, "height": SIZE, "width": SIZE}
    with serve_in_thread(pipeline=pipeline_id, load_params=load_params) as server:
        cls = LongLivePipeline if pipeline_id == "longlive" else StreamDiffusionV2Pipeline
        first, later = 1 + 4 * cls.latent_frames_per_chunk, 4 * cls.latent_frames_per_chunk
        sessions = server.app.state.sessions
        async with LiveV2VClient(server.url) as video, LiveV2VClient(server.url) as text:
            await video.connect(NumberedFrames(size=64, fps=10),
                                {"prompts": prompts("a red fox"), "input_mode": "video"})
            await text.connect(None, {"prompts": prompts("the sea"),
                                      "denoising_step_list": [1000, 750, 500, 250],
                                      "manage_cache": True})
            await wait_until(lambda: sessions.get(video.session_id) is not None
                             and sessions.get(text.session_id) is not None)
            paces = [watch_pacing(sessions.get(c.session_id).output) for c in (video, text)]
            video_frames, text_frames = await asyncio.gather(receive(video, first + 2 * later),
                                                             receive(text, first + 2 * later))
            for frame, _ in video_frames + text_frames:
                assert (frame.height, frame.width) == (SIZE, SIZE)
            for frames in (video_frames, text_frames):  # in order, every frame its own time
                pts = [f.pts for f, _ in frames]
                assert all(b > a for a, b in itertools.pairwise(pts)), pts
            for pace in paces:
                assert_paced(pace, later)
            stats = await video.message("stats", timeout_s=30)
            while stats["frames_out"] < first + later:
                stats = await video.message("stats", timeout_s=30)
            assert stats["chunk_frames"] == later

            engine = server.app.state.service.workers[0].engine

            def state_of(client: Any) -> Any:  # the session's pipeline state, as the engine has it
                return engine._states.get(sessions.get(client.session_id).stream.id)

            v_state, t_state = state_of(video), state_of(text)
            assert v_state is not t_state and v_state.cache is not t_state.cache
            assert t_state.last_steps == (1000, 750, 500, 250)

            # A new prompt: it reaches the pipeline, manage_cache restarts the KV cache; the
            # other session keeps its own prompt.
            resets = v_state.cache_resets
            await video.send({"prompts": prompts("a blue whale")})
            await wait_until(lambda: v_state.last_prompts[0].text == "a blue whale")
            await wait_until(lambda: v_state.cache_resets == resets + 1)
            assert t_state.last_prompts[0].text == "the sea" and t_state.cache_resets == 0

            # A transition: the text session blends towards the target without a restart.
            await text.send({"transition": {"target_prompts": prompts("a snow forest"),
                                            "num_steps": 2}})
            await wait_until(lambda: t_state.last_prompts[0].text == "a snow forest")
            await receive(text, later)
            assert t_state.cache_resets == 0

            # reset_cache: the session starts over with a fresh state (KV and VAE caches).
            await video.send({"reset_cache": True})
            await wait_until(lambda: state_of(video) is not v_state)
            fresh = state_of(video)
            k = cls.latent_frames_per_chunk
            frames, chunks = fresh.cache.frames, fresh.chunks  # in this order: see the bound
            # Only what the fresh state's own chunks committed (the worker may have run its
            # first chunk already): 1 + k latent frames for the first, k for each later one.
            assert frames <= (1 + k) + k * chunks and fresh.cache_resets == 0
            await wait_until(lambda: fresh.chunks >= 2)
            await receive(video, later)  # and frames keep coming
            assert state_of(text) is t_state


def test_schemas_match_scopes_for_these_ids() -> None:
    from pipeline import registry

    longlive = registry.schema(registry.get("longlive"))
    sdv2 = registry.schema(registry.get("streamdiffusionv2"))
    for schema in (longlive, sdv2):
        assert schema["estimated_vram_gb"] == 20.0 and schema["supports_vace"]
        assert schema["supports_cache_management"] and not schema["supports_kv_cache_bias"]
        assert sorted(schema["supported_modes"]) == ["text", "video"]
    assert longlive["default_mode"] == "text" and sdv2["default_mode"] == "video"
    assert longlive["mode_defaults"]["text"]["denoising_steps"] == [1000, 750, 500, 250]
    assert longlive["mode_defaults"]["video"]["noise_scale"] == 0.7
    assert sdv2["mode_defaults"]["video"]["denoising_steps"] == [750, 250]
    assert sdv2["mode_defaults"]["text"]["denoising_steps"] == [1000, 750]


@pytest.mark.parametrize("bad", [{"kv_cache_attention_bias": 0.0}, {"kv_cache_attention_bias": 2},
                                 {"noise_controller": "yes"}])
def test_out_of_range_session_keys_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ParameterUpdate.model_validate(bad)


def test_the_benchmark_takes_gpu_checks_options() -> None:
    """benchmarks/gpu_check.py runs every --config of benchmarks/pipeline.py with the image
    benchmark's options; the Wan configs must accept them."""
    from benchmarks import gpu_check, wan_pipeline

    assert {"longlive", "streamdiffusionv2"} <= set(gpu_check.pipeline_configs())
    for run in gpu_check.benchmark_runs(["longlive"], Path("/tmp/models")):
        args = wan_pipeline.parse_args(run["args"])
        assert args.config == "longlive" and args.device == "cuda" and args.chunks == 10
        assert args.compile == run["compile"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_chunks_match_cpu(files: dict[str, Path], sdv2: WanVideoPipeline,
                               dtype: str) -> None:
    """The whole loop on CUDA (VAE, UMT5, causal transformer, sampler) gives the CPU float32
    frames, to a tolerance that half precision allows."""
    gpu = load(StreamDiffusionV2Pipeline, files, device="cuda", dtype=dtype)
    assert gpu.transformer.device.type == "cuda"
    tolerance = 2.0 if dtype == "float32" else 12.0  # mean |Δ| in 0..255 levels
    for frames in (video(5), None):
        cpu_state, gpu_state = sdv2.new_state(), gpu.new_state()
        for count in (5, 4):
            clip = None if frames is None else video(count, count)
            want = chunk(sdv2, cpu_state, clip).astype(float)
            got = chunk(gpu, gpu_state, clip).astype(float)
            assert got.shape == want.shape
            assert np.abs(got - want).mean() <= tolerance, (dtype, np.abs(got - want).mean())
