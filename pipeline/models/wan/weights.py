"""Loading Wan2.1 weights: the diffusers-format base model plus a distilled causal generator.

- `model_id`: a diffusers-format Wan2.1-T2V-1.3B folder or hub id (model_index.json, tokenizer/,
  text_encoder/, vae/, scheduler/, transformer/), e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers.
- `checkpoint`: the generator weights, a local file or a hub file `owner/name/path/in/repo`
  (.pt/.pth/.bin through torch.load(weights_only=True), or .safetensors). Training checkpoints
  of the Self-Forcing lineage (LongLive's longlive_base.pt, StreamDiffusionV2's model.pt) are
  `{"generator": {"model.blocks.0.self_attn.q.weight": ...}, ...}`: the state dict of their
  `WanDiffusionWrapper`, whose `model` is the causal Wan. The nest is unwrapped (`generator`
  first, as both projects' inference scripts load it, then `generator_ema`, `model`,
  `state_dict`) and wrapper names dropped (`wan/keys.py`); original Wan key names are renamed
  to diffusers' with diffusers' own single-file converter. The weights must fit the
  folder's transformer/config.json exactly, else the error says which keys do not.
- `fused`: LoRAs added to the generator's weights before it is built (`wan/loras.py`: the
  built-in `lora` LongLive ships its long-video tuning as, and the `loras` entries whose merge
  mode is permanent).
- No checkpoint: the folder's own transformer (the bidirectional base model).

Failures raise `PipelineError`s a person can act on: what is missing where, a checkpoint that does
not fit, or not enough memory (checked before the weights are read).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.base import PipelineError, ProgressCallback
from pipeline.models.diffusion.loading import (
    Source,
    component_variant,
    is_out_of_memory,
    loading,
    out_of_memory,
    resolve_source,
)

from .keys import to_diffusers_keys, unwrap
from .loras import Fused, fuse

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
LAYOUT = ("a Wan model folder is laid out like Wan-AI/Wan2.1-T2V-1.3B-Diffusers: "
          "model_index.json, tokenizer/, text_encoder/, vae/, scheduler/, transformer/")
MEMORY_ADVICE = ("Load with a smaller height/width, use bfloat16 on CUDA (dtype), serve fewer "
                 "sessions at once, or free memory used by other processes.")


@dataclass
class WanModel:
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    transformer: torch.nn.Module
    """diffusers `WanTransformer3DModel` holding the generator's weights."""


# --- files ---------------------------------------------------------------------------------------

def is_local_file_ref(ref: str) -> bool:
    """True for a filesystem path, False for a hub file `owner/name/path/in/repo` (which has
    more than one slash, unlike a hub id, so `paths.looks_local` would call it local)."""
    return ref.startswith((".", "/", "~")) or "\\" in ref or Path(ref).expanduser().exists()


def split_hub_file(ref: str) -> tuple[str, str]:
    """`owner/name/path/in/repo` → (`owner/name`, `path/in/repo`)."""
    parts = ref.strip("/").split("/")
    if len(parts) < 3:
        raise PipelineError(f"{ref!r} is neither an existing file nor a hub file reference "
                            "(owner/name/path/in/repo, e.g. "
                            "Efficient-Large-Model/LongLive-1.3B/models/longlive_base.pt).")
    return "/".join(parts[:2]), "/".join(parts[2:])


def fetch_file(ref: str, what: str, device: torch.device) -> Path:
    """A local file, or a hub file downloaded (or taken from the cache)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if is_local_file_ref(ref):
        raise PipelineError(f"The {what} file {path} does not exist"
                            + (" (it is a folder: name the weights file inside it)."
                               if path.is_dir() else "."))
    repo, filename = split_hub_file(ref)
    source = resolve_source(repo, probe_file=filename, layout=LAYOUT, example=DEFAULT_MODEL)
    with loading(what, source, device, layout=LAYOUT, advice=MEMORY_ADVICE):
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename, local_files_only=source.local_files_only))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return unwrap(torch.load(path, map_location="cpu", weights_only=True, mmap=True))


def read_checkpoint(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return unwrap(read_state_dict(path))
    except PipelineError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(f"read the {what} {path}", torch.device("cpu"),
                                MEMORY_ADVICE) from exc
        raise PipelineError(f"Could not read the {what} {path}: {exc}. Pass a .pt/.pth/.bin "
                            "(torch.save) or .safetensors file of weights.") from exc


# --- fitting weights to the model ----------------------------------------------------------------

def check_fit(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str,
              config_source: str) -> None:
    """Raise a `PipelineError` naming the keys that do not match the model built from config."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model"
                  for k, v in expected.items()
                  if k in state_dict and state_dict[k].shape != v.shape]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("of another shape", mismatched)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {'; '.join(items[:3])})")
    raise PipelineError(
        f"The {what} does not fit the transformer of {config_source}: {', '.join(parts)} keys. "
        "Use a generator distilled from the same base model (Wan2.1-T2V-1.3B for these "
        "pipelines) or the matching model_id.")


# --- memory --------------------------------------------------------------------------------------

def available_memory(device: torch.device) -> int | None:
    """Bytes free for weights on `device` (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(need: int, device: torch.device) -> None:
    free = available_memory(device)
    if free is not None and need > free:
        where = "GPU memory" if device.type == "cuda" else "memory"
        raise PipelineError(f"Not enough {where} to load this model: its weights need "
                            f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free. "
                            f"{MEMORY_ADVICE}")


def _param_bytes(model_cls: Any, config: Any, dtype: torch.dtype) -> int:
    with torch.device("meta"):
        model = model_cls.from_config(config) if hasattr(model_cls, "from_config") else (
            model_cls._from_config(config))
    size = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in model.parameters()) * size


# --- the whole model -----------------------------------------------------------------------------

def load_wan_model(model_id: str, checkpoint: str | None, device: torch.device,
                   dtype: torch.dtype, progress: ProgressCallback,
                   fused: Sequence[Fused] = ()) -> WanModel:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    progress(0.02, "resolving model")
    model = resolve_source(model_id, probe_file="transformer/config.json", layout=LAYOUT,
                           example=DEFAULT_MODEL)
    if model.is_folder and not (Path(model.ref) / "model_index.json").is_file():
        raise PipelineError(f"{model.ref} has no model_index.json: it is not a diffusers model "
                            f"folder ({LAYOUT}).")

    def common(source: Source, subfolder: str) -> dict[str, Any]:
        return {"subfolder": subfolder, "local_files_only": source.local_files_only}

    def step(component: str, subfolder: str) -> Any:
        return loading(component, model, device, subfolder, layout=LAYOUT, advice=MEMORY_ADVICE)

    progress(0.04, "checking memory")
    with step("transformer config", "transformer"):
        t_config = WanTransformer3DModel.load_config(model.ref, **common(model, "transformer"))
    with step("text encoder config", "text_encoder"):
        e_config = UMT5Config.from_pretrained(model.ref, **common(model, "text_encoder"))
    check_memory(_param_bytes(WanTransformer3DModel, t_config, dtype)
                 + _param_bytes(UMT5EncoderModel, e_config, dtype), device)

    progress(0.06, "loading tokenizer")
    with step("tokenizer", "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(model.ref, **common(model, "tokenizer"))
    progress(0.1, "loading text encoder (UMT5)")
    with step("text encoder", "text_encoder"):
        text_encoder = UMT5EncoderModel.from_pretrained(
            model.ref, dtype=dtype, variant=component_variant(model, "text_encoder", dtype),
            **common(model, "text_encoder")).to(device)
    progress(0.3, "loading VAE")
    with step("VAE", "vae"):
        vae = AutoencoderKLWan.from_pretrained(
            model.ref, dtype=torch.float32 if dtype == torch.float16 else dtype,
            **common(model, "vae")).to(device)
    if checkpoint is None:
        progress(0.4, "loading transformer")
        with step("transformer", "transformer"):
            transformer = WanTransformer3DModel.from_pretrained(
                model.ref, dtype=dtype, variant=component_variant(model, "transformer", dtype),
                **common(model, "transformer"))
        if fused:
            progress(0.6, f"fusing {len(fused)} LoRA(s)")
            state = dict(transformer.state_dict())
            fuse(state, fused, dtype)
            transformer.load_state_dict(state)
    else:
        transformer = _load_generator(t_config, checkpoint, model.ref, device, dtype, progress,
                                      fused)
    progress(0.8, "moving transformer to the device")
    try:
        transformer = transformer.to(device)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory("load the transformer", device, MEMORY_ADVICE) from exc
        raise
    for module in (text_encoder, vae, transformer):
        module.eval().requires_grad_(False)
    return WanModel(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                    transformer=transformer)


def _load_generator(config: Any, checkpoint: str, model_ref: str, device: torch.device,
                    dtype: torch.dtype, progress: ProgressCallback,
                    fused: Sequence[Fused]) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    progress(0.4, "fetching generator checkpoint")
    path = fetch_file(checkpoint, "generator checkpoint", device)
    progress(0.5, f"reading generator checkpoint {path.name}")
    state = to_diffusers_keys(read_checkpoint(path, "generator checkpoint"))
    if fused:
        progress(0.6, f"fusing {len(fused)} LoRA(s)")
        fuse(state, fused, dtype)
    progress(0.7, "building transformer")
    transformer = empty_model(WanTransformer3DModel, config)
    check_fit(transformer, state, f"generator checkpoint {checkpoint}", model_ref)
    return fill(transformer, state, dtype)


def empty_model(model_cls: Any, config: Any) -> Any:
    """A model built from `config` with parameters on the meta device (no memory, no random
    init); buffers (RoPE tables) stay real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return model_cls.from_config(config)


def fill(model: Any, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    """Load `state` into an `empty_model`, in `dtype` except the modules the class keeps in
    float32 (as diffusers' from_pretrained does)."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())

    def wanted(key: str) -> torch.dtype:
        return torch.float32 if any(part in keep for part in key.split(".")) else dtype

    model.load_state_dict({k: v.to(wanted(k)) for k, v in state.items()}, assign=True)
    return model


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device='cuda' was requested but CUDA is not available on this "
                            "server; use device='auto' or 'cpu'.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

