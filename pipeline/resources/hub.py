"""Model weights on the Hugging Face Hub: are a pipeline's files in the local cache, and a
background download of them with progress.

Each pipeline declares the hub files it loads (`Pipeline.hub_models`). "Downloaded" means every
declared file resolves in huggingface_hub's own cache (`try_to_load_from_cache`) and the cached
snapshot is complete by huggingface_hub's own check (`snapshot_download(local_files_only=True)`),
so a pipeline that passes it loads with `HF_HUB_OFFLINE=1`. Downloads go through
`snapshot_download` on a daemon thread, one per pipeline at a time; its progress bars feed a
byte/file count. The hub's address and cache follow huggingface_hub's settings (`HF_ENDPOINT`,
`HF_HOME`/`HF_HUB_CACHE`, `HF_TOKEN`).

Variants: a `HubModel` may prefer a weights variant (`fp16` for a float16 load). Per folder of the
repo (a diffusers component: unet/, text_encoder/, ...) the variant's weight files are taken where
the repo has them (`unet/diffusion_pytorch_model.fp16.safetensors`), else the full-precision ones,
never both; `from_pretrained(variant=...)` then picks per component what is on disk
(`folder_variant`). Before anything is written, a download is planned (file list and sizes from
the hub) and checked against the free space of the cache's disk.

Resuming: huggingface_hub 2.4 resumes a cut transfer within a download (HTTP Range, up to 5 tries
in a row without progress); each file goes to a private temporary file that is removed when the
download fails, and files already complete in the cache are never fetched again, so a restarted
download carries on with the files it still lacks.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubModel:
    """Files of one hub repository that a pipeline loads."""

    repo_id: str
    allow_patterns: tuple[str, ...]
    """Exact paths or fnmatch patterns (`tokenizer/*`); exact paths are also checked one by one."""
    revision: str = "main"
    variant: str | None = None
    """Weights variant to prefer (`fp16`, `bf16`), per folder where the repo has it."""
    full_precision: tuple[str, ...] = ()
    """Folders whose full-precision weights are loaded whatever the variant (a VAE kept in
    float32)."""

    @property
    def exact_files(self) -> list[str]:
        return [p for p in self.allow_patterns if not any(c in p for c in "*?[")]

    def listing_patterns(self) -> list[str]:
        """`allow_patterns` plus the variant name of each exact weights file: what to list on
        the hub before choosing per folder."""
        patterns = list(self.allow_patterns)
        if self.variant:
            patterns += [variant_file(p, self.variant) for p in self.exact_files
                         if is_weights_file(p) and variant_file(p, self.variant) not in patterns]
        return patterns

    def select(self, paths: Iterable[str]) -> list[str]:
        """Of the repo files matching `listing_patterns`, the ones to load (`select_files`)."""
        patterns = self.listing_patterns()
        matched = [p for p in paths if any(fnmatch.fnmatch(p, pattern) for pattern in patterns)]
        return select_files(matched, self.variant, self.full_precision)


KNOWN_VARIANTS = frozenset({"fp16", "bf16", "fp32", "fp8", "ema", "non_ema"})
_WEIGHT_EXTENSIONS = frozenset({"safetensors", "bin", "pt", "pth", "ckpt", "msgpack", "h5",
                                "onnx", "gguf"})


def is_weights_file(path: str) -> bool:
    """Weights (`model.safetensors`, shards) or a sharded checkpoint's index
    (`model.safetensors.index.json`, `...index.fp16.json`)."""
    parts = path.rsplit("/", 1)[-1].split(".")
    return parts[-1] in _WEIGHT_EXTENSIONS or (parts[-1] == "json" and "index" in parts[1:])


def file_variant(path: str) -> str | None:
    """The variant tag of a weights file (`model.fp16.safetensors` → fp16), None for the
    full-precision file and for anything that is not weights."""
    parts = path.rsplit("/", 1)[-1].split(".")
    if len(parts) >= 3 and is_weights_file(path) and parts[-2] in KNOWN_VARIANTS:
        return parts[-2]
    return None


def variant_file(path: str, variant: str) -> str:
    """diffusers'/transformers' name of a variant: the tag before the last extension."""
    folder, _, name = path.rpartition("/")
    stem, _, ext = name.rpartition(".")
    named = f"{stem}.{variant}.{ext}" if stem else f"{name}.{variant}"
    return f"{folder}/{named}" if folder else named


def select_files(paths: Iterable[str], variant: str | None,
                 full_precision: Iterable[str] = ()) -> list[str]:
    """Per folder: the `variant`'s weight files where the folder has them, else its
    full-precision weights; never weights of another variant. Other files are all kept."""
    paths = sorted(set(paths))
    keep_full = set(full_precision)
    folders: dict[str, list[str]] = {}
    for path in paths:
        if is_weights_file(path):
            folders.setdefault(path.rpartition("/")[0], []).append(path)
    chosen: set[str] = set()
    for folder, weights in folders.items():
        wanted = None if folder in keep_full else variant
        if wanted is None or not any(file_variant(w) == wanted for w in weights):
            wanted = None
        chosen.update(w for w in weights if file_variant(w) == wanted)
    return [p for p in paths if not is_weights_file(p) or p in chosen]


def folder_variant(folder: str | os.PathLike[str], variant: str | None) -> str | None:
    """`variant` when `folder` (a local component folder) holds weights of that variant, else
    None: what to pass as `from_pretrained(variant=...)` for what was downloaded."""
    if not variant or not os.path.isdir(folder):
        return None
    names = os.listdir(folder)
    return variant if any(file_variant(n) == variant for n in names) else None


class ModelDownloadError(RuntimeError):
    """A download could not start; the text says why and what to do."""


class DownloadInProgressError(ModelDownloadError):
    """A download for this pipeline is already running."""


class HubOfflineError(ModelDownloadError):
    """HF_HUB_OFFLINE is set: nothing can be downloaded."""


class HubUnreachableError(ModelDownloadError):
    """The hub did not answer while planning: nothing was written."""


class DiskSpaceError(ModelDownloadError):
    """The cache's disk has less free space than the download needs."""


class PlannedFile(BaseModel):
    """One file a pipeline loads: its size, and whether it is in the cache already."""

    repo_id: str
    path: str
    bytes: int
    cached: bool


class DownloadProgress(BaseModel):
    """Scope's progress keys (`is_downloading`, `percentage`, `current_artifact`, `error`) plus
    byte and file counts, the rate, the time left and the files of the download."""

    is_downloading: bool
    percentage: float
    current_artifact: str | None = None
    error: str | None = None
    downloaded_bytes: int = 0
    total_bytes: int | None = None
    """Bytes this download fetches (files already cached are not counted)."""
    files_done: int = 0
    files_total: int = 0
    bytes_per_s: float | None = None
    eta_s: float | None = None
    text: str | None = None
    """For people: "1.2 / 2.4 GB, 38 MB/s, ~30 s left"."""
    files: list[PlannedFile] = []
    """Every file the pipeline loads (cached ones included), once planned."""


class ModelFiles(BaseModel):
    repo_id: str
    revision: str
    allow_patterns: list[str]
    variant: str | None = None
    """Weights variant preferred where the repo has it (per folder)."""
    cached: bool


class ModelStatus(BaseModel):
    downloaded: bool
    progress: DownloadProgress | None = None
    models: list[ModelFiles] = []


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it at import, or set since."""
    import huggingface_hub.constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def cached_selection(model: HubModel, cache_dir: str | None = None) -> list[str] | None:
    """The files `model` loads, chosen from the repo's file listing that the last download
    cached (no network); None when no listing is cached."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        tree = get_cached_repo_tree(model.repo_id, revision=model.revision, cache_dir=cache_dir)
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return None
    return model.select(f.path for f in tree)


def is_cached(model: HubModel, cache_dir: str | None = None) -> bool:
    """Every file the model loads is in the local cache: those chosen (variant per folder) from
    the repo listing cached at download time; without a listing, every declared file (or its
    variant) and at least one file per pattern."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(model.repo_id, filename, cache_dir=cache_dir,
                                                 revision=model.revision), str)

    selection = cached_selection(model, cache_dir)
    if selection is not None:
        return bool(selection) and all(cached(f) for f in selection)
    for filename in model.exact_files:
        variant = variant_file(filename, model.variant) if model.variant else None
        if not cached(filename) and not (variant and cached(variant)):
            return False
    try:
        folder = snapshot_download(model.repo_id, revision=model.revision, cache_dir=cache_dir,
                                   allow_patterns=model.listing_patterns(),
                                   local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False
    # Without a cached listing huggingface_hub accepts any snapshot folder: require at least
    # one file per pattern.
    present = [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
               for root, _, files in os.walk(folder) for f in files]
    return all(any(fnmatch.fnmatch(p, pattern) for p in present)
               for pattern in model.allow_patterns
               if not (model.variant and pattern in model.exact_files))


def format_bytes(n: float) -> str:
    """2.4 GB, 38 MB, 1.1 MB, 12 kB: decimal units, a decimal below 10."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 or unit == "GB" else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def progress_text(done: int, total: int, rate: float | None, eta: float | None) -> str:
    """"1.2 / 2.4 GB, 38 MB/s, ~30 s left" (one unit for both counts)."""
    unit, scale = ("GB", 1e9) if total >= 1e9 else ("MB", 1e6) if total >= 1e6 else ("kB", 1e3)
    text = f"{done / scale:.1f} / {total / scale:.1f} {unit}"
    if rate:
        text += f", {format_bytes(rate)}/s"
    if eta is not None:
        text += f", ~{eta:.0f} s left" if eta < 120 else f", ~{eta / 60:.0f} min left"
    return text


def cache_root(cache_dir: str | None = None) -> str:
    import huggingface_hub.constants

    return cache_dir or huggingface_hub.constants.HF_HUB_CACHE


def disk_free(path: str) -> int:
    """Free bytes on the disk that holds `path` (or would: its nearest existing parent). The OS
    boundary that tests patch."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def cache_location(cache_dir: str | None = None) -> str:
    """Where the cache is, named by the setting that put it there."""
    import huggingface_hub.constants as hc

    root = cache_root(cache_dir)
    if cache_dir is None and os.path.abspath(root) == os.path.abspath(
            os.path.join(hc.HF_HOME, "hub")):
        return f"HF_HOME={hc.HF_HOME}"
    return f"HF_HUB_CACHE={root}" if cache_dir is None else root


def check_disk_space(need: int, cache_dir: str | None = None) -> None:
    """Raise DiskSpaceError when the cache's disk has less than `need` bytes free."""
    if need <= 0:
        return
    free = disk_free(cache_root(cache_dir))
    if free < need:
        raise DiskSpaceError(
            f"Not enough disk space to download the model weights: they need "
            f"{format_bytes(need)} in {cache_location(cache_dir)}, {format_bytes(free)} free. "
            "Free space there, or set HF_HOME to a folder on a larger disk and load again.")


@dataclass
class _Download:
    """One download, written by its thread, read by `status`."""

    models: list[HubModel]
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = True
    current: str | None = None
    error: str | None = None
    total_bytes: int | None = None
    done_bytes: int = 0  # files finished before the current repo
    repo_bytes: int = 0  # bytes of the current repo so far
    files_total: int = 0
    files_done: int = 0
    files: list[PlannedFile] = field(default_factory=list)
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    failure: Exception | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    on_change: Callable[[DownloadProgress], None] | None = None

    RATE_WINDOW_S: ClassVar[float] = 10.0

    def _done(self) -> int:
        return min(self.done_bytes + self.repo_bytes, self.total_bytes or 2**62)

    def _sample(self) -> None:
        """Called with the lock held whenever the byte count may have moved."""
        now, done = time.monotonic(), self._done()
        if not self.samples or now - self.samples[-1][0] >= 0.1 or done == self.total_bytes:
            self.samples.append((now, done))

    def _rate(self) -> float | None:
        recent = [s for s in self.samples if s[0] >= self.samples[-1][0] - self.RATE_WINDOW_S]
        if len(recent) < 2 or recent[-1][0] - recent[0][0] < 0.5:
            return None
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def progress(self) -> DownloadProgress:
        with self.lock:
            return self._progress()

    def _progress(self) -> DownloadProgress:
        done = self._done()
        if self.total_bytes:
            percentage = 100.0 * done / self.total_bytes
        else:
            percentage = 0.0 if self.running else 100.0
        if not self.running and self.error is None:
            percentage, done = 100.0, self.total_bytes or done
        rate = self._rate() if self.running else None
        eta = ((self.total_bytes - done) / rate if rate and self.total_bytes is not None
               else None)
        text = (progress_text(done, self.total_bytes, rate, eta)
                if self.total_bytes is not None else None)
        return DownloadProgress(
            is_downloading=self.running, percentage=percentage,
            current_artifact=self.current, error=self.error, downloaded_bytes=done,
            total_bytes=self.total_bytes, files_done=self.files_done,
            files_total=self.files_total, bytes_per_s=None if rate is None else round(rate),
            eta_s=None if eta is None else round(eta, 1), text=text, files=list(self.files))

    def changed(self) -> None:
        """Tell `on_change` (outside the lock)."""
        if self.on_change is not None:
            self.on_change(self.progress())


def plan_downloads(models: list[HubModel], cache_dir: str | None = None,
                   endpoint: str | None = None) -> list[PlannedFile]:
    """Every file the models load (variant per folder), its size and whether it is cached:
    the hub's listing and HEAD requests (snapshot_download's dry run), nothing written."""
    from huggingface_hub import snapshot_download

    planned: list[PlannedFile] = []
    for model in models:
        infos = snapshot_download(model.repo_id, revision=model.revision,
                                  allow_patterns=model.listing_patterns(),
                                  cache_dir=cache_dir, endpoint=endpoint, dry_run=True)
        by_name = {i.filename: i for i in infos}
        planned += [PlannedFile(repo_id=model.repo_id, path=name,
                                bytes=by_name[name].file_size or 0,
                                cached=not by_name[name].will_download)
                    for name in model.select(by_name)]
    return planned


def describe_plan(label: str, files: list[PlannedFile]) -> str:
    """One log line: how many files and bytes, how much is to be downloaded, which files."""
    total = sum(f.bytes for f in files)
    missing = [f for f in files if not f.cached]
    listing = ", ".join(f"{f.repo_id}/{f.path} ({format_bytes(f.bytes)})" for f in files
                        if is_weights_file(f.path))
    return (f"{label} loads {len(files)} files, {format_bytes(total)}; "
            f"{len(missing)} to download ({format_bytes(sum(f.bytes for f in missing))}). "
            f"Weights: {listing}")


def run_download(download: _Download, label: str, cache_dir: str | None = None,
                 endpoint: str | None = None) -> None:
    """Plan, check the disk, then fetch what is missing, reporting into `download`. Raises
    what huggingface_hub raises, or DiskSpaceError before anything is written."""
    from huggingface_hub import snapshot_download

    try:
        files = plan_downloads(download.models, cache_dir, endpoint)
    except Exception as exc:
        if is_network_failure(exc):
            raise HubUnreachableError(
                describe_failure(exc, [m.repo_id for m in download.models])) from exc
        raise
    missing = [f for f in files if not f.cached]
    with download.lock:
        download.files = files
        download.total_bytes = sum(f.bytes for f in missing)
        download.files_total = len(missing)
        download._sample()
    log.info(describe_plan(label, files))
    download.changed()
    check_disk_space(sum(f.bytes for f in missing), cache_dir)
    for model in download.models:
        todo = [f for f in missing if f.repo_id == model.repo_id]
        if not todo:
            continue
        with download.lock:
            download.current, download.repo_bytes = model.repo_id, 0
        bars = _progress_bars(download)
        snapshot_download(model.repo_id, revision=model.revision,
                          allow_patterns=[f.path for f in todo],
                          cache_dir=cache_dir, endpoint=endpoint, tqdm_class=bars,
                          max_workers=4)
        with download.lock:
            download.done_bytes += sum(f.bytes for f in todo)
            download.repo_bytes = 0
            download.files_done = bars.files_before + len(todo)
            download._sample()
        download.changed()


def fetch(models: list[HubModel], label: str,
          on_progress: Callable[[DownloadProgress], None] | None = None,
          cache_dir: str | None = None, endpoint: str | None = None) -> None:
    """Make sure every file the models load is in the cache, downloading what is missing, on
    this thread. Nothing to do (no network) when all is cached. Raises ModelDownloadError with
    a sentence that says what to do."""
    if not models or all(is_cached(m, cache_dir) for m in models):
        return
    if hub_offline():
        return  # loading from the cache says what is missing
    download = _Download(models, on_change=on_progress)
    try:
        run_download(download, label, cache_dir, endpoint)
    except ModelDownloadError:
        raise
    except Exception as exc:
        raise ModelDownloadError(describe_failure(exc, [m.repo_id for m in models])) from exc
    finally:
        with download.lock:
            download.running = False


class ModelDownloads:
    """Cache status and background downloads of the hub files pipelines need.

    `models_for(pipeline_id)` says what a pipeline needs (the registry's `hub_models`); it raises
    for an unknown id. `endpoint`/`cache_dir`: None = huggingface_hub's own settings."""

    def __init__(self, models_for: Callable[[str], list[HubModel]], *,
                 endpoint: str | None = None, cache_dir: str | None = None) -> None:
        self._models_for = models_for
        self._endpoint = endpoint
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}

    def status(self, pipeline_id: str) -> ModelStatus:
        """Blocking (stats cache files): call it off the event loop."""
        models = self._models_for(pipeline_id)
        with self._lock:
            download = self._downloads.get(pipeline_id)
        if download is not None and download.running:
            return ModelStatus(downloaded=False, progress=download.progress(),
                               models=self._describe(models, cached=False))
        described = self._describe(models)
        downloaded = all(m.cached for m in described)
        # A finished download is reported once it is confirmed; a failed one until retried.
        progress = None
        if download is not None and (download.error is not None or not downloaded):
            progress = download.progress()
        return ModelStatus(downloaded=downloaded, progress=progress, models=described)

    def progress(self, pipeline_id: str) -> DownloadProgress | None:
        """The running (or last) download's progress for `pipeline_id`, if any."""
        with self._lock:
            download = self._downloads.get(pipeline_id)
        return None if download is None else download.progress()

    def failure(self, pipeline_id: str) -> Exception | None:
        """Why the pipeline's last download failed (None: it did not, or none ran)."""
        with self._lock:
            download = self._downloads.get(pipeline_id)
        return None if download is None else download.failure

    def _describe(self, models: list[HubModel], cached: bool | None = None) -> list[ModelFiles]:
        return [ModelFiles(repo_id=m.repo_id, revision=m.revision,
                           allow_patterns=list(m.allow_patterns), variant=m.variant,
                           cached=is_cached(m, self._cache_dir) if cached is None else cached)
                for m in models]

    def start(self, pipeline_id: str, models: list[HubModel] | None = None) -> bool:
        """Start downloading what `pipeline_id` needs (`models`, else `models_for`) on a daemon
        thread. False when it needs nothing from the hub. Raises DownloadInProgressError,
        HubOfflineError, or what `models_for` raises for an unknown id."""
        models = self._models_for(pipeline_id) if models is None else models
        if not models:
            return False
        if hub_offline():
            raise HubOfflineError(
                "HF_HUB_OFFLINE is set, so nothing can be downloaded. Unset it (and make sure "
                "this machine reaches the Hugging Face Hub or HF_ENDPOINT), or copy a cache "
                "that holds " + ", ".join(m.repo_id for m in models) + " into HF_HOME.")
        with self._lock:
            running = self._downloads.get(pipeline_id)
            if running is not None and running.running:
                raise DownloadInProgressError(f"A download for {pipeline_id!r} is already "
                                              "running; poll /api/v1/models/status.")
            download = self._downloads[pipeline_id] = _Download(models)
        threading.Thread(target=self._run, args=(pipeline_id, download), daemon=True,
                         name=f"download-{pipeline_id}").start()
        return True

    def wait(self, pipeline_id: str, timeout_s: float | None = None) -> bool:
        """Block until the pipeline's download (if any) has ended; False on timeout."""
        with self._lock:
            download = self._downloads.get(pipeline_id)
        return download is None or download.finished.wait(timeout_s)

    def _run(self, pipeline_id: str, download: _Download) -> None:
        try:
            run_download(download, pipeline_id, self._cache_dir, self._endpoint)
            log.info("models for %s downloaded (%d files)", pipeline_id, download.files_total)
        except Exception as exc:  # noqa: BLE001 - any failure is reported through status
            message = str(exc) if isinstance(exc, ModelDownloadError) else describe_failure(
                exc, [m.repo_id for m in download.models])
            log.warning("model download for %s failed: %s", pipeline_id, message)
            with download.lock:
                download.error = message
                download.failure = exc if isinstance(exc, ModelDownloadError) else (
                    ModelDownloadError(message))
        finally:
            with download.lock:
                download.running = False
            download.finished.set()


def _progress_bars(download: _Download) -> type:
    """A tqdm stand-in class for `snapshot_download` that counts instead of drawing.

    snapshot_download opens byte bars (unit "B": bytes received and bytes written) and one
    bar over files; the largest byte count is this repo's progress."""
    files_before = download.files_done

    class _Bar:
        _lock: ClassVar[threading.Lock] = threading.Lock()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.total = kwargs.get("total")
            self.n = kwargs.get("initial", 0) or 0
            self.bytes = kwargs.get("unit") == "B"
            self.format_dict: dict[str, Any] = {}

        def update(self, n: float | None = 1) -> None:
            self.n += n or 0
            with download.lock:
                if self.bytes:
                    download.repo_bytes = max(download.repo_bytes, int(self.n))
                    download._sample()
                else:
                    download.files_done = files_before + int(self.n)
            download.changed()

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def __iter__(self) -> Iterator[Any]:
            return iter(())

        def close(self) -> None:
            pass

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            pass

        def set_description(self, *args: Any, **kwargs: Any) -> None:
            pass

        set_description_str = set_postfix_str = set_postfix = set_description

        @classmethod
        def get_lock(cls) -> threading.Lock:
            return cls._lock

        @classmethod
        def set_lock(cls, lock: threading.Lock) -> None:
            cls._lock = lock

    _Bar.files_before = files_before  # type: ignore[attr-defined]
    return _Bar


def describe_failure(exc: BaseException, repos: list[str]) -> str:
    """A download failure as a sentence that says what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    names = ", ".join(repos)
    chain = _chain(exc)
    if any(isinstance(e, GatedRepoError) for e in chain):
        return (f"{names}: the model is gated or private; accept its terms on the Hub and log "
                "in (`hf auth login`, or HF_TOKEN).")
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return f"{names}: no such model on the Hugging Face Hub (or it is private: set HF_TOKEN)."
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return f"{names}: the revision does not exist on the Hub."
    if any(isinstance(e, HFValidationError) for e in chain):
        return f"{names}: not a valid hub id."
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return "HF_HUB_OFFLINE is set, so nothing can be downloaded."
    if is_network_failure(exc):
        return (f"Cannot reach the Hugging Face Hub to download {names}. Check the network or "
                "proxy (HF_ENDPOINT sets another hub address), or download them elsewhere with "
                "`hf download` and copy HF_HOME here.")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"Downloading {names} failed: {detail}"


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_network_failure(exc: BaseException) -> bool:
    """The hub could not be reached (refused, DNS, timeout), anywhere in the cause chain."""
    return any(isinstance(e, (ConnectionError, TimeoutError)) or
               type(e).__name__ in {"ConnectError", "ConnectTimeout", "ReadTimeout",
                                    "TimeoutException", "LocalEntryNotFoundError"}
               for e in _chain(exc))
