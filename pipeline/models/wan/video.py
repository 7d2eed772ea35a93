"""`WanVideoPipeline`: the chunk-by-chunk loop shared by `longlive` and `streamdiffusionv2`.

Per call and session (one chunk; `frames_per_call` frames in video mode):

1. conditioning: the UMT5 embedding of the prompt list, blended and moved along a transition
   (pipeline/models/blending.py), cached per text;
2. start latents: text mode pure noise; video mode the input encoded by the streaming VAE and
   noised to n = `noise_scale` (or what the motion-aware controller makes of it),
   x = n·ε + (1 − n)·z; with VACE on, the encoded input becomes VACE's control context instead
   and the chunk starts from pure noise (structure from VACE, appearance from the prompt);
3. few-step flow-matching denoising over `denoising_step_list` (wan/sampling.py), each step one
   call of the causal transformer, which attends to the session's KV cache of past frames;
4. the clean pass: the denoised chunk at timestep 0 is committed to the KV cache;
5. the streaming VAE decodes the chunk: as many frames as came in (1 + 4k on a session's first
   chunk, 4k after); in text mode every chunk is k latent frames (the model's block), so the
   first decodes to 1 + 4(k − 1) frames.

Cache management: with `manage_cache` (default on) the transformer's KV cache restarts when the
prompt changes outside a transition, or the step list, `noise_scale` or a runtime LoRA's scale
(`lora_scales`) changes: old context under new conditions drags the picture back (the sinks
keep it for good); `reset_cache` restarts the whole session (VAE included). Sessions are
processed one after another: each has its own caches.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from pydantic import AliasChoices, Field
from pydantic.fields import FieldInfo

from pipeline.base import FrameRequest, LoadParams, Pipeline, PipelineError, ProgressCallback
from pipeline.hints import ui
from pipeline.models.blending import conditioning
from pipeline.models.diffusion.loading import WEIGHT_VARIANTS, is_out_of_memory, out_of_memory
from pipeline.models.diffusion.noise import seeded_normal
from pipeline.models.streamdiffusion import crop_to_aspect
from pipeline.params import FrameParams, Mode, ParameterState, WeightedPrompt
from pipeline.resources.hub import HubModel
from pipeline.resources.loras import LoraParams, LoraSpec, runtime_scale_key, scale_overrides
from pipeline.resources.paths import looks_local

from . import sampling
from .loras import Fused, RuntimeAdapters
from .text import MAX_LENGTH, TextEncoder
from .vace_loading import load_vace_transformer, vace_control
from .vae import TEMPORAL, StreamingVAE, VAECache
from .weights import (
    DEFAULT_MODEL,
    MEMORY_ADVICE,
    WanModel,
    fetch_file,
    is_local_file_ref,
    load_wan_model,
    resolve_device,
    resolve_dtype,
    split_hub_file,
)

_NOISE_TAG = 7  # seeds of this module's noise never coincide with streamdiffusion's


class WanParams(LoraParams, LoadParams):
    """`load_params` shared by the Wan pipelines (each sets its own defaults). The built-in
    `lora` and the permanent `loras` are fused into the generator at load; runtime_peft ones
    stay PEFT adapters whose scales follow each session's `lora_scales` (wan/loras.py)."""

    height: int = Field(default=512, ge=16, le=2048, multiple_of=16,
                        description="Output height (multiple of 16: VAE 8× and 2×2 patches).",
        json_schema_extra=ui(1, "Height", component="resolution"))
    width: int = Field(default=512, ge=16, le=2048, multiple_of=16,
                       description="Output width (multiple of 16).",
        json_schema_extra=ui(1, "Width", component="resolution"))
    model_id: str = Field(default=DEFAULT_MODEL, min_length=1, max_length=1000,
                          description="Diffusers-format Wan2.1-T2V-1.3B: hub id or local folder "
                                      "(tokenizer/, text_encoder/, vae/, transformer/).",
        json_schema_extra=ui(10, "Model"))
    checkpoint: str | None = Field(
        default=None, min_length=1, max_length=1000,
        description="Distilled causal generator: local file or hub file owner/name/path; "
                    "null = the model folder's own transformer.",
        json_schema_extra=ui(11, "Generator checkpoint"))
    # Published as `generator_lora`: Scope's Settings panel keys its LoRA block "lora", and a
    # field of that name beside it duplicates a React key (its text box then lingers on the
    # next pipeline's panel). Load params may still say `lora`.
    lora: str | None = Field(default=None, min_length=1, max_length=1000,
                             validation_alias=AliasChoices("generator_lora", "lora"),
                             description="The model's own LoRA, fused into the generator (file "
                                         "or hub file; LongLive's long-video tuning). The same "
                                         "file also loads as a `loras` entry.",
        json_schema_extra=ui(12, "Generator LoRA"))
    lora_alpha: float | None = Field(default=None, gt=0.0, le=1e6, allow_inf_nan=False,
                                     description="LoRA alpha; unset = its rank (scale 1).",
        json_schema_extra=ui(13, "Generator LoRA alpha"))
    vace_id: str | None = Field(
        default=None, min_length=1, max_length=1000,
        description="VACE module weights (file or hub file: vace_blocks.*, "
                    "vace_patch_embedding.*); used when vace_enabled.",
        json_schema_extra=ui(14, "VACE weights", component="vace"))
    vace_context_scale: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False,
                                      description="Strength of the VACE hints.",
        json_schema_extra=ui(15, "VACE scale", component="vace"))
    device: Literal["auto", "cuda", "cpu"] = Field(default="auto",
                                                   json_schema_extra=ui(16, "Device"))
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="auto = bfloat16 on CUDA, float32 on CPU.",
        json_schema_extra=ui(17, "Precision"))
    timestep_shift: float = Field(default=5.0, ge=1.0, le=20.0, allow_inf_nan=False,
                                  description="Shift applied to denoising_step_list "
                                              "(1 = use the list as given).",
        json_schema_extra=ui(18, "Timestep shift"))
    local_attn_size: int = Field(default=12, ge=-1, le=1000,
                                 description="Latent frames a chunk attends to, sinks and "
                                             "itself included (-1 = all).",
        json_schema_extra=ui(19, "Attention window (latent frames)", component="cache"))
    sink_size: int = Field(default=3, ge=0, le=100,
                           description="First latent frames kept in the KV cache for good.",
        json_schema_extra=ui(20, "Sink frames", component="cache"))
    sink_positions: Literal["absolute", "adjacent"] = Field(
        default="absolute", description="RoPE positions of the sinks: their true ones, or "
                                        "just before the window (bounded on endless streams).",
        json_schema_extra=ui(21, "Sink positions", component="cache"))
    noise_controller: bool = Field(default=True,
                                   description="Video: more noise when the input moves more.",
        json_schema_extra=ui(22, "Noise controller", component="noise", modes=("video",)))
    manage_cache: bool = Field(default=True, description="Restart the KV cache when the "
                                                         "prompt, steps or noise change.",
        json_schema_extra=ui(23, "Manage cache", component="cache"))
    compile: bool = Field(default=False, description="torch.compile the transformer blocks.",
        json_schema_extra=ui(24, "torch.compile"))

    def local_refs(self) -> list[str]:
        files = [r for r in (self.checkpoint, self.lora, self.vace_id)
                 if r and is_local_file_ref(r)]
        return [self.model_id, *files]


def wan_field(name: str, default: Any) -> Any:
    """`WanParams`' field `name` (its bounds, description and UI hint) with another default: a
    pipeline's params declare only their own defaults."""
    return FieldInfo.merge_field_infos(WanParams.model_fields[name], default=default)


@dataclass
class WanSession:
    """One session's state: VAE and transformer caches, the controller, what manage_cache
    compares against."""

    vae: VAECache
    cache: Any
    chunks: int = 0
    previous_frame: torch.Tensor | None = None
    effective_noise: float | None = None
    last_prompts: tuple[WeightedPrompt, ...] | None = None
    last_steps: tuple[int, ...] | None = None
    last_noise: float | None = None
    last_loras: tuple[tuple[str, float], ...] = ()
    """(file, scale) of the runtime LoRAs the cache was made under."""
    cache_resets: int = 0
    """Transformer cache restarts by manage_cache (for tests and stats)."""
    last_noise_used: float | None = None
    vace_zero: VAECache | None = None
    """Encoder cache of VACE's inactive (black) video."""


class WanVideoPipeline(Pipeline):
    """Causal Wan2.1 video diffusion, text-to-video and video-to-video (see module doc)."""

    modes: ClassVar[tuple[Mode, ...]] = ("text", "video")
    supports_vace = True
    supports_lora = True  # `loras`: fused at load, or runtime_peft with live `lora_scales`
    supports_cache_management = True
    requires_models = True
    min_dimension = 16
    estimated_vram_gb = 20.0
    Params: ClassVar[type[LoadParams]] = WanParams
    latent_frames_per_chunk: ClassVar[int] = 3
    """Latent frames per chunk after the first (the model's block size); ×4 input frames."""
    max_batch_size = 4
    max_sessions = 2
    params: WanParams

    def __init__(self, params: LoadParams) -> None:
        params_cls = type(self).Params
        if not isinstance(params, params_cls):
            params = params_cls.model_validate(params.model_dump())
        super().__init__(params)
        self.device = resolve_device(self.params.device)
        self.dtype = resolve_dtype(self.params.dtype, self.device)
        self.vace_active = False
        self._adapters: RuntimeAdapters | None = None

    def use_device(self, device: str) -> None:
        super().use_device(device)
        if self.params.device == "auto":  # the worker's device (--devices); explicit wins
            self.device = resolve_device(device)
            self.dtype = resolve_dtype(self.params.dtype, self.device)

    # --- loading ------------------------------------------------------------------------------

    @classmethod
    def hub_models(cls, params: LoadParams | None = None) -> list[HubModel]:
        """The base model's tokenizer, text encoder, VAE and transformer config (the whole
        transformer without a checkpoint), and the checkpoint, LoRA and VACE hub files; weights
        in the load dtype's variant where the repo has one (the VAE in full precision: float16
        loads keep it float32)."""
        p = params if isinstance(params, cls.Params) else cls.Params()
        assert isinstance(p, WanParams)
        try:
            variant = WEIGHT_VARIANTS.get(resolve_dtype(p.dtype, resolve_device(p.device)))
        except PipelineError:  # no CUDA here: load() will say so
            variant = None
        base = ["model_index.json", "tokenizer/*", "text_encoder/*", "vae/*", "scheduler/*",
                "transformer/config.json" if p.checkpoint else "transformer/*"]
        repos: dict[str, list[str]] = {p.model_id: base}
        for ref in [p.checkpoint, p.lora] + ([p.vace_id] if p.vace_enabled else []):
            if ref and not is_local_file_ref(ref) and ref.count("/") >= 2:
                repo, filename = split_hub_file(ref)
                repos.setdefault(repo, []).append(filename)
        return [HubModel(repo, tuple(files), variant=variant if repo == p.model_id else None,
                         full_precision=("vae",))
                for repo, files in repos.items() if not looks_local(repo)]

    def load(self, progress: ProgressCallback) -> None:

        p = self.params
        self.fetch_weights(progress)
        fused = [Fused(fetch_file(p.lora, "LoRA", self.device), alpha=p.lora_alpha)] if p.lora \
            else []
        fused += [Fused(Path(s.path), s.scale) for s in p.lora_specs() if not s.runtime]
        wan = load_wan_model(p.model_id, p.checkpoint, self.device, self.dtype, progress, fused)
        self.setup(wan, progress)

    def setup(self, wan: WanModel, progress: ProgressCallback) -> None:
        """Everything after the weights are loaded (benchmarks call it with random weights)."""
        from .causal_transformer import CausalWanTransformer

        p = self.params
        transformer = wan.transformer
        if p.vace_enabled:
            if p.vace_id is None:
                raise PipelineError("vace_enabled is true but no vace_id is set: pass the VACE "
                                    "module weights, or load with vace_enabled: false.")
            progress(0.82, "loading VACE")
            transformer = load_vace_transformer(transformer, p.vace_id, self.device, self.dtype)
            self.vace_active = True
        runtime = [spec for spec in p.lora_specs() if spec.runtime]
        if runtime:  # after VACE joined: these adapters live on the model that runs
            progress(0.84, f"loading {len(runtime)} runtime LoRA(s)")
            self._adapters = self._runtime_adapters(transformer, runtime)
        self.model_config = transformer.config
        self.vae = StreamingVAE(wan.vae)
        max_length = min(MAX_LENGTH, int(getattr(wan.tokenizer, "model_max_length", MAX_LENGTH)))
        self.text = TextEncoder(wan.tokenizer, wan.text_encoder, max_length=max_length)
        if p.compile:
            for block in transformer.blocks:
                block.compile()
        self.transformer = CausalWanTransformer(transformer, local_attn_size=p.local_attn_size,
                                                sink_size=p.sink_size,
                                                sink_positions=p.sink_positions)
        self.latent_shape = (int(self.model_config.in_channels), p.height // self.vae.spatial,
                             p.width // self.vae.spatial)
        progress(0.9, "warming up" + (" (torch.compile: may take minutes)" if p.compile else ""))
        try:
            self.process(self._warm_up_batch())
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(f"Warm-up failed: {type(exc).__name__}: {exc}") from exc
        progress(1.0, "ready")

    def _warm_up_batch(self) -> list[FrameRequest]:
        size = (self.params.height, self.params.width)
        defaults = self.mode_defaults()
        requests = []
        for mode in self.modes:
            state = self.new_state()
            frames = (np.zeros((self.frames_per_call(state), *size, 3), np.uint8)
                      if mode == "video" else None)
            requests.append(_request(frames, size, ParameterState().snapshot(defaults[mode]),
                                     state))
        return requests

    def change_loras(self, params: LoadParams, progress: ProgressCallback) -> bool:
        """New runtime LoRAs on the loaded generator, when no `loras` entry was fused into it:
        the new files are read and checked against the model first (a file that does not fit
        fails here, the model untouched), then the old adapters are removed and the new ones
        loaded. With fused entries, or new permanent ones, the weights change: False (a full
        reload)."""
        if not isinstance(params, WanParams) or self.params.compile:
            return False
        if any(not s.runtime for s in [*self.params.lora_specs(), *params.lora_specs()]):
            return False
        specs = params.lora_specs()
        model = self.transformer.model
        adapters = self._adapters or RuntimeAdapters(model)
        progress(0.2, f"checking {len(specs)} LoRA(s)")
        prepared = adapters.prepare(specs)  # raises PipelineError, the model as it was
        progress(0.6, "swapping LoRAs")
        old = [spec for _, spec in adapters.runtime]
        adapters.clear()
        self._adapters = None
        if prepared:
            try:
                fresh = RuntimeAdapters(model)
                fresh.load(prepared)
                self._adapters = fresh
            except PipelineError:  # checked files that PEFT still refused: the old ones back
                self._adapters = self._runtime_adapters(model, old)
                raise
        self.params = params
        progress(1.0, "ready")
        return True

    @staticmethod
    def _runtime_adapters(model: torch.nn.Module,
                          specs: Sequence[LoraSpec]) -> RuntimeAdapters | None:
        if not specs:
            return None
        adapters = RuntimeAdapters(model)
        adapters.load(adapters.prepare(specs))
        return adapters

    def close(self) -> None:
        self._adapters = None
        for name in ("transformer", "vae", "text"):
            self.__dict__.pop(name, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- sessions -----------------------------------------------------------------------------

    def new_state(self) -> WanSession:
        return WanSession(vae=self.vae.new_cache(), cache=self.transformer.new_cache(1))

    def frames_per_call(self, state: Any) -> int:
        first = not isinstance(state, WanSession) or state.vae.encoded_frames == 0
        k = self.latent_frames_per_chunk
        return 1 + TEMPORAL * k if first else TEMPORAL * k

    def batch_key(self, request: FrameRequest) -> Hashable:
        return (id(request.state),)  # every session has its own caches: never batched

    # --- processing ---------------------------------------------------------------------------

    @torch.no_grad()
    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        outputs = []
        for request in batch:
            try:
                outputs.append(self._chunk(request))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                size = f"{self.params.height}×{self.params.width}"
                raise out_of_memory(f"render a chunk at {size}", self.device,
                                    MEMORY_ADVICE) from exc
        return outputs

    def _chunk(self, request: FrameRequest) -> np.ndarray:
        state: WanSession = request.state
        params = request.params
        frames = request.frames
        scales = self._lora_scales(params)
        self._manage_cache(state, params, self._lora_conditions(scales))
        if self._adapters is not None:
            self._adapters.set_scales(scales)
        cond = conditioning(params, self.text.embed).to(self.transformer.dtype)
        sigmas = sampling.shifted_sigmas(params.denoising_step_list, self.params.timestep_shift)
        vace_context = None
        if frames is not None:
            wanted = self.frames_per_call(state)
            video = self._preprocess(frames, wanted)
            latents = self.vae.encode(video, state.vae)
            if self._vace_on(params):
                vace_context = vace_control(latents, self.vae, state, video)
                start_sigmas = sigmas
                x = self._noise(state, params, latents.shape, 0)
            else:
                noise = self._effective_noise(state, params, video)
                start_sigmas = sampling.start_sigmas(sigmas, noise)
                eps = self._noise(state, params, latents.shape, 0)
                x = noise * eps + (1.0 - noise) * latents
            state.previous_frame = video[0, :, -1]
            count = frames.shape[0]
        else:
            # Every text chunk is one block of the model's size, the first one too: the causal
            # T2V models were distilled that way (LongLive, Self-Forcing: 3-latent blocks from
            # frame 0, the first decoding to 1 + 4·2 frames), and the sinks are that block.
            k = self.latent_frames_per_chunk
            shape = (1, self.latent_shape[0], k, *self.latent_shape[1:])
            start_sigmas = sigmas
            x = self._noise(state, params, shape, 0)
            count = None
        kv_bias = float(params.extras.get("kv_cache_attention_bias") or 1.0)
        scale = float(params.extras.get("vace_context_scale", self.params.vace_context_scale))
        dtype = self.transformer.dtype

        def model(latents: torch.Tensor, timestep: float, commit: bool = False) -> torch.Tensor:
            t = torch.full((latents.shape[0],), timestep, device=self.device)
            return self.transformer(latents.to(dtype), t, cond, state.cache, commit=commit,
                                    kv_bias=kv_bias, vace_context=vace_context,
                                    vace_scale=scale).float()

        noises = [x] + [self._noise(state, params, x.shape, k)
                        for k in range(1, len(start_sigmas))]
        sample = sampling.denoise(model, x, start_sigmas, noises)
        model(sample.x0, 0.0, commit=True)  # the clean pass: the chunk joins the KV cache
        decoded = self.vae.decode(sample.x0, state.vae)[0]  # (3, T, H, W)
        state.chunks += 1
        out = ((decoded.permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255)
        image = out.to(torch.uint8).cpu().numpy()
        if count is not None and image.shape[0] != count:
            image = _fit_count(image, count)
        return image

    def _lora_scales(self, params: FrameParams) -> tuple[float, ...]:
        """The runtime LoRAs' scales for a chunk: its session's `lora_scales` over the load
        scales (entries that do not apply, e.g. after a reload with other LoRAs, are ignored)."""
        if self._adapters is None:
            return ()
        raw = params.extras.get("lora_scales")
        overrides = scale_overrides(self.params, raw, strict=False) if raw else {}
        return runtime_scale_key([spec for _, spec in self._adapters.runtime], overrides)

    def _lora_conditions(self, scales: tuple[float, ...]) -> tuple[tuple[str, float], ...]:
        """(file, scale) of each runtime LoRA: what a session's KV cache was made under."""
        specs = [spec for _, spec in self._adapters.runtime] if self._adapters else []
        return tuple(zip((spec.path for spec in specs), scales, strict=True))

    def _vace_on(self, params: FrameParams) -> bool:
        return self.vace_active and bool(params.extras.get("vace_enabled", True))

    def _manage_cache(self, state: WanSession, params: FrameParams,
                      loras: tuple[tuple[str, float], ...]) -> None:
        """Restart the KV cache when the conditions it was built under changed (module doc)."""
        prompts = params.transition.target if params.transition is not None else params.prompts
        manage = params.extras.get("manage_cache", self.params.manage_cache)
        changed = state.last_steps is not None and (
            (params.transition is None and params.prompts != state.last_prompts)
            or params.denoising_step_list != state.last_steps
            or params.noise_scale != state.last_noise or loras != state.last_loras)
        if manage and changed and state.cache.frames:
            state.cache.reset()
            state.cache_resets += 1
        state.last_prompts, state.last_steps = prompts, params.denoising_step_list
        state.last_noise, state.last_loras = params.noise_scale, loras

    def _effective_noise(self, state: WanSession, params: FrameParams,
                         video: torch.Tensor) -> float:
        if not params.extras.get("noise_controller", self.params.noise_controller):
            state.effective_noise = params.noise_scale
        else:
            amount = sampling.motion(video[0].transpose(0, 1), state.previous_frame)
            state.effective_noise = sampling.controlled_noise(params.noise_scale, amount,
                                                              state.effective_noise)
        state.last_noise_used = state.effective_noise
        return state.effective_noise

    def _noise(self, state: WanSession, params: FrameParams, shape: tuple[int, ...],
               step: int) -> torch.Tensor:
        noise = seeded_normal(tuple(shape), _NOISE_TAG, self.params.seed, params.seed,
                              state.chunks, step)
        return noise.to(self.device)

    def _preprocess(self, frames: np.ndarray, wanted: int) -> torch.Tensor:
        """T×H×W×3 uint8 → (1, 3, wanted, h, w) in −1..1 at the load size; a chunk of another
        length keeps its newest frames or repeats its oldest."""
        if frames.shape[0] > wanted:
            frames = frames[-wanted:]
        elif frames.shape[0] < wanted:
            pad = np.repeat(frames[:1], wanted - frames.shape[0], axis=0)
            frames = np.concatenate([pad, frames])
        h, w = self.params.height, self.params.width
        crop = np.stack([crop_to_aspect(f, h, w) for f in frames])
        x = torch.from_numpy(crop).to(self.device).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True,
                              align_corners=False)
        x = x / 127.5 - 1.0
        return x.permute(1, 0, 2, 3)[None]  # (1, 3, T, h, w)


def _fit_count(image: np.ndarray, count: int) -> np.ndarray:
    """Keep the newest `count` frames, or repeat the oldest (a chunk that had to be padded)."""
    if image.shape[0] > count:
        return image[-count:]
    return np.concatenate([np.repeat(image[:1], count - image.shape[0], axis=0), image])


def _request(frames: np.ndarray | None, size: tuple[int, int], params: FrameParams,
             state: Any) -> FrameRequest:
    return FrameRequest(frames=frames, size=size, params=params, state=state, index=0)
