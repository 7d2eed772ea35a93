"""Loading an SD-1.x/2.x-style checkpoint component by component with `from_pretrained`.

A checkpoint is a hub id (`stabilityai/sd-turbo`) or a local folder laid out like one (tokenizer/,
text_encoder/, unet/, scheduler/, vae/). Failures become `PipelineError`s that say what to do:
the hub is offline or unreachable, a folder is missing or incomplete, memory ran out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.base import PipelineError, ProgressCallback
from pipeline.resources.hub import folder_variant
from pipeline.resources.paths import looks_local

log = logging.getLogger(__name__)

TAESD_ID = "madebyollin/taesd"
FULL_VAE = "full"
"""`vae_id` value that selects the checkpoint's own `vae/` (AutoencoderKL)."""
HUB_PROBE_TIMEOUT_S = 10.0
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
WEIGHT_VARIANTS = {torch.float16: "fp16", torch.bfloat16: "bf16"}
"""The hub weights variant that matches a load dtype (float32 loads the full-precision files)."""
_FOLDER_LAYOUT = ("a model folder is laid out like a hub repo: tokenizer/, text_encoder/, unet/, "
                  "scheduler/ (and vae/ for vae_id='full'), as written by save_pretrained")


@dataclass
class SDModel:
    """What the stream loop needs from a checkpoint."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    tiny_vae: bool
    alphas_cumprod: torch.Tensor
    """ᾱ_t for t in 0..T-1 (float64, CPU), from the checkpoint's scheduler config."""
    prediction_type: str


@dataclass(frozen=True)
class Source:
    """Where a component comes from: a local folder, or a hub id (online or from the cache)."""

    ref: str
    is_folder: bool
    local_files_only: bool


def hub_offline() -> bool:
    import huggingface_hub.constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def resolve_source(ref: str, probe_file: str, *, layout: str = _FOLDER_LAYOUT,
                   example: str = "stabilityai/sd-turbo") -> Source:
    """Decide how to load `ref`; raise an actionable error when that cannot work at all.

    The hub is probed once with a short timeout: without it, each file download retries for ~25 s
    before giving up. When the hub cannot be reached but `probe_file` is cached, the cache is used.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return Source(str(path), is_folder=True, local_files_only=True)
    if looks_local(ref):
        raise PipelineError(f"Model folder {path} does not exist. Pass an existing folder "
                            f"({layout}) or a Hugging Face hub id such as {example}.")
    if hub_offline():
        return Source(ref, is_folder=False, local_files_only=True)
    return Source(ref, is_folder=False, local_files_only=not _hub_has(ref, probe_file))


def _hub_has(ref: str, probe_file: str) -> bool:
    """True when the hub answers for `ref`; False when it is unreachable but `ref` is cached."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        HfApi().model_info(ref, timeout=HUB_PROBE_TIMEOUT_S)
        return True
    except RepositoryNotFoundError as exc:
        raise PipelineError(
            f"{ref!r} is neither a local folder nor a model on the Hugging Face Hub. Check the id; "
            "a private or gated model needs `huggingface-cli login` (or HF_TOKEN).") from exc
    except HFValidationError as exc:
        raise PipelineError(f"{ref!r} is neither an existing folder nor a valid hub id "
                            "(owner/name).") from exc
    except Exception as exc:  # DNS, proxy, timeout, hub down: the cache may still have it
        cached = try_to_load_from_cache(ref, probe_file)
        if isinstance(cached, str):
            log.warning("Hugging Face Hub unreachable (%s); using the cached %s", exc, ref)
            return False
        raise PipelineError(_unreachable(ref)) from exc


def _unreachable(ref: str) -> str:
    return (f"Cannot reach the Hugging Face Hub to download {ref!r}, and it is neither in the "
            "local cache nor a folder here. Check the network or proxy; or pre-download it with "
            f"`huggingface-cli download {ref}` and set HF_HUB_OFFLINE=1; or pass a local folder "
            "instead.")


def _not_cached(ref: str) -> str:
    return (f"{ref!r} is not (completely) in the local Hugging Face cache and HF_HUB_OFFLINE is "
            f"set. Pre-download it with `huggingface-cli download {ref}` (on a machine with "
            "internet, then copy HF_HOME), unset HF_HUB_OFFLINE, or pass a local folder instead.")


def component_variant(source: Source, subfolder: str | None, dtype: torch.dtype) -> str | None:
    """`from_pretrained(variant=...)` for a component loaded in `dtype`: the dtype's variant
    where its weights are on disk (the folder, or the cached snapshot: what the download chose
    for that component), else None (the full-precision files)."""
    wanted = WEIGHT_VARIANTS.get(dtype)
    if wanted is None:
        return None
    if source.is_folder:
        return folder_variant(Path(source.ref, subfolder or ""), wanted)
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(source.ref, f"{subfolder}/config.json" if subfolder
                                    else "config.json")
    return folder_variant(Path(config).parent, wanted) if isinstance(config, str) else None


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (isinstance(exc, (torch.OutOfMemoryError, MemoryError))
            or any(m in text for m in ("out of memory", "not enough memory",
                                       "can't allocate memory")))


SD_MEMORY_ADVICE = ("Load with a smaller height/width, keep the tiny VAE (leave vae_id unset "
                    "rather than 'full'), use float16 on CUDA, serve fewer sessions at once, or "
                    "free memory used by other processes.")


def out_of_memory(action: str, device: torch.device,
                  advice: str = SD_MEMORY_ADVICE) -> PipelineError:
    where = "GPU memory" if device.type == "cuda" else "memory"
    return PipelineError(f"Not enough {where} to {action}. {advice}")


def _is_network_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return (isinstance(exc, (ConnectionError, TimeoutError))
            or bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "TransportError"}))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@contextmanager
def loading(component: str, source: Source, device: torch.device,
            subfolder: str | None = None, *, layout: str = _FOLDER_LAYOUT,
            advice: str = SD_MEMORY_ADVICE) -> Iterator[None]:
    """Turn whatever loading `component` raises into a `PipelineError` that says what to do."""
    where = Path(source.ref, subfolder) if subfolder else Path(source.ref)
    # transformers quietly builds an empty tokenizer from a folder without one: check first.
    if source.is_folder and not where.is_dir():
        raise PipelineError(f"Could not load the {component} from {where}: no such folder "
                            f"({layout}).")
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if any(is_out_of_memory(e) for e in _chain(exc)):
            raise out_of_memory(f"load the {component}", device, advice) from exc
        if source.is_folder:
            raise PipelineError(f"Could not load the {component} from {where}: {detail} "
                                f"({layout}).") from exc
        if any(_is_network_error(e) for e in _chain(exc)):
            message = _not_cached(source.ref) if hub_offline() else _unreachable(source.ref)
            raise PipelineError(message) from exc
        raise PipelineError(f"Could not load the {component} of {source.ref!r}: {detail}") from exc


def load_sd_model(model_id: str, vae_id: str | None, device: torch.device, dtype: torch.dtype,
                  progress: ProgressCallback) -> SDModel:
    """Load tokenizer, text encoder, UNet, noise schedule and VAE onto `device`.

    `vae_id`: None → TAESD (AutoencoderTiny); "full" → the checkpoint's own AutoencoderKL;
    anything else → a hub id or folder of an AutoencoderTiny.
    """
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    progress(0.02, "resolving model")
    model = resolve_source(model_id, probe_file="unet/config.json")
    tiny_vae = vae_id != FULL_VAE
    vae_source = resolve_source(vae_id or TAESD_ID, "config.json") if tiny_vae else model

    def common(source: Source, subfolder: str | None) -> dict[str, Any]:
        return {"subfolder": subfolder, "local_files_only": source.local_files_only}

    def weights(source: Source, subfolder: str | None) -> dict[str, Any]:
        return {**common(source, subfolder), "dtype": dtype,
                "variant": component_variant(source, subfolder, dtype)}

    progress(0.05, "loading tokenizer")
    with loading("tokenizer", model, device, "tokenizer"):
        tokenizer = CLIPTokenizer.from_pretrained(model.ref, **common(model, "tokenizer"))
    progress(0.1, "loading text encoder")
    with loading("text encoder", model, device, "text_encoder"):
        text_encoder = CLIPTextModel.from_pretrained(
            model.ref, **weights(model, "text_encoder")).to(device)
    progress(0.25, "loading scheduler config")
    with loading("scheduler config", model, device, "scheduler"):
        alphas_cumprod, prediction_type = _noise_schedule(model)
    progress(0.3, "loading UNet")
    with loading("UNet", model, device, "unet"):
        unet = UNet2DConditionModel.from_pretrained(
            model.ref, **weights(model, "unet")).to(device)
    progress(0.7, "loading VAE" if not tiny_vae else "loading tiny VAE (TAESD)")
    with loading("VAE", vae_source, device, None if tiny_vae else "vae"):
        if tiny_vae:
            vae = AutoencoderTiny.from_pretrained(vae_source.ref, **weights(vae_source, None))
        else:
            # SD's KL VAE overflows in float16 (its config says force_upcast): keep it float32.
            vae = AutoencoderKL.from_pretrained(model.ref, **common(model, "vae"))
            if not vae.config.get("force_upcast", False):
                vae = vae.to(dtype)
        vae = vae.to(device)
    for module in (text_encoder, unet, vae):
        module.eval().requires_grad_(False)
    return SDModel(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae,
                   tiny_vae=tiny_vae, alphas_cumprod=alphas_cumprod,
                   prediction_type=prediction_type)


def _noise_schedule(source: Source) -> tuple[torch.Tensor, str]:
    """ᾱ_t and the prediction type, from the checkpoint's own scheduler config."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(source.ref, subfolder="scheduler",
                                                 local_files_only=source.local_files_only)
    scheduler_cls = getattr(diffusers, str(config.get("_class_name")), diffusers.DDPMScheduler)
    scheduler = scheduler_cls.from_config(config)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(alphas_cumprod, torch.Tensor):
        raise PipelineError(f"{scheduler_cls.__name__} (scheduler of {source.ref}) has no DDPM "
                            "noise schedule; only SD-1.x/2.x-style schedulers are supported.")
    prediction_type = str(config.get("prediction_type", "epsilon"))
    if prediction_type not in PREDICTION_TYPES:
        raise PipelineError(f"Unsupported prediction_type {prediction_type!r} in the scheduler "
                            f"config of {source.ref} (supported: {', '.join(PREDICTION_TYPES)}).")
    return alphas_cumprod.to(torch.float64), prediction_type
