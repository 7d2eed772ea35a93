"""`streamdiffusion`: StreamDiffusion-style real-time img2img and txt2img with few-step SD models.

One frame, for all sessions of a batch together (one batched UNet call per denoising step):

1. latent z: video mode resizes the frame to the load resolution and encodes it with the VAE;
   text mode uses an empty latent z = 0 (at a first step of 1000 the start is pure noise).
2. noise it to the first timestep t₀:  x = √ᾱ₀·z + √(1−ᾱ₀)·ε₀
3. per step k, one UNet call predicts x̂₀ (from its ε, v or x₀ output, per the scheduler config);
   before the next step, re-noise:  x = √ᾱₖ₊₁·x̂₀ + √(1−ᾱₖ₊₁)·εₖ₊₁
4. decode the last x̂₀ with the VAE.

This is StreamDiffusion's LCM/turbo loop (its `unet_step` + `scheduler_step_batch`) without the
"stream batch" pipelining, so there is no frame of delay. The noise ε is seeded per session,
step and frame (`diffusion.noise`), so a session renders the same alone or batched.

`denoising_step_list` → timesteps: a value v on the 1000-step scale is the training timestep
t = round(v·T/1000) − 1, clamped to 0..T−1, with T the scheduler's num_train_timesteps (1000 for
SD). That is diffusers' "trailing" spacing: [1000, 750, 500, 250] → [999, 749, 499, 249], the
timesteps sd-turbo's own scheduler picks for 4 steps; [700, 500] → [699, 499] (≈ img2img
strength 0.7 in 2 steps).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from pydantic import Field

from pipeline.base import FrameRequest, LoadParams, Pipeline, PipelineError, ProgressCallback
from pipeline.hints import ui
from pipeline.params import FrameParams, Mode, ParameterState, ParameterUpdate
from pipeline.resources.hub import HubModel
from pipeline.resources.loras import LoraParams, runtime_scale_key, scale_overrides
from pipeline.resources.paths import looks_local

from .blending import conditioning
from .diffusion.loading import (
    FULL_VAE,
    TAESD_ID,
    WEIGHT_VARIANTS,
    is_out_of_memory,
    load_sd_model,
    out_of_memory,
)
from .diffusion.lora import SDAdapters
from .diffusion.noise import SessionNoise

DEFAULT_MODEL = "stabilityai/sd-turbo"
VACE_MAX_STEP = 750
"""With vace_enabled, video frames are noised to at most this level (1000-step scale)."""
TEXT_DRIFT_FRAMES = 48
"""Text mode: frames between two noise keyframes (~2.4 s at 20 fps)."""
EMBEDDING_CACHE_SIZE = 64


class StreamDiffusionParams(LoraParams, LoadParams):
    """`load_params` of the `streamdiffusion` pipeline (LoRA fields: `pipeline.resources.loras`)."""

    model_id: str = Field(default=DEFAULT_MODEL, min_length=1, max_length=1000,
                          description="SD-1.x/2.x-style checkpoint: hub id or local folder "
                                      "(tokenizer/, text_encoder/, unet/, scheduler/[, vae/]).",
                          json_schema_extra=ui(10, "Model"))
    vae_id: str | None = Field(default=None, min_length=1, max_length=1000,
                               description="AutoencoderTiny hub id or folder; unset = TAESD "
                                           "(madebyollin/taesd); 'full' = the model's own VAE.",
                               json_schema_extra=ui(11, "VAE"))
    device: Literal["auto", "cuda", "cpu"] = Field(default="auto",
                                                   json_schema_extra=ui(12, "Device"))
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="auto = float16 on CUDA, float32 on CPU.",
        json_schema_extra=ui(13, "Precision"))
    cfg_scale: float = Field(default=1.0, ge=1.0, le=20.0, allow_inf_nan=False,
                             description="Classifier-free guidance; 1 = off (turbo/LCM models). "
                                         "Above 1 every UNet call runs twice as wide.",
                             json_schema_extra=ui(14, "Guidance (CFG)"))
    negative_prompt: str = Field(default="", max_length=2000,
                                 description="Unconditional prompt, used when cfg_scale > 1.",
                                 json_schema_extra=ui(15, "Negative prompt"))
    compile: bool = Field(default=False, description="torch.compile the UNet and VAE.",
                          json_schema_extra=ui(16, "torch.compile"))
    channels_last: bool = Field(default=False, description="channels_last memory format.",
                                json_schema_extra=ui(17, "channels_last"))
    similarity_filter: bool = Field(
        default=False, description="Video: reuse the last output while the input stays this "
                                   "similar (cosine) and the parameters are unchanged.",
        json_schema_extra=ui(18, "Similarity filter", modes=("video",)))
    similarity_threshold: float = Field(default=0.98, gt=0.0, le=1.0, allow_inf_nan=False,
                                        json_schema_extra=ui(19, "Similarity threshold",
                                                             modes=("video",)))
    similarity_max_skip: int = Field(default=10, ge=1, le=1000,
                                     description="Frames reused at most before one is rendered.",
                                     json_schema_extra=ui(20, "Max frames reused",
                                                          modes=("video",)))

    def local_refs(self) -> list[str]:
        return [ref for ref in (self.model_id, self.vae_id) if ref and ref != "full"]


def to_timesteps(steps: Sequence[int], num_train_timesteps: int = 1000) -> list[int]:
    """Map `denoising_step_list` values (1000-step scale) to training timesteps (see module doc)."""
    last = num_train_timesteps - 1
    return [min(max(round(v * num_train_timesteps / 1000) - 1, 0), last) for v in steps]


def predicted_x0(model_output: torch.Tensor, sample: torch.Tensor,
                 alpha_prod_t_sqrt: torch.Tensor, beta_prod_t_sqrt: torch.Tensor,
                 prediction_type: str) -> torch.Tensor:
    """The clean latent x̂₀ implied by the UNet output at x_t = √ᾱ·x₀ + √(1−ᾱ)·ε (what
    diffusers' schedulers call `pred_original_sample`)."""
    if prediction_type == "epsilon":
        return (sample - beta_prod_t_sqrt * model_output) / alpha_prod_t_sqrt
    if prediction_type == "v_prediction":
        return alpha_prod_t_sqrt * sample - beta_prod_t_sqrt * model_output
    return model_output


def cap_strength(steps: Sequence[int], max_step: int = VACE_MAX_STEP) -> tuple[int, ...]:
    """Scale a step list so that it starts at `max_step` at most (the order is kept)."""
    if steps[0] <= max_step:
        return tuple(steps)
    return tuple(max(1, round(v * max_step / steps[0])) for v in steps)


@dataclass(frozen=True)
class _Schedule:
    """One step list on the device: timesteps and the √ᾱ, √(1−ᾱ) that go with them."""

    timesteps: torch.Tensor  # (K,) int64
    alpha_prod_t_sqrt: torch.Tensor  # (K,) float32
    beta_prod_t_sqrt: torch.Tensor  # (K,) float32


@dataclass
class _Session:
    """Per-session state: its noise, and what the similarity filter compares against."""

    noise: SessionNoise
    last_input: torch.Tensor | None = None
    last_params: FrameParams | None = None
    last_output: np.ndarray | None = None
    skipped: int = 0


class StreamDiffusionPipeline(Pipeline):
    """Real-time img2img (video mode) and txt2img (text mode) with SD-turbo-style models.

    - Model: any SD-1.x/2.x-style checkpoint loaded with `from_pretrained` (default
      stabilityai/sd-turbo), TAESD as the VAE unless `vae_id` says otherwise. float16 on CUDA.
    - No CFG by default (turbo/LCM models need none); `cfg_scale` > 1 turns it on.
    - Per frame: prompts (weighted, with transitions), `denoising_step_list` (strength and number
      of steps), `noise_scale` and `seed` all apply live.
    - `noise_scale` (video): share of the noise variance that is fresh every frame; the rest is the
      session's fixed noise, so 0 gives the steadiest video and 1 the most texture change.
    - Text mode: the noise drifts through seeded keyframes, so the picture moves continuously.
    - `vace_enabled` (load param, or the per-session key of the same name): video frames are
      noised to at most 750 on the 1000-step scale; a step list starting higher is scaled down
      proportionally ([1000, 500] → [750, 375]), so the input's layout and colours always
      survive. Text mode is unaffected. This is not VACE conditioning (no reference images),
      hence `supports_vace` stays False.
    - Output is always height×width of the load params; inputs of another shape are
      centre-cropped to its aspect ratio, then resized (a 640×480 webcam is not stretched).
    - LoRAs (`loras`, `lora_merge_mode`; diffusers/PEFT and kohya files, UNet and text
      encoder): permanent ones are fused at load; runtime ones follow each session's
      `lora_scales` live. Sessions with different scales are rendered in separate UNet calls.
    """

    id = "streamdiffusion"
    name = "StreamDiffusion (SD-turbo)"
    description = ("StreamDiffusion-style real-time img2img/txt2img with few-step Stable "
                   "Diffusion models (default stabilityai/sd-turbo with the TAESD tiny VAE). "
                   "Needs a GPU for real-time rates.")
    modes: ClassVar[tuple[Mode, ...]] = ("video", "text")
    Params = StreamDiffusionParams
    max_batch_size = 8
    max_sessions = 4  # batched UNet calls: about 4 sessions at 512² stay interactive on one GPU
    requires_models = True  # weights come from the hub (or a local folder)
    supports_lora = True
    estimated_vram_gb = 3.0  # sd-turbo UNet + text encoder + TAESD in float16, 512², batch 4
    params: StreamDiffusionParams

    def __init__(self, params: LoadParams) -> None:
        if not isinstance(params, StreamDiffusionParams):
            params = StreamDiffusionParams.model_validate(params.model_dump())
        super().__init__(params)
        self.device, self.dtype = _resolve_device(self.params.device, self.params.dtype)
        self._embeddings: OrderedDict[tuple[str, tuple[float, ...]], torch.Tensor] = OrderedDict()
        self._schedules: dict[tuple[int, ...], _Schedule] = {}
        self._adapters: SDAdapters | None = None

    def use_device(self, device: str) -> None:
        super().use_device(device)
        if self.params.device == "auto":  # an explicit device in load_params wins
            self.device, self.dtype = _resolve_device(device, self.params.dtype)

    @classmethod
    def mode_defaults(cls) -> dict[Mode, ParameterUpdate]:
        # Both modes default to 2 steps so that video and text sessions share UNet calls.
        return {
            "video": ParameterUpdate(denoising_step_list=[700, 500], noise_scale=0.2),
            "text": ParameterUpdate(denoising_step_list=[1000, 500], noise_scale=0.0),
        }

    # --- loading ------------------------------------------------------------------------------

    @classmethod
    def hub_models(cls, params: LoadParams | None = None) -> list[HubModel]:
        """The checkpoint's tokenizer, text encoder, UNet and scheduler, and TAESD (or the
        checkpoint's own VAE for vae_id='full'); local folders need nothing. Weights in the
        load dtype's variant (fp16 on CUDA) where the repo has it; the KL VAE in full precision
        (it is loaded in float32)."""
        p = params if isinstance(params, StreamDiffusionParams) else StreamDiffusionParams()
        try:
            _, dtype = _resolve_device(p.device, p.dtype)
        except PipelineError:  # no CUDA here: load() will say so
            dtype = torch.float32
        variant = WEIGHT_VARIANTS.get(dtype)
        sd = ["model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json",
              "text_encoder/model.safetensors", "unet/config.json",
              "unet/diffusion_pytorch_model.safetensors"]
        if p.vae_id == FULL_VAE:
            sd += ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
        models = [HubModel(p.model_id, tuple(sd), variant=variant, full_precision=("vae",))]
        if p.vae_id != FULL_VAE:
            models.append(HubModel(p.vae_id or TAESD_ID,
                                   ("config.json", "diffusion_pytorch_model.safetensors"),
                                   variant=variant))
        return [m for m in models if not looks_local(m.repo_id)]


    def load(self, progress: ProgressCallback) -> None:
        self.fetch_weights(progress)
        sd = load_sd_model(self.params.model_id, self.params.vae_id, self.device, self.dtype,
                           progress)
        self.tokenizer, self.text_encoder, self.unet, self.vae = (
            sd.tokenizer, sd.text_encoder, sd.unet, sd.vae)
        self.tiny_vae, self.prediction_type = sd.tiny_vae, sd.prediction_type
        self.alphas_cumprod = sd.alphas_cumprod
        self.vae_dtype = next(self.vae.parameters()).dtype
        self.latent_scale = float(self.vae.config.scaling_factor)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_shape = (int(self.unet.config.in_channels),
                             self.params.height // factor, self.params.width // factor)
        if self.params.loras:
            progress(0.75, f"loading {len(self.params.loras)} LoRA(s)")
            self._adapters = SDAdapters(self.unet, self.text_encoder)
            self._adapters.load(self.params.lora_specs())
        self._speed_up()
        progress(0.85, "warming up" + (" (torch.compile: may take minutes)"
                                       if self.params.compile else ""))
        try:
            self.process(self._warm_up_batch())
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(f"Warm-up failed: {type(exc).__name__}: {exc}") from exc
        progress(1.0, "ready")

    def change_loras(self, params: LoadParams, progress: ProgressCallback) -> bool:
        """New LoRAs on the loaded model, when nothing was fused into it (no permanent LoRA is
        loaded now): each new file is tried first as an extra adapter (a file that does not fit
        fails here, with the models untouched), then the old adapters are removed and the new
        ones loaded. With fused LoRAs the weights have changed: False (a full reload)."""
        if not isinstance(params, StreamDiffusionParams) or self.params.compile:
            return False
        if any(not spec.runtime for spec in self.params.lora_specs()):
            return False
        specs = params.lora_specs()
        progress(0.2, f"checking {len(specs)} LoRA(s)")
        adapters = self._adapters or SDAdapters(self.unet, self.text_encoder)
        adapters.try_load(specs)  # raises PipelineError, models as they were
        progress(0.6, "swapping LoRAs")
        if self._adapters is not None:
            self._adapters.unload_lora_weights()
        self._adapters = None
        if specs:
            self._adapters = SDAdapters(self.unet, self.text_encoder)
            self._adapters.load(specs)
        self._embeddings.clear()  # embeddings depended on the old text-encoder LoRAs
        self.params = params
        progress(1.0, "ready")
        return True

    def _speed_up(self) -> None:
        modules = (self.unet, self.vae.encoder, self.vae.decoder)
        if self.params.channels_last:
            for module in modules:
                module.to(memory_format=torch.channels_last)
        if self.params.compile:
            for module in modules:  # compiled lazily: on first use of each batch size
                module.compile()

    def _warm_up_batch(self) -> list[FrameRequest]:
        """One video and one text request: the warm-up runs every code path once."""
        size = (self.params.height, self.params.width)
        defaults = self.mode_defaults()
        return [FrameRequest.of_frame(frame, size=size, state=self.new_state(),
                                      params=ParameterState().snapshot(defaults[mode]))
                for mode, frame in (("video", np.zeros((*size, 3), np.uint8)), ("text", None))]

    def close(self) -> None:
        for name in ("unet", "vae", "text_encoder"):
            self.__dict__.pop(name, None)
        self._embeddings.clear()
        self._adapters = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- sessions and batching ----------------------------------------------------------------

    def new_state(self) -> _Session:
        return _Session(SessionNoise(self.latent_shape, self.device, TEXT_DRIFT_FRAMES,
                                     base_seed=self.params.seed))

    def batch_key(self, request: FrameRequest) -> Hashable:
        # Frames are resized to one resolution and timesteps are per item: only the number of
        # steps (and the runtime LoRAs' scales, set on the model per call) must match, whatever
        # the mode, input size or step values.
        return (self.params.height, self.params.width, len(request.params.denoising_step_list),
                self._lora_scales(request))

    def _lora_scales(self, request: FrameRequest) -> tuple[float, ...]:
        """The runtime LoRAs' scales for a request: its session's `lora_scales` over the load
        scales (entries that do not apply, e.g. after a reload with other LoRAs, are ignored)."""
        if self._adapters is None or not self._adapters.runtime:
            return ()
        raw = request.params.extras.get("lora_scales")
        overrides = scale_overrides(self.params, raw, strict=False) if raw else {}
        return runtime_scale_key([spec for _, spec in self._adapters.runtime], overrides)

    # --- processing ---------------------------------------------------------------------------

    @torch.inference_mode()
    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        try:
            return self._process(batch)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            size = f"{self.params.height}×{self.params.width}"
            raise out_of_memory(f"render {len(batch)} frame(s) at {size}", self.device) from exc

    def _process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        images = [None if r.frame is None else self._preprocess(r.frame) for r in batch]
        outputs = [self._reuse_previous(r, image) for r, image in zip(batch, images, strict=True)]
        groups: dict[Hashable, list[int]] = {}
        for i, output in enumerate(outputs):
            if output is None:
                groups.setdefault(self.batch_key(batch[i]), []).append(i)
        for todo in groups.values():
            rendered = self._generate([batch[i] for i in todo], [images[i] for i in todo])
            for i, image in zip(todo, rendered, strict=True):
                outputs[i] = image
                self._remember(batch[i], images[i], image)
        return [o for o in outputs if o is not None]

    def _generate(self, requests: Sequence[FrameRequest],
                  images: Sequence[torch.Tensor | None]) -> np.ndarray:
        """The stream loop for requests with the same number of steps and LoRA scales;
        (B, H, W, 3) uint8."""
        if self._adapters is not None:
            self._adapters.set_scales(self._lora_scales(requests[0]))
        schedules = [self._schedule(self._steps_for(r)) for r in requests]
        timesteps = torch.stack([s.timesteps for s in schedules])  # (B, K)
        alpha = torch.stack([s.alpha_prod_t_sqrt for s in schedules])[..., None, None, None]
        beta = torch.stack([s.beta_prod_t_sqrt for s in schedules])[..., None, None, None]
        noise = torch.stack([self._noise(r) for r in requests])  # (B, K, C, h, w)
        cond = torch.cat([conditioning(r.params, self._embed) for r in requests]).to(self.dtype)

        x = alpha[:, 0] * self._initial_latents(images) + beta[:, 0] * noise[:, 0]
        for k in range(timesteps.shape[1]):
            x0 = self._predict_x0(x, timesteps[:, k], alpha[:, k], beta[:, k], cond)
            if k + 1 < timesteps.shape[1]:
                x = alpha[:, k + 1] * x0 + beta[:, k + 1] * noise[:, k + 1]
        return self._decode(x0)

    def _predict_x0(self, x: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor,
                    beta: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One UNet call (two-wide with CFG) turned into a prediction of the clean latent."""
        sample = x.to(self.dtype)
        if self.params.cfg_scale <= 1.0:
            out = self.unet(sample, t, encoder_hidden_states=cond).sample.float()
        else:
            uncond = self._embed(self.params.negative_prompt).to(self.dtype)
            uncond = uncond.expand(len(x), -1, -1)
            both = self.unet(torch.cat([sample, sample]), torch.cat([t, t]),
                             encoder_hidden_states=torch.cat([uncond, cond])).sample.float()
            out_uncond, out_text = both.chunk(2)
            out = out_uncond + self.params.cfg_scale * (out_text - out_uncond)
        return predicted_x0(out, x, alpha, beta, self.prediction_type)

    def _steps_for(self, request: FrameRequest) -> tuple[int, ...]:
        steps = request.params.denoising_step_list
        vace = request.params.extras.get("vace_enabled", self.params.vace_enabled)
        return cap_strength(steps) if request.frame is not None and vace else tuple(steps)

    def _schedule(self, steps: tuple[int, ...]) -> _Schedule:
        schedule = self._schedules.get(steps)
        if schedule is None:
            t = torch.tensor(to_timesteps(steps, len(self.alphas_cumprod)))
            alphas = self.alphas_cumprod[t]
            schedule = _Schedule(t.to(self.device),
                                 alphas.sqrt().float().to(self.device),
                                 (1.0 - alphas).sqrt().float().to(self.device))
            if len(self._schedules) >= 256:  # step lists come from clients: keep it bounded
                self._schedules.clear()
            self._schedules[steps] = schedule
        return schedule

    def _noise(self, request: FrameRequest) -> torch.Tensor:
        state, params = _session(request), request.params
        steps = len(params.denoising_step_list)
        if request.frame is None:
            return state.noise.text(params.seed, request.index, steps)
        return state.noise.video(params.seed, request.index, steps, params.noise_scale)

    def _embed(self, text: str) -> torch.Tensor:
        """CLIP embedding (1, tokens, dim) of one prompt, float32, cached per distinct text (and
        runtime LoRA scales, when a LoRA changes the text encoder)."""
        adapters = self._adapters
        key = (text, adapters.scales if adapters and adapters.text_encoder_adapted else ())
        cached = self._embeddings.get(key)
        if cached is not None:
            self._embeddings.move_to_end(key)
            return cached
        ids = self.tokenizer(text, padding="max_length", truncation=True, return_tensors="pt",
                             max_length=self.tokenizer.model_max_length).input_ids
        # float32: blending sums squares over ~77k values, which overflows float16.
        embedding = self.text_encoder(ids.to(self.device))[0].float()
        self._embeddings[key] = embedding
        if len(self._embeddings) > EMBEDDING_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return embedding

    # --- images in and out --------------------------------------------------------------------

    def _preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 RGB of any size → (3, height, width) float32 in [-1, 1] on the device."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an H×W×3 uint8 RGB frame, got {frame.dtype} "
                             f"{frame.shape}")
        frame = crop_to_aspect(frame, self.params.height, self.params.width)
        image = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)
        image = image.permute(2, 0, 1).float() / 127.5 - 1.0
        size = (self.params.height, self.params.width)
        if image.shape[1:] != size:
            image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                                  align_corners=False)[0]
        return image

    def _initial_latents(self, images: Sequence[torch.Tensor | None]) -> torch.Tensor:
        latents = torch.zeros((len(images), *self.latent_shape), device=self.device)
        video = [i for i, image in enumerate(images) if image is not None]
        if video:
            latents[video] = self._encode(torch.stack([images[i] for i in video]))
        return latents

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        encoded = self.vae.encode(images.to(self.vae_dtype))
        # The mean of the KL VAE's posterior: sampling it would only add flicker.
        latents = encoded.latents if self.tiny_vae else encoded.latent_dist.mode()
        return latents.float() * self.latent_scale

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        images = self.vae.decode((latents / self.latent_scale).to(self.vae_dtype)).sample
        images = ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    # --- similarity filter --------------------------------------------------------------------

    def _reuse_previous(self, request: FrameRequest,
                        image: torch.Tensor | None) -> np.ndarray | None:
        """The last output again when the input barely moved and nothing else changed."""
        state = _session(request)
        if (not self.params.similarity_filter or image is None or state.last_input is None
                or state.last_output is None or state.last_params != request.params
                or state.skipped >= self.params.similarity_max_skip):
            return None
        similarity = F.cosine_similarity(image.flatten(), state.last_input.flatten(), dim=0)
        if float(similarity) < self.params.similarity_threshold:
            return None
        state.skipped += 1
        return state.last_output

    def _remember(self, request: FrameRequest, image: torch.Tensor | None,
                  output: np.ndarray) -> None:
        if self.params.similarity_filter and image is not None:
            state = _session(request)
            state.last_input, state.last_params, state.last_output = image, request.params, output
            state.skipped = 0


def _session(request: FrameRequest) -> _Session:
    if not isinstance(request.state, _Session):
        raise TypeError("request.state must come from StreamDiffusionPipeline.new_state()")
    return request.state


def _resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError("device 'cuda' was requested but CUDA is not available (no GPU, or a "
                            "CPU-only torch build); load with device 'auto' or 'cpu'.")
    if dtype == "auto":
        return torch.device(device), (torch.float16 if device.startswith("cuda")
                                      else torch.float32)
    return torch.device(device), getattr(torch, dtype)


def crop_to_aspect(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """The largest centred part of `frame` with the aspect ratio height:width (a view)."""
    h, w = frame.shape[:2]
    if h * width > w * height:  # too tall
        keep = max(1, round(w * height / width))
        top = (h - keep) // 2
        return frame[top:top + keep]
    keep = max(1, round(h * width / height))
    left = (w - keep) // 2
    return frame[:, left:left + keep]
