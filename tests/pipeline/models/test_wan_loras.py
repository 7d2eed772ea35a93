"""Wan2.1 LoRAs as `load_params.loras` entries in the formats people publish, converted by
diffusers' Wan LoRA loader: diffusers/PEFT, original Wan (`diffusion_model.…`), musubi-tuner/kohya
(`lora_unet_…` with `.alpha`) and PEFT training checkpoints (LongLive's lora.pt); fused at load
(permanent) or kept as PEFT adapters whose scales follow `lora_scales` (runtime_peft). Files are
made here for the tiny Wan model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.base import FrameRequest, PipelineError
from pipeline.models.wan.longlive import LongLivePipeline
from pipeline.models.wan.loras import Fused
from pipeline.models.wan.streamdiffusionv2 import StreamDiffusionV2Pipeline
from pipeline.models.wan.video import WanVideoPipeline
from pipeline.models.wan.weights import load_wan_model
from pipeline.params import ParameterState, ParameterUpdate
from pipeline.resources.loras import LoraFolder
from tests.looks import differs
from tests.tiny_wan import build_tiny_wan

CPU = torch.device("cpu")
RANK = 4
# original Wan module names → diffusers' (the layers a LoRA here changes)
MODULES = {**{f"self_attn.{o}": f"attn1.{d}" for o, d in
              (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))},
           **{f"cross_attn.{o}": f"attn2.{d}" for o, d in
              (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))},
           "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
"""Every layer of a block, as trainers target them (diffusers' musubi converter expects all)."""


@pytest.fixture(scope="module")
def wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "model")


def transformer(model: Path, loras: list[tuple[Path, float]] = ()) -> torch.nn.Module:
    return load_wan_model(str(model), None, CPU, torch.float32, lambda f, s: None,
                          [Fused(path, scale) for path, scale in loras]).transformer


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def factors(base: dict[str, torch.Tensor], seed: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Random (down, up) per targeted layer, shaped for the tiny model."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for original, diffusers in MODULES.items():
        w = base[f"blocks.0.{diffusers}.weight"]
        out[original] = (torch.randn(RANK, w.shape[1], generator=g),
                         torch.randn(w.shape[0], RANK, generator=g))
    return out


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_each_format_merges_scale_times_b_a(wan: Path, tmp_path: Path) -> None:
    base = weights(transformer(wan))
    ab = factors(base, 0)
    alpha = 2.0
    files = {
        "original": (write(tmp_path / "original.safetensors", {
            **{f"diffusion_model.blocks.0.{m}.lora_A.weight": d for m, (d, u) in ab.items()},
            **{f"diffusion_model.blocks.0.{m}.lora_B.weight": u for m, (d, u) in ab.items()}}),
            1.0),
        "musubi": (write(tmp_path / "musubi.safetensors", {
            **{f"lora_unet_blocks_0_{m.replace('.', '_')}.lora_down.weight": d
               for m, (d, u) in ab.items()},
            **{f"lora_unet_blocks_0_{m.replace('.', '_')}.lora_up.weight": u
               for m, (d, u) in ab.items()},
            **{f"lora_unet_blocks_0_{m.replace('.', '_')}.alpha": torch.tensor(alpha)
               for m in ab}}), alpha / RANK),
        "diffusers": (write(tmp_path / "diffusers.safetensors", {
            **{f"transformer.blocks.0.{MODULES[m]}.lora_A.weight": d
               for m, (d, u) in ab.items()},
            **{f"transformer.blocks.0.{MODULES[m]}.lora_B.weight": u
               for m, (d, u) in ab.items()}}), 1.0),
    }
    for name, (path, file_scale) in files.items():
        merged = weights(transformer(wan, [(path, 0.5)]))
        for original, (down, up) in ab.items():
            key = f"blocks.0.{MODULES[original]}.weight"
            expected = base[key] + 0.5 * file_scale * (up @ down)
            assert torch.allclose(merged[key], expected, atol=1e-4), (name, key)
        untouched = "blocks.1.attn1.to_q.weight"
        assert torch.equal(merged[untouched], base[untouched]), name


def test_scale_zero_and_two_loras(wan: Path, tmp_path: Path) -> None:
    base = weights(transformer(wan))
    first, second = factors(base, 1), factors(base, 2)

    def file(name: str, ab: dict[str, tuple[torch.Tensor, ...]]) -> Path:
        return write(tmp_path / name, {
            **{f"diffusion_model.blocks.0.{m}.lora_A.weight": d for m, (d, u) in ab.items()},
            **{f"diffusion_model.blocks.0.{m}.lora_B.weight": u for m, (d, u) in ab.items()}})

    a, b = file("a.safetensors", first), file("b.safetensors", second)
    off = weights(transformer(wan, [(a, 0.0)]))
    assert all(torch.equal(off[k], base[k]) for k in base)
    both = weights(transformer(wan, [(a, 1.0), (b, 0.5)]))
    key = "blocks.0.attn1.to_q.weight"
    (da, ua), (db, ub) = first["self_attn.q"], second["self_attn.q"]
    assert torch.allclose(both[key], base[key] + ua @ da + 0.5 * (ub @ db), atol=1e-4)


def test_a_lora_for_another_model_says_so(wan: Path, tmp_path: Path) -> None:
    wrong = write(tmp_path / "wide.safetensors", {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(RANK, 999),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(16, RANK)})
    with pytest.raises(PipelineError, match=r"wide\.safetensors.*does not fit"):
        transformer(wan, [(wrong, 1.0)])
    elsewhere = write(tmp_path / "deep.safetensors", {
        "diffusion_model.blocks.40.self_attn.q.lora_A.weight": torch.zeros(RANK, 16),
        "diffusion_model.blocks.40.self_attn.q.lora_B.weight": torch.zeros(16, RANK)})
    with pytest.raises(PipelineError, match=r"deep\.safetensors.*do not exist"):
        transformer(wan, [(elsewhere, 1.0)])


# --- runtime_peft: live scales ------------------------------------------------------------------

SIZE = 16


def original_file(path: Path, ab: dict[str, tuple[torch.Tensor, ...]],
                  bias: dict[str, torch.Tensor] | None = None) -> Path:
    """An original-format Wan LoRA (`diff_b`: the bias some trainers add to lora_B)."""
    return write(path, {
        **{f"diffusion_model.blocks.0.{m}.lora_A.weight": d for m, (d, u) in ab.items()},
        **{f"diffusion_model.blocks.0.{m}.lora_B.weight": u for m, (d, u) in ab.items()},
        **{f"diffusion_model.blocks.0.{m}.diff_b": b for m, b in (bias or {}).items()}})


@pytest.fixture(scope="module")
def loras(wan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA folder: `style` (with a bias), `detail`, a LongLive-style `longlive.pt` and one
    for another model (`wide`)."""
    folder = tmp_path_factory.mktemp("wan-loras")
    base = weights(transformer(wan))
    style = {m: (d * 0.3, u * 0.3) for m, (d, u) in factors(base, 3).items()}
    original_file(folder / "style.safetensors", style,
                  {"ffn.2": torch.randn(base["blocks.0.ffn.net.2.weight"].shape[0]) * 0.2})
    original_file(folder / "detail.safetensors",
                  {m: (d * 0.3, u * 0.3) for m, (d, u) in factors(base, 4).items()})
    torch.save({"generator_lora": {  # LongLive's lora.pt: PEFT keys under base_model.model
        **{f"base_model.model.blocks.1.{m}.lora_A.weight": d * 0.3
           for m, (d, u) in factors(base, 5).items()},
        **{f"base_model.model.blocks.1.{m}.lora_B.weight": u * 0.3
           for m, (d, u) in factors(base, 5).items()}}, "step": 3000},
        folder / "longlive.pt")
    original_file(folder / "wide.safetensors", {"self_attn.q": (torch.zeros(RANK, 999),
                                                                torch.zeros(16, RANK))})
    return folder


def load(wan: Path, folder: Path, entries: list[dict[str, Any]],
         mode: str = "runtime_peft") -> WanVideoPipeline:
    values = {"model_id": str(wan), "checkpoint": None, "vace_enabled": False, "height": SIZE,
              "width": SIZE, "loras": entries, "lora_merge_mode": mode}
    params = LoraFolder(folder).resolve_params(
        StreamDiffusionV2Pipeline.Params.model_validate(values))
    pipeline = StreamDiffusionV2Pipeline(params)
    pipeline.load(lambda fraction, stage: None)
    return pipeline


def clip(pipeline: WanVideoPipeline, chunks: int = 2, updates: list[dict[str, Any]] | None = None,
         state: Any = None) -> list[np.ndarray]:
    """A fresh session's first `chunks` video chunks (same input, same seed every time);
    `updates[i]` is applied before chunk i (live parameter changes)."""
    state, parameters = state or pipeline.new_state(), ParameterState()
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    out = []
    for i in range(chunks):
        update = (updates or [])[i] if i < len(updates or []) else None
        if update:
            parameters.apply(ParameterUpdate.model_validate(update))
        frames = np.repeat(picture[None], pipeline.frames_per_call(state), axis=0)
        request = FrameRequest(frames=frames, size=(SIZE, SIZE), index=0, state=state,
                               params=parameters.snapshot(pipeline.mode_defaults()["video"]))
        out.append(pipeline.process([request])[0])
    return out


@pytest.fixture(scope="module")
def plain(wan: Path, loras: Path) -> list[np.ndarray]:
    return clip(load(wan, loras, []))


@pytest.fixture(scope="module")
def live(wan: Path, loras: Path) -> WanVideoPipeline:
    return load(wan, loras, [{"path": "style", "scale": 0.8}, {"path": "detail", "scale": 0.5}])


def test_runtime_equals_permanent_at_the_same_scales(wan: Path, loras: Path,
                                                     live: WanVideoPipeline,
                                                     plain: list[np.ndarray]) -> None:
    fused = load(wan, loras, [{"path": "style", "scale": 0.8}, {"path": "detail", "scale": 0.5}],
                 mode="permanent_merge")
    assert fused._adapters is None and live._adapters is not None
    assert len(live._adapters.runtime) == 2
    expected, got = clip(fused), clip(live)
    for a, b in zip(expected, got, strict=True):
        assert differs(a, b) < 0.5  # float32 both: rounding of the last uint8 step at most
    assert differs(got[1], plain[1]) > 3.0  # and the two LoRAs do change the picture


def test_scale_zero_is_the_output_without_the_lora(live: WanVideoPipeline,
                                                   plain: list[np.ndarray]) -> None:
    off = clip(live, updates=[{"lora_scales": [{"path": "style", "scale": 0.0},
                                               {"path": "detail.safetensors", "scale": 0}]}])
    for a, b in zip(off, plain, strict=True):
        assert differs(a, b) < 0.5


def test_a_scale_change_mid_stream_changes_the_next_chunk_without_a_reload(
        wan: Path, loras: Path, live: WanVideoPipeline) -> None:
    transformer_before = live.transformer
    steady = clip(live, 3)
    session = live.new_state()
    changed = clip(live, 3, updates=[{}, {}, {"lora_scales": {"style": 2.0}}], state=session)
    assert differs(steady[1], changed[1]) == 0.0  # same until the change
    assert session.cache_resets == 1  # manage_cache: new conditions, the old context goes
    # (the tiny random VAE's streaming decoder keeps most of a session's first chunk: a change
    # later shows less in the pixels than in the latents)
    assert differs(steady[2], changed[2]) > 0.1
    assert live.transformer is transformer_before
    # the new scale is what a fused load at that scale renders (the cache's past chunks were
    # made at 0.8 in both: compare a session that starts at 2.0)
    fused = load(wan, loras, [{"path": "style", "scale": 2.0}, {"path": "detail", "scale": 0.5}],
                 mode="permanent")
    start = clip(live, 1, updates=[{"lora_scales": {"style": 2.0}}])
    assert differs(start[0], clip(fused, 1)[0]) < 0.5
    assert live._adapters is not None and live._adapters.scales == (2.0, 0.5)


def test_longlives_own_lora_file_is_a_loras_entry(wan: Path, loras: Path,
                                                  plain: list[np.ndarray]) -> None:
    fused = load(wan, loras, [{"path": "longlive.pt"}], mode="permanent")
    as_field = LongLivePipeline.Params.model_validate({
        "model_id": str(wan), "checkpoint": None, "vace_enabled": False, "height": SIZE,
        "width": SIZE, "lora": str(loras / "longlive.pt")})
    reference = LongLivePipeline(as_field)
    reference.load(lambda fraction, stage: None)
    assert all(torch.equal(a, b) for a, b in zip(
        fused.transformer.model.state_dict().values(),
        reference.transformer.model.state_dict().values(), strict=True))
    live = load(wan, loras, [{"path": "longlive", "scale": 1.0}])
    assert differs(clip(live)[1], clip(fused)[1]) < 0.5
    assert differs(clip(live)[1], plain[1]) > 3.0


def test_a_lora_that_does_not_fit_leaves_the_pipeline_as_it_was(
        wan: Path, loras: Path, plain: list[np.ndarray]) -> None:
    with pytest.raises(PipelineError, match=r"wide\.safetensors.*does not fit"):
        load(wan, loras, [{"path": "wide"}])
    pipeline = load(wan, loras, [{"path": "style", "scale": 0.8}])
    before = clip(pipeline)
    folder = LoraFolder(loras)

    def params(entries: list[dict[str, Any]]) -> Any:
        return folder.resolve_params(pipeline.params.model_copy(update={"loras": [
            pipeline.params.loras[0].model_validate(e) for e in entries]}))

    with pytest.raises(PipelineError, match=r"wide\.safetensors.*does not fit"):
        pipeline.change_loras(params([{"path": "style"}, {"path": "wide"}]), lambda f, s: None)
    assert [Path(s.path).name for _, s in pipeline._adapters.runtime] == ["style.safetensors"]
    assert all(differs(a, b) == 0.0 for a, b in zip(clip(pipeline), before, strict=True))
    # a good change is done in place: the same transformer, the new LoRA's look
    model = pipeline.transformer
    assert pipeline.change_loras(params([{"path": "detail", "scale": 0.5}]), lambda f, s: None)
    assert pipeline.transformer is model
    assert [Path(s.path).name for _, s in pipeline._adapters.runtime] == ["detail.safetensors"]
    assert differs(clip(pipeline)[1], before[1]) > 3.0
    assert pipeline.change_loras(params([]), lambda f, s: None)
    assert pipeline._adapters is None
    assert not any("lora" in name for name, _ in pipeline.transformer.model.named_modules())
    assert all(differs(a, b) < 0.5 for a, b in zip(clip(pipeline), plain, strict=True))
    # fused LoRAs cannot be swapped in place: a full reload
    fused = load(wan, loras, [{"path": "style"}], mode="permanent")
    assert not fused.change_loras(fused.params.model_copy(update={"loras": []}),
                                  lambda f, s: None)
