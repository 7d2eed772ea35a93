"""Tiny random LoRA files for the tiny SD model of `tests.tiny_models`, in the formats people
publish, written the way their tools write them:

- diffusers/PEFT: PEFT `LoraConfig` adapters on the real UNet and CLIP text encoder, saved with
  diffusers' `save_lora_weights` (keys `unet.….lora_A.weight`, `text_encoder.….lora_B.weight`);
- kohya sd-scripts: `lora_unet_<module path with _>.lora_down.weight` / `.lora_up.weight` /
  `.alpha`, and `lora_te_…` for the text encoder.

The LoRA B matrices are random (PEFT starts them at zero, which would change nothing), so a LoRA
visibly changes the model's output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _models(model_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    return (UNet2DConditionModel.from_pretrained(model_dir / "unet"),
            CLIPTextModel.from_pretrained(model_dir / "text_encoder"))


def write_peft_lora(model_dir: Path, out: Path, *, seed: int = 1, rank: int = 4,
                    std: float = 1.0, text_encoder: bool = True) -> Path:
    """A diffusers-format LoRA file (`out`, .safetensors) for the tiny SD model at `model_dir`."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    unet, text = _models(model_dir)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS))
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(
        get_peft_model_state_dict(_randomise(unet, std)))}
    if text_encoder:
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS),
                                text)
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(_randomise(text, std)))
    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        str(out.parent), weight_name=out.name, safe_serialization=True, **layers)
    return out


def _randomise(model: torch.nn.Module, std: float) -> torch.nn.Module:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, std)
    return model


def write_kohya_lora(model_dir: Path, out: Path, *, seed: int = 2, rank: int = 4,
                     alpha: float = 4.0, std: float = 1.0) -> Path:
    """A kohya sd-scripts LoRA file: `lora_unet_…`/`lora_te_…` keys with lora_down/lora_up and
    a per-module `.alpha` (scale alpha/rank), for every attention projection."""
    unet, text = _models(model_dir)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, model, targets in (("lora_unet", unet, UNET_TARGETS),
                                   ("lora_te", text, TEXT_TARGETS)):
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or not name.endswith(tuple(targets)):
                continue
            if prefix == "lora_te" and not name.startswith("text_model."):
                name = "text_model." + name
            key = f"{prefix}_{name.replace('.', '_')}"
            tensors[f"{key}.lora_down.weight"] = torch.randn(
                rank, module.in_features, generator=generator) * std
            tensors[f"{key}.lora_up.weight"] = torch.randn(
                module.out_features, rank, generator=generator) * std
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"ss_network_module": "networks.lora"})
    return out
