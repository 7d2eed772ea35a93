"""`longlive`: LongLive (NVlabs) real-time long video generation on Wan2.1-T2V-1.3B.

A Self-Forcing-distilled causal generator with a LoRA tuned for long, prompt-switchable streams;
chunks of 3 latent frames (12 video frames, 13 on a session's first chunk), attention over a
window of 12 latent frames with the first 3 kept as sinks, steps [1000, 750, 500, 250] warped
with shift 5. The loop is `pipeline.models.wan.video` (see docs/video-models.md).
"""

from __future__ import annotations

from typing import ClassVar

from pipeline.params import Mode, ParameterUpdate

from .video import WanParams, WanVideoPipeline, wan_field

CHECKPOINT = "Efficient-Large-Model/LongLive-1.3B/models/longlive_base.pt"
LORA = "Efficient-Large-Model/LongLive-1.3B/models/lora.pt"
VACE_MODULE = "Kijai/WanVideo_comfy/Wan2_1-VACE_module_1_3B_bf16.safetensors"


class LongLiveParams(WanParams):
    """`load_params` of `longlive` (Scope's defaults: 320×576, VACE on)."""

    height: int = wan_field("height", 320)
    width: int = wan_field("width", 576)
    checkpoint: str | None = wan_field("checkpoint", CHECKPOINT)
    lora: str | None = wan_field("lora", LORA)
    vace_id: str | None = wan_field("vace_id", VACE_MODULE)
    timestep_shift: float = wan_field("timestep_shift", 5.0)
    local_attn_size: int = wan_field("local_attn_size", 12)
    sink_size: int = wan_field("sink_size", 3)

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
