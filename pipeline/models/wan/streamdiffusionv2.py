"""`streamdiffusionv2`: StreamDiffusionV2 real-time video-to-video on Wan2.1-T2V-1.3B.

A CausVid/Self-Forcing-distilled causal generator trained for streaming: chunks of 1 latent
frame (4 video frames, 5 on a session's first chunk), attention over 6 latent frames with the
first 3 kept as sinks (its KV cache is num_kv_cache 6 frames long, the chunk included, with
`sink_size` 3 frames), the step list used as given (σ = t/1000: its scheduler's shift 8 is not
applied to the list, `warp_denoising_step: false`), the motion-aware noise controller on. The
loop is `pipeline.models.wan.video` (see docs/video-models.md).
"""

from __future__ import annotations

from typing import ClassVar

from pipeline.params import Mode, ParameterUpdate

from .video import WanParams, WanVideoPipeline, wan_field

CHECKPOINT = "jerryfeng/StreamDiffusionV2/wan_causal_dmd_v2v/model.pt"
VACE_MODULE = "Kijai/WanVideo_comfy/Wan2_1-VACE_module_1_3B_bf16.safetensors"


class StreamDiffusionV2Params(WanParams):
    """`load_params` of `streamdiffusionv2` (Scope's defaults: 512×512, VACE on)."""

    checkpoint: str | None = wan_field("checkpoint", CHECKPOINT)
    vace_id: str | None = wan_field("vace_id", VACE_MODULE)
    timestep_shift: float = wan_field("timestep_shift", 1.0)
    local_attn_size: int = wan_field("local_attn_size", 6)
    sink_size: int = wan_field("sink_size", 3)

class StreamDiffusionV2Pipeline(WanVideoPipeline):
    id = "streamdiffusionv2"
    name = "StreamDiffusionV2"
    description = ("StreamDiffusionV2: real-time streaming video-to-video (and text-to-video) "
                   "with a causal, few-step Wan2.1-T2V-1.3B. Needs a GPU (~20 GB).")
    modes: ClassVar[tuple[Mode, ...]] = ("video", "text")
    Params = StreamDiffusionV2Params
    latent_frames_per_chunk = 1
    docs_url = "https://github.com/chenfengxu714/StreamDiffusionV2"

    @classmethod
    def mode_defaults(cls) -> dict[Mode, ParameterUpdate]:
        return {
            "video": ParameterUpdate(denoising_step_list=[750, 250], noise_scale=0.7,
                                     noise_controller=True,
                                     manage_cache=True),
            "text": ParameterUpdate(denoising_step_list=[1000, 750], manage_cache=True),
        }
