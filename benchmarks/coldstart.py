"""Cold start: time to first frame on an empty cache = weights download + load (+ one frame),
against the local stand-in hub (tests/local_hub.py) throttled to a stated rate.

    python benchmarks/coldstart.py                      # tiny SD repo, 4 MB/s, float16 vs float32
    python benchmarks/coldstart.py --rate-mb 20 --dtypes float16

Writes a tiny SD repo with fp16 variants (UNet and text encoder saved with `variant="fp16"`), serves
it and TAESD from the stand-in hub at `--rate-mb` MB/s, and per dtype, with an empty HF_HOME, runs
what `python app.py` does: the service loads `streamdiffusion` (plan, disk check, download, load,
warm-up), then one video frame goes through. Reports the download and load phases apart, the bytes
fetched, and bytes ÷ rate (what the download should take). Then prints the expected cold start of
each pipeline on a Space from the real repos' file sizes (EXPECTED below) at `--space-mb` MB/s.
Prints one line per measurement, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GB = 1e9
EXPECTED: dict[str, dict[str, float]] = {
    # Bytes each default load downloads, from the Hub repos' file listings. sd-turbo: unet and
    # text_encoder fp32 3.46 / 1.36 GB, fp16 variants ~1.73 / ~0.68 GB (half: same tensors);
    # tokenizer, scheduler and configs ~2 MB; madebyollin/taesd ~10 MB.
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers (revision 0fad780a, listing with sizes): text_encoder
    # (UMT5-XXL, fp32, 5 shards) 22.72 GB, transformer (fp32, 2 shards) 5.68 GB, vae 0.51 GB,
    # tokenizer 0.02 GB; no fp16/bf16 variants, so every dtype downloads these.
    # The generator checkpoints (LongLive longlive_base.pt + lora.pt, StreamDiffusionV2
    # model.pt) are NOT verified here: estimated at 1.3 B parameters in bf16 (~2.8 GB; LoRA
    # ~0.3 GB).
    "streamdiffusion (CUDA, float16)": {"sd-turbo": 1.73 + 0.68 + 0.002, "taesd": 0.01},
    "streamdiffusion (float32)": {"sd-turbo": 3.46 + 1.36 + 0.002, "taesd": 0.01},
    "longlive (estimate)": {"Wan2.1 base without transformer": 22.72 + 0.51 + 0.02,
                            "longlive_base.pt + lora.pt (estimate)": 2.8 + 0.3},
    "streamdiffusionv2 (estimate)": {"Wan2.1 base without transformer": 22.72 + 0.51 + 0.02,
                                     "model.pt (estimate)": 2.8},
    "Wan2.1 base model (no checkpoint)": {"Wan2.1-T2V-1.3B-Diffusers": 22.72 + 5.68 + 0.51
                                          + 0.02},
}


def build_repos(root: Path) -> dict[str, Path]:
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from tests.tiny_models import build_tiny_sd, build_tiny_taesd

    sd = build_tiny_sd(root / "sd")
    UNet2DConditionModel.from_pretrained(sd / "unet", dtype=torch.float16).save_pretrained(
        sd / "unet", variant="fp16")
    CLIPTextModel.from_pretrained(sd / "text_encoder", dtype=torch.float16).save_pretrained(
        sd / "text_encoder", variant="fp16")
    return {"bench/sd": sd, "madebyollin/taesd": build_tiny_taesd(root / "taesd")}


def use_home(home: Path) -> None:
    """An empty cache (huggingface_hub read HF_HOME into its constants at import)."""
    import huggingface_hub.constants as hc

    shutil.rmtree(home, ignore_errors=True)
    hc.HF_HOME, hc.HF_HUB_CACHE = str(home), str(home / "hub")


def cold_start(hub: Any, dtype: str, size: int, home: Path) -> dict[str, Any]:
    from pipeline import InputFrame, PipelineService
    from tests.pipelines import RecordingSink

    use_home(home)
    hub.requests.clear()
    rate = hub.rate
    service = PipelineService()
    service.start()
    try:
        started = time.perf_counter()
        service.load("streamdiffusion", {"model_id": "bench/sd", "device": "cpu",
                                         "dtype": dtype, "height": size, "width": size})
        downloaded_at, total = None, 0
        while True:  # a benchmark may poll: it measures phases, it asserts nothing
            status = service.status()
            if status.download is not None:
                total = status.download.total_bytes or total
            elif downloaded_at is None and any(w.status == "loading"
                                               for w in status.workers):
                downloaded_at = time.perf_counter()
            if status.status in ("loaded", "error"):
                break
            time.sleep(0.01)
        if status.status != "loaded":
            raise SystemExit(f"load failed: {status.error}")
        loaded_at = time.perf_counter()
        downloaded_at = downloaded_at or loaded_at
        sink = RecordingSink()
        stream = service.open_stream(sink, offers_video=True)
        image = np.full((size, size, 3), 128, np.uint8)
        stream.push(InputFrame(decode=lambda: image, pts=0, time_base=Fraction(1, 90_000),
                               arrived=time.monotonic()))
        sink.wait(1, timeout=120)
        first_frame = time.perf_counter()
    finally:
        service.stop()
    fetched = sorted({p.split("/resolve/", 1)[1].split("/", 1)[1]
                      for m, p in hub.requests if m == "GET" and "/resolve/" in p})
    return {"dtype": dtype, "bytes": total, "files": fetched,
            "download_s": round(downloaded_at - started, 3),
            "bytes_over_rate_s": round(total / rate, 3),
            "load_s": round(loaded_at - downloaded_at, 3),
            "first_frame_s": round(first_frame - started, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate-mb", type=float, default=1.0,
                        help="stand-in hub rate, MB/s (the tiny repo is a few MB)")
    parser.add_argument("--dtypes", default="float16,float32")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--space-mb", type=float, default=100.0,
                        help="bandwidth assumed for the expected cold start on a Space, MB/s")
    args = parser.parse_args(argv)
    from tests.local_hub import LocalHub

    results = []
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp, LocalHub({}).running() as hub:
        # Before huggingface_hub is imported: it reads these once (an HfApi made at import
        # keeps the endpoint).
        os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=str(Path(tmp) / "home"))
        os.environ.pop("HF_HUB_OFFLINE", None)
        hub.repos.update(build_repos(Path(tmp) / "repos"))
        hub.rate = args.rate_mb * 1e6
        for dtype in args.dtypes.split(","):
            result = cold_start(hub, dtype, args.size, Path(tmp) / f"home-{dtype}")
            results.append(result)
            print(f"{dtype}: {result['bytes'] / 1e6:.2f} MB in {len(result['files'])} files "
                  f"at {args.rate_mb:g} MB/s: download {result['download_s']:.2f} s "
                  f"(bytes/rate {result['bytes_over_rate_s']:.2f} s), load + warm-up "
                  f"{result['load_s']:.2f} s, first frame at {result['first_frame_s']:.2f} s",
                  flush=True)
    expected = {}
    for name, parts in EXPECTED.items():
        gb = sum(parts.values())
        expected[name] = {"gb": round(gb, 2), "download_s": round(gb * GB / (args.space_mb * 1e6))}
        print(f"expected on a Space at {args.space_mb:g} MB/s: {name}: {gb:.2f} GB → "
              f"{expected[name]['download_s']} s download + load", flush=True)
    print(json.dumps({
        "benchmark": "coldstart", "rate_mb_s": args.rate_mb, "size": args.size,
        "results": results, "space_mb_s": args.space_mb, "expected": expected,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
