"""LoRAs on the Wan2.1 generator: read in the formats people publish, then fused or kept live.

Reading (`read_lora`): diffusers' `WanLoraLoaderMixin.lora_state_dict` converts the published
formats to diffusers' PEFT names (`blocks.0.attn1.to_q.lora_A.weight`): original Wan
(`diffusion_model.…`, `.alpha` folded in), musubi-tuner/kohya (`lora_unet_…`) and diffusers.
Training checkpoints saved with `torch.save` are read with `torch.load(weights_only=True)`
(tensors and plain containers; no code runs) and unwrapped like generator checkpoints: LongLive's
own `lora.pt` is `{"generator_lora": get_peft_model_state_dict(...), ...}` with keys
`base_model.model.blocks.0.self_attn.q.lora_A.weight` (rank 256, alpha 256); original names go
through the same diffusers converter under its `diffusion_model.` prefix. Nothing is renamed here.

- permanent: `fuse` adds s·B·A (and s·lora_B's bias, the `diff_b` of some trainers) to the
  weights in float32 before the transformer is built: full speed, the scale fixed.
- runtime_peft: `RuntimeAdapters` injects PEFT adapters into the final transformer (VACE joined)
  and sets their weights per chunk (`set_adapters`, only when they change), so each session's
  `lora_scales` apply to its own chunks. Cost: the low-rank matmuls of every adapted layer.

A scale change is a change of conditions like a new prompt: with `manage_cache` on it restarts
the session's KV cache, whose frames (the sinks for good) were made at the old scale and would
hold the picture back (wan/video.py).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.base import PipelineError
from pipeline.resources.loras import LoraSpec

from .keys import is_original_naming, unwrap

log = logging.getLogger(__name__)

_PART = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<kind>weight|bias)$")
_ADAPTER_NAME = re.compile(r"\.lora_([AB])\.(?!weight$|bias$)[^.]+\.(weight|bias)$")
"""PEFT keys that still carry their adapter's name (`lora_A.default.weight`)."""
HINT = "Wan pipelines take Wan2.1-T2V-1.3B LoRAs."


def read_lora(path: Path, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """A LoRA file as diffusers' Wan PEFT state dict (keys relative to the transformer).
    `alpha`: the LoRA's alpha when the file does not say (training checkpoints); unset = its
    rank (scale 1). Raises PipelineError naming the file."""
    from diffusers.loaders import WanLoraLoaderMixin

    try:
        if path.suffix.lower() == ".safetensors":
            raw = WanLoraLoaderMixin.lora_state_dict(str(path.parent), weight_name=path.name,
                                                     local_files_only=True)
        else:
            tensors = unwrap(torch.load(path, map_location="cpu", weights_only=True))
            tensors = {_ADAPTER_NAME.sub(r".lora_\1.\2", k): v for k, v in tensors.items()}
            if is_original_naming(tensors):
                tensors = {f"diffusion_model.{k}": v for k, v in tensors.items()}
            raw = WanLoraLoaderMixin.lora_state_dict(tensors)
    except Exception as exc:
        raise PipelineError(f"LoRA {path.name} is not a Wan LoRA that diffusers reads (original "
                            "Wan, musubi/kohya, diffusers, or a PEFT training checkpoint such "
                            f"as LongLive's lora.pt): {type(exc).__name__}: "
                            f"{str(exc)[:300]}") from exc
    lora = {k.removeprefix("transformer."): v for k, v in raw.items()}
    if not any(_PART.match(k) for k in lora):
        raise PipelineError(f"LoRA {path.name} has no lora_A/lora_B weights. {HINT}")
    if alpha is not None:
        for key in [k for k in lora if k.endswith(".lora_A.weight")]:
            lora[key] = lora[key] * (alpha / lora[key].shape[0])
    return lora


def pairs(lora: Mapping[str, torch.Tensor], name: str) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {"A": down, "B": up, "bias"?: up's bias}}; raises for a half pair."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        match = _PART.match(key)
        if match:
            part = "bias" if match["kind"] == "bias" else match["part"]
            out.setdefault(match["module"], {})[part] = value
    for module, parts in out.items():
        if not {"A", "B"} <= set(parts):
            raise PipelineError(f"LoRA {name} has only lora_{''.join(sorted(parts))} for "
                                f"{module}.")
    return out


def check_fit(shapes: Mapping[str, torch.Size], lora: Mapping[str, torch.Tensor],
              name: str) -> dict[str, dict[str, torch.Tensor]]:
    """The LoRA's pairs, checked against the model's linear layers (`shapes`: module name →
    its weight's shape): every layer it changes exists, with the shape its factors need."""
    found = pairs(lora, name)
    unknown = [m for m in found if m not in shapes]
    if unknown:
        raise PipelineError(f"LoRA {name} does not fit the generator: {len(unknown)} layers it "
                            f"changes do not exist (e.g. {', '.join(unknown[:3])}). {HINT}")
    for module, parts in found.items():
        out_features, in_features = shapes[module][:2]
        a, b = parts["A"], parts["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_features or b.shape[0] != out_features \
                or a.shape[0] != b.shape[1]:
            raise PipelineError(
                f"LoRA {name} does not fit the generator: {module} is {out_features}×"
                f"{in_features}, the LoRA's factors are {tuple(b.shape)} and {tuple(a.shape)} "
                f"(a LoRA for another base model?). {HINT}")
    return found


def layer_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    """Module name → weight shape of the model's linear layers (a PEFT-wrapped layer under
    its own name, not its `base_layer`'s)."""
    return {name.removesuffix(".base_layer"): module.weight.shape
            for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
            and ".lora_" not in name}


@dataclass(frozen=True)
class Fused:
    """A LoRA to fuse: its file, strength and (training checkpoints) alpha."""

    path: Path
    scale: float = 1.0
    alpha: float | None = None


def fuse(state: dict[str, torch.Tensor], loras: Sequence[Fused], dtype: torch.dtype) -> None:
    """Permanent LoRAs: each file's W += scale·B·A (lora_B's bias likewise), in float32, the
    results in `dtype` (a bf16 checkpoint loaded in float32 is not rounded to bf16 after the
    merge). `state` is the transformer's state dict, changed in place."""
    shapes = {k.removesuffix(".weight"): v.shape for k, v in state.items()
              if k.endswith(".weight") and v.ndim == 2}
    for item in loras:
        path, scale = item.path, item.scale
        found = check_fit(shapes, read_lora(path, item.alpha), path.name)
        for module, parts in found.items():
            key = f"{module}.weight"
            delta = parts["B"].float() @ parts["A"].float()
            state[key] = (state[key].float() + scale * delta).to(dtype)
            if "bias" in parts and f"{module}.bias" in state:
                bias = state[f"{module}.bias"]
                state[f"{module}.bias"] = (bias.float() + scale * parts["bias"].float()).to(
                    bias.dtype)
        log.info("fused LoRA %s (scale %g) into %d layers", path.name, scale, len(found))


class RuntimeAdapters:
    """Live-scaled LoRAs of one transformer: PEFT adapters whose weights change per chunk."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.runtime: list[tuple[str, LoraSpec]] = []
        """(adapter name, spec), in load order."""
        self.scales: tuple[float, ...] = ()
        self._count = 0

    def prepare(self, specs: Sequence[LoraSpec]) -> list[tuple[LoraSpec, dict[str, torch.Tensor]]]:
        """Read each file and check it fits this model, changing nothing: what `load` adds
        (each file read once). Raises PipelineError."""
        shapes = layer_shapes(self.model)
        prepared = []
        for spec in specs:
            path = Path(spec.path)
            lora = read_lora(path)
            found = check_fit(shapes, lora, path.name)
            if any("bias" in parts for parts in found.values()):  # PEFT: all or none
                for module, parts in found.items():
                    if "bias" not in parts:
                        lora[f"{module}.lora_B.bias"] = parts["B"].new_zeros(parts["B"].shape[0])
            prepared.append((spec, lora))
        return prepared

    def load(self, prepared: Sequence[tuple[LoraSpec, dict[str, torch.Tensor]]]) -> None:
        """Add what `prepare` read as adapters at their load scales. Raises PipelineError with
        the model as it was (what this call added is removed again)."""
        added: list[str] = []
        try:
            for spec, lora in prepared:
                name = f"lora_{self._count}"
                self._count += 1
                with warnings.catch_warnings():  # PEFT's notes on several adapters
                    warnings.simplefilter("ignore", UserWarning)
                    self.model.load_lora_adapter(lora, prefix=None, adapter_name=name)
                added.append(name)
                self.runtime.append((name, spec))
                log.info("LoRA %s loaded as %s (runtime_peft, scale %g)", Path(spec.path).name,
                         name, spec.scale)
        except Exception as exc:
            self._remove(added)
            self.runtime = [(n, s) for n, s in self.runtime if n not in added]
            raise PipelineError(f"LoRA could not be loaded: {type(exc).__name__}: "
                                f"{str(exc)[:300]}") from exc
        self.scales = ()
        self.set_scales(tuple(spec.scale for _, spec in self.runtime))

    def set_scales(self, scales: tuple[float, ...]) -> None:
        """The adapters' weights, in load order (0 turns one off)."""
        if scales == self.scales or not self.runtime:
            return
        self.model.set_adapters([name for name, _ in self.runtime], list(scales))
        self.scales = scales

    def clear(self) -> None:
        """Remove every adapter: the model is plain again."""
        self._remove([name for name, _ in self.runtime])
        self.runtime, self.scales = [], ()

    def _remove(self, names: Sequence[str]) -> None:
        loaded = set(getattr(self.model, "peft_config", None) or {})
        present = [n for n in names if n in loaded]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if present and set(present) == loaded:
                self.model.unload_lora()  # the PEFT layers go too: plain Linear layers again
            elif present:
                self.model.delete_adapters(present)
