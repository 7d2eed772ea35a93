"""Wan2.1 LoRAs as `load_params.loras` entries (fused at load) in the formats people publish,
converted by diffusers' Wan LoRA loader: diffusers/PEFT, original Wan (`diffusion_model.…`) and
musubi-tuner/kohya (`lora_unet_…` with `.alpha`). Files are made here for the tiny Wan model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from pipeline.base import PipelineError
from pipeline.models.wan.longlive import LongLivePipeline
from pipeline.models.wan.video import WanParams
from pipeline.models.wan.weights import load_wan_model
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
    return load_wan_model(str(model), None, None, None, CPU, torch.float32,
                          lambda f, s: None, loras).transformer


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


def test_wan_params_take_fused_loras_only() -> None:
    assert LongLivePipeline.supports_lora
    params = WanParams.model_validate({"loras": [{"path": "/l/a.safetensors", "scale": 0.5}],
                                       "lora_merge_mode": "permanent_merge"})
    assert params.lora_specs()[0].merge_mode == "permanent"
    with pytest.raises(ValidationError, match="fuse LoRAs"):
        WanParams.model_validate({"loras": [{"path": "a"}], "lora_merge_mode": "runtime_peft"})
