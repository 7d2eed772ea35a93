"""Cold start: a load downloads only the files its dtype needs (fp16 variants per component where
the repo has them), reports bytes, resumes a cut transfer, and refuses up front, writing nothing
and leaving the previous pipeline serving, when the cache's disk is too small.

The real huggingface_hub download code runs against the local stand-in hub (tests/local_hub.py)
serving tiny diffusers models written with save_pretrained, with and without `variant="fp16"`.
The one patched probe is the free-space check at the OS boundary
(`pipeline.resources.hub.disk_free`)."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import huggingface_hub.constants as hub_constants
import numpy as np
import pytest
import torch
from huggingface_hub import try_to_load_from_cache

from pipeline import InputFrame, LoadParams, NotLoadedError, PipelineService
from pipeline.base import FrameRequest, Pipeline, PipelineError
from pipeline.models.diffusion.loading import Source, component_variant
from pipeline.models.streamdiffusion import StreamDiffusionParams, StreamDiffusionPipeline
from pipeline.registry import register
from pipeline.resources import hub as hub_module
from pipeline.resources.hub import (
    DiskSpaceError,
    DownloadProgress,
    HubModel,
    fetch,
    file_variant,
    select_files,
    variant_file,
)
from tests.local_hub import LocalHub, point_hub_at
from tests.pipelines import RecordingSink
from tests.tiny_models import build_tiny_sd, build_tiny_taesd

FP16, PLAIN, TAESD = "org/sd-fp16", "org/sd-plain", "madebyollin/taesd"
UNET = "unet/diffusion_pytorch_model.safetensors"
UNET16 = "unet/diffusion_pytorch_model.fp16.safetensors"
TEXT, TEXT16 = "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors"


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny SD repo without variants, the same with an fp16 UNet (its text encoder has none:
    the per-component fallback), and TAESD."""
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("coldstart-repos")
    plain = build_tiny_sd(root / "plain")
    fp16 = Path(shutil.copytree(plain, root / "fp16"))
    UNet2DConditionModel.from_pretrained(fp16 / "unet", dtype=torch.float16).save_pretrained(
        fp16 / "unet", variant="fp16")
    return {PLAIN: plain, FP16: fp16, TAESD: build_tiny_taesd(root / "taesd")}


@pytest.fixture
def hub(repos: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    with LocalHub(repos).running() as local:
        point_hub_at(monkeypatch, local.url, tmp_path / "hf-home")
        # Transfers are read (and resumable) in chunks of this size: small, for tiny files.
        monkeypatch.setattr(hub_constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
        yield local


def fetched(hub: LocalHub, repo: str) -> set[str]:
    """Files of `repo` whose body was requested (GET), by repo path."""
    prefix = f"/{repo}/resolve/{hub.sha(repo)}/"
    return {path[len(prefix):] for method, path in hub.requests
            if method == "GET" and path.startswith(prefix)}


def sd_models(model_id: str, dtype: str) -> list[HubModel]:
    return StreamDiffusionPipeline.hub_models(StreamDiffusionParams(
        model_id=model_id, device="cpu", dtype=dtype))


def test_variant_selection_is_per_folder() -> None:
    listing = ["model_index.json", "unet/config.json", UNET, UNET16, TEXT,
               "text_encoder/model.bf16.safetensors", "vae/diffusion_pytorch_model.safetensors",
               "vae/diffusion_pytorch_model.fp16.safetensors",
               "transformer/diffusion_pytorch_model.safetensors.index.json",
               "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
               "transformer/diffusion_pytorch_model.safetensors.index.fp16.json",
               "transformer/diffusion_pytorch_model-00001-of-00002.fp16.safetensors"]
    chosen = select_files(listing, "fp16", full_precision=("vae",))
    assert chosen == sorted([
        "model_index.json", "unet/config.json", UNET16, TEXT,  # no fp16 text encoder: fp32
        "vae/diffusion_pytorch_model.safetensors",  # kept in full precision
        "transformer/diffusion_pytorch_model.safetensors.index.fp16.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.fp16.safetensors"])
    assert "text_encoder/model.bf16.safetensors" not in select_files(listing, None)
    assert UNET in select_files(listing, None) and UNET16 not in select_files(listing, None)
    assert variant_file("transformer/diffusion_pytorch_model.safetensors.index.json",
                        "fp16") == "transformer/diffusion_pytorch_model.safetensors.index.fp16.json"
    assert variant_file(TEXT, "fp16") == TEXT16
    assert [file_variant(f) for f in (UNET16, UNET, "tokenizer/vocab.fp16.json")] == [
        "fp16", None, None]


def test_a_float16_load_fetches_the_fp16_unet_and_the_fp32_text_encoder_and_loads_them(
        hub: LocalHub, repos: dict[str, Path]) -> None:
    models = sd_models(FP16, "float16")
    assert [m.variant for m in models] == ["fp16", "fp16"]
    pipeline = StreamDiffusionPipeline(StreamDiffusionParams(
        model_id=FP16, device="cpu", dtype="float16", height=64, width=64))
    stages: list[str] = []
    pipeline.fetch_weights(lambda fraction, stage: stages.append(stage))
    got = fetched(hub, FP16)
    assert UNET16 in got and UNET not in got  # half the UNet bytes
    assert TEXT in got and TEXT16 not in got  # the repo has no fp16 text encoder
    assert not any(f.startswith("vae/") for f in got)  # TAESD instead
    assert any(s.startswith("downloading weights: ") for s in stages)
    # The loader's variant per component matches what was downloaded.
    source = Source(FP16, is_folder=False, local_files_only=True)
    assert component_variant(source, "unet", torch.float16) == "fp16"
    assert component_variant(source, "text_encoder", torch.float16) is None
    assert component_variant(source, "unet", torch.float32) is None
    # and the whole pipeline loads (offline: nothing more to fetch) and renders in float16.
    requests = len(hub.requests)
    pipeline.load(lambda fraction, stage: None)
    assert pipeline.unet.dtype == torch.float16 and pipeline.text_encoder.dtype == torch.float16
    assert not [r for r in hub.requests[requests:] if r[0] == "GET" and "/resolve/" in r[1]]
    cached_unet = try_to_load_from_cache(FP16, UNET16)
    assert isinstance(cached_unet, str)
    assert Path(cached_unet).read_bytes() == (repos[FP16] / UNET16).read_bytes()


def test_float32_and_repos_without_variants_get_the_full_precision_files(
        hub: LocalHub) -> None:
    fetch(sd_models(FP16, "float32"), "float32 load")
    assert UNET in fetched(hub, FP16) and UNET16 not in fetched(hub, FP16)
    fetch(sd_models(PLAIN, "float16"), "fp16 load of a repo without variants")
    assert {UNET, TEXT} <= fetched(hub, PLAIN)
    assert all(m.variant == "fp16" and hub_module.is_cached(m)
               for m in sd_models(PLAIN, "float16"))


def test_progress_rises_monotonically_to_the_total_with_rate_and_time_left(
        hub: LocalHub, repos: dict[str, Path]) -> None:
    hub.rate = 3e6  # bytes/s: the ~2.2 MB take most of a second
    seen: list[DownloadProgress] = []
    fetch(sd_models(FP16, "float16"), "progress test", seen.append)
    files = {*fetched(hub, FP16)}
    total = (sum((repos[FP16] / f).stat().st_size for f in files)
             + sum(p.stat().st_size for p in repos[TAESD].iterdir()))
    done = [p.downloaded_bytes for p in seen]
    assert done == sorted(done) and done[-1] == total
    assert all(p.total_bytes == total for p in seen if p.total_bytes is not None)
    percentages = [p.percentage for p in seen]
    assert percentages == sorted(percentages) and percentages[-1] == 100.0
    assert len(set(done)) > 5  # many steps, not one stage for the whole download
    timed = [p for p in seen if p.bytes_per_s and p.eta_s is not None]
    assert timed, "no sample carried a rate"
    assert re.fullmatch(r"\d+\.\d / 2\.2 MB, [\d.]+ (kB|MB)/s, ~\d+ s left", timed[-1].text or "")
    assert {f.path for f in seen[-1].files if f.repo_id == FP16} == files
    assert sum(f.bytes for f in seen[-1].files) == total


def test_a_cut_transfer_resumes_where_it_stopped(hub: LocalHub, repos: dict[str, Path]) -> None:
    size = (repos[FP16] / UNET16).stat().st_size
    hub.cut[UNET16] = size // 2  # the connection drops half-way through the UNet
    fetch(sd_models(FP16, "float16"), "resume test")
    assert len(hub.ranges) == 1
    name, start = hub.ranges[0]
    assert name == UNET16 and 0 < start <= size // 2  # asked for the rest, not all again
    assert hub.sent[UNET16] < size + 64 * 1024  # at most one chunk crossed twice
    cached = try_to_load_from_cache(FP16, UNET16)
    assert isinstance(cached, str) and Path(cached).read_bytes() == (
        repos[FP16] / UNET16).read_bytes()


def cache_files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and (
        "blobs" in p.parts or p.name.endswith(".incomplete"))]


def test_a_short_disk_is_a_clear_error_before_anything_is_written(
        hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "disk_free", lambda path: 1_100_000)
    pipeline = StreamDiffusionPipeline(StreamDiffusionParams(
        model_id=FP16, device="cpu", dtype="float16"))
    with pytest.raises(PipelineError) as info:
        pipeline.load(lambda fraction, stage: None)
    message = str(info.value)
    home = Path(hub_constants.HF_HOME)
    assert re.search(rf"need 2\.2 MB in HF_HOME={re.escape(str(home))}, 1\.1 MB free", message)
    assert "set HF_HOME to a folder on a larger disk" in message
    assert not fetched(hub, FP16) and not fetched(hub, TAESD)  # no file body was requested
    assert cache_files(home) == []
    with pytest.raises(DiskSpaceError):
        fetch(sd_models(FP16, "float16"), "again")


class ColdStartParams(LoadParams):
    model_id: str = FP16


@register
class ColdStartPipeline(Pipeline):
    """Inverts frames; its "weights" are the tiny SD repo's, in fp16."""

    id = "test-coldstart"
    name = description = "test: cold start"
    Params = ColdStartParams
    loaded: ClassVar[threading.Event] = threading.Event()

    @classmethod
    def hub_models(cls, params: LoadParams | None = None) -> list[HubModel]:
        p = params if isinstance(params, ColdStartParams) else ColdStartParams()
        return [HubModel(p.model_id, ("model_index.json", "unet/config.json", UNET),
                         variant="fp16")]

    def load(self, progress: object) -> None:
        type(self).loaded.set()

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        return [255 - r.frame for r in batch]


class BlackPipeline(Pipeline):
    """The pipeline serving before: black frames."""

    id = "test-black"
    name = description = "test: black"

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        return [np.zeros_like(r.frame) for r in batch]


register(BlackPipeline)


def push(stream: object, sink: RecordingSink, value: int) -> np.ndarray:
    image = np.full((16, 16, 3), value, np.uint8)
    count = len(sink.frames)
    stream.push(InputFrame(decode=lambda: image, pts=count, time_base=Fraction(1, 90_000),  # type: ignore[attr-defined]
                           arrived=time.monotonic()))
    sink.wait(count + 1)
    return sink.frames[count].image


def wait_for(predicate: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "state never reached"
        time.sleep(0.02)


def test_the_previous_pipeline_serves_during_the_download_and_after_a_short_disk(
        hub: LocalHub, service: PipelineService, monkeypatch: pytest.MonkeyPatch) -> None:
    service.load_blocking("test-black", timeout=30)
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    assert push(stream, sink, 100).max() == 0

    # Not enough disk: an error that says so; the black pipeline still serves.
    short_disk = pytest.MonkeyPatch()
    short_disk.setattr(hub_module, "disk_free", lambda path: 1000)
    service.load("test-coldstart")
    wait_for(lambda: service.status().status == "error")
    status = service.status()
    assert status.pipeline_id == "test-coldstart" and "1.0 kB free" in (status.error or "")
    assert "HF_HOME=" in (status.error or "")
    assert not sink.stopped and push(stream, sink, 100).max() == 0
    other = RecordingSink()  # new sessions too
    assert push(service.open_stream(other, offers_video=True), other, 100).max() == 0
    assert cache_files(Path(hub_constants.HF_HOME)) == []
    short_disk.undo()

    # Enough disk: while the UNet is held back the download shows bytes, the black pipeline
    # serves; then the new pipeline takes over.
    hub.gate, hub.held = threading.Event(), {UNET16}
    ColdStartPipeline.loaded.clear()
    service.load("test-coldstart")
    wait_for(lambda: (service.status().download or DownloadProgress(
        is_downloading=False, percentage=0)).downloaded_bytes > 0)
    status = service.status()
    assert status.status == "loading" and status.download is not None
    assert status.loading_stage.startswith("downloading weights: ")  # type: ignore[union-attr]
    assert 0 < status.download.downloaded_bytes < (status.download.total_bytes or 0)
    assert 0 < (status.progress or 0) < 1
    planned = {f.path for f in status.download.files}
    assert UNET16 in planned and UNET not in planned
    models = service.downloads.status("test-coldstart")  # what /models/status answers
    assert models.progress is not None and models.progress.is_downloading
    assert models.models[0].variant == "fp16"
    assert push(stream, sink, 100).max() == 0 and not ColdStartPipeline.loaded.is_set()
    hub.gate.set()
    wait_for(lambda: service.status().status == "loaded"
             and service.status().pipeline_id == "test-coldstart")
    assert push(stream, sink, 100).min() == 155  # inverted: the new pipeline
    assert service.downloads.status("test-coldstart").downloaded is True


def test_a_short_disk_on_a_first_load_says_why_to_new_sessions(
        hub: LocalHub, service: PipelineService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "disk_free", lambda path: 1000)
    status = service.load_blocking("test-coldstart", timeout=60)
    assert status.status == "error" and "Not enough disk space" in (status.error or "")
    with pytest.raises(NotLoadedError, match="Not enough disk space"):
        service.open_stream(RecordingSink(), offers_video=True)
    assert cache_files(Path(hub_constants.HF_HOME)) == []
