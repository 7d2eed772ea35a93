"""`longlive`: LongLive (NVlabs) real-time long video generation on Wan2.1-T2V-1.3B.

A Self-Forcing-distilled causal generator with a LoRA tuned for long, prompt-switchable streams;
chunks of 3 latent frames (12 video frames, 13 on a session's first chunk), attention over a
window of 12 latent frames with the first 3 kept as sinks, steps [1000, 750, 500, 250] warped
with shift 5. The loop is `pipeline.wan.video` (see docs/video-models.md).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .params import Mode, ParameterUpdate
from .schema_ui import ui
from .wan.video import WanParams, WanVideoPipeline

CHECKPOINT = "Efficient-Large-Model/LongLive-1.3B/models/longlive_base.pt"
LORA = "Efficient-Large-Model/LongLive-1.3B/models/lora.pt"
VACE_MODULE = "Kijai/WanVideo_comfy/Wan2_1-VACE_module_1_3B_bf16.safetensors"


class LongLiveParams(WanParams):
    """`load_params` of `longlive` (Scope's defaults: 320×576, VACE on)."""

    height: int = Field(default=320, ge=16, le=2048, multiple_of=16,
        json_schema_extra=ui(1, "Height", component="resolution"))
    width: int = Field(default=576, ge=16, le=2048, multiple_of=16,
        json_schema_extra=ui(1, "Width", component="resolution"))
    checkpoint: str | None = Field(default=CHECKPOINT, min_length=1, max_length=1000,
        json_schema_extra=ui(11, "Generator checkpoint"))
    lora: str | None = Field(default=LORA, min_length=1, max_length=1000,
        json_schema_extra=ui(12, "LoRA"))
    vace_id: str | None = Field(default=VACE_MODULE, min_length=1, max_length=1000,
        json_schema_extra=ui(14, "VACE weights", component="vace"))
    timestep_shift: float = Field(default=5.0, ge=1.0, le=20.0, allow_inf_nan=False,
        json_schema_extra=ui(18, "Timestep shift"))
    local_attn_size: int = Field(default=12, ge=-1, le=1000,
        json_schema_extra=ui(19, "Attention window (latent frames)", component="cache"))
    sink_size: int = Field(default=3, ge=0, le=100,
        json_schema_extra=ui(20, "Sink frames", component="cache"))


class LongLivePipeline(WanVideoPipeline):
    id = "longlive"
    name = "LongLive"
    description = ("LongLive (NVlabs): real-time, long, prompt-switchable video generation; a "
                   "Self-Forcing-distilled causal Wan2.1-T2V-1.3B. Text-to-video and "
                   "video-to-video. Needs a GPU (~20 GB).")
    modes: ClassVar[tuple[Mode, ...]] = ("text", "video")
    Params = LongLiveParams
    latent_frames_per_chunk = 3
    docs_url = "https://github.com/NVlabs/LongLive"

    @classmethod
    def mode_defaults(cls) -> dict[Mode, ParameterUpdate]:
        return {
            "text": ParameterUpdate(denoising_step_list=[1000, 750, 500, 250], manage_cache=True),
            "video": ParameterUpdate(denoising_step_list=[1000, 750], noise_scale=0.7,
                                     noise_controller=True,
                                     manage_cache=True),
        }
