"""Installing LoRA files into the LoRA folder from Hugging Face, CivitAI or another allowed host.

- Only hosts on the allow list (and their sub-domains) are fetched: huggingface.co, hf.co,
  civitai.com by default, plus the host of `HF_ENDPOINT` (a mirror) and of the CivitAI endpoint.
  Redirects (to the hubs' CDNs) are followed; httpx drops the Authorization header when a
  redirect leaves the origin.
- Tokens come from the environment (`HF_TOKEN`, `CIVITAI_API_TOKEN`) and travel as an
  Authorization header, never in a URL; a `token=` a user put in a URL is masked wherever the URL
  is shown (progress, logs, errors).
- The file is written to a hidden temporary name in the destination folder, checked to be a
  whole LoRA (safetensors, or a PyTorch zip read without unpickling: `loras.check_lora_file`),
  then renamed into place: a failed or cut-off download leaves no file
  behind. Its size is capped (`max_bytes`), before (Content-Length) and while reading.
- Progress of every running or recently finished install is kept for `GET /lora/downloads`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from .loras import LORA_EXTENSIONS, LoraError, LoraFileInfo, LoraFolder, check_lora_file

log = logging.getLogger(__name__)

DEFAULT_HOSTS = ("huggingface.co", "hf.co", "civitai.com")
CIVITAI = "https://civitai.com"
MAX_RUNNING = 2
KEEP_FINISHED_S = 600.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()+-]")


class InstallError(Exception):
    """An install that cannot be done; `status` is the HTTP status that fits."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InstallProgress(BaseModel):
    id: str
    filename: str
    url: str
    """With any token masked."""
    status: Literal["downloading", "done", "error"]
    downloaded_bytes: int = 0
    total_bytes: int | None = None
    percentage: float = 0.0
    error: str | None = None


class DownloadRequest(BaseModel):
    """Scope's `POST /lora/download` body."""

    model_config = ConfigDict(extra="ignore")

    source: Literal["huggingface", "civitai", "url"]
    repo_id: str | None = Field(default=None, max_length=200,
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")
    hf_filename: str | None = Field(default=None, max_length=500)
    revision: str = Field(default="main", max_length=100, pattern=r"^[A-Za-z0-9._/-]+$")
    model_id: str | None = Field(default=None, max_length=50)
    version_id: str | None = Field(default=None, max_length=20, pattern=r"^[0-9]+$")
    url: str | None = Field(default=None, max_length=2000)
    subfolder: str | None = Field(default=None, max_length=200)
    filename: str | None = Field(default=None, max_length=255)
    expected_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


class DownloadResult(BaseModel):
    """Scope's answer to `POST /lora/download`."""

    filename: str
    path: str
    sha256: str
    size_bytes: int


def mask(url: str) -> str:
    """`url` with the values of token-like query parameters replaced by ***."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "***" if "token" in k.lower() or "key" in k.lower() else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def safe_filename(name: str) -> str:
    """A plain file name (no folders, no leading dot) with a LoRA extension. Raises
    InstallError(400)."""
    name = unquote(name).replace("\\", "/").split("/")[-1].strip()
    name = _SAFE_NAME.sub("_", name).lstrip(".")
    if not name or len(name) > 200:
        raise InstallError(400, "The file name is empty or too long; give `filename`.")
    if Path(name).suffix.lower() not in LORA_EXTENSIONS:
        raise InstallError(400, f"{name!r} is not a LoRA file name: .safetensors, .pt, .pth "
                                "or .bin (a .ckpt is a full checkpoint). Give `filename` if the "
                                "URL does not end in the name.")
    return name


@dataclass
class _Plan:
    url: str
    dest: Path
    headers: dict[str, str]
    expected_sha256: str | None = None


class LoraInstaller:
    def __init__(self, folder: LoraFolder, *, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS,
                 max_bytes: int = 2 * 1024**3, civitai_endpoint: str | None = None,
                 timeout_s: float = 30.0) -> None:
        if folder.root is None:
            raise ValueError("installing LoRAs needs a LoRA folder")
        self.folder = folder
        self.civitai = (civitai_endpoint or os.environ.get("CIVITAI_ENDPOINT") or CIVITAI
                        ).rstrip("/")
        self.hosts = {h.lower() for h in hosts} | {
            urlsplit(self.civitai).hostname or "", urlsplit(self._hf_endpoint()).hostname or ""}
        self.hosts.discard("")
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._progress: dict[str, InstallProgress] = {}
        self._finished: dict[str, float] = {}
        self._targets: set[Path] = set()

    @staticmethod
    def _hf_endpoint() -> str:
        return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")

    # --- progress -------------------------------------------------------------------------------

    def progress(self) -> list[InstallProgress]:
        now = time.monotonic()
        with self._lock:
            for key, ended in list(self._finished.items()):
                if now - ended > KEEP_FINISHED_S:
                    self._finished.pop(key)
                    self._progress.pop(key, None)
            return [p.model_copy() for p in self._progress.values()]

    # --- planning -------------------------------------------------------------------------------

    def _host_allowed(self, host: str) -> bool:
        host = host.lower()
        return any(host == h or host.endswith("." + h) for h in self.hosts)

    def _is_hf(self, url: str) -> bool:
        return _same_site(url, ("huggingface.co", "hf.co"), self._hf_endpoint())

    def _is_civitai(self, url: str) -> bool:
        return _same_site(url, ("civitai.com",), self.civitai)

    def _headers(self, url: str) -> dict[str, str]:
        token = None
        if self._is_hf(url):
            token = os.environ.get("HF_TOKEN")
        elif self._is_civitai(url):
            token = os.environ.get("CIVITAI_API_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _check_url(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InstallError(400, "Give an http(s) URL of the LoRA file.")
        host = parts.hostname.lower()
        if not self._host_allowed(host):
            raise InstallError(400, f"Downloads are allowed from {', '.join(sorted(self.hosts))}"
                                    f" only, not {host}.")
        if self._is_hf(url) and "/blob/" in parts.path:
            raise InstallError(400, "That is a Hugging Face file page, not the file: use its "
                                    "download link (…/resolve/main/…, \"Copy download link\").")
        return host

    def _destination(self, filename: str, subfolder: str | None) -> Path:
        root = self.folder.root
        assert root is not None
        target = root
        if subfolder:
            parts = [p for p in subfolder.replace("\\", "/").split("/") if p not in ("", ".")]
            if subfolder.startswith(("/", "\\")) or any(
                    p == ".." or p.startswith(".") or _SAFE_NAME.search(p) for p in parts):
                raise InstallError(400, "subfolder must be plain folder names inside the LoRA "
                                        "folder.")
            target = root.joinpath(*parts)
        dest = target / filename
        root_resolved = root.resolve() if root.exists() else root.absolute()
        resolved = dest.resolve() if dest.parent.exists() else dest.absolute()
        if root_resolved not in resolved.parents:
            raise InstallError(400, "The destination is outside the LoRA folder.")
        if dest.exists():
            raise InstallError(409, f"{dest.relative_to(root).as_posix()} is already installed;"
                                    f" delete it first (DELETE /api/v1/loras/{dest.stem}).")
        return dest

    def plan_url(self, url: str, filename: str | None = None,
                 subfolder: str | None = None) -> _Plan:
        self._check_url(url)
        name = filename or urlsplit(url).path.rstrip("/").split("/")[-1]
        if self._is_civitai(url) and (filename is None or "." not in name):
            return self._plan_civitai(_civitai_version(url), filename, subfolder)
        return _Plan(url, self._destination(safe_filename(name), subfolder), self._headers(url))

    def plan(self, request: DownloadRequest) -> _Plan:
        if request.source == "huggingface":
            if not request.repo_id or not request.hf_filename:
                raise InstallError(400, "source 'huggingface' needs repo_id and hf_filename.")
            if ".." in request.hf_filename.split("/"):
                raise InstallError(400, "hf_filename must be a path inside the repository.")
            url = (f"{self._hf_endpoint()}/{request.repo_id}/resolve/{request.revision}/"
                   f"{request.hf_filename}")
            name = request.filename or request.hf_filename
            plan = _Plan(url, self._destination(safe_filename(name), request.subfolder),
                         self._headers(url))
        elif request.source == "civitai":
            if not request.version_id:
                raise InstallError(400, "source 'civitai' needs version_id.")
            plan = self._plan_civitai(request.version_id, request.filename, request.subfolder)
        else:
            if not request.url:
                raise InstallError(400, "source 'url' needs url.")
            plan = self.plan_url(request.url, request.filename, request.subfolder)
        plan.expected_sha256 = request.expected_sha256
        return plan

    def _plan_civitai(self, version_id: str | None, filename: str | None,
                      subfolder: str | None) -> _Plan:
        """CivitAI's API says which file a model version is (its name and download URL)."""
        if not version_id:
            raise InstallError(400, "A CivitAI link needs a model version: use the file's "
                                    "download link (…/api/download/models/<version id>).")
        api = f"{self.civitai}/api/v1/model-versions/{version_id}"
        headers = self._headers(api)
        try:
            response = httpx.get(api, headers=headers, timeout=self.timeout_s,
                                 follow_redirects=True)
        except httpx.HTTPError as exc:
            raise InstallError(502, f"CivitAI could not be reached: {type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise InstallError(403, "CivitAI refused access to this model version: set "
                                    "CIVITAI_API_TOKEN on the server.")
        if response.status_code == 404:
            raise InstallError(404, f"CivitAI has no model version {version_id}.")
        if response.status_code != 200:
            raise InstallError(502, f"CivitAI answered HTTP {response.status_code}.")
        try:
            files = response.json().get("files") or []
            primary = next((f for f in files if f.get("primary")), files[0] if files else None)
            url, name = primary["downloadUrl"], primary["name"]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InstallError(502, f"CivitAI lists no file for model version {version_id}."
                               ) from None
        self._check_url(url)
        return _Plan(url, self._destination(safe_filename(filename or name), subfolder),
                     self._headers(url))

    # --- downloading ----------------------------------------------------------------------------

    def run(self, plan: _Plan) -> DownloadResult:
        """Download `plan` (blocking). Raises InstallError; leaves no file behind on failure."""
        dest = plan.dest
        key = uuid.uuid4().hex[:12]
        with self._lock:
            running = sum(p.status == "downloading" for p in self._progress.values())
            if running >= MAX_RUNNING:
                raise InstallError(429, f"{running} LoRA downloads are running; try again when "
                                        "one is done.")
            if dest in self._targets:
                raise InstallError(409, f"{dest.name} is being downloaded already.")
            self._targets.add(dest)
            progress = InstallProgress(id=key, filename=dest.name, url=mask(plan.url),
                                       status="downloading")
            self._progress[key] = progress
        # hidden (never listed) and ending in the LoRA's own suffix (checked by its format)
        part = dest.with_name(f".{dest.stem}.{key}.part{dest.suffix}")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest, size = self._fetch(plan, part, progress)
            if plan.expected_sha256 and digest != plan.expected_sha256.lower():
                raise InstallError(400, f"{dest.name}: SHA-256 {digest} is not the expected "
                                        f"{plan.expected_sha256.lower()}.")
            try:
                check_lora_file(part)
            except LoraError as exc:
                raise InstallError(400, f"The download is not a usable LoRA: "
                                        f"{str(exc).replace(part.name, dest.name)}") from None
            if dest.exists():
                raise InstallError(409, f"{dest.name} appeared while downloading; kept it.")
            os.replace(part, dest)
            log.info("LoRA %s installed from %s (%d bytes)", dest.name, mask(plan.url), size)
            self._finish(progress, "done")
            return DownloadResult(filename=dest.relative_to(self.folder.root).as_posix(),
                                  path=str(dest), sha256=digest, size_bytes=size)
        except InstallError as exc:
            self._finish(progress, "error", str(exc))
            log.warning("LoRA install from %s failed: %s", mask(plan.url), exc)
            raise
        except OSError as exc:
            message = f"Writing {dest.name} failed: {exc.strerror or exc}"
            self._finish(progress, "error", message)
            raise InstallError(507 if exc.errno == 28 else 500, message) from None
        finally:
            part.unlink(missing_ok=True)
            with self._lock:
                self._targets.discard(dest)

    def _fetch(self, plan: _Plan, part: Path, progress: InstallProgress) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        try:
            with httpx.stream("GET", plan.url, headers=plan.headers, timeout=self.timeout_s,
                              follow_redirects=True) as response:
                if response.status_code in (401, 403):
                    raise InstallError(403, "The host refused access (HTTP "
                                            f"{response.status_code}): a gated or private file "
                                            "needs HF_TOKEN / CIVITAI_API_TOKEN on the server.")
                if response.status_code == 404:
                    raise InstallError(404, "The file was not found there (HTTP 404): check the "
                                            "link.")
                if response.status_code >= 400:
                    raise InstallError(502, f"The host answered HTTP {response.status_code}.")
                total = _int(response.headers.get("content-length"))
                if total is not None and total > self.max_bytes:
                    raise InstallError(413, f"The file is {total} bytes; LoRAs over "
                                            f"{self.max_bytes} bytes are not installed.")
                progress.total_bytes = total
                with part.open("wb") as f:
                    for chunk in response.iter_bytes():  # as it arrives: live progress
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise InstallError(413, f"The file is over {self.max_bytes} bytes; "
                                                    "stopped.")
                        f.write(chunk)
                        digest.update(chunk)
                        progress.downloaded_bytes = size
                        if total:
                            progress.percentage = round(100.0 * size / total, 1)
                if total is not None and size != total:
                    raise InstallError(502, f"The download ended after {size} of {total} "
                                            "bytes; try again.")
        except httpx.HTTPError as exc:
            raise InstallError(502, f"The download failed: {type(exc).__name__} "
                                    f"({mask(str(exc))}); try again.") from None
        return digest.hexdigest(), size

    def _finish(self, progress: InstallProgress, status: Literal["done", "error"],
                error: str | None = None) -> None:
        with self._lock:
            progress.status, progress.error = status, error
            if status == "done":
                progress.percentage = 100.0
            self._finished[progress.id] = time.monotonic()


def _same_site(url: str, domains: tuple[str, ...], endpoint: str) -> bool:
    """`url` is on one of `domains` (or a sub-domain), or on `endpoint`'s host and port."""
    parts, end = urlsplit(url), urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    if any(host == d or host.endswith("." + d) for d in domains):
        return True
    return bool(end.hostname) and host == end.hostname.lower() and parts.port == end.port


def _civitai_version(url: str) -> str | None:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if query.get("modelVersionId", "").isdigit():
        return query["modelVersionId"]
    last = parts.path.rstrip("/").split("/")[-1]
    return last if last.isdigit() else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def installed(result: DownloadResult) -> LoraFileInfo:
    path = Path(result.path)
    folder = Path(result.filename).parent.as_posix()
    return LoraFileInfo(name=path.stem, path=str(path), size_mb=round(result.size_bytes / 2**20, 2),
                        folder=None if folder == "." else folder)
