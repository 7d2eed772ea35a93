"""LoRAs on an SD-1.x/2.x UNet and CLIP text encoder, through diffusers' own loaders.

diffusers reads every published SD LoRA format (diffusers/PEFT, kohya sd-scripts `lora_unet_...`
with `.alpha`, A1111, ...) in `StableDiffusionLoraLoaderMixin.lora_state_dict` and injects PEFT
layers with `load_lora_weights`; nothing is mapped by hand here. The pipeline holds components,
not a diffusers pipeline, so `SDAdapters` is the smallest host that mixin needs: the two models.

- permanent LoRAs: loaded, weighted (`set_adapters`), fused into the weights (`fuse_lora`), then
  their PEFT layers removed (`unload_lora_weights`): the models are plain again, full speed.
- runtime LoRAs: kept as PEFT adapters; `set_scales` changes their weights between frames
  (one cheap pass over the LoRA layers, no reload).

Runtime adapters load after permanent ones are fused: a PEFT layer that holds a merged adapter
ignores its other adapters.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
from diffusers.utils.peft_utils import _create_lora_config, delete_adapter_layers
from peft import inject_adapter_in_model, set_peft_model_state_dict

from pipeline.base import PipelineError
from pipeline.resources.loras import LoraSpec

log = logging.getLogger(__name__)

_COMPONENTS = ["unet", "text_encoder"]


class SDAdapters(StableDiffusionLoraLoaderMixin):
    """The LoRAs of one SD model (its UNet and text encoder, changed in place)."""

    hf_device_map = None  # the mixin asks, as of a pipeline: no accelerate device map here

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
        self.unet = unet
        self.text_encoder = text_encoder
        self.runtime: list[tuple[str, LoraSpec]] = []
        """(adapter name, spec) of the live-scaled adapters, in load order."""
        self.scales: tuple[float, ...] = ()
        """The runtime adapters' weights set now."""
        self.text_encoder_adapted = False
        """Whether a runtime adapter changes the text encoder (embeddings depend on scales)."""
        self._count = 0

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def load(self, specs: Sequence[LoraSpec]) -> None:
        """Load `specs`: permanent ones fused first, then runtime ones as adapters. Raises
        PipelineError naming the LoRA that failed; what it had added is removed again."""
        permanent = [s for s in specs if not s.runtime]
        runtime = [s for s in specs if s.runtime]
        if permanent:
            names = [self._load_one(s) for s in permanent]
            self.set_adapters(names, [s.scale for s in permanent])
            self.fuse_lora(components=_COMPONENTS, lora_scale=1.0, adapter_names=names)
            self.unload_lora_weights()  # the fused weights stay; the PEFT layers go
        for spec in runtime:
            self.runtime.append((self._load_one(spec), spec))
        if self.runtime:
            self.text_encoder_adapted = any(
                name in (getattr(self.text_encoder, "peft_config", None) or {})
                for name, _ in self.runtime)
            self.set_scales(tuple(s.scale for _, s in self.runtime))

    def try_load(self, specs: Sequence[LoraSpec]) -> None:
        """Load each file as an extra adapter and remove it again: raises PipelineError for the
        first that does not load, with the models as they were."""
        try:
            for spec in specs:
                self._forget(self._load_one(spec))
        finally:
            # loading made each new adapter the active one: make the runtime ones active again
            if self.runtime:
                self.set_adapters([name for name, _ in self.runtime], list(self.scales))

    def _load_one(self, spec: LoraSpec) -> str:
        name = f"lora_{self._count}"
        self._count += 1
        path = Path(spec.path)
        try:
            with warnings.catch_warnings():  # PEFT's notes on adding/removing adapters
                warnings.simplefilter("ignore", UserWarning)
                self.load_lora_weights(str(path.parent), weight_name=path.name,
                                       adapter_name=name, local_files_only=True)
        except Exception as exc:
            self._forget(name)
            raise PipelineError(_explain(path.name, exc)) from exc
        if name not in _adapter_names(self.unet) | _adapter_names(self.text_encoder):
            raise PipelineError(f"LoRA {path.name} changed no layer of this model: it is not "
                                "an SD-1.x/2.x LoRA (keys for another model?).")
        log.info("LoRA %s loaded as %s (%s, scale %g)", path.name, name, spec.merge_mode,
                 spec.scale)
        return name

    def _forget(self, name: str) -> None:
        """Remove a half-loaded adapter so the models are as before."""
        try:
            with warnings.catch_warnings():  # PEFT's note on the active adapter changing
                warnings.simplefilter("ignore", UserWarning)
                if name in _adapter_names(self.unet):
                    self.unet.delete_adapters([name])
                    if not _adapter_names(self.unet):  # no adapter left: plain layers again
                        self.unet.unload_lora()
                if name in _adapter_names(self.text_encoder):
                    # drops the config entry too, and `peft_config` itself with the last one
                    delete_adapter_layers(self.text_encoder, name)
                    (getattr(self.text_encoder, "peft_config", None) or {}).pop(name, None)
                    if not _adapter_names(self.text_encoder):  # no adapter left: plain layers
                        _remove_text_encoder_monkey_patch(self.text_encoder)
        except Exception:  # the error that got us here is the one to report
            log.exception("could not remove the half-loaded LoRA %s", name)

    @classmethod
    def load_lora_into_text_encoder(cls, state_dict: dict[str, torch.Tensor],
                                    network_alphas: dict[str, float] | None,
                                    text_encoder: torch.nn.Module, prefix: str | None = None,
                                    lora_scale: float = 1.0, adapter_name: str | None = None,
                                    metadata: dict[str, Any] | None = None,
                                    **_: Any) -> None:
        """diffusers' text-encoder loading with the injection done by PEFT itself.

        diffusers hands the text encoder to transformers' `load_adapter`, which in transformers
        5.24 insists on peft >= 0.22 (not released when this was written); PEFT 0.21's
        `inject_adapter_in_model` + `set_peft_model_state_dict` do the same injection. The keys
        are converted by diffusers' own converters, as in its loader."""
        prefix = prefix or cls.text_encoder_name
        state_dict = {k.removeprefix(f"{prefix}."): v for k, v in state_dict.items()
                      if k.startswith(f"{prefix}.")}
        if not state_dict:
            return
        if metadata is not None:
            metadata = {k.removeprefix(f"{prefix}."): v for k, v in metadata.items()
                        if k.startswith(f"{prefix}.")}
        state_dict = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state_dict))
        if not hasattr(text_encoder, "text_model"):
            state_dict = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
        rank = {f"{name}.lora_B.weight": state_dict[f"{name}.lora_B.weight"].shape[1]
                for name, _ in text_encoder.named_modules()
                if f"{name}.lora_B.weight" in state_dict}
        if network_alphas is not None:
            network_alphas = {k.removeprefix(f"{prefix}."): v for k, v in network_alphas.items()
                              if k.split(".")[0] == prefix}
        config = _create_lora_config(state_dict, network_alphas, metadata, rank, is_unet=False)
        with warnings.catch_warnings():  # "already found a peft_config": a second adapter
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(config, text_encoder, adapter_name=adapter_name)
        if getattr(text_encoder, "peft_config", None) is None:
            text_encoder.peft_config = {}
        text_encoder.peft_config[adapter_name] = config
        text_encoder._hf_peft_config_loaded = True
        result = set_peft_model_state_dict(text_encoder, state_dict, adapter_name=adapter_name)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise ValueError(f"{len(unexpected)} text-encoder LoRA weights match no layer "
                             f"(e.g. {unexpected[0]})")
        text_encoder.to(device=text_encoder.device, dtype=text_encoder.dtype)

    def set_scales(self, scales: tuple[float, ...]) -> None:
        """Weights of the runtime adapters, in load order (0 turns one off)."""
        if scales == self.scales or not self.runtime:
            return
        self.set_adapters([name for name, _ in self.runtime], list(scales))
        self.scales = scales


def _adapter_names(model: torch.nn.Module) -> set[str]:
    return set(getattr(model, "peft_config", None) or {})


def _explain(name: str, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, RuntimeError) and "size mismatch" in str(exc):
        return (f"LoRA {name} does not fit this model (its layer shapes differ: a LoRA for "
                f"another base model, e.g. SDXL or SD 2.x on SD 1.5?). {_short(text)}")
    if isinstance(exc, ValueError | KeyError):
        return (f"LoRA {name} is not in a format diffusers reads for SD models (diffusers/PEFT "
                f"or kohya sd-scripts): {_short(text)}")
    return f"LoRA {name} could not be loaded: {_short(text)}"


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
