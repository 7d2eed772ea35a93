"""Benchmark of the Wan video pipelines (`longlive`, `streamdiffusionv2`) at real size with
random weights: frames/s, first-chunk and per-chunk latency, VRAM, for 1/2/4 sessions.

    python benchmarks/pipeline.py --config longlive --size 320x576 --sessions 1,2,4
    python benchmarks/pipeline.py --config streamdiffusionv2 --size 512 --dtype float16 --compile
    python benchmarks/pipeline.py --config streamdiffusionv2 --tiny --size 32 --chunks 2  # CPU

Builds Wan2.1-T2V-1.3B's transformer (30 layers, 1536 wide) and VAE (AutoencoderKLWan defaults)
with random weights directly on the device (nothing downloaded or written), a UMT5-XXL-wide text
encoder with `--text-layers` layers (it runs once per prompt, never per chunk) and, with `--vace`,
Wan2.1-VACE-1.3B's 15 VACE blocks; `--tiny` uses the test model instead. Random weights make the
pictures meaningless but the compute identical. Sessions are processed one after another
(each has its own KV cache), as the service does.

`--lora-modes none,permanent,runtime_peft` measures each in turn on the same model with a random
LoRA of `--lora-rank` on every linear layer of every block (self/cross attention q, k, v, o and
the feed-forward pair, as Wan trainers and LongLive's own LoRA target them): `none`, fused into
the weights (`permanent`), and as a PEFT adapter (`runtime_peft`; `--lora-scale-every N` sends a
new `lora_scales` every N chunks: each change is one `set_adapters` pass and, with manage_cache,
a KV-cache restart). Each mode also reports `transformer_call_ms_p50`: one causal-transformer
call on a chunk, the part LoRAs act on (a chunk adds the VAE, which they do not touch).

Per session count: `first_chunk_ms` (a fresh session's first call: 1 + 4k frames), the chunk
latency (every session's next chunk, one after another), frames/s per session and in total, and
peak VRAM. `first_frame_ms_est` adds the time to collect the first chunk at `--input-fps` (video
mode). Prints one line per measurement, then one JSON line.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.base import FrameRequest  # noqa: E402
from pipeline.models.wan.longlive import LongLivePipeline  # noqa: E402
from pipeline.models.wan.loras import Fused, RuntimeAdapters, fuse  # noqa: E402
from pipeline.models.wan.streamdiffusionv2 import StreamDiffusionV2Pipeline  # noqa: E402
from pipeline.models.wan.video import WanVideoPipeline  # noqa: E402
from pipeline.models.wan.weights import WanModel  # noqa: E402
from pipeline.params import ParameterState, ParameterUpdate  # noqa: E402
from pipeline.resources.loras import LoraSpec  # noqa: E402

PIPELINES: dict[str, type[WanVideoPipeline]] = {
    "longlive": LongLivePipeline, "streamdiffusionv2": StreamDiffusionV2Pipeline}
WAN_1_3B: dict[str, Any] = {
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128,
    "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960,
    "num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
UMT5_XXL: dict[str, Any] = {
    # google/umt5-xxl encoder widths (the real one has 24 layers and a 256384-token vocabulary)
    "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu", "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def random_wan(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> WanModel:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from tests.tiny_wan import write_tiny_t5_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="bench-wan-tok-"))
    vocab = write_tiny_t5_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = 512
    config = {**WAN_1_3B, "num_layers": args.layers}
    with torch.device(device):
        text = UMT5EncoderModel(UMT5Config(vocab_size=vocab, num_layers=args.text_layers,
                                           **UMT5_XXL)).to(dtype)
        vae = AutoencoderKLWan().to(torch.float32 if dtype == torch.float16 else dtype)
        if args.vace:
            transformer = WanVACETransformer3DModel(
                **config, vace_layers=list(range(0, args.layers, 2)), vace_in_channels=96)
        else:
            transformer = WanTransformer3DModel(**config)
        transformer = cast(transformer, dtype)
    for module in (text, vae, transformer):
        module.eval().requires_grad_(False)
    return WanModel(tokenizer=tokenizer, text_encoder=text, vae=vae, transformer=transformer)


def cast(model: Any, dtype: torch.dtype) -> Any:
    """`dtype`, except the modules diffusers keeps in float32 (as from_pretrained does)."""
    model.to(dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.to(torch.float32)
    return model


def build(args: argparse.Namespace, size: tuple[int, int]) -> WanVideoPipeline:
    cls = PIPELINES[args.config]
    common = {"height": size[0], "width": size[1], "device": args.device, "dtype": args.dtype,
              "compile": args.compile, "lora": None}
    if args.tiny:
        from tests.tiny_wan import build_tiny_wan

        root = build_tiny_wan(Path(tempfile.mkdtemp(prefix="bench-wan-tiny-")))
        pipeline = cls(cls.Params(model_id=str(root), checkpoint=None, vace_enabled=False,
                                  **common))
        pipeline.load(lambda fraction, stage: None)
        return pipeline
    pipeline = cls(cls.Params(checkpoint=None, vace_enabled=args.vace, vace_id="random",
                              **common))
    wan = random_wan(args, pipeline.device, pipeline.dtype)
    if args.vace:  # the VACE model is built whole: skip loading a VACE file
        pipeline.params = pipeline.params.model_copy(update={"vace_enabled": False})
        pipeline.setup(wan, lambda fraction, stage: None)
        pipeline.vace_active = True
    else:
        pipeline.setup(wan, lambda fraction, stage: None)
    return pipeline


def step_list(pipeline: WanVideoPipeline, mode: str, steps: int | None) -> list[int]:
    """The mode's own list, or `steps` evenly spaced steps from its first one."""
    default = list(pipeline.mode_defaults()[mode].denoising_step_list or [1000])  # type: ignore[index]
    if steps is None:
        return default
    return [round(default[0] * (steps - i) / steps) for i in range(steps)]


LORA_MODULES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")


def write_random_lora(model: torch.nn.Module, path: Path, rank: int) -> Path:
    """A diffusers-format LoRA of `rank` on every block's linear layers, small random values."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(len(model.blocks)):
        for name in LORA_MODULES:
            out_f, in_f = model.get_submodule(f"blocks.{i}.{name}").weight.shape
            key = f"transformer.blocks.{i}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_f, generator=generator) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_f, rank, generator=generator) * 0.01
    save_file(tensors, str(path))
    return path


def set_lora_mode(pipeline: WanVideoPipeline, mode: str, lora: Path | None) -> None:
    """Put the model in LoRA `mode` (from `none`, in the order none → runtime_peft → permanent:
    fusing is not undone)."""
    model = pipeline.transformer.model
    if pipeline._adapters is not None:
        pipeline._adapters.clear()
        pipeline._adapters = None
    if mode == "runtime_peft" and lora is not None:
        pipeline._adapters = RuntimeAdapters(model)
        pipeline._adapters.load(pipeline._adapters.prepare(
            [LoraSpec(str(lora), 1.0, "runtime_peft")]))
    elif mode == "permanent" and lora is not None:
        state = dict(model.state_dict())
        fuse(state, [Fused(lora)], pipeline.dtype)
        model.load_state_dict(state)


def transformer_ms(pipeline: WanVideoPipeline, repeats: int = 5) -> float:
    """The median time of one causal-transformer call on a chunk (fresh cache, no commit): the
    part of a chunk LoRAs act on, apart from the VAE and text encoder."""
    model = pipeline.transformer
    k = pipeline.latent_frames_per_chunk
    latents = torch.randn(1, pipeline.latent_shape[0], k, *pipeline.latent_shape[1:],
                          device=pipeline.device, dtype=model.dtype)
    text = torch.randn(1, pipeline.text.max_length, int(pipeline.model_config.text_dim),
                       device=pipeline.device, dtype=model.dtype)
    t = torch.full((1,), 500.0, device=pipeline.device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if pipeline.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(latents, t, text, model.new_cache(1))
            if pipeline.device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first is a warm-up
                times.append((time.perf_counter() - started) * 1000.0)
    return round(statistics.median(times), 1)


def request(pipeline: WanVideoPipeline, state: Any, mode: str, session: int,
            rng: np.random.Generator, steps: list[int],
            lora: tuple[str, float] | None = None) -> FrameRequest:
    update = ParameterUpdate.model_validate(
        {"prompts": [{"text": f"a painting, session {session}", "weight": 1.0}], "seed": session,
         "denoising_step_list": steps,
         **({"lora_scales": [{"path": lora[0], "scale": lora[1]}]} if lora else {})})
    params = ParameterState(update).snapshot(pipeline.mode_defaults()[mode])  # type: ignore[index]
    size = (pipeline.params.height, pipeline.params.width)
    frames = None
    if mode == "video":
        frames = rng.integers(0, 256, (pipeline.frames_per_call(state), *size, 3), np.uint8)
    return FrameRequest(frames=frames, size=size, params=params, state=state, index=0)


def timed(pipeline: WanVideoPipeline, batch: list[FrameRequest]) -> tuple[float, int]:
    if pipeline.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = pipeline.process(batch)
    return (time.perf_counter() - started) * 1000.0, sum(o.shape[0] for o in out)


def measure(pipeline: WanVideoPipeline, sessions: int, args: argparse.Namespace,
            steps: list[int], lora: str | None = None) -> dict[str, Any]:
    """`lora`: the runtime LoRA's path when its scale changes every `args.lora_scale_every`
    chunks."""
    rng = np.random.default_rng(0)
    cuda = pipeline.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    states = [pipeline.new_state() for _ in range(sessions)]
    first = request(pipeline, states[0], args.mode, 0, rng, steps)
    first_ms, first_frames = timed(pipeline, [first])
    for s in range(1, sessions):
        timed(pipeline, [request(pipeline, states[s], args.mode, s, rng, steps)])
    rounds: list[float] = []
    frames = 0
    for chunk in range(args.chunks):
        scale = None
        if lora and args.lora_scale_every:
            scale = (lora, 1.0 - 0.5 * ((chunk // args.lora_scale_every) % 2))
        ms, produced = timed(pipeline, [request(pipeline, st, args.mode, s, rng, steps, scale)
                                        for s, st in enumerate(states)])
        rounds.append(ms)
        frames = produced // sessions
    per_round = statistics.median(rounds)
    result: dict[str, Any] = {
        "sessions": sessions, "steps": steps, "chunks": args.chunks, "frames_per_chunk": frames,
        "first_chunk_frames": first_frames, "first_chunk_ms": round(first_ms, 1),
        "chunk_ms_p50": round(per_round / sessions, 1),
        "round_ms_p50": round(per_round, 1), "round_ms_max": round(max(rounds), 1),
        "fps_per_session": round(frames * 1000.0 / per_round, 2),
        "fps_total": round(sessions * frames * 1000.0 / per_round, 2),
    }
    if args.mode == "video":
        result["first_frame_ms_est"] = round(first_ms + 1000.0 * first_frames / args.input_fps, 1)
    if cuda:
        result["vram_peak_gb"] = round(torch.cuda.max_memory_allocated(pipeline.device) / 2**30,
                                       2)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(PIPELINES), required=True)
    parser.add_argument("--tiny", action="store_true", help="the test model (CPU smoke check)")
    parser.add_argument("--vace", action="store_true", help="with Wan2.1-VACE-1.3B's blocks")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--layers", type=int, default=30,
                        help="transformer layers (30 = Wan2.1-1.3B; fewer for a smoke check)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float16", "bfloat16", "float32"),
                        default="auto")
    parser.add_argument("--size", default=None, help="N or HxW (default: the pipeline's)")
    parser.add_argument("--sessions", default="1,2,4")
    parser.add_argument("--chunks", type=int, default=8, help="timed chunks per session")
    parser.add_argument("--mode", choices=("video", "text"), default=None,
                        help="default: the pipeline's default mode")
    parser.add_argument("--input-fps", type=float, default=20.0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--lora-modes", default="none",
                        help="LoRA modes to measure in turn: none, runtime_peft, permanent")
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--lora-scale-every", type=int, default=0,
                        help="runtime_peft: a new scale every N chunks (0: never)")
    parser.add_argument("--steps", default=None,
                        help="numbers of denoising steps to measure, e.g. 1,2 (evenly spaced "
                             "from the mode's first step); default: the mode's own list")
    # benchmarks/gpu_check.py passes the image benchmark's options to every config:
    parser.add_argument("--random-weights", action="store_true", help="always: no effect")
    parser.add_argument("--frames", type=int, default=None, help="same as --chunks")
    parser.add_argument("--warmup", type=int, default=0, help="no effect (a fresh session's "
                                                              "first chunk is measured apart)")
    parser.add_argument("--model-dir", default=None, help="no effect (nothing is written)")
    args = parser.parse_args(argv)
    if args.frames is not None:
        args.chunks = args.frames
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cls = PIPELINES[args.config]
    args.mode = args.mode or cls.default_mode()
    defaults = cls.Params()
    if args.size:
        height, _, width = args.size.lower().partition("x")
        size = (int(height), int(width or height))
    else:
        size = (defaults.height, defaults.width)
    started = time.perf_counter()
    pipeline = build(args, size)
    load_s = time.perf_counter() - started
    model = pipeline.transformer.model
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    device = (torch.cuda.get_device_name(pipeline.device) if pipeline.device.type == "cuda"
              else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    kind = (" tiny" if args.tiny else " random weights") + (" +VACE" if args.vace else "")
    print(f"{args.config}{kind}: transformer {params_m:.0f} M params, {size[0]}x{size[1]}, "
          f"{args.mode} mode, {device}, {pipeline.dtype}, compile={args.compile}, "
          f"ready in {load_s:.1f} s",
          flush=True)
    results = []
    counts = [int(n) for n in args.steps.split(",")] if args.steps else [None]
    order = ("none", "runtime_peft", "permanent")  # fusing is not undone: last
    lora_modes = sorted(args.lora_modes.split(","), key=order.index)
    lora = None
    if lora_modes != ["none"]:
        lora = write_random_lora(model, Path(tempfile.mkdtemp(prefix="bench-wan-lora-"))
                                 / "random.safetensors", args.lora_rank)
    for lora_mode, sessions, count in [(m, s, c) for m in lora_modes for c in counts
                                       for s in map(int, args.sessions.split(","))]:
        set_lora_mode(pipeline, lora_mode, lora)
        steps = step_list(pipeline, args.mode, count)
        live = str(lora) if lora_mode == "runtime_peft" else None
        result = {"lora_mode": lora_mode, **measure(pipeline, sessions, args, steps, live)}
        if lora is not None:
            result["transformer_call_ms_p50"] = transformer_ms(pipeline)
        results.append(result)
        vram = f", VRAM peak {result['vram_peak_gb']} GB" if "vram_peak_gb" in result else ""
        call = (f", transformer call {result['transformer_call_ms_p50']:.0f} ms"
                if "transformer_call_ms_p50" in result else "")
        print(f"lora={lora_mode}{call} steps={steps} sessions={sessions}: "
              f"{result['fps_per_session']:.1f} frames/s per "
              f"session "
              f"({result['fps_total']:.1f} total), chunk of {result['frames_per_chunk']} frames "
              f"{result['chunk_ms_p50']:.0f} ms, first chunk {result['first_chunk_ms']:.0f} ms"
              f"{vram}", flush=True)
    print(json.dumps({
        "benchmark": "pipeline", "pipeline": args.config, "tiny": args.tiny, "vace": args.vace,
        "random_weights": True, "mode": args.mode, "size": list(size), "device": device,
        "dtype": str(pipeline.dtype), "compile": args.compile,
        "lora_rank": args.lora_rank if lora else None,
        "lora_scale_every": args.lora_scale_every if lora else None,
        "transformer_params_m": round(params_m, 1), "load_s": round(load_s, 2),
        "torch": torch.__version__, "python": platform.python_version(), "results": results,
    }))


if __name__ == "__main__":
    main()
