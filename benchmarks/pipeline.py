"""Pipeline benchmark: frames/s and per-frame latency of `streamdiffusion` vs sessions and steps.

    python benchmarks/pipeline.py --config tiny --size 64
    python benchmarks/pipeline.py --random-weights --config sd-turbo --size 256 \\
        --sessions 1 --steps 1 --frames 2
    python benchmarks/pipeline.py --config sd-turbo --device cuda        # the real sd-turbo

Calls `Pipeline.process` directly with batches built as the service builds them (one request
per session, each with its own state and a parameter snapshot), so the figures are the
pipeline's alone: no WebRTC, no video codec. A batch's latency is every one of its frames'
latency; frames/s counts all sessions. On CUDA, GPU time is also measured with CUDA events.

`--config tiny` uses the test models (tests/tiny_models.py). `--config sd-turbo` loads
`--model-id` (default stabilityai/sd-turbo, from the hub cache or a folder); with
`--random-weights` it builds a model of sd-turbo's size from configs instead (SD 2.1 UNet,
OpenCLIP-H-width text encoder, TAESD-sized tiny VAE) into `--model-dir` or a temp folder.
Prints one line per measurement, then one JSON line with every figure.
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
sys.path.insert(0, str(ROOT))  # before benchmarks/, whose pipeline.py is this file

from pipeline.base import FrameRequest  # noqa: E402
from pipeline.models.streamdiffusion import StreamDiffusionParams, StreamDiffusionPipeline  # noqa: E402
from pipeline.params import ParameterState, ParameterUpdate  # noqa: E402
from tests.tiny_models import build_tiny_sd, build_tiny_taesd, write_tiny_clip_tokenizer  # noqa: E402

WAN_CONFIGS = ("longlive", "streamdiffusionv2")
SD_TURBO_UNET: dict[str, Any] = {
    # stabilityai/sd-turbo unet/config.json (SD 2.1 architecture, 866 M parameters).
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"),
    "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True, "norm_num_groups": 32, "norm_eps": 1e-5,
    "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "center_input_sample": False,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "upcast_attention": None,
}
OPENCLIP_H_TEXT: dict[str, Any] = {
    # sd-turbo's text encoder (OpenCLIP ViT-H/14 text tower as used by SD 2.x: 23 layers).
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
    "projection_dim": 512,
}
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "timestep_spacing": "trailing",
    "steps_offset": 1,
}


def build_random_sd_turbo(path: Path, *, text_layers: int, full_vae: bool) -> Path:
    """An sd-turbo-sized checkpoint with random weights, saved like the hub repo (+ taesd/)."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderTiny,
        EulerDiscreteScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    wanted = ["unet", "taesd", "text_encoder"] + (["vae"] if full_vae else [])
    if all((path / part / "config.json").exists() for part in wanted):
        return path  # built by an earlier run with --model-dir
    torch.manual_seed(0)
    vocab = write_tiny_clip_tokenizer(path / "tokenizer")  # token ids only matter, not meaning
    CLIPTextModel(CLIPTextConfig(
        **{**OPENCLIP_H_TEXT, "num_hidden_layers": text_layers}, vocab_size=vocab,
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )).save_pretrained(path / "text_encoder")
    UNet2DConditionModel(**SD_TURBO_UNET).save_pretrained(path / "unet")
    EulerDiscreteScheduler(**SCHEDULER).save_pretrained(path / "scheduler")
    AutoencoderTiny().save_pretrained(path / "taesd")  # the default config is TAESD's
    if full_vae:
        AutoencoderKL(  # SD's KL VAE
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=512, scaling_factor=0.18215,
        ).save_pretrained(path / "vae")
    return path


def model_source(args: argparse.Namespace) -> tuple[str, str | None]:
    """(model_id, vae_id) to load, building random-weight models when asked to."""
    if args.config == "tiny":
        root = Path(args.model_dir or tempfile.mkdtemp(prefix="bench-tiny-"))
        sd, taesd = build_tiny_sd(root / "sd"), build_tiny_taesd(root / "taesd")
        return str(sd), "full" if args.vae == "full" else str(taesd)
    if args.random_weights:
        root = Path(args.model_dir or tempfile.mkdtemp(prefix="bench-sd-turbo-"))
        started = time.perf_counter()
        build_random_sd_turbo(root, text_layers=args.text_layers, full_vae=args.vae == "full")
        print(f"random sd-turbo-sized weights in {root} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
        return str(root), "full" if args.vae == "full" else str(root / "taesd")
    return args.model_id, "full" if args.vae == "full" else args.vae_id


def step_list(steps: int) -> list[int]:
    """Evenly spaced img2img steps from 700 down: 1 → [700], 2 → [700, 350] ..."""
    return [round(700 * (steps - i) / steps) for i in range(steps)]


def make_batch(pipeline: StreamDiffusionPipeline, sessions: int, steps: int, mode: str,
               states: list[Any], index: int, frames: list[np.ndarray]) -> list[FrameRequest]:
    """One request per session, built as the service builds them."""
    batch = []
    for s in range(sessions):
        session_mode = mode if mode != "mixed" else ("video", "text")[s % 2]
        update = ParameterUpdate.model_validate({
            "denoising_step_list": step_list(steps), "seed": s,
            "prompts": [{"text": f"a painting, session {s}", "weight": 1.0}]})
        params = ParameterState(update).snapshot(pipeline.mode_defaults()[session_mode])
        frame = frames[s] if session_mode == "video" else None
        size = frame.shape[:2] if frame is not None else (pipeline.params.height,
                                                          pipeline.params.width)
        batch.append(FrameRequest.of_frame(frame, size=size, params=params, state=states[s],
                                           index=index))
    return batch


def measure(pipeline: StreamDiffusionPipeline, sessions: int, steps: int, args: argparse.Namespace,
            size: tuple[int, int]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(sessions)]
    states = [pipeline.new_state() for _ in range(sessions)]
    cuda = pipeline.device.type == "cuda"
    for i in range(args.warmup):
        pipeline.process(make_batch(pipeline, sessions, steps, args.mode, states, i, frames))
    wall_ms: list[float] = []
    gpu_ms: list[float] = []
    for i in range(args.frames):
        batch = make_batch(pipeline, sessions, steps, args.mode, states, args.warmup + i, frames)
        if cuda:
            torch.cuda.synchronize()
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        started = time.perf_counter()
        pipeline.process(batch)  # returns numpy: the GPU work is done when it returns
        if cuda:
            end_event.record()
            torch.cuda.synchronize()
            gpu_ms.append(start_event.elapsed_time(end_event))
        wall_ms.append((time.perf_counter() - started) * 1000.0)
    total_s = sum(wall_ms) / 1000.0
    result = {
        "sessions": sessions, "steps": steps, "frames": args.frames,
        "fps_total": round(sessions * args.frames / total_s, 3),
        "fps_per_session": round(args.frames / total_s, 3),
        "fps_total_p50": round(sessions * 1000.0 / statistics.median(wall_ms), 3),
        "latency_ms_mean": round(statistics.fmean(wall_ms), 2),
        "latency_ms_p50": round(statistics.median(wall_ms), 2),
        "latency_ms_max": round(max(wall_ms), 2),
    }
    if gpu_ms:
        result["gpu_ms_mean"] = round(statistics.fmean(gpu_ms), 2)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("tiny", "sd-turbo", *WAN_CONFIGS),
                        default="sd-turbo",
                        help="longlive / streamdiffusionv2: see benchmarks/wan_pipeline.py")
    parser.add_argument("--random-weights", action="store_true",
                        help="sd-turbo: build random weights of the real size (no download)")
    parser.add_argument("--model-id", default="stabilityai/sd-turbo")
    parser.add_argument("--vae-id", default=None, help="AutoencoderTiny id/folder (default TAESD)")
    parser.add_argument("--vae", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--model-dir", default=None,
                        help="where random weights are built (reused if already there)")
    parser.add_argument("--text-layers", type=int, default=2,
                        help="random sd-turbo: text encoder layers (23 = full OpenCLIP-H; it runs "
                             "once per prompt, not per frame)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float16", "bfloat16", "float32"),
                        default="auto")
    parser.add_argument("--size", default="512", help="N or HxW (multiples of 8)")
    parser.add_argument("--input-size", default=None,
                        help="input frame size N or HxW (default: --size; resized otherwise)")
    parser.add_argument("--sessions", default="1,2,4,8")
    parser.add_argument("--steps", default="1,2")
    parser.add_argument("--frames", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mode", choices=("video", "text", "mixed"), default="video")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    return parser.parse_args(argv)


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width or height)


def main(argv: list[str] | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    if pre.parse_known_args(argv)[0].config in WAN_CONFIGS:  # the video models have their own
        from benchmarks.wan_pipeline import main as wan_main

        wan_main(argv)
        return
    args = parse_args(argv)
    height, width = parse_size(args.size)
    input_size = parse_size(args.input_size) if args.input_size else (height, width)
    model_id, vae_id = model_source(args)
    params = StreamDiffusionParams(
        model_id=model_id, vae_id=vae_id, height=height, width=width, device=args.device,
        dtype=args.dtype, compile=args.compile, channels_last=args.channels_last,
        cfg_scale=args.cfg_scale)
    pipeline = StreamDiffusionPipeline(params)
    started = time.perf_counter()
    pipeline.load(lambda fraction, stage: print(f"  [{fraction:4.0%}] {stage}", flush=True))
    load_s = time.perf_counter() - started
    unet_params = sum(p.numel() for p in pipeline.unet.parameters())
    device = (torch.cuda.get_device_name(pipeline.device) if pipeline.device.type == "cuda"
              else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    print(f"{args.config}{' (random weights)' if args.random_weights else ''}: UNet "
          f"{unet_params / 1e6:.0f} M params, {height}x{width}, {device}, {pipeline.dtype}, "
          f"loaded in {load_s:.1f} s", flush=True)
    results = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for sessions in [int(s) for s in args.sessions.split(",")]:
            result = measure(pipeline, sessions, steps, args, input_size)
            results.append(result)
            gpu = f", GPU {result['gpu_ms_mean']:.1f} ms" if "gpu_ms_mean" in result else ""
            print(f"steps={steps} sessions={sessions}: {result['fps_total']:.2f} frames/s total, "
                  f"{result['fps_per_session']:.2f} per session, latency mean "
                  f"{result['latency_ms_mean']:.1f} ms (p50 {result['latency_ms_p50']:.1f}, max "
                  f"{result['latency_ms_max']:.1f}){gpu}", flush=True)
    print(json.dumps({
        "benchmark": "pipeline", "pipeline": StreamDiffusionPipeline.id, "config": args.config,
        "random_weights": args.random_weights or args.config == "tiny", "model_id": model_id,
        "vae": args.vae, "mode": args.mode, "size": [height, width],
        "input_size": list(input_size), "device": device, "dtype": str(pipeline.dtype),
        "compile": args.compile, "channels_last": args.channels_last,
        "unet_params_m": round(unet_params / 1e6, 1), "load_s": round(load_s, 2),
        "torch": torch.__version__, "python": platform.python_version(), "results": results,
    }))


if __name__ == "__main__":
    main()
