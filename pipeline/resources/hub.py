"""Model weights on the Hugging Face Hub: are a pipeline's files in the local cache, and a
background download of them with progress.

Each pipeline declares the hub files it loads (`Pipeline.hub_models`). "Downloaded" means every
declared file resolves in huggingface_hub's own cache (`try_to_load_from_cache`) and the cached
snapshot is complete by huggingface_hub's own check (`snapshot_download(local_files_only=True)`),
so a pipeline that passes it loads with `HF_HUB_OFFLINE=1`. Downloads go through
`snapshot_download` on a daemon thread, one per pipeline at a time; its progress bars feed a
byte/file count. The hub's address and cache follow huggingface_hub's settings (`HF_ENDPOINT`,
`HF_HOME`/`HF_HUB_CACHE`, `HF_TOKEN`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Callable, Iterator
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

    @property
    def exact_files(self) -> list[str]:
        return [p for p in self.allow_patterns if not any(c in p for c in "*?[")]


class ModelDownloadError(RuntimeError):
    """A download could not start; the text says why and what to do."""


class DownloadInProgressError(ModelDownloadError):
    """A download for this pipeline is already running."""


class HubOfflineError(ModelDownloadError):
    """HF_HUB_OFFLINE is set: nothing can be downloaded."""


class DownloadProgress(BaseModel):
    """Scope's progress keys (`is_downloading`, `percentage`, `current_artifact`, `error`) plus
    byte and file counts."""

    is_downloading: bool
    percentage: float
    current_artifact: str | None = None
    error: str | None = None
    downloaded_bytes: int = 0
    total_bytes: int | None = None
    files_done: int = 0
    files_total: int = 0


class ModelFiles(BaseModel):
    repo_id: str
    revision: str
    allow_patterns: list[str]
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


def is_cached(model: HubModel, cache_dir: str | None = None) -> bool:
    """Every declared file is in the local cache, and huggingface_hub finds the snapshot
    complete (it compares against the repo's file listing cached at download time)."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    for filename in model.exact_files:
        found = try_to_load_from_cache(model.repo_id, filename, cache_dir=cache_dir,
                                       revision=model.revision)
        if not isinstance(found, str):
            return False
    try:
        folder = snapshot_download(model.repo_id, revision=model.revision, cache_dir=cache_dir,
                                   allow_patterns=list(model.allow_patterns),
                                   local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False
    # Without a cached listing huggingface_hub accepts any snapshot folder: require at least
    # one file per pattern.
    present = [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
               for root, _, files in os.walk(folder) for f in files]
    return all(any(fnmatch.fnmatch(p, pattern) for p in present)
               for pattern in model.allow_patterns)


@dataclass
class _Download:
    """One pipeline's download, written by its thread, read by `status`."""

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
    finished: threading.Event = field(default_factory=threading.Event)

    def progress(self) -> DownloadProgress:
        with self.lock:
            done = min(self.done_bytes + self.repo_bytes, self.total_bytes or 2**62)
            if self.total_bytes:
                percentage = 100.0 * done / self.total_bytes
            else:
                percentage = 0.0 if self.running else 100.0
            if not self.running and self.error is None:
                percentage, done = 100.0, self.total_bytes or done
            return DownloadProgress(
                is_downloading=self.running, percentage=round(percentage, 1),
                current_artifact=self.current, error=self.error, downloaded_bytes=done,
                total_bytes=self.total_bytes, files_done=self.files_done,
                files_total=self.files_total)


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

    def _describe(self, models: list[HubModel], cached: bool | None = None) -> list[ModelFiles]:
        return [ModelFiles(repo_id=m.repo_id, revision=m.revision,
                           allow_patterns=list(m.allow_patterns),
                           cached=is_cached(m, self._cache_dir) if cached is None else cached)
                for m in models]

    def start(self, pipeline_id: str) -> bool:
        """Start downloading what `pipeline_id` needs on a daemon thread. False when it needs
        nothing from the hub. Raises DownloadInProgressError, HubOfflineError, or what
        `models_for` raises for an unknown id."""
        models = self._models_for(pipeline_id)
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

    def wait(self, pipeline_id: str, timeout_s: float) -> bool:
        """Block until the pipeline's download (if any) has ended; False on timeout."""
        with self._lock:
            download = self._downloads.get(pipeline_id)
        return download is None or download.finished.wait(timeout_s)

    def _run(self, pipeline_id: str, download: _Download) -> None:
        from huggingface_hub import snapshot_download

        try:
            plans = [self._plan(m) for m in download.models]
            with download.lock:
                download.total_bytes = sum(size for plan in plans for _, size in plan)
                download.files_total = sum(len(plan) for plan in plans)
            for model, plan in zip(download.models, plans, strict=True):
                with download.lock:
                    download.current, download.repo_bytes = model.repo_id, 0
                bars = _progress_bars(download)
                snapshot_download(model.repo_id, revision=model.revision,
                                  allow_patterns=list(model.allow_patterns),
                                  cache_dir=self._cache_dir, endpoint=self._endpoint,
                                  tqdm_class=bars, max_workers=4)
                with download.lock:
                    download.done_bytes += sum(size for _, size in plan)
                    download.repo_bytes = 0
                    download.files_done = bars.files_before + len(plan)
            log.info("models for %s downloaded (%d files)", pipeline_id, download.files_total)
        except Exception as exc:  # noqa: BLE001 - any failure is reported through status
            message = describe_failure(exc, [m.repo_id for m in download.models])
            log.warning("model download for %s failed: %s", pipeline_id, message)
            with download.lock:
                download.error = message
        finally:
            with download.lock:
                download.running = False
            download.finished.set()

    def _plan(self, model: HubModel) -> list[tuple[str, int]]:
        """(file, bytes) that the download will fetch (a dry run: listing and HEAD requests)."""
        from huggingface_hub import snapshot_download

        infos = snapshot_download(model.repo_id, revision=model.revision,
                                  allow_patterns=list(model.allow_patterns),
                                  cache_dir=self._cache_dir, endpoint=self._endpoint,
                                  dry_run=True)
        return [(i.filename, i.file_size or 0) for i in infos if i.will_download]


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
                else:
                    download.files_done = files_before + int(self.n)

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
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
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
    network = any(isinstance(e, (ConnectionError, TimeoutError)) or
                  type(e).__name__ in {"ConnectError", "ConnectTimeout", "ReadTimeout",
                                       "TimeoutException", "LocalEntryNotFoundError"}
                  for e in chain)
    if network:
        return (f"Cannot reach the Hugging Face Hub to download {names}. Check the network or "
                "proxy (HF_ENDPOINT sets another hub address), or download them elsewhere with "
                "`hf download` and copy HF_HOME here.")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"Downloading {names} failed: {detail}"
