"""LoRA benchmark: per-frame cost of `streamdiffusion` without a LoRA, with fused (permanent)
LoRAs and with runtime (PEFT) LoRAs, and what a live `lora_scales` change costs.

    python benchmarks/lora.py --config tiny --size 64
    python benchmarks/lora.py --config sd-turbo --size 256 --frames 3     # real size, random
    python benchmarks/lora.py --config sd-turbo --size 512 --device cuda --frames 50

`--config sd-turbo` builds an sd-turbo-sized model with random weights (benchmarks/pipeline.py's
builder: SD 2.1 UNet, 866 M parameters) and UNet LoRAs of `--rank` on the attention, projection
and feed-forward layers (what kohya/diffusers trainers target), written with PEFT and diffusers'
`save_lora_weights`. Each mode loads its own pipeline; frames are one video session, one step.
A runtime frame with `--scale-every 1` changes the LoRA scale every frame (each new scale is a
separate `set_adapters` pass). Prints one line per mode, then one JSON line with every figure;
compare minimums on a shared machine (its means mostly measure the neighbours).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.pipeline import build_random_sd_turbo  # noqa: E402
from pipeline.base import FrameRequest  # noqa: E402
from pipeline.models.streamdiffusion import StreamDiffusionParams, StreamDiffusionPipeline  # noqa: E402
from pipeline.params import ParameterState, ParameterUpdate  # noqa: E402
from pipeline.resources.loras import LoraFolder  # noqa: E402
from tests.tiny_models import build_tiny_sd, build_tiny_taesd  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
           "ff.net.2"]


def write_unet_lora(model_dir: Path, out: Path, rank: int, seed: int) -> Path:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if out.exists():
        return out
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    # PEFT's own key names (diffusers' old-format converter only knows attention layers)
    layers = get_peft_model_state_dict(unet)
    StableDiffusionLoraLoaderMixin.save_lora_weights(str(out.parent), weight_name=out.name,
                                                     unet_lora_layers=layers,
                                                     safe_serialization=True)
    return out


def measure(pipeline: StreamDiffusionPipeline, frames: int, size: tuple[int, int],
            scale_every: int, lora_paths: list[str]) -> dict[str, Any]:
    state = pipeline.new_state()
    params = ParameterState(ParameterUpdate(denoising_step_list=[700], noise_scale=0.2))
    defaults = StreamDiffusionPipeline.mode_defaults()["video"]
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    times = []
    for index in range(frames + 1):  # the first is a warm-up
        if scale_every and lora_paths and index % scale_every == 0:
            scale = 0.5 + 0.5 * ((index // scale_every) % 2)
            params.apply(ParameterUpdate(lora_scales=[{"path": p, "scale": scale}
                                                      for p in lora_paths]))
        request = FrameRequest.of_frame(image, size=size, params=params.snapshot(defaults),
                                        state=state, index=index)
        started = time.perf_counter()
        pipeline.process([request])
        if pipeline.device.type == "cuda":
            torch.cuda.synchronize()
        if index:
            times.append(time.perf_counter() - started)
    return {"frame_ms_min": round(1000 * min(times), 2),
            "frame_ms_median": round(1000 * statistics.median(times), 2),
            "frame_ms_mean": round(1000 * statistics.mean(times), 2), "frames": frames}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("tiny", "sd-turbo"), default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--loras", type=int, default=1, help="LoRAs loaded at once")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--text-layers", type=int, default=2,
                        help="sd-turbo text encoder layers (23 real; few: faster to build)")
    parser.add_argument("--model-dir", default=None, help="reuse a built model folder")
    args = parser.parse_args(argv)

    root = Path(args.model_dir or tempfile.mkdtemp(prefix="bench-lora-"))
    if args.config == "tiny":
        model, vae = build_tiny_sd(root / "sd"), str(build_tiny_taesd(root / "taesd"))
    else:
        model = build_random_sd_turbo(root / "sd", text_layers=args.text_layers, full_vae=False)
        vae = str(model / "taesd")
    loras = [write_unet_lora(model, root / "loras" / f"lora{i}.safetensors", args.rank, i)
             for i in range(args.loras)]
    folder = LoraFolder(root / "loras")
    size = (args.size, args.size)
    base = {"model_id": str(model), "vae_id": vae, "height": args.size, "width": args.size,
            "device": args.device, "dtype": args.dtype}
    modes = [("none", [], "permanent", 0), ("permanent", loras, "permanent", 0),
             ("runtime_peft", loras, "runtime_peft", 0),
             ("runtime_peft, new scale every frame", loras, "runtime_peft", 1)]
    results = []
    device = ""
    for label, files, mode, scale_every in modes:
        params = folder.resolve_params(StreamDiffusionParams.model_validate(
            {**base, "loras": [{"path": str(f), "scale": 1.0} for f in files],
             "lora_merge_mode": mode}))
        pipeline = StreamDiffusionPipeline(params)
        started = time.perf_counter()
        pipeline.load(lambda fraction, stage: None)
        load_s = time.perf_counter() - started
        device = (torch.cuda.get_device_name(pipeline.device) if pipeline.device.type == "cuda"
                  else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
        result = {"mode": label, "load_s": round(load_s, 2),
                  **measure(pipeline, args.frames, size, scale_every,
                            [str(f) for f in files])}
        results.append(result)
        print(f"{label}: {result['frame_ms_min']:.1f} ms/frame min, median "
              f"{result['frame_ms_median']:.1f}, load {load_s:.1f} s", flush=True)
        pipeline.close()
        del pipeline
    # The minimum: on a shared machine the mean mostly measures the neighbours.
    plain = results[0]["frame_ms_min"]
    for result in results:
        result["min_vs_none"] = round(result["frame_ms_min"] / plain, 3)
    unet_params = "866M" if args.config == "sd-turbo" else "tiny"
    print(json.dumps({
        "benchmark": "lora", "config": args.config, "unet": unet_params, "random_weights": True,
        "size": list(size), "rank": args.rank, "loras": args.loras, "targets": TARGETS,
        "steps": 1, "device": device, "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__, "python": platform.python_version(), "results": results,
    }))


if __name__ == "__main__":
    main()
